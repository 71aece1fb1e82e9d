//! Protections against hostile or broken peers, each driven through a gateway on the
//! simulation network: connection limits, the handshake deadline, XML limits and
//! restrictions, invalid UTF-8, STARTTLS stripping, and SIP framing and size limits.
//! Each test fails if its protection is taken away.

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_core::config::{Config, Negotiation, Partner, PartnerType, SaslMode, TlsMode};
use isthmus_core::gateway::{By, Event};
use isthmus_core::sip::{SipLimits, SipMessage, StartLine};
use isthmus_core::xml::ns;
use isthmus_tests::peer::{
    authenticated_raw_peer, condition_sent, error_text_sent, header, TCP_DIALBACK,
};
use isthmus_tests::scenario::{
    config, message, pair_net, snapshots_in, Cert, PairSetup, Pki, A, B,
};
use isthmus_tests::sim::Net;
use isthmus_tests::sipworld::{responses, world, xmpp_user_got};

/// B serving b.test with each of `partners` as a plain-dialback partner.
fn serving_b(partners: &[&str]) -> Config {
    let mut c = Config::default();
    c.gateway.served_domains = vec![B.to_owned()];
    c.gateway.dialback_secret = Some("secret of b.test".into());
    for p in partners {
        let mut partner = Partner::new(p);
        partner.negotiation = TCP_DIALBACK;
        c.partners.push(partner);
    }
    c
}

/// Opens a raw stream to node 0 from `from` and returns the raw peer.
fn open_from(net: &mut Net, from: &str) -> usize {
    let raw = net.raw_connect(0);
    net.raw_send(raw, &header(from, B));
    net.settle();
    raw
}

fn accepted(net: &Net, raw: usize) -> bool {
    let seen = net.raw_received(raw);
    seen.contains("<stream:features") && !seen.contains("<stream:error>") && !net.raw[raw].closed
}

/// The stream was failed with `condition`, closed, and nothing was delivered.
fn refused(net: &Net, raw: usize, condition: &str, why: &str) {
    assert_eq!(
        condition_sent(net, raw).as_deref(),
        Some(condition),
        "{why}\n{}",
        net.transcript_text()
    );
    assert!(net.raw[raw].closed, "{why}: the connection must be closed");
    assert!(net.delivered.is_empty(), "{why}: nothing may be delivered");
}

// ---- 1. connection limits ----------------------------------------------------------

#[test]
fn connection_limits_default_to_1000_in_all_and_20_per_partner() {
    let d = Config::default();
    assert_eq!(d.gateway.connection_limit, 1000);
    assert_eq!(d.gateway.partner_connection_limit, 20);
    let loaded = Config::from_toml(
        "[gateway]\nserved_domains = [\"b.test\"]\n[[partner]]\ndomain = \"a.test\"\n",
    )
    .expect("a minimal file loads");
    assert_eq!(loaded.config.gateway.connection_limit, 1000);
    assert_eq!(loaded.config.gateway.partner_connection_limit, 20);
    assert_eq!(loaded.config.partners[0].connection_limit, None);
}

#[test]
fn the_global_connection_limit_refuses_streams_past_it() {
    let mut c = serving_b(&[A, "c.test", "d.test", "e.test"]);
    c.gateway.connection_limit = 3;
    let mut net = Net::new();
    net.add_gateway("B", c, None, 2);
    // One stream from each of three partners: far below any partner's limit.
    let first: Vec<usize> = [A, "c.test", "d.test"]
        .iter()
        .map(|p| open_from(&mut net, p))
        .collect();
    for r in &first {
        assert!(accepted(&net, *r), "{}", net.transcript_text());
    }
    let fourth = open_from(&mut net, "e.test");
    refused(&net, fourth, "resource-constraint", "the fourth stream");
    let text = error_text_sent(&net, fourth).unwrap_or_default();
    assert!(
        text.contains("3 connections in all (connection_limit)"),
        "{text}"
    );

    // A local stanza that needs a new outbound stream is returned at once.
    net.send_stanza(0, message("bob@b.test", "u@c.test", "hi"));
    net.settle();
    let bounce = net
        .delivered
        .iter()
        .find(|(n, el)| n == "B" && el.get_attr("type") == Some("error"))
        .map(|(_, el)| el.to_xml(ns::SERVER))
        .unwrap_or_default();
    assert!(
        bounce.contains("<resource-constraint") && bounce.contains("3 in all"),
        "{bounce}"
    );
    assert!(!net.transcript_text().contains("connects to"));

    // The limit counts open connections: once one closes, another fits.
    net.raw_send(first[0], "</stream:stream>");
    net.settle();
    assert_eq!(net.gateway(0).connection_count(), 2);
    let again = open_from(&mut net, "e.test");
    assert!(accepted(&net, again), "{}", net.transcript_text());
}

