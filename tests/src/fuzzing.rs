//! Fuzz harnesses, shared by the cargo-fuzz targets in `fuzz/` (libFuzzer, run
//! with `cargo fuzz run <target>`) and by the stable tests that replay each
//! target's corpus in CI. Each harness panics only when an invariant breaks.

use std::time::{Duration, Instant};

use isthmus_core::config::XmlLimits;
use isthmus_core::gateway::{Gateway, Output};
use isthmus_core::sip::{SipLimits, SipMessage, StreamDecoder};
use isthmus_core::xml::{ns, Element, Stanza, StanzaEvent, StreamEvent, StreamReader};

/// Chunk sizes come from the data itself, so the fuzzer explores splits too.
fn chunks(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let (head, rest) = data.split_at(data.len().min(8));
    let sizes = head.iter().map(|b| usize::from(*b % 64) + 1).collect();
    (sizes, rest)
}

/// The XML reader on arbitrary bytes in arbitrary chunks: no panic, memory bounded
/// by the stanza limit plus one chunk, and the same events and errors as a reader
/// that parses each element with quick-xml, but where the reader alone refuses
/// as malformed what XML forbids and quick-xml lets through.
pub fn xml_reader(data: &[u8]) {
    let limits = XmlLimits {
        max_stanza_bytes: 4096,
        ..XmlLimits::default()
    };
    let (sizes, mut rest) = chunks(data);
    let mut ours = Transcript::new(StreamReader::new(limits));
    let mut theirs = Transcript::new(StreamReader::quick_xml_oracle(limits));
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        i += 1;
        ours.feed(chunk);
        theirs.feed(chunk);
        assert!(
            ours.reader.buffered_len() <= limits.max_stanza_bytes + 64 + 8192,
            "the reader holds {} bytes",
            ours.reader.buffered_len()
        );
    }
    if ours.events != theirs.events {
        let same = ours
            .events
            .iter()
            .zip(&theirs.events)
            .take_while(|(a, b)| a == b)
            .count();
        assert_eq!(
            ours.events.get(same..),
            Some(&[Err("not-well-formed")][..]),
            "the reader parts from quick-xml at event {same}: quick-xml has {:?}",
            theirs.events.get(same)
        );
    }
}

/// What one reader made of the input: its events, and its error by condition.
struct Transcript {
    reader: StreamReader,
    events: Vec<Result<StreamEvent, &'static str>>,
}

impl Transcript {
    fn new(reader: StreamReader) -> Self {
        Transcript {
            reader,
            events: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.reader.push(chunk);
        loop {
            let event = self.reader.next_stanza_event().map(|e| {
                e.map(|e| match e {
                    StanzaEvent::Header(h) => StreamEvent::Header(h),
                    StanzaEvent::Stanza(s) => StreamEvent::Element(view_agrees(s)),
                    StanzaEvent::End => StreamEvent::End,
                })
            });
            match event {
                Ok(Some(event)) => {
                    if let StreamEvent::Element(e) = &event {
                        if e.name == "proceed" || e.name == "success" {
                            self.reader.restart();
                        }
                    }
                    self.events.push(Ok(event));
                }
                Ok(None) => break,
                Err(e) => {
                    self.events.push(Err(e.condition()));
                    break;
                }
            }
        }
    }
}

/// A stanza as read answers what its tree answers: its name, attributes,
/// `xml:lang`, each child's text and the first child of each namespace. Returns
/// the tree.
pub fn view_agrees(stanza: Stanza) -> Element {
    let el = stanza.element().into_owned();
    assert_eq!(stanza.qname(), (&*el.ns, &*el.name));
    let keys = el.attrs.iter().map(|a| &*a.name);
    for key in keys.chain(["from", "to", "type", "id", "lang", "xmlns"]) {
        assert_eq!(stanza.get_attr(key), el.get_attr(key), "attribute {key}");
    }
    let lang = el
        .attrs
        .iter()
        .find(|a| a.ns.as_deref() == Some(ns::XML) && a.name == "lang")
        .map(|a| a.value.as_str());
    assert_eq!(stanza.lang(), lang);
    let wanted = el.elements().map(|c| (&*c.ns, &*c.name));
    for (child_ns, child) in wanted.chain([(ns::SERVER, "body"), (ns::SERVER, "thread")]) {
        let [text] = stanza.child_texts([(child_ns, child)]);
        let tree = el.find(child_ns, child).map(|c| c.text_content());
        assert_eq!(
            text.as_deref(),
            tree.as_deref(),
            "text of {{{child_ns}}}{child}"
        );
        let first = el.elements().find(|c| c.ns == child_ns).map(|c| &*c.name);
        assert_eq!(
            stanza.child_in(child_ns),
            first,
            "first child in {child_ns}"
        );
        let ([text], first_in) = stanza.children([(child_ns, child)], child_ns);
        assert_eq!(text.as_deref(), tree.as_deref());
        assert_eq!(first_in, first);
    }
    assert_eq!(Stanza::from(el.clone()), stanza);
    el
}

/// The SIP codec: datagram parsing and stream framing never panic, whatever
/// parses re-serialises to a message that parses to the same thing (and is
/// answered with the same bytes either way a reply is written), and a
/// stateless 503 built from the bytes parses.
pub fn sip_codec(data: &[u8]) {
    let limits = SipLimits::default();
    if let Ok(m) = SipMessage::parse(data, &limits) {
        let again = SipMessage::parse(&m.to_bytes(), &limits).expect("a parsed message re-parses");
        assert_eq!(again.start, m.start);
        assert_eq!(again.body(), m.body());
        // A response written straight from the request is the reply model's bytes.
        for tag in [Some("gw"), None] {
            assert_eq!(
                m.reply_bytes(200, "OK", tag),
                m.reply(200, "OK", tag).to_bytes()
            );
        }
    }
    // A stateless refusal, when there is one, is a well-formed 503.
    if let Some(reply) = isthmus_core::gateway::overloaded_reply(data) {
        let parsed = SipMessage::parse(&reply, &limits).expect("a refusal parses");
        assert_eq!(parsed.status(), Some(503));
    }
    let (sizes, mut rest) = chunks(data);
    let mut d = StreamDecoder::new(limits);
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        i += 1;
        d.push(chunk);
        while let Ok(Some(_)) = d.next_message() {}
    }
}

