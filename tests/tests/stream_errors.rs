//! Bad input on an inbound stream gets the RFC 6120 stream error, with a text that
//! says what was wrong, and nothing of it is delivered. Each case is snapshotted.

use std::time::Duration;

use isthmus_core::config::{Negotiation, SaslMode, TlsMode};
use isthmus_core::gateway::Event;
use isthmus_tests::peer::{authenticated_raw_peer, condition_sent, header, TCP_DIALBACK};
use isthmus_tests::scenario::{
    config, message, pair_net, snapshots_in, Cert, PairSetup, Pki, A, B,
};
use isthmus_tests::sim::Net;

/// B serves b.test with a.test as a plain-dialback partner; a raw peer sends `input`.
fn inbound(input: &[&str]) -> (Net, usize) {
    let mut net = Net::new();
    net.add_gateway("B", config(B, A, TCP_DIALBACK), None, 2);
    let raw = net.raw_connect(0);
    for chunk in input {
        net.raw_send(raw, chunk);
        net.settle();
    }
    (net, raw)
}

fn check(name: &str, input: &[&str], condition: &str) {
    let (net, raw) = inbound(input);
    assert_eq!(
        condition_sent(&net, raw).as_deref(),
        Some(condition),
        "{name}\n{}",
        net.transcript_text()
    );
    assert!(net.raw[raw].closed, "{name}: the connection must be closed");
    assert!(net.delivered.is_empty(), "{name}: nothing may be delivered");
    let _guard = snapshots_in("stream_errors");
    insta::assert_snapshot!(name, net.transcript_text());
}

#[test]
fn header_errors() {
    check(
        "host_unknown",
        &[&header(A, "nowhere.test")],
        "host-unknown",
    );
    check("no_to", &["<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='a.test' version='1.0'>"], "host-unknown");
    check(
        "not_a_partner",
        &[&header("stranger.test", B)],
        "policy-violation",
    );
    check("no_from", &["<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' to='b.test' version='1.0'>"], "policy-violation");
    check(
        "client_namespace",
        &[&header(A, B).replace("xmlns='jabber:server'", "xmlns='jabber:client'")],
        "invalid-namespace",
    );
    check(
        "wrong_stream_namespace",
        &["<stream:stream xmlns='jabber:server' xmlns:stream='urn:wrong' from='a.test' to='b.test' version='1.0'>"],
        "invalid-namespace",
    );
    check(
        "version_2",
        &[&header(A, B).replace("version='1.0'", "version='2.0'")],
        "unsupported-version",
    );
    check(
        "latin1",
        &[&header(A, B).replace(
            "<?xml version='1.0'?>",
            "<?xml version='1.0' encoding='ISO-8859-1'?>",
        )],
        "unsupported-encoding",
    );
}

#[test]
fn restricted_and_malformed_xml() {
    let h = header(A, B);
    check("comment", &[&h, "<!-- hello -->"], "restricted-xml");
    check(
        "dtd",
        &["<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]>"],
        "restricted-xml",
    );
    check(
        "processing_instruction",
        &[&h, "<?php echo 1; ?>"],
        "restricted-xml",
    );
    check(
        "entity_reference",
        &[
            &h,
            "<message from='u@a.test' to='v@b.test'><body>&xxe;</body></message>",
        ],
        "restricted-xml",
    );
    check(
        "mismatched_tags",
        &[&h, "<message><body></message>"],
        "not-well-formed",
    );
    check(
        "undeclared_prefix",
        &[&h, "<foo:bar/>"],
        "bad-namespace-prefix",
    );
    check("text_between_stanzas", &[&h, "hello"], "not-well-formed");
}

#[test]
fn oversized_stanza_is_refused_before_it_is_buffered_whole() {
    let h = header(A, B);
    let big = format!(
        "<message from='u@a.test' to='v@b.test'><body>{}",
        "x".repeat(300 * 1024)
    );
    check("oversized_stanza", &[&h, &big], "policy-violation");
}

#[test]
fn stanzas_before_authentication_and_spoofed_senders() {
    let h = header(A, B);
    check(
        "stanza_before_auth",
        &[
            &h,
            "<message from='boss@a.test' to='bob@b.test'><body>hi</body></message>",
        ],
        "not-authorized",
    );
    check(
        "unknown_top_level",
        &[&h, "<hello xmlns='urn:example'/>"],
        "unsupported-stanza-type",
    );
    check(
        "dialback_for_another_domain",
        &[&h, "<db:result from='c.test' to='b.test'>k</db:result>"],
        "invalid-from",
    );
}