#[test]
fn the_default_partner_limit_is_20() {
    let mut net = Net::new();
    net.add_gateway("B", serving_b(&[A, "c.test"]), None, 2);
    let peers: Vec<usize> = (0..21).map(|_| open_from(&mut net, A)).collect();
    for r in &peers[..20] {
        assert!(accepted(&net, *r));
    }
    assert_eq!(
        condition_sent(&net, peers[20]).as_deref(),
        Some("resource-constraint")
    );
    let text = error_text_sent(&net, peers[20]).unwrap_or_default();
    assert!(text.contains("for a.test: 20 connections"), "{text}");
    // Another partner is not held back by a.test's streams.
    let other = open_from(&mut net, "c.test");
    assert!(accepted(&net, other));
}

// ---- 2. the handshake deadline ------------------------------------------------------

#[test]
fn a_peer_trickling_bytes_is_cut_at_the_establishment_timeout() {
    for (name, opening, drip) in [
        ("whitespace", "", " "),
        (
            "a never-finished stanza",
            "<db:result from='a.test' to='b.test'>",
            "k",
        ),
        ("a never-finished tag", "<message from='u@a.test'", " "),
    ] {
        let mut net = Net::new();
        net.add_gateway("B", config(B, A, TCP_DIALBACK), None, 2);
        let start = net.now;
        let raw = net.raw_connect(0);
        net.raw_send(raw, &header(A, B));
        if !opening.is_empty() {
            net.raw_send(raw, opening);
        }
        net.settle();
        let mut cut_at = None;
        for _ in 0..40 {
            net.raw_send(raw, drip);
            net.wait(Duration::from_secs(5));
            if net.raw[raw].closed {
                cut_at = Some(net.now.duration_since(start));
                break;
            }
        }
        assert_eq!(cut_at, Some(Duration::from_secs(60)), "{name}");
        assert_eq!(
            condition_sent(&net, raw).as_deref(),
            Some("connection-timeout"),
            "{name}"
        );
        let text = error_text_sent(&net, raw).unwrap_or_default();
        assert!(
            text.contains("not established within 60 s (stream_establishment_timeout)"),
            "{name}: {text}"
        );
    }
}

#[test]
fn a_peer_trickling_a_tls_handshake_is_cut_at_the_establishment_timeout() {
    let pki = Pki::new();
    let mut net = Net::new();
    net.add_gateway(
        "B",
        config(B, A, TLS_REQUIRED),
        Some(pki.context(B, &Cert::Good)),
        2,
    );
    let start = net.now;
    let raw = net.raw_connect(0);
    net.raw_send(raw, &header(A, B));
    net.raw_send(raw, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    net.settle();
    assert!(net.raw_received(raw).contains("<proceed"));
    // A TLS record header announcing 512 bytes of ClientHello, then a byte at a time.
    net.raw_send_bytes(raw, b"\x16\x03\x01\x02\x00\x01");
    let mut cut_at = None;
    for _ in 0..40 {
        net.raw_send_bytes(raw, b"\x00");
        net.wait(Duration::from_secs(5));
        if net.raw[raw].closed {
            cut_at = Some(net.now.duration_since(start));
            break;
        }
    }
    assert_eq!(
        cut_at,
        Some(Duration::from_secs(60)),
        "{}",
        net.transcript_text()
    );
    assert!(net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Failed { condition, .. } if condition == "connection-timeout"
    )));
}

// ---- 3. XML limits and restrictions ---------------------------------------------------

/// A message from the authenticated a.test whose payload nests `depth` elements in all.
fn nested(depth: usize) -> String {
    let inner = depth - 2;
    format!(
        "<message from='u@a.test' to='bob@b.test'><x xmlns='urn:example:deep'>{}{}</x></message>",
        "<a>".repeat(inner),
        "</a>".repeat(inner)
    )
}

#[test]
fn an_over_deep_stanza_is_refused_with_policy_violation() {
    let (mut net, raw) = authenticated_raw_peer();
    net.raw_send(raw, &nested(32));
    net.settle();
    assert_eq!(net.delivered.len(), 1, "32 levels are within the limit");
    net.delivered.clear();
    net.raw_send(raw, &nested(33));
    net.settle();
    refused(&net, raw, "policy-violation", "33 levels");
    let text = error_text_sent(&net, raw).unwrap_or_default();
    assert!(text.contains("nested deeper than 32"), "{text}");

    // Refused as the 33rd level opens, not once the stanza is complete or huge.
    let (mut net, raw) = authenticated_raw_peer();
    net.raw_send(
        raw,
        &format!(
            "<message from='u@a.test' to='bob@b.test'>{}",
            "<a>".repeat(40)
        ),
    );
    net.settle();
    refused(&net, raw, "policy-violation", "an unfinished deep stanza");
}

