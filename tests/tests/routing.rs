//! Several gateways and streams at once, the refusal of non-partners, dialback keys
//! refused by the authoritative server, and connection limits.

use isthmus_core::config::{Config, Method, Negotiation, Partner, SaslMode, TlsMode};
use isthmus_core::gateway::{Direction, Event};
use isthmus_tests::scenario::{
    config, message, pair_net, snapshots_in, Cert, PairSetup, Pki, A, B,
};
use isthmus_tests::sim::Net;

fn row(tls: TlsMode, sasl: SaslMode, dialback: bool) -> Negotiation {
    Negotiation {
        tls,
        sasl,
        dialback,
    }
}

fn serving(domain: &str, partners: &[(&str, Negotiation)]) -> Config {
    let mut c = Config::default();
    c.gateway.served_domains = vec![domain.to_owned()];
    c.gateway.dialback_secret = Some(format!("secret of {domain}"));
    for (p, r) in partners {
        let mut partner = Partner::new(p);
        partner.negotiation = *r;
        c.partners.push(partner);
    }
    c
}

#[test]
fn three_gateways_each_talking_to_both_others() {
    let pki = Pki::new();
    let sasl = row(TlsMode::Required, SaslMode::Required, false);
    let tls_db = row(TlsMode::Required, SaslMode::NotSupported, true);
    let tcp_db = row(TlsMode::NotSupported, SaslMode::NotSupported, true);
    let mut net = Net::new();
    net.add_gateway(
        "A",
        serving("a.test", &[("b.test", sasl), ("c.test", tls_db)]),
        Some(pki.context("a.test", &Cert::Good)),
        1,
    );
    net.add_gateway(
        "B",
        serving("b.test", &[("a.test", sasl), ("c.test", tcp_db)]),
        Some(pki.context("b.test", &Cert::Good)),
        2,
    );
    net.add_gateway(
        "C",
        serving("c.test", &[("a.test", tls_db), ("b.test", tcp_db)]),
        Some(pki.context("c.test", &Cert::Good)),
        3,
    );
    let users = [("A", 0, "a.test"), ("B", 1, "b.test"), ("C", 2, "c.test")];
    for (_, from_node, from) in users {
        for (_, _, to) in users {
            if from != to {
                for i in 0..3 {
                    net.send_stanza(
                        from_node,
                        message(
                            &format!("u@{from}"),
                            &format!("v@{to}"),
                            &format!("{from}->{to} #{i}"),
                        ),
                    );
                }
            }
        }
    }
    net.run();
    for (name, _, domain) in users {
        let got: Vec<String> = net
            .delivered
            .iter()
            .filter(|(n, el)| n == name && el.get_attr("type") != Some("error"))
            .filter_map(|(_, el)| el.elements().next().map(|b| b.text_content()))
            .collect();
        assert_eq!(
            got.len(),
            6,
            "{name} gets 3 messages from each other gateway: {got:?}"
        );
        for (_, _, from) in users {
            if from != domain {
                let order: Vec<&String> = got.iter().filter(|b| b.starts_with(from)).collect();
                assert_eq!(
                    order,
                    [
                        &format!("{from}->{domain} #0"),
                        &format!("{from}->{domain} #1"),
                        &format!("{from}->{domain} #2")
                    ]
                );
            }
        }
    }
    let methods: Vec<(String, String, Method)> = net
        .events
        .iter()
        .filter_map(|(n, e)| match e {
            Event::Authenticated {
                direction: Direction::Outbound,
                remote,
                method,
                ..
            } => Some((n.clone(), remote.clone(), *method)),
            _ => None,
        })
        .collect();
    assert!(methods.contains(&("A".into(), "b.test".into(), Method::SaslExternalOverTls)));
    assert!(methods.contains(&("A".into(), "c.test".into(), Method::DialbackOverTls)));
    assert!(methods.contains(&("B".into(), "c.test".into(), Method::DialbackOverTcp)));
    assert!(methods.contains(&("C".into(), "b.test".into(), Method::DialbackOverTcp)));
    assert_eq!(methods.len(), 6);
}

#[test]
fn stanzas_to_a_domain_that_is_not_a_partner_are_returned() {
    let pki = Pki::new();
    let mut net = Net::new();
    net.add_gateway(
        "A",
        config(A, B, Negotiation::default()),
        Some(pki.context(A, &Cert::Good)),
        1,
    );
    net.send_stanza(0, message("alice@a.test", "eve@elsewhere.test", "hi"));
    net.settle();
    let (_, bounce) = net.delivered.first().expect("a bounce");
    let xml = bounce.to_xml("jabber:server");
    assert!(
        xml.contains("type='error'") && xml.contains("<not-allowed"),
        "{xml}"
    );
    assert!(
        xml.contains("elsewhere.test is not a configured XMPP partner"),
        "{xml}"
    );
    assert!(
        !net.transcript_text().contains("connects to"),
        "no connection is even attempted"
    );
}

#[test]
fn a_key_the_authoritative_server_calls_invalid_bounces_the_queue() {
    // B asks "a.test" about A's key, but B's DNS leads to an impostor A2 that serves
    // a.test with another secret: the key is invalid, and A's stanzas come back.
    let pki = Pki::new();
    let tcp_db = row(TlsMode::NotSupported, SaslMode::NotSupported, true);
    let mut net = pair_net(&pki, tcp_db, tcp_db, &PairSetup::default());
    let mut impostor = config(A, B, tcp_db);
    impostor.gateway.dialback_secret = Some("another secret".into());
    let a2 = net.add_gateway("A2", impostor, Some(pki.context(A, &Cert::Good)), 3);
    let a2_addr = net.addr(a2);
    net.set_dns(1, A, vec![a2_addr]);
    net.set_dns(0, B, vec![net.addr(1)]);
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "one"));
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "two"));
    net.run();
    let bounces: Vec<String> = net
        .delivered
        .iter()
        .filter(|(n, el)| n == "A" && el.get_attr("type") == Some("error"))
        .map(|(_, el)| el.to_xml("jabber:server"))
        .collect();
    assert_eq!(bounces.len(), 2, "{}", net.transcript_text());
    assert!(
        bounces[0].contains("remote-server-not-found") && bounces[0].contains("'invalid'"),
        "{}",
        bounces[0]
    );
    assert!(!net.delivered.iter().any(|(n, _)| n == "B"));
    let _guard = snapshots_in("faults");
    insta::assert_snapshot!("dialback_invalid_bounces_queue", net.transcript_text());
}

#[test]
fn partner_connection_limit_is_enforced_on_inbound_streams() {
    let tcp_db = row(TlsMode::NotSupported, SaslMode::NotSupported, true);
    let mut c = config(B, A, tcp_db);
    c.partners[0].connection_limit = Some(2);
    let mut net = Net::new();
    net.add_gateway("B", c, None, 2);
    let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
                  xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>";
    let peers: Vec<usize> = (0..3).map(|_| net.raw_connect(0)).collect();
    for p in &peers {
        net.raw_send(*p, header);
        net.settle();
    }
    assert!(!net.raw_received(peers[0]).contains("stream:error"));
    assert!(!net.raw_received(peers[1]).contains("stream:error"));
    let third = net.raw_received(peers[2]);
    assert!(third.contains("<resource-constraint"), "{third}");
}
