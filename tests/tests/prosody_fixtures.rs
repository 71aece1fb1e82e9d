//! Real traffic captured from Prosody 0.12 (`../shared/fixtures/xmpp/`): every file
//! reads, in random chunkings, into the element sequence its manifest lists; and the
//! gateway, fed the side it would receive, negotiates the way Prosody did.

use std::path::{Path, PathBuf};

use isthmus_core::config::{Config, Method, Negotiation, Partner, SaslMode, TlsMode, XmlLimits};
use isthmus_core::gateway::{Direction, Event};
use isthmus_core::rng::Rng;
use isthmus_core::s2s::tls::{TlsContext, WallClock};
use isthmus_core::xml::{ns, Element, StreamEvent, StreamReader};
use isthmus_tests::pki::{CertSpec, TestCa};
use isthmus_tests::scenario::message;
use isthmus_tests::sim::{Net, START_UNIX};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/xmpp")
}

fn read(set: &str, file: &str) -> Vec<u8> {
    let path = fixtures().join(set).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn label(el: &Element) -> String {
    let prefix = match &*el.ns {
        ns::STREAM => "stream:",
        ns::DIALBACK => "db:",
        _ => "",
    };
    match el.get_attr("type") {
        Some(t) => format!("{prefix}{}[type={t}]", el.name),
        None => format!("{prefix}{}", el.name),
    }
}

/// Reads a whole direction in the given chunk sizes into manifest labels, restarting
/// the stream where STARTTLS and SASL restart it.
fn labels(bytes: &[u8], rng: Option<&mut Rng>) -> (Vec<String>, Vec<Element>) {
    let mut reader = StreamReader::new(XmlLimits::default());
    let mut out = Vec::new();
    let mut elements = Vec::new();
    let mut rest = bytes;
    let mut rng = rng;
    while !rest.is_empty() {
        let n = match rng.as_mut() {
            Some(r) => (r.next_u64() % 64 + 1) as usize,
            None => 1,
        };
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        reader.push(chunk);
        loop {
            match reader.next_event() {
                Ok(Some(StreamEvent::Header(_))) => out.push("<stream:stream>".to_owned()),
                Ok(Some(StreamEvent::End)) => out.push("</stream:stream>".to_owned()),
                Ok(Some(StreamEvent::Element(el))) => {
                    out.push(label(&el));
                    if matches!(&*el.name, "starttls" | "proceed" | "auth" | "success") {
                        reader.restart();
                    }
                    elements.push(el);
                }
                Ok(None) => break,
                Err(e) => panic!("after {out:?}: {e}"),
            }
        }
    }
    (out, elements)
}

/// Plays Prosody's side of TLS on raw peer `raw`: runs the handshake over the
/// simulated connection (the gateway's TLS bytes start at `seen`), then writes
/// `payload` inside TLS. Returns the cleartext the gateway wrote inside TLS.
fn play_tls(
    net: &mut Net,
    raw: usize,
    tls: &mut rustls::Connection,
    mut seen: usize,
    payload: &[u8],
) -> String {
    let mut cleartext = Vec::new();
    let mut wrote = false;
    for _ in 0..20 {
        let incoming = net.raw[raw].received[seen..].to_vec();
        seen = net.raw[raw].received.len();
        let mut rd = incoming.as_slice();
        while !rd.is_empty() {
            tls.read_tls(&mut rd).expect("read_tls");
            tls.process_new_packets().expect("TLS from the gateway");
        }
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = std::io::Read::read(&mut tls.reader(), &mut buf) {
            if n == 0 {
                break;
            }
            cleartext.extend_from_slice(&buf[..n]);
        }
        if !tls.is_handshaking() && !wrote {
            std::io::Write::write_all(&mut tls.writer(), payload).expect("write");
            wrote = true;
        }
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out).expect("write_tls");
        }
        if !out.is_empty() {
            net.raw_send_bytes(raw, &out);
        }
        net.settle();
    }
    assert!(wrote, "the TLS handshake did not complete");
    String::from_utf8_lossy(&cleartext).into_owned()
}