#[test]
fn too_many_attributes_are_refused() {
    let (mut net, raw) = authenticated_raw_peer();
    let attrs: String = (0..65).map(|i| format!(" a{i}='v'")).collect();
    net.raw_send(
        raw,
        &format!(
            "<message from='u@a.test' to='bob@b.test'><x xmlns='urn:example'{attrs}/></message>"
        ),
    );
    net.settle();
    refused(&net, raw, "policy-violation", "65 attributes");
}

const LAUGHS: &str = "<!DOCTYPE lolz [<!ENTITY lol 'lol'>\
    <!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>\
    <!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>\
    <!ENTITY lol4 '&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;'>\
    <!ENTITY lol9 '&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;'>]>";

#[test]
fn entity_expansion_and_dtds_are_refused() {
    // Billion laughs before the stream header.
    let mut net = Net::new();
    net.add_gateway("B", config(B, A, TCP_DIALBACK), None, 2);
    let raw = net.raw_connect(0);
    net.raw_send(raw, &format!("<?xml version='1.0'?>{LAUGHS}"));
    net.settle();
    refused(&net, raw, "restricted-xml", "a DTD before the header");

    // ...and on an authenticated stream: between stanzas, inside one, and the
    // entities it would have declared, in text and in an attribute.
    for (name, input) in [
        ("a DTD between stanzas", LAUGHS.to_owned()),
        (
            "a DTD inside a stanza",
            format!(
                "<message from='u@a.test' to='bob@b.test'>{LAUGHS}<body>&lol9;</body></message>"
            ),
        ),
        (
            "an undeclared entity in text",
            "<message from='u@a.test' to='bob@b.test'><body>&lol9;</body></message>".to_owned(),
        ),
        (
            "an undeclared entity in an attribute",
            "<message from='u@a.test' to='bob@b.test' id='&lol9;'><body>x</body></message>"
                .to_owned(),
        ),
        (
            "an external entity",
            "<message from='u@a.test' to='bob@b.test'><body>&xxe;</body></message>".to_owned(),
        ),
    ] {
        let (mut net, raw) = authenticated_raw_peer();
        net.raw_send(raw, &input);
        net.settle();
        refused(&net, raw, "restricted-xml", name);
    }

    // The five predefined entities and character references are plain XML.
    let (mut net, raw) = authenticated_raw_peer();
    net.raw_send(
        raw,
        "<message from='u@a.test' to='bob@b.test'><body>&lt;&amp;&gt;&apos;&quot;&#233;&#x1F642;</body></message>",
    );
    net.settle();
    let body = net
        .delivered
        .first()
        .and_then(|(_, el)| el.find(ns::SERVER, "body"))
        .map(|b| b.text_content());
    assert_eq!(body.as_deref(), Some("<&>'\"é🙂"));
}

#[test]
fn invalid_utf8_is_refused_and_nothing_is_delivered() {
    let cases: [(&str, &[&[u8]]); 6] = [
        (
            "a stray byte in text",
            &[b"<message from='u@a.test' to='bob@b.test'><body>\xff</body></message>"],
        ),
        (
            "an overlong '/' in an attribute",
            &[b"<message from='u@a.test' to='bob@b.test' id='\xc0\xaf'><body>x</body></message>"],
        ),
        (
            "a UTF-16 surrogate",
            &[b"<message from='u@a.test' to='bob@b.test'><body>\xed\xa0\x80</body></message>"],
        ),
        (
            "a truncated sequence",
            &[b"<message from='u@a.test' to='bob@b.test'><body>\xe2\x82</body></message>"],
        ),
        (
            "a lead byte ending one chunk, ASCII starting the next",
            &[
                b"<message from='u@a.test' to='bob@b.test'><body>caf\xc3",
                b"(</body></message>",
            ],
        ),
        (
            "a bad name",
            &[b"<message from='u@a.test' to='bob@b.test'><b\xffdy>x</b\xffdy></message>"],
        ),
    ];
    for (name, chunks) in cases {
        let (mut net, raw) = authenticated_raw_peer();
        for c in chunks {
            net.raw_send_bytes(raw, c);
            net.settle();
        }
        refused(&net, raw, "not-well-formed", name);
    }

    // A valid character split across chunks arrives whole.
    let (mut net, raw) = authenticated_raw_peer();
    net.raw_send_bytes(
        raw,
        b"<message from='u@a.test' to='bob@b.test'><body>caf\xc3",
    );
    net.settle();
    net.raw_send_bytes(raw, b"\xa9 \xf0\x9f");
    net.settle();
    net.raw_send_bytes(raw, b"\x99\x82</body></message>");
    net.settle();
    let body = net
        .delivered
        .first()
        .and_then(|(_, el)| el.find(ns::SERVER, "body"))
        .map(|b| b.text_content());
    assert_eq!(body.as_deref(), Some("café 🙂"));

    // Before authentication, in the stream header.
    let mut net = Net::new();
    net.add_gateway("B", config(B, A, TCP_DIALBACK), None, 2);
    let raw = net.raw_connect(0);
    let (before, after) = header(A, B)
        .split_once("from='a.test'")
        .map(|(x, y)| (x.to_owned(), y.to_owned()))
        .expect("the header names a.test");
    let bytes = [before.as_bytes(), b"from='a.\xfetest'", after.as_bytes()].concat();
    net.raw_send_bytes(raw, &bytes);
    net.settle();
    refused(&net, raw, "not-well-formed", "a bad byte in the header");
}

