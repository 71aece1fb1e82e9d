//! Real SIP traffic captured from Kamailio 5.6 and PJSIP 2.15 (`../shared/fixtures/sip/`):
//! every message parses and re-serialises to an equivalent message, the TCP stream
//! files frame into exactly the listed messages, every PIDF body parses, and the
//! ill-formed PIDF that PJSIP sent (the 415 case) is refused with a clear error.

use std::path::{Path, PathBuf};

use isthmus_core::sip::pidf::{Pidf, PidfError};
use isthmus_core::sip::{NameAddr, SipLimits, SipMessage, StartLine, StreamDecoder, Via};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sip")
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir().join("manifest.json")).expect("manifest.json"))
        .expect("json")
}

fn message(file: &str) -> SipMessage {
    let bytes = std::fs::read(dir().join(file)).expect(file);
    SipMessage::parse(&bytes, &SipLimits::default()).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// What must survive a round trip: start line, header names (canonical) and values
/// in order, and the body. Content-Length is compared by value, since PJSIP pads it.
fn essence(m: &SipMessage) -> (StartLine, Vec<(String, String)>, Vec<u8>) {
    let headers = m
        .headers()
        .map(|(name, value)| {
            (
                name.to_owned(),
                if name == "Content-Length" {
                    value.trim().to_owned()
                } else {
                    value.to_owned()
                },
            )
        })
        .collect();
    (m.start.clone(), headers, m.body().to_vec())
}

#[test]
fn every_message_parses_and_round_trips() {
    let m = manifest();
    let files = m["files"].as_object().expect("files");
    assert_eq!(files.len(), 106);
    for (name, meta) in files {
        let msg = message(name);
        let first = meta["first_line"].as_str().expect("first_line");
        let start = match &msg.start {
            StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0"),
            StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}"),
        };
        assert_eq!(start, first, "{name}");
        assert_eq!(
            msg.body().len() as u64,
            meta["body_bytes"].as_u64().expect("body_bytes"),
            "{name}"
        );
        if let Some(ct) = meta["content_type"].as_str() {
            assert_eq!(msg.header("Content-Type"), Some(ct), "{name}");
        }
        let again = SipMessage::parse(&msg.to_bytes(), &SipLimits::default()).expect("re-parses");
        assert_eq!(essence(&again), essence(&msg), "{name}");
        // Every address and Via in the capture reads.
        for h in ["From", "To", "Contact"] {
            for v in msg.header_values(h) {
                if v != "*" {
                    NameAddr::parse(&v).unwrap_or_else(|e| panic!("{name} {h}: {e}"));
                }
            }
        }
        for v in msg.header_values("Via") {
            let via = Via::parse(&v).unwrap_or_else(|e| panic!("{name} Via: {e}"));
            assert!(
                via.branch().is_some_and(|b| b.starts_with("z9hG4bK")),
                "{name}: RFC 3261 branch"
            );
        }
    }
}

#[test]
fn tcp_streams_frame_into_the_listed_messages() {
    let m = manifest();
    let streams = m["streams"].as_object().expect("streams");
    assert_eq!(streams.len(), 4);
    for (name, meta) in streams {
        let bytes = std::fs::read(dir().join(name)).expect("stream");
        let expected: Vec<SipMessage> = meta["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|f| message(f.as_str().expect("name")))
            .collect();
        for chunk in [1usize, 7, 100, bytes.len()] {
            let mut d = StreamDecoder::new(SipLimits::default());
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                while let Some(msg) = d.next_message().expect("frames") {
                    got.push(msg);
                }
            }
            assert_eq!(d.buffered_len(), 0, "{name}: bytes left over");
            assert_eq!(got, expected, "{name} in chunks of {chunk}");
        }
    }
}

#[test]
fn pidf_bodies_parse_and_the_ill_formed_one_is_refused() {
    let m = manifest();
    let mut parsed = 0;
    let mut refused = Vec::new();
    for (name, meta) in m["files"].as_object().expect("files") {
        if meta["content_type"].as_str() != Some("application/pidf+xml") {
            continue;
        }
        let msg = message(name);
        match Pidf::parse(msg.body()) {
            Ok(p) => {
                assert_eq!(p.entity, "sip:alice@sip.test", "{name}");
                assert!(p.note().is_some(), "{name}: the captures carry notes");
                parsed += 1;
            }
            Err(e) => refused.push((name.clone(), e)),
        }
    }
    assert_eq!(parsed, 6, "two PUBLISH and four NOTIFY bodies");
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (name, err) = &refused[0];
    assert_eq!(name, "101-PUBLISH-udp.sip");
    assert!(matches!(err, PidfError::NotWellFormed(_)));
    let text = err.to_string();
    assert!(text.contains("not well-formed"), "{text}");
    // Kamailio answered that PUBLISH with 415 (102).
    assert_eq!(message("102-415-udp.sip").status(), Some(415));
    let note = Pidf::parse(message("005-PUBLISH-udp.sip").body())
        .expect("005")
        .note()
        .cloned()
        .expect("note");
    assert_eq!(note.text, "Im Büro – erreichbar ☕ bis 17 Uhr (udp)");
}