#[test]
fn every_capture_reads_into_its_manifest_elements_in_any_chunking() {
    let mut files = 0;
    for set in [
        "prosody-prosody-dialback-plain",
        "prosody-prosody-tls-external",
    ] {
        let manifest: serde_json::Value =
            serde_json::from_slice(&read(set, "manifest.json")).expect("manifest.json");
        let entries = manifest["files"].as_object().expect("files");
        for (name, entry) in entries {
            let Some(expected) = entry["elements"].as_array() else {
                continue;
            };
            if !name.ends_with(".xml") {
                continue;
            }
            let expected: Vec<String> = expected
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            let bytes = read(set, name);
            assert_eq!(
                labels(&bytes, None).0,
                expected,
                "{set}/{name} byte by byte"
            );
            for seed in 0..50 {
                let mut rng = Rng::new(seed);
                assert_eq!(
                    labels(&bytes, Some(&mut rng)).0,
                    expected,
                    "{set}/{name} seed {seed}"
                );
            }
            files += 1;
        }
    }
    assert_eq!(
        files, 12,
        "4 plain files, 4 pre-TLS and 4 decrypted TLS files"
    );
}

#[test]
fn capture_contents_survive_parsing() {
    let (_, els) = labels(
        &read("prosody-prosody-dialback-plain", "conn1-a-to-b.xml"),
        None,
    );
    let chat = els.iter().find(|e| e.name == "message").expect("message");
    assert_eq!(
        chat.find(ns::SERVER, "body")
            .map(|b| b.text_content())
            .as_deref(),
        Some("Grüße aus A – naïve café, 日本語, 🎉 & \"Anführungszeichen\" <kein tag> it's")
    );
    let key = els
        .iter()
        .find(|e| e.is(ns::DIALBACK, "result"))
        .expect("db:result");
    assert_eq!(key.text_content().len(), 64);
    let (_, els) = labels(
        &read("prosody-prosody-tls-external", "conn1-a-to-b.decrypted.xml"),
        None,
    );
    let auth = els.iter().find(|e| e.is(ns::SASL, "auth")).expect("auth");
    assert_eq!(auth.text_content(), "eG1wcC1hLnRlc3Q=");
    assert_eq!(auth.get_attr("mechanism"), Some("EXTERNAL"));
}

fn config(served: &str, partner: &str, row: Negotiation) -> Config {
    let mut c = Config::default();
    c.gateway.served_domains = vec![served.to_owned()];
    c.gateway.dialback_secret = Some("isthmus fixture secret".into());
    let mut p = Partner::new(partner);
    p.negotiation = row;
    c.partners.push(p);
    c
}

/// Prosody's TLS run used certificates only (`s2s_secure_auth = true`).
const SASL_ONLY: Negotiation = Negotiation {
    tls: TlsMode::Required,
    sasl: SaslMode::Required,
    dialback: false,
};

fn tls_context(ca: &TestCa, domain: &str) -> TlsContext {
    TlsContext::new(
        ca.issue(&CertSpec::for_domain(domain)).identity(),
        vec![ca.cert_der.clone()],
        WallClock::new(START_UNIX),
    )
    .expect("context")
}

const TCP_DIALBACK: Negotiation = Negotiation {
    tls: TlsMode::NotSupported,
    sasl: SaslMode::NotSupported,
    dialback: true,
};

fn attr_after<'a>(text: &'a str, marker: &str, attr: &str) -> &'a str {
    let from = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {text}"));
    let rest = &text[from..];
    let key = format!("{attr}='");
    let start = rest.find(&key).map(|i| i + key.len()).expect("attribute");
    let end = rest[start..].find('\'').expect("quote");
    &rest[start..start + end]
}

fn split_at_first<'a>(bytes: &'a [u8], marker: &str) -> (&'a [u8], &'a [u8]) {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let i = text.find(marker).expect("marker");
    bytes.split_at(i)
}