// ---- 5. STARTTLS stripped ----------------------------------------------------------

const TLS_REQUIRED: Negotiation = Negotiation {
    tls: TlsMode::Required,
    sasl: SaslMode::Optional,
    dialback: true,
};

/// A (node 0) wants b.test with tls=required; b.test resolves to a host the test
/// speaks for, as a man in the middle would. Returns the net and that raw peer,
/// after A's local user has queued two messages.
fn a_toward_a_man_in_the_middle() -> (Net, usize) {
    let pki = Pki::new();
    let mut net = Net::new();
    net.add_gateway(
        "A",
        config(A, B, TLS_REQUIRED),
        Some(pki.context(A, &Cert::Good)),
        1,
    );
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(0, B, vec![hole]);
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "secret one"));
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "secret two"));
    net.settle();
    let mitm = net.raw.len() - 1;
    (net, mitm)
}

#[test]
fn stripped_starttls_toward_a_tls_required_partner_fails_the_stream() {
    let (mut net, mitm) = a_toward_a_man_in_the_middle();
    net.raw_send(
        mitm,
        &header(B, A).replace("to='a.test'", "to='a.test' id='mitm'"),
    );
    // The features as the partner sent them, less <starttls/>.
    net.raw_send(
        mitm,
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
    );
    net.run();
    let sent = net.raw_received(mitm);
    assert!(
        !sent.contains("secret") && !sent.contains("<db:result"),
        "nothing goes out in plaintext: {sent}"
    );
    assert_eq!(
        condition_sent(&net, mitm).as_deref(),
        Some("policy-violation")
    );
    let text = error_text_sent(&net, mitm).unwrap_or_default();
    assert!(
        text.contains("b.test does not offer STARTTLS")
            && text.contains("tls=required sasl=optional dialback=true"),
        "{text}"
    );
    assert!(net.raw[mitm].closed);
    assert!(net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Failed { by: By::Us, condition, .. } if condition == "policy-violation"
    )));
    let bounced: Vec<String> = net
        .delivered
        .iter()
        .filter(|(n, el)| n == "A" && el.get_attr("type") == Some("error"))
        .map(|(_, el)| el.to_xml(ns::SERVER))
        .collect();
    assert_eq!(
        bounced.len(),
        2,
        "both queued messages come back: {bounced:?}"
    );
    assert!(bounced[0].contains("secret one") || bounced[0].contains("to='alice@a.test'"));
    let _g = snapshots_in("hardening");
    insta::assert_snapshot!("starttls_stripped_initiator", net.transcript_text());
}

#[test]
fn a_refused_starttls_is_not_retried_in_plaintext() {
    let (mut net, mitm) = a_toward_a_man_in_the_middle();
    net.raw_send(
        mitm,
        &header(B, A).replace("to='a.test'", "to='a.test' id='mitm'"),
    );
    net.raw_send(
        mitm,
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    );
    net.settle();
    assert!(net.raw_received(mitm).contains("<starttls"));
    net.raw_send(mitm, "<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
    net.run();
    let sent = net.raw_received(mitm);
    assert!(
        !sent.contains("secret") && !sent.contains("<db:result"),
        "{sent}"
    );
    assert!(net.raw[mitm].closed);
    let bounces = net
        .delivered
        .iter()
        .filter(|(n, el)| n == "A" && el.get_attr("type") == Some("error"))
        .count();
    assert_eq!(bounces, 2);
    assert!(
        !net.transcript_text()
            .contains("connects to b.test at 127.0.0.66:5269 (#3"),
        "no second connection in plaintext: {}",
        net.transcript_text()
    );
}

#[test]
fn stripped_starttls_on_the_dialback_verify_connection_is_refused() {
    // A authenticates to B by dialback over TLS; B asks a.test's authoritative
    // server about the key, but that connection reaches a man in the middle who
    // offers no STARTTLS. B's settings for a.test say tls=required: B must not ask,
    // or believe an answer, in plaintext.
    let pki = Pki::new();
    let db_over_tls = Negotiation {
        tls: TlsMode::Required,
        sasl: SaslMode::NotSupported,
        dialback: true,
    };
    let mut net = pair_net(&pki, db_over_tls, db_over_tls, &PairSetup::default());
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(1, A, vec![hole]);
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "hi"));
    net.settle();
    let mitm = net.raw.len() - 1;
    assert!(
        net.raw_received(mitm).contains("from='b.test' to='a.test'"),
        "B opened its verify connection: {}",
        net.transcript_text()
    );
    net.raw_send(
        mitm,
        &header(A, B).replace("to='b.test'", "to='b.test' id='v1'"),
    );
    net.raw_send(
        mitm,
        "<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    );
    net.settle();
    let sent = net.raw_received(mitm);
    assert!(!sent.contains("<db:verify"), "no key in plaintext: {sent}");
    assert_eq!(
        condition_sent(&net, mitm).as_deref(),
        Some("policy-violation")
    );
    let text = error_text_sent(&net, mitm).unwrap_or_default();
    assert!(
        text.contains("authoritative server of a.test does not offer STARTTLS")
            && text.contains("tls=required"),
        "{text}"
    );
    // Whatever the man in the middle says now is not heard.
    net.raw_send(
        mitm,
        "<db:verify from='a.test' to='b.test' id='x' type='valid'/>",
    );
    net.run();
    assert!(!net.delivered.iter().any(|(n, _)| n == "B"));
    assert!(
        net.delivered
            .iter()
            .any(|(n, el)| n == "A" && el.get_attr("type") == Some("error")),
        "A's message comes back: {}",
        net.transcript_text()
    );
    let _g = snapshots_in("hardening");
    insta::assert_snapshot!("starttls_stripped_verify_connection", net.transcript_text());
}

