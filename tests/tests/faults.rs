//! Certificate and dialback faults, each snapshotted with its transcript and checked
//! for the outcome a careful admin expects.

use std::time::Duration;

use isthmus_core::config::{Method, Negotiation, SaslMode, TlsMode};
use isthmus_core::gateway::Event;
use isthmus_tests::peer::header;
use isthmus_tests::scenario::{
    config, judge, message, pair_net, run_pair, snapshots_in, Cert, Outcome, PairSetup, Pki, A, B,
};
use isthmus_tests::sim::Net;

fn row(tls: TlsMode, sasl: SaslMode, dialback: bool) -> Negotiation {
    Negotiation {
        tls,
        sasl,
        dialback,
    }
}

/// SASL EXTERNAL only: tls=required sasl=required dialback=false (row 2).
fn sasl_only() -> Negotiation {
    row(TlsMode::Required, SaslMode::Required, false)
}

/// tls=required sasl=optional dialback=true (row 7): SASL, else dialback over TLS.
fn sasl_or_dialback() -> Negotiation {
    row(TlsMode::Required, SaslMode::Optional, true)
}

/// Dialback over plain TCP only (row 17).
fn tcp_dialback() -> Negotiation {
    row(TlsMode::NotSupported, SaslMode::NotSupported, true)
}

fn settings() -> insta::internals::SettingsBindDropGuard {
    snapshots_in("faults")
}

fn report(title: &str, r: &isthmus_tests::scenario::PairResult) -> String {
    format!(
        "{title}\noutcome: {}\nB accepted: {}\nmessage delivered: {}\nreturned to alice: {}\n\ntranscript:\n{}",
        r.outcome,
        r.inbound.map_or("nothing".into(), |m| m.as_str().to_owned()),
        r.delivered,
        r.bounced.as_deref().unwrap_or("nothing"),
        r.net.transcript_text()
    )
}

/// Runs the pair again with bytes delivered in random chunks: same outcome.
fn same_when_chunked(
    pki: &Pki,
    a: Negotiation,
    b: Negotiation,
    setup: &PairSetup,
    outcome: &Outcome,
) {
    for seed in [3, 17] {
        let chunked = PairSetup {
            a_cert: setup.a_cert.clone(),
            b_cert: setup.b_cert.clone(),
            chunk_seed: Some(seed),
        };
        assert_eq!(
            &run_pair(pki, a, b, &chunked).outcome,
            outcome,
            "chunking seed {seed}"
        );
    }
}

fn failed_with(o: &Outcome, sender: &str, condition: &str) -> bool {
    matches!(o, Outcome::Failed { sender: s, condition: c, .. } if *s == sender && c == condition)
}

#[test]
fn certificate_faults_of_the_initiator() {
    let _g = settings();
    let pki = Pki::new();
    let cases = [
        (
            "no_client_certificate",
            Cert::NoClientCert,
            "no certificate",
        ),
        ("wrong_name", Cert::WrongName, "not valid for a.test"),
        ("untrusted_issuer", Cert::UntrustedIssuer, ""),
        ("expired", Cert::Expired, ""),
    ];
    for (name, cert, _) in cases {
        // Where SASL EXTERNAL is the only method, the stream fails at B...
        let setup = PairSetup {
            a_cert: cert.clone(),
            ..PairSetup::default()
        };
        let r = run_pair(&pki, sasl_only(), sasl_only(), &setup);
        assert!(
            failed_with(&r.outcome, "B", "not-authorized"),
            "{name}: {}",
            r.outcome
        );
        assert!(!r.delivered && r.bounced.is_some(), "{name}");
        insta::assert_snapshot!(
            format!("initiator_{name}_sasl_only"),
            report(
                &format!("A presents: {name}; both rows {}", sasl_only().label()),
                &r
            )
        );
        // ...and where dialback over TLS is allowed, it carries the stream instead.
        let r = run_pair(&pki, sasl_or_dialback(), sasl_or_dialback(), &setup);
        assert_eq!(
            r.outcome,
            Outcome::Authenticated(Method::DialbackOverTls),
            "{name}"
        );
        assert!(r.delivered, "{name}");
        insta::assert_snapshot!(
            format!("initiator_{name}_dialback_fallback"),
            report(
                &format!(
                    "A presents: {name}; both rows {}",
                    sasl_or_dialback().label()
                ),
                &r
            )
        );
    }
}