#[test]
fn as_receiver_it_answers_prosodys_dialback_like_prosody() {
    let stream = read("prosody-prosody-dialback-plain", "conn1-a-to-b.xml");
    // Prosody sent its stanzas once its key was accepted; replay them then.
    let (negotiation, stanzas) = split_at_first(&stream, "<presence");
    let mut net = Net::new();
    let b = net.add_gateway(
        "isthmus",
        config("xmpp-b.test", "xmpp-a.test", TCP_DIALBACK),
        None,
        7,
    );
    // xmpp-a.test's authoritative server is played by the test.
    let hole: std::net::SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(b, "xmpp-a.test", vec![hole]);
    let prosody = net.raw_connect(b);
    net.raw_send_bytes(prosody, negotiation);
    net.settle();
    let seen = net.raw_received(prosody);
    assert!(
        seen.contains("<stream:features><dialback xmlns='urn:xmpp:features:dialback'>"),
        "{seen}"
    );
    // Prosody's own db:verify asks about a key Prosody B made: not ours, so invalid.
    assert!(
        seen.contains("id='22b77fc6-6b67-4f16-922c-c07f1c3660b6' type='invalid'"),
        "{seen}"
    );
    let authoritative = net.raw.len() - 1;
    net.raw_send(
        authoritative,
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' from='xmpp-a.test' to='xmpp-b.test' id='auth1' version='1.0'>\
         <stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>",
    );
    net.settle();
    let asked = net.raw_received(authoritative);
    let id = attr_after(&asked, "<db:verify", "id").to_owned();
    assert!(
        asked.contains("dfea1a94e0f873e3a9c94526a364758a510d4dfc2931406229569946838b11f2"),
        "{asked}"
    );
    net.raw_send(
        authoritative,
        &format!("<db:verify from='xmpp-a.test' to='xmpp-b.test' id='{id}' type='valid'/>"),
    );
    net.settle();
    assert!(net
        .raw_received(prosody)
        .contains("<db:result from='xmpp-b.test' to='xmpp-a.test' type='valid'/>"));
    net.raw_send_bytes(prosody, stanzas);
    net.settle();
    let delivered: Vec<&Element> = net.delivered.iter().map(|(_, e)| e).collect();
    assert_eq!(
        delivered.iter().filter(|e| e.name == "presence").count(),
        10
    );
    assert_eq!(delivered.iter().filter(|e| e.name == "message").count(), 1);
    assert!(net.raw_received(prosody).ends_with("</stream:stream>"));
    assert!(net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Authenticated {
            direction: Direction::Inbound,
            method: Method::DialbackOverTcp,
            ..
        }
    )));
    insta::assert_snapshot!("prosody_plain_receiver", net.transcript_text());
}

#[test]
fn as_initiator_it_completes_dialback_with_prosodys_answers() {
    let answers = read("prosody-prosody-dialback-plain", "conn1-b-to-a.xml");
    let (features, rest) = split_at_first(&answers, "<db:verify");
    let mut net = Net::new();
    let a = net.add_gateway(
        "isthmus",
        config("xmpp-a.test", "xmpp-b.test", TCP_DIALBACK),
        None,
        9,
    );
    let hole: std::net::SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(a, "xmpp-b.test", vec![hole]);
    net.send_stanza(
        a,
        message("alice@xmpp-a.test", "bob@xmpp-b.test", "hello Prosody"),
    );
    net.settle();
    let prosody = net.raw.len() - 1;
    net.raw_send_bytes(prosody, features);
    net.settle();
    let sent = net.raw_received(prosody);
    // The key is ours (XEP-0185), for the stream id Prosody gave.
    let offered_id = attr_after(
        std::str::from_utf8(features).expect("utf-8"),
        "<stream:stream",
        "id",
    )
    .to_owned();
    assert_eq!(offered_id, "c5a057d0-372c-453f-b9f5-88d768c75190");
    let key = isthmus_core::s2s::dialback::key(
        "isthmus fixture secret",
        "xmpp-b.test",
        "xmpp-a.test",
        &offered_id,
    );
    assert!(
        sent.contains(&format!(
            "<db:result from='xmpp-a.test' to='xmpp-b.test'>{key}</db:result>"
        )),
        "{sent}"
    );
    // Prosody's unsolicited-for-us db:verify answer, then its db:result valid.
    net.raw_send_bytes(prosody, rest);
    net.settle();
    let sent = net.raw_received(prosody);
    assert!(sent.contains("<body>hello Prosody</body>"), "{sent}");
    assert!(net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Authenticated {
            direction: Direction::Outbound,
            method: Method::DialbackOverTcp,
            ..
        }
    )));
    assert_eq!(
        net.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Ignored { .. }))
            .count(),
        1
    );
    assert!(
        sent.ends_with("</stream:stream>"),
        "Prosody closed first; we answer the close"
    );
    insta::assert_snapshot!("prosody_plain_initiator", net.transcript_text());
}