#[test]
fn a_peer_that_skips_required_starttls_cannot_send_stanzas() {
    let pki = Pki::new();
    let mut net = Net::new();
    net.add_gateway(
        "B",
        config(B, A, TLS_REQUIRED),
        Some(pki.context(B, &Cert::Good)),
        2,
    );
    let raw = net.raw_connect(0);
    net.raw_send(raw, &header(A, B));
    net.settle();
    assert!(net.raw_received(raw).contains("<required/>"));
    net.raw_send(
        raw,
        "<message from='u@a.test' to='bob@b.test'><body>in the clear</body></message>",
    );
    net.settle();
    refused(&net, raw, "policy-violation", "a stanza without STARTTLS");
    let text = error_text_sent(&net, raw).unwrap_or_default();
    assert!(text.contains("TLS is required for a.test"), "{text}");
}

// ---- 7 and 8. SIP framing and sizes -----------------------------------------------

fn sip_request(headers_extra: &str, content_length: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.50:5070;branch=z9hG4bKh1\r\n\
         From: <sip:alice@sip.test>;tag=a1\r\nTo: <sip:romeo@xmpp.test>\r\nCall-ID: h1\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain\r\n{headers_extra}Content-Length: {content_length}\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

fn bodies_delivered(w: &isthmus_tests::sipworld::World) -> Vec<String> {
    xmpp_user_got(w)
        .iter()
        .filter_map(|el| el.find(ns::SERVER, "body").map(|b| b.text_content()))
        .collect()
}

#[test]
fn udp_content_length_that_lies() {
    // Larger than the datagram: 400 (RFC 3261 §18.3).
    let mut w = world(PartnerType::Federated, 200);
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request("", "50", b"short"));
    w.net.run();
    let r = responses(&w);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, 400);
    assert!(
        r[0].1.contains("Content-Length 50 but only 5 body bytes"),
        "{}",
        r[0].1
    );
    assert!(xmpp_user_got(&w).is_empty());

    // Smaller: the bytes past it are discarded (RFC 3261 §18.3), the message is good.
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send_raw(
        w.proxy,
        0,
        &sip_request("", "5", b"hello, and more that is not body"),
    );
    w.net.run();
    assert_eq!(bodies_delivered(&w), ["hello"]);
    assert_eq!(responses(&w)[0].0, 200);

    // Absurd: refused at once with a size error, not allocated.
    let mut w = world(PartnerType::Federated, 200);
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request("", "999999999", b"x"));
    w.net.sip_send_raw(
        w.proxy,
        0,
        &sip_request("", "99999999999999999999999", b"x"),
    );
    w.net.sip_send_raw(w.proxy, 0, &sip_request("", "-1", b"x"));
    w.net.run();
    let r = responses(&w);
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[0].0, 413, "{r:?}");
    assert!(r[0].1.contains("999999999"), "{}", r[0].1);
    assert_eq!(r[1].0, 413, "more digits than any size: {r:?}");
    assert_eq!(r[2].0, 400, "{r:?}");
    assert!(r[2].1.contains("is not a number"), "{}", r[2].1);
    assert!(xmpp_user_got(&w).is_empty());

    // A response whose Content-Length lies is dropped, never answered.
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send_raw(
        w.proxy,
        0,
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\nFrom: <sip:a@sip.test>;tag=1\r\nTo: <sip:b@xmpp.test>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 40\r\n\r\nab",
    );
    w.net.run();
    assert!(w.net.sip_peers[w.proxy].received.is_empty());
}