/// The whole gateway driven by an arbitrary sequence of inputs over virtual time:
/// no panic; every stanza the gateway accepted is, by the end (after a shutdown),
/// either written to a stream or returned to its sender.
pub fn gateway(data: &[u8]) {
    let mut config = isthmus_core::config::Config::default();
    config.gateway.served_domains = vec!["a.test".into()];
    config.gateway.dialback_secret = Some("fuzz".into());
    let mut p = isthmus_core::config::Partner::new("b.test");
    p.negotiation.tls = isthmus_core::config::TlsMode::NotSupported;
    p.negotiation.sasl = isthmus_core::config::SaslMode::NotSupported;
    config.partners.push(p);
    let start = Instant::now();
    let mut now = start;
    let mut gw = Gateway::new(config, None, 7, now, 1_780_272_000);
    gw.set_trace(true);
    let mut conns = Vec::new();
    let mut accepted = 0usize;
    let mut answered = 0usize;
    let count = |gw: &mut Gateway, answered: &mut usize| {
        while let Some(out) = gw.poll_output() {
            match out {
                Output::Deliver(el) if el.get_attr("type") == Some("error") => *answered += 1,
                Output::Trace {
                    trace: isthmus_core::gateway::Trace::Xml(x),
                    ..
                } if x.starts_with("<message") => *answered += 1,
                _ => {}
            }
        }
    };
    let mut i = 0;
    while i < data.len() {
        let op = data.get(i).copied().unwrap_or(0);
        let arg = data.get(i + 1).copied().unwrap_or(0);
        i += 2;
        match op % 6 {
            0 => conns.push(gw.accept(now)),
            1 => {
                let len = usize::from(arg % 64);
                let bytes = data.get(i..(i + len).min(data.len())).unwrap_or_default();
                i += len;
                if let Some(c) = conns.get(usize::from(arg) % conns.len().max(1)) {
                    gw.received(now, *c, bytes);
                }
            }
            2 => {
                now += Duration::from_secs(u64::from(arg));
                gw.handle_timeout(now);
            }
            3 => {
                let stanza = isthmus_core::xml::Element::new("jabber:server", "message")
                    .attr("from", "u@a.test")
                    .attr("to", if arg % 2 == 0 { "v@b.test" } else { "v@c.test" })
                    .attr("id", &format!("f{i}"));
                if gw.send_stanza(now, stanza).is_ok() {
                    accepted += 1;
                }
            }
            4 => {
                if let Some(c) = conns.get(usize::from(arg) % conns.len().max(1)) {
                    gw.peer_closed(now, *c);
                }
            }
            _ => gw.resolved(now, u64::from(arg), Err("fuzz".into())),
        }
        count(&mut gw, &mut answered);
    }
    gw.shutdown(now);
    count(&mut gw, &mut answered);
    assert_eq!(
        answered, accepted,
        "every accepted stanza is written or returned"
    );
}