#[test]
fn as_receiver_it_runs_starttls_and_sasl_external_with_prosodys_stream() {
    let pre_tls = read(
        "prosody-prosody-tls-external",
        "conn1-a-to-b.wire-pre-tls.xml",
    );
    let decrypted = read("prosody-prosody-tls-external", "conn1-a-to-b.decrypted.xml");
    let inside_tls = decrypted
        .get(pre_tls.len()..)
        .expect("decrypted starts with the pre-TLS bytes");
    let ca = TestCa::new("fixture CA");
    let ctx = |domain: &str| tls_context(&ca, domain);
    let row = SASL_ONLY;
    let mut net = Net::new();
    let b = net.add_gateway(
        "isthmus",
        config("xmpp-b.test", "xmpp-a.test", row),
        Some(ctx("xmpp-b.test")),
        5,
    );
    let prosody = net.raw_connect(b);
    net.raw_send_bytes(prosody, &pre_tls);
    net.settle();
    let plain = net.raw_received(prosody);
    assert!(
        plain.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{plain}"
    );
    assert!(
        plain.ends_with("<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        "{plain}"
    );
    // Prosody's side of TLS, with a certificate for xmpp-a.test from the same CA;
    // inside TLS, everything Prosody wrote: restart, auth, restart, stanzas, close.
    let mut client =
        rustls::Connection::from(ctx("xmpp-a.test").client("xmpp-b.test").expect("client"));
    let seen = net.raw[prosody].received.len();
    let text = play_tls(&mut net, prosody, &mut client, seen, inside_tls);
    assert!(text.contains("<mechanism>EXTERNAL</mechanism>"), "{text}");
    assert!(
        text.contains("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>"),
        "{text}"
    );
    assert!(text.ends_with("</stream:stream>"), "{text}");
    let delivered: Vec<&Element> = net.delivered.iter().map(|(_, e)| e).collect();
    assert_eq!(
        delivered.iter().filter(|e| e.name == "presence").count(),
        10
    );
    assert_eq!(delivered.iter().filter(|e| e.name == "message").count(), 1);
    assert!(net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Authenticated {
            direction: Direction::Inbound,
            method: Method::SaslExternalOverTls,
            ..
        }
    )));
    insta::assert_snapshot!("prosody_tls_receiver", net.transcript_text());
}

#[test]
fn as_initiator_it_runs_starttls_and_sasl_external_against_prosodys_answers() {
    let pre_tls = read(
        "prosody-prosody-tls-external",
        "conn1-b-to-a.wire-pre-tls.xml",
    );
    let decrypted = read("prosody-prosody-tls-external", "conn1-b-to-a.decrypted.xml");
    let inside_tls = decrypted
        .get(pre_tls.len()..)
        .expect("decrypted starts with the pre-TLS bytes");
    let ca = TestCa::new("fixture CA");
    let ctx = |domain: &str| tls_context(&ca, domain);
    let row = SASL_ONLY;
    let mut net = Net::new();
    let a = net.add_gateway(
        "isthmus",
        config("xmpp-a.test", "xmpp-b.test", row),
        Some(ctx("xmpp-a.test")),
        4,
    );
    let hole: std::net::SocketAddr = ([127, 0, 0, 66], 5269).into();
    net.add_black_hole(hole);
    net.set_dns(a, "xmpp-b.test", vec![hole]);
    net.send_stanza(
        a,
        message("alice@xmpp-a.test", "bob@xmpp-b.test", "hello over TLS"),
    );
    net.settle();
    let prosody = net.raw.len() - 1;
    // Prosody's header, features (STARTTLS required) and <proceed/>, as on the wire.
    net.raw_send_bytes(prosody, &pre_tls);
    net.settle();
    // Our <starttls/>, then (after Prosody's <proceed/>) our ClientHello.
    let starttls = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
    let received = &net.raw[prosody].received;
    let at = received
        .windows(starttls.len())
        .position(|w| w == starttls)
        .expect("the gateway asks for STARTTLS");
    // Inside TLS, everything Prosody wrote: header, EXTERNAL, success, header, features, close.
    let mut server = rustls::Connection::from(ctx("xmpp-b.test").server().expect("server"));
    let text = play_tls(
        &mut net,
        prosody,
        &mut server,
        at + starttls.len(),
        inside_tls,
    );
    assert!(text.contains("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='EXTERNAL'>eG1wcC1hLnRlc3Q=</auth>"), "{text}");
    assert!(text.contains("<body>hello over TLS</body>"), "{text}");
    assert!(text.ends_with("</stream:stream>"), "{text}");
    assert!(net.events.iter().any(|(_, e)| matches!(
        e,
        Event::Authenticated {
            direction: Direction::Outbound,
            method: Method::SaslExternalOverTls,
            ..
        }
    )));
    insta::assert_snapshot!("prosody_tls_initiator", net.transcript_text());
}