#[test]
fn udp_oversized_headers() {
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long = format!("Subject: {}\r\n", "s".repeat(9000));
    let huge_head: String = (0..40)
        .map(|i| format!("X-Big{i}: {}\r\n", "h".repeat(4000)))
        .collect();
    let mut w = world(PartnerType::Federated, 200);
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request(&many, "1", b"x"));
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request(&long, "1", b"x"));
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request(&huge_head, "1", b"x"));
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request("", "70000", &vec![b'b'; 70000]));
    w.net.run();
    let r = responses(&w);
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[0].0, 513, "{}", r[0].1);
    assert!(r[0].1.contains("more than 100 headers"), "{}", r[0].1);
    assert_eq!(r[1].0, 513, "{}", r[1].1);
    assert!(r[1].1.contains("longer than 8192 bytes"), "{}", r[1].1);
    assert_eq!(r[2].0, 513, "{}", r[2].1);
    assert!(r[2].1.contains("headers of more than"), "{}", r[2].1);
    assert_eq!(r[3].0, 413, "{}", r[3].1);
    assert!(xmpp_user_got(&w).is_empty());
}

/// The SIP world with a SIP-over-TCP connection from the proxy to isthmus.
fn sip_stream() -> (isthmus_tests::sipworld::World, usize) {
    let mut w = world(PartnerType::Federated, 200);
    let s = w.net.sip_connect(0);
    (w, s)
}

fn stream_closed_because(w: &isthmus_tests::sipworld::World, s: usize, why: &str) {
    assert!(
        w.net.raw[s].closed,
        "the connection is closed: {}",
        w.net.transcript_text()
    );
    assert!(
        w.net.events.iter().any(|(_, e)| matches!(
            e,
            Event::Ignored { what, .. } if what.contains("SIP connection closed") && what.contains(why)
        )),
        "closed because {why}: {}",
        w.net.transcript_text()
    );
    assert!(xmpp_user_got(w).is_empty());
}

#[test]
fn stream_content_length_that_lies() {
    // A good message on the stream first: the framing works.
    let (mut w, s) = sip_stream();
    let good = String::from_utf8(sip_request("", "5", b"hello")).expect("ASCII");
    w.net.raw_send(s, &good);
    w.net.run();
    assert_eq!(bodies_delivered(&w), ["hello"]);

    // A huge value is refused on its headers alone, with no body sent.
    let (mut w, s) = sip_stream();
    let head = String::from_utf8(sip_request("", "999999999", b"")).expect("ASCII");
    w.net.raw_send(s, &head);
    w.net.settle();
    stream_closed_because(&w, s, "body of 999999999 bytes exceeds 65536");

    // More than what arrives, within the limit: the message waits, bounded by the
    // body limit, and completes when the rest comes.
    let (mut w, s) = sip_stream();
    let head = String::from_utf8(sip_request("", "1000", b"")).expect("ASCII");
    w.net.raw_send(s, &head);
    w.net.raw_send(s, "start");
    w.net.settle();
    assert!(!w.net.raw[s].closed);
    assert!(xmpp_user_got(&w).is_empty());
    w.net.raw_send(s, &"y".repeat(995));
    w.net.run();
    assert_eq!(bodies_delivered(&w), [format!("start{}", "y".repeat(995))]);

    // Not a number.
    let (mut w, s) = sip_stream();
    let head = String::from_utf8(sip_request("", "lots", b"")).expect("ASCII");
    w.net.raw_send(s, &head);
    w.net.settle();
    stream_closed_because(&w, s, "is not a number");
}

#[test]
fn stream_oversized_headers_close_the_connection() {
    // Headers that never end are cut once past the header limit, not buffered on.
    let (mut w, s) = sip_stream();
    w.net.raw_send(
        s,
        "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.50:5070;branch=z9hG4bKs\r\n",
    );
    let mut sent = 0;
    while !w.net.raw[s].closed && sent < 2_000_000 {
        let line = format!("X-Filler: {}\r\n", "f".repeat(1000));
        sent += line.len();
        w.net.raw_send(s, &line);
        w.net.settle();
    }
    stream_closed_because(&w, s, "no end of headers within");
    let limits = SipLimits::default();
    assert!(sent <= limits.max_head + 1024, "cut after {sent} bytes");

    // One header line that never ends.
    let (mut w, s) = sip_stream();
    w.net
        .raw_send(s, "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\nSubject: ");
    let mut sent = 0;
    while !w.net.raw[s].closed && sent < 2_000_000 {
        w.net.raw_send(s, &"s".repeat(1000));
        sent += 1000;
        w.net.settle();
    }
    stream_closed_because(&w, s, "longer than 8192 bytes");
    assert!(sent <= limits.max_line + 1000, "cut after {sent} bytes");

    // Too many headers, and a long line, in complete messages.
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (mut w, s) = sip_stream();
    w.net.raw_send(
        s,
        &String::from_utf8(sip_request(&many, "1", b"x")).expect("ASCII"),
    );
    w.net.settle();
    stream_closed_because(&w, s, "more than 100 headers");
    let (mut w, s) = sip_stream();
    let long = format!("Subject: {}\r\n", "s".repeat(9000));
    w.net.raw_send(
        s,
        &String::from_utf8(sip_request(&long, "1", b"x")).expect("ASCII"),
    );
    w.net.settle();
    stream_closed_because(&w, s, "longer than 8192 bytes");
}