#[test]
fn server_auth_only_certificates_are_accepted() {
    let _g = settings();
    let pki = Pki::new();
    let setup = PairSetup {
        a_cert: Cert::ServerAuthOnly,
        b_cert: Cert::ServerAuthOnly,
        ..PairSetup::default()
    };
    let r = run_pair(&pki, sasl_only(), sasl_only(), &setup);
    assert_eq!(
        r.outcome,
        Outcome::Authenticated(Method::SaslExternalOverTls)
    );
    assert!(r.delivered);
    insta::assert_snapshot!(
        "server_auth_only_purpose",
        report("both certificates carry only the serverAuth purpose", &r)
    );
}

#[test]
fn certificate_faults_of_the_receiver() {
    let _g = settings();
    let pki = Pki::new();
    let cases = [
        ("wrong_name", Cert::WrongName, false),
        ("wildcard_match", Cert::Wildcard("test".into()), true),
        ("wildcard_mismatch", Cert::Wildcard("b.test".into()), false),
        ("untrusted_issuer", Cert::UntrustedIssuer, false),
        ("xmpp_addr_only", Cert::XmppAddrOnly, true),
    ];
    for (name, cert, ok) in cases {
        let setup = PairSetup {
            b_cert: cert,
            ..PairSetup::default()
        };
        let r = run_pair(&pki, sasl_only(), sasl_only(), &setup);
        same_when_chunked(&pki, sasl_only(), sasl_only(), &setup, &r.outcome);
        if ok {
            assert_eq!(
                r.outcome,
                Outcome::Authenticated(Method::SaslExternalOverTls),
                "{name}"
            );
            assert!(r.delivered);
        } else {
            assert!(
                failed_with(&r.outcome, "A", "policy-violation"),
                "{name}: {}",
                r.outcome
            );
            assert!(r.bounced.is_some());
        }
        insta::assert_snapshot!(
            format!("receiver_{name}"),
            report(
                &format!("B presents: {name}; both rows {}", sasl_only().label()),
                &r
            )
        );
    }
}

fn dialback_net(pki: &Pki) -> Net {
    pair_net(pki, tcp_dialback(), tcp_dialback(), &PairSetup::default())
}

#[test]
fn forged_dialback_key_is_refused() {
    let _g = settings();
    let pki = Pki::new();
    let mut net = dialback_net(&pki);
    // Mallory claims to be a.test on a fresh connection to B.
    let m = net.raw_connect(1);
    net.raw_send(m, &header(A, B));
    net.settle();
    net.raw_send(
        m,
        &format!(
            "<db:result from='{A}' to='{B}'>{}</db:result>",
            "ab".repeat(32)
        ),
    );
    net.settle();
    net.raw_send(
        m,
        "<message from='boss@a.test' to='bob@b.test'><body>wire the money</body></message>",
    );
    net.settle();
    let seen = net.raw_received(m);
    assert!(seen.contains("type='invalid'"), "{seen}");
    assert!(
        !net.delivered.iter().any(|(n, _)| n == "B"),
        "nothing from Mallory may be delivered"
    );
    assert!(net.events.iter().any(|(n, e)| n == "B"
        && matches!(e, Event::Failed { condition, .. } if condition == "dialback-invalid")));
    insta::assert_snapshot!("dialback_forged_key", net.transcript_text());
}