/// A raw peer authenticated to B as a.test sends `stanza`.
fn authenticated_then(stanza: &str) -> (Net, usize) {
    let (mut net, raw) = authenticated_raw_peer();
    net.raw_send(raw, stanza);
    net.settle();
    (net, raw)
}

#[test]
fn spoofed_or_misaddressed_stanzas_on_an_authenticated_stream() {
    for (name, stanza, condition) in [
        (
            "spoofed_from",
            "<message from='eve@c.test' to='bob@b.test'><body>spoof</body></message>",
            "invalid-from",
        ),
        (
            "unserved_to",
            "<message from='u@a.test' to='bob@elsewhere.test'><body>x</body></message>",
            "host-unknown",
        ),
        (
            "stanza_without_from",
            "<message to='bob@b.test'><body>x</body></message>",
            "improper-addressing",
        ),
    ] {
        let (net, raw) = authenticated_then(stanza);
        assert_eq!(
            condition_sent(&net, raw).as_deref(),
            Some(condition),
            "{name}"
        );
        assert!(net.delivered.is_empty(), "{name}");
        let _guard = snapshots_in("stream_errors");
        insta::assert_snapshot!(name, net.transcript_text());
    }
    let (net, _) = authenticated_then(
        "<message from='u@a.test/r' to='bob@b.test'><body>fine</body></message>",
    );
    assert_eq!(net.delivered.len(), 1);
}

#[test]
fn timers() {
    // Establishment: a peer that opens a stream and then says nothing more.
    let (mut net, raw) = inbound(&[&header(A, B)]);
    net.run_for(Duration::from_secs(61));
    assert_eq!(
        condition_sent(&net, raw).as_deref(),
        Some("connection-timeout")
    );

    // Keep-alive and inactivity on an authenticated stream pair.
    let pki = Pki::new();
    let mut net = pair_net(&pki, TCP_DIALBACK, TCP_DIALBACK, &PairSetup::default());
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "hi"));
    net.run_for(Duration::from_secs(301));
    assert!(net.transcript_text().contains("(whitespace keep-alive)"));
    net.run_for(Duration::from_secs(300));
    let closed_idle = net
        .transcript_text()
        .contains("no traffic with b.test for 600 s (stream_inactivity_timeout)");
    assert!(closed_idle, "{}", net.transcript_text());
    assert!(
        !net.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Failed { .. })),
        "an idle close is not a failure"
    );
    let _guard = snapshots_in("stream_errors");
    insta::assert_snapshot!("keep_alive_and_inactivity", net.transcript_text());
}

#[test]
fn random_input_never_panics_and_always_ends_in_an_error_or_waits() {
    let mut rng = isthmus_core::rng::Rng::new(99);
    let alphabet = b"<>/='\"abdb:stream!?[]-&;# x\xc3\xa9";
    for _ in 0..300 {
        let len = (rng.next_u64() % 300) as usize;
        let junk: Vec<u8> = (0..len)
            .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
            .collect();
        let mut net = Net::new();
        net.add_gateway("B", config(B, A, TCP_DIALBACK), None, 2);
        let raw = net.raw_connect(0);
        net.raw_send(raw, &header(A, B));
        net.raw_send_bytes(raw, &junk);
        net.settle();
        assert!(net.delivered.is_empty());
    }
}

#[test]
fn sasl_or_dialback_before_required_tls_is_refused() {
    let pki = Pki::new();
    for (name, attempt) in [
        (
            "sasl_before_tls",
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>YS50ZXN0</auth>",
        ),
        (
            "dialback_before_tls",
            "<db:result from='a.test' to='b.test'>abcd</db:result>",
        ),
    ] {
        let mut net = Net::new();
        let row = Negotiation {
            tls: TlsMode::Required,
            sasl: SaslMode::Optional,
            dialback: true,
        };
        net.add_gateway("B", config(B, A, row), Some(pki.context(B, &Cert::Good)), 2);
        let raw = net.raw_connect(0);
        net.raw_send(raw, &header(A, B));
        net.settle();
        assert!(
            net.raw_received(raw).contains("<required/>"),
            "TLS is offered as required"
        );
        net.raw_send(raw, attempt);
        net.settle();
        assert_eq!(
            condition_sent(&net, raw).as_deref(),
            Some("policy-violation"),
            "{name}"
        );
        assert!(
            net.raw_received(raw).contains("TLS is required for a.test"),
            "{name}"
        );
        let _guard = snapshots_in("stream_errors");
        insta::assert_snapshot!(name, net.transcript_text());
    }
}