#[test]
fn characters_xml_does_not_allow_are_refused_inbound_and_never_written() {
    for (name, body) in [
        ("a reference to U+0001", "&#x1;".to_owned()),
        ("a reference to U+FFFE", "&#xFFFE;".to_owned()),
        ("a reference to NUL", "&#0;".to_owned()),
        ("a raw U+0001", "\u{1}".to_owned()),
        ("a raw U+FFFF", "\u{FFFF}".to_owned()),
    ] {
        let (mut net, raw) = authenticated_raw_peer();
        net.raw_send(
            raw,
            &format!("<message from='u@a.test' to='bob@b.test'><body>{body}</body></message>"),
        );
        net.settle();
        refused(&net, raw, "not-well-formed", name);
    }
    // A SIP user's text with a control character reaches the XMPP user, and the
    // stream to the partner survives it.
    let mut w = world(PartnerType::Federated, 200);
    w.net
        .sip_send_raw(w.proxy, 0, &sip_request("", "7", b"a\x01b\x0cc\td"));
    w.net.run();
    assert_eq!(bodies_delivered(&w), ["a\u{FFFD}b\u{FFFD}c\td"]);
    assert_eq!(responses(&w)[0].0, 200);
    assert!(!w.net.transcript_text().contains("not-well-formed"));
}

/// The SIP responses a raw SIP-over-TCP peer received, in order.
fn stream_responses(w: &isthmus_tests::sipworld::World, s: usize) -> Vec<SipMessage> {
    let got = w.net.raw[s].received.clone();
    let mut d = isthmus_core::sip::StreamDecoder::new(SipLimits::default());
    d.push(&got);
    let mut out = Vec::new();
    while let Ok(Some(m)) = d.next_message() {
        out.push(m);
    }
    out
}

#[test]
fn stream_framing_errors_are_answered_before_the_close() {
    let answered = |w: &isthmus_tests::sipworld::World, s: usize, code: u16, why: &str| {
        let r = stream_responses(w, s);
        assert_eq!(r.len(), 1, "one answer: {}", w.net.transcript_text());
        let StartLine::Response { code: c, reason } = &r[0].start else {
            panic!("a response");
        };
        assert_eq!(*c, code, "{reason}");
        assert!(reason.contains(why), "{reason} should say {why}");
        // Enough of the request came back for the client to match it (RFC 3261 §8.2.6.2).
        assert_eq!(r[0].call_id(), Some("h1"));
        assert_eq!(r[0].header("CSeq"), Some("1 MESSAGE"));
        assert!(r[0]
            .header("Via")
            .is_some_and(|v| v.contains("branch=z9hG4bKh1")));
    };
    // An absurd Content-Length: 413 on the headers alone (§21.4.11).
    let (mut w, s) = sip_stream();
    let head = String::from_utf8(sip_request("", "999999999", b"")).expect("ASCII");
    w.net.raw_send(s, &head);
    w.net.settle();
    answered(&w, s, 413, "body of 999999999 bytes exceeds 65536");
    stream_closed_because(&w, s, "body of 999999999 bytes exceeds 65536");

    // Too many headers: 513 (§21.5.13).
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (mut w, s) = sip_stream();
    w.net.raw_send(
        s,
        &String::from_utf8(sip_request(&many, "1", b"x")).expect("ASCII"),
    );
    w.net.settle();
    answered(&w, s, 513, "more than 100 headers");
    stream_closed_because(&w, s, "more than 100 headers");

    // Headers that never end, after the ones a response needs: 513 from the
    // complete lines read so far.
    let (mut w, s) = sip_stream();
    let head = String::from_utf8(sip_request("", "0", b"")).expect("ASCII");
    let unfinished = head.trim_end_matches("Content-Length: 0\r\n\r\n");
    w.net.raw_send(s, unfinished);
    while !w.net.raw[s].closed {
        w.net
            .raw_send(s, &format!("X-Filler: {}\r\n", "f".repeat(1000)));
        w.net.settle();
    }
    answered(&w, s, 513, "no end of headers within");
    stream_closed_because(&w, s, "no end of headers within");

    // A malformed request line: 400.
    let (mut w, s) = sip_stream();
    let good = String::from_utf8(sip_request("", "1", b"x")).expect("ASCII");
    let bad = good.replacen("MESSAGE sip:romeo@xmpp.test SIP/2.0", "MESSAGE", 1);
    w.net.raw_send(s, &bad);
    w.net.settle();
    answered(&w, s, 400, "Bad Request");
    stream_closed_because(&w, s, "malformed");

    // What cannot be answered is not: a request without the headers a response
    // needs, and a response.
    let (mut w, s) = sip_stream();
    w.net.raw_send(
        s,
        "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.50:5070;branch=z9hG4bKs\r\nContent-Length: 999999999\r\n\r\n",
    );
    w.net.settle();
    assert!(stream_responses(&w, s).is_empty());
    stream_closed_because(&w, s, "missing");
    let (mut w, s) = sip_stream();
    let response = "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKx\r\nFrom: <sip:a@sip.test>;tag=1\r\nTo: <sip:b@xmpp.test>;tag=2\r\nCall-ID: r1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 999999999\r\n\r\n";
    w.net.raw_send(s, response);
    w.net.settle();
    assert!(w.net.raw[s].received.is_empty());
    stream_closed_because(&w, s, "exceeds 65536");
}