#[test]
fn unsolicited_dialback_answers_are_ignored() {
    let _g = settings();
    let pki = Pki::new();
    let mut net = dialback_net(&pki);
    let m = net.raw_connect(1);
    net.raw_send(m, &header(A, B));
    net.settle();
    // Answers to requests B never made must not authenticate anything.
    net.raw_send(m, &format!("<db:result type='valid' from='{A}' to='{B}'/>"));
    net.raw_send(
        m,
        &format!("<db:verify type='valid' from='{A}' to='{B}' id='nope'/>"),
    );
    net.settle();
    net.raw_send(
        m,
        "<message from='boss@a.test' to='bob@b.test'><body>hi</body></message>",
    );
    net.settle();
    let ignored = net
        .events
        .iter()
        .filter(|(n, e)| n == "B" && matches!(e, Event::Ignored { .. }))
        .count();
    assert_eq!(ignored, 2);
    assert!(!net.delivered.iter().any(|(n, _)| n == "B"));
    assert!(net.raw_received(m).contains("<not-authorized"));
    insta::assert_snapshot!("dialback_unsolicited_on_inbound", net.transcript_text());
}

#[test]
fn unsolicited_result_on_an_outbound_stream_is_ignored() {
    let _g = settings();
    let pki = Pki::new();
    let mut net = Net::new();
    net.add_gateway(
        "A",
        config(A, B, tcp_dialback()),
        Some(pki.context(A, &Cert::Good)),
        1,
    );
    // b.test resolves to a host that accepts and lets the test speak for it.
    let hole: std::net::SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(0, B, vec![hole]);
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "hi"));
    net.run_for(Duration::from_secs(1));
    let fake_b = net.raw.len() - 1;
    net.raw_send(
        fake_b,
        &header(B, A).replace("version='1.0'", "id='fake' version='1.0'"),
    );
    // A valid result before A has even offered a key.
    net.raw_send(
        fake_b,
        &format!("<db:result type='valid' from='{B}' to='{A}'/>"),
    );
    net.run_for(Duration::from_secs(1));
    assert!(net
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Ignored { .. })));
    assert!(!net
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Authenticated { .. })));
    insta::assert_snapshot!("dialback_unsolicited_on_outbound", net.transcript_text());
}

#[test]
fn authoritative_server_unreachable() {
    let _g = settings();
    let pki = Pki::new();
    let mut net = dialback_net(&pki);
    // B cannot reach a.test's authoritative server.
    net.set_dns(1, A, vec![([127, 0, 0, 99], 5269).into()]);
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "hi"));
    net.run();
    let r = judge(net);
    assert!(
        failed_with(&r.outcome, "A", "remote-connection-failed"),
        "{}",
        r.outcome
    );
    let bounced = r.bounced.clone().unwrap_or_default();
    assert!(bounced.contains("remote-server-timeout"), "{bounced}");
    insta::assert_snapshot!(
        "dialback_authoritative_unreachable",
        report("B's DNS sends a.test to a closed port", &r)
    );
}

#[test]
fn verify_timeout() {
    let _g = settings();
    let pki = Pki::new();
    let mut net = dialback_net(&pki);
    let hole: std::net::SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(1, A, vec![hole]);
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "hi"));
    net.run();
    let r = judge(net);
    assert!(
        failed_with(&r.outcome, "A", "remote-connection-failed"),
        "{}",
        r.outcome
    );
    assert!(r.net.transcript_text().contains("remote-server-timeout"));
    assert!(r.bounced.is_some());
    insta::assert_snapshot!(
        "dialback_verify_timeout",
        report(
            "a.test's authoritative server accepts the verify connection and never answers",
            &r
        )
    );
}

#[test]
fn stanzas_wait_in_order_during_dialback_and_flow_after() {
    let pki = Pki::new();
    let mut net = dialback_net(&pki);
    for i in 0..5 {
        net.send_stanza(0, message("alice@a.test", "bob@b.test", &format!("n{i}")));
    }
    net.run();
    let bodies: Vec<String> = net
        .delivered
        .iter()
        .filter(|(n, _)| n == "B")
        .filter_map(|(_, el)| el.elements().next().map(|b| b.text_content()))
        .collect();
    assert_eq!(bodies, ["n0", "n1", "n2", "n3", "n4"]);
}