#[test]
fn stream_connections_that_stall_are_closed() {
    let inactivity = Config::default().gateway.stream_inactivity_timeout;
    // Connects and says nothing: closed once idle for stream_inactivity_timeout.
    let (mut w, s) = sip_stream();
    w.net.wait(inactivity - Duration::from_secs(1));
    assert!(!w.net.raw[s].closed);
    w.net.run_for(Duration::from_secs(2));
    stream_closed_because(&w, s, &format!("idle for {} s", inactivity.as_secs()));

    // Stops mid-message: closed 32 s after the message began (64·T1), long
    // before the idle bound.
    let (mut w, s) = sip_stream();
    let msg = String::from_utf8(sip_request("", "5", b"hello")).expect("ASCII");
    let (first, rest) = msg.split_at(60);
    w.net.raw_send(s, first);
    w.net.wait(Duration::from_secs(31));
    assert!(!w.net.raw[s].closed);
    w.net.run_for(Duration::from_secs(2));
    stream_closed_because(&w, s, "left unfinished for 32 s");

    // A message finished in time, and CRLF keep-alives (RFC 5626 §3.5.1) every
    // 100 s: the connection stays open well past either bound.
    let (mut w, s) = sip_stream();
    w.net.raw_send(s, first);
    w.net.wait(Duration::from_secs(20));
    w.net.raw_send(s, rest);
    w.net.settle();
    assert_eq!(bodies_delivered(&w), ["hello"]);
    for _ in 0..10 {
        w.net.wait(Duration::from_secs(100));
        w.net.raw_send(s, "\r\n\r\n");
    }
    w.net.settle();
    assert!(!w.net.raw[s].closed, "{}", w.net.transcript_text());
    // Then silence: closed at the idle bound after the last keep-alive.
    w.net.run_for(inactivity + Duration::from_secs(1));
    assert!(w.net.raw[s].closed);
    assert!(w.net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Ignored { what, .. } if what.contains("SIP connection closed: idle for")
    )));
}

/// A reload that shortens `stream_inactivity_timeout` applies to the streams and
/// SIP connections already open, not only to new ones.
#[test]
fn a_shorter_inactivity_timeout_applies_to_open_streams_after_a_reload() {
    let shorter = Duration::from_secs(60);
    // A partner stream, idle after one message.
    let pki = Pki::new();
    let mut net = pair_net(&pki, TCP_DIALBACK, TCP_DIALBACK, &PairSetup::default());
    net.send_stanza(0, message("alice@a.test", "bob@b.test", "hi"));
    net.settle();
    assert_eq!(net.delivered.len(), 1);
    let mut reloaded = config(A, B, TCP_DIALBACK);
    reloaded.gateway.stream_inactivity_timeout = shorter;
    net.gateway(0).set_config(reloaded);
    net.run_for(shorter + Duration::from_secs(2));
    assert!(
        net.transcript_text()
            .contains("no traffic with b.test for 60 s (stream_inactivity_timeout)"),
        "{}",
        net.transcript_text()
    );

    // A SIP connection, idle from the start.
    let (mut w, s) = sip_stream();
    let mut reloaded = w.net.gateway(0).config().clone();
    reloaded.gateway.stream_inactivity_timeout = shorter;
    w.net.gateway(0).set_config(reloaded);
    w.net.run_for(shorter + Duration::from_secs(2));
    stream_closed_because(&w, s, "idle for 60 s");
}
