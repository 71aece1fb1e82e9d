//! The pipelines the benches measure, as plain functions so that a test can check
//! they do the real work (and keep doing it) before anyone reads a number.

use isthmus_core::config::{Config, Partner, PartnerType, XmlLimits};
use isthmus_core::jid::Jid;
use isthmus_core::sip::pidf::Pidf;
use isthmus_core::sip::{SipLimits, SipMessage};
use isthmus_core::translate::message::{message_to_sip_between, sip_to_message_stanza};
use isthmus_core::translate::presence::pidf_to_presence;
use isthmus_core::xml::{ns, StanzaEvent, StreamReader};

pub mod whole;

/// A 430-byte-class chat message as a partner sends it.
pub const MESSAGE: &str = "<message from='romeo@xmpp.example/balcony' to='juliet@sip.example' type='chat' id='m-8d0f1c2a' xml:lang='en'><body>But soft, what light through yonder window breaks? It is the east, and Juliet is the sun. Arise, fair sun, and kill the envious moon, who is already sick and pale with grief &amp; more.</body><thread>th-6b1e5a</thread><active xmlns='http://jabber.org/protocol/chatstates'/></message>";

pub const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='xmpp.example' to='sip.example' version='1.0'>";

pub fn config() -> Config {
    let mut c = Config::default();
    c.gateway.served_domains = vec!["sip.example".into()];
    let mut p = Partner::new("xmpp.example");
    p.partner_type = PartnerType::Federated;
    c.partners.push(p);
    c
}

/// The baseline: quick-xml tokenizing the same bytes, events discarded.
pub fn tokenize(bytes: &[u8]) -> usize {
    let mut r = quick_xml::Reader::from_reader(bytes);
    let mut n = 0;
    loop {
        match r.read_event() {
            Ok(quick_xml::events::Event::Eof) | Err(_) => return n,
            Ok(_) => n += 1,
        }
    }
}

/// The second baseline: every token quick-xml has for the same bytes, read as a
/// stream is read (copied into the caller's reused buffer, `read_event_into`, the
/// API for bytes that arrive from a socket), with each tag's attributes split
/// into names and values. `read_event` alone leaves a tag's attributes as one
/// unsplit run of bytes, and it needs the whole document in one slice, which a
/// stream never is; so `tokenize` is the lower bound, this the like-for-like
/// one. Neither unescapes, resolves namespaces or checks characters. Returns
/// the events and the bytes of attribute names and values seen.
pub fn tokenize_stream(bytes: &[u8], buf: &mut Vec<u8>) -> usize {
    let mut r = quick_xml::Reader::from_reader(bytes);
    let mut n = 0;
    loop {
        buf.clear();
        match r.read_event_into(buf) {
            Ok(quick_xml::events::Event::Eof) | Err(_) => return n,
            Ok(quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e)) => {
                n += 1;
                for a in e.attributes().flatten() {
                    n += a.key.as_ref().len() + a.value.len();
                }
            }
            Ok(_) => n += 1,
        }
    }
}

/// A reader positioned inside an open stream.
pub fn open_reader() -> StreamReader {
    let mut r = StreamReader::new(XmlLimits::default());
    r.push(HEADER.as_bytes());
    let _ = r.next_event();
    r
}

/// Inbound hot path: stanza bytes on an authenticated stream → namespaces, JIDs,
/// policy, translation → SIP MESSAGE bytes.
pub fn inbound(reader: &mut StreamReader, config: &Config, bytes: &[u8]) -> Option<Vec<u8>> {
    reader.push(bytes);
    let Ok(Some(StanzaEvent::Stanza(el))) = reader.next_stanza_event() else {
        return None;
    };
    let from = Jid::parse(el.get_attr("from")?).ok()?;
    let to = Jid::parse(el.get_attr("to")?).ok()?;
    if !config.serves(to.domain()) {
        return None;
    }
    isthmus_core::policy::inbound_message(config, &from, false).ok()?;
    // The addresses parsed above, as the gateway passes them down.
    let msg = message_to_sip_between(&el, &from, &to, "t1", "c1").ok()??;
    // The SIP layer's Via, as the gateway writes it (the whole-gateway bench
    // draws a fresh branch each time).
    Some(msg.to_bytes(Some(
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK5f3a09c1d2e4b7a8",
    )))
}

/// Outbound hot path: SIP MESSAGE bytes → parse, address and content mapping →
/// stanza bytes, written into `out` as the gateway writes a stanza to a stream
/// under TLS: into the stream's text buffer, cleared and kept from one stanza to
/// the next (as the baselines keep theirs). False if the message is refused.
pub fn outbound_into(bytes: &[u8], out: &mut String) -> bool {
    let Ok(msg) = SipMessage::parse(bytes, &SipLimits::default()) else {
        return false;
    };
    let Ok(stanza) = sip_to_message_stanza(&msg, "s1".to_owned()) else {
        return false;
    };
    out.clear();
    out.reserve(1024);
    stanza.write(out);
    true
}

/// [`outbound_into`] a new buffer.
pub fn outbound(bytes: &[u8]) -> Option<String> {
    let mut out = String::new();
    outbound_into(bytes, &mut out).then_some(out)
}

/// NOTIFY with PIDF → presence stanza bytes.
pub fn notify_to_presence(bytes: &[u8], from: &Jid, to: &Jid) -> Option<String> {
    let msg = SipMessage::parse(bytes, &SipLimits::default()).ok()?;
    let pidf = Pidf::parse(msg.body()).ok()?;
    Some(pidf_to_presence(&pidf, from, to, true).to_xml(ns::SERVER))
}

pub fn sip_message_bytes() -> Vec<u8> {
    let body =
        "But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.";
    format!(
        "MESSAGE sip:romeo@xmpp.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\nMax-Forwards: 70\r\nFrom: \"Juliet\" <sip:juliet@sip.example>;tag=49583\r\nTo: <sip:romeo@xmpp.example>\r\nCall-ID: asd88asd77a@192.0.2.10\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub fn notify_bytes() -> Vec<u8> {
    let body = "<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:juliet@sip.example'><tuple id='t1'><status><basic>open</basic></status><note>In the garden</note></tuple></presence>";
    format!(
        "NOTIFY sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKn1\r\nMax-Forwards: 70\r\nFrom: <sip:juliet@sip.example>;tag=ua\r\nTo: <sip:romeo@xmpp.example>;tag=gw\r\nCall-ID: sub1@192.0.2.1\r\nCSeq: 2 NOTIFY\r\nEvent: presence\r\nSubscription-State: active;expires=600\r\nContent-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipelines_do_the_work() {
        let c = config();
        let mut r = open_reader();
        let sip = inbound(&mut r, &c, MESSAGE.as_bytes()).expect("inbound");
        let text = String::from_utf8(sip).expect("utf-8");
        assert!(
            text.starts_with("MESSAGE sip:juliet@sip.example SIP/2.0"),
            "{text}"
        );
        assert!(text.contains("kill the envious moon"));
        // The same reader takes the next stanza too.
        assert!(inbound(&mut r, &c, MESSAGE.as_bytes()).is_some());
        let stanza = outbound(&sip_message_bytes()).expect("outbound");
        assert!(stanza.contains("<body>But soft"), "{stanza}");
        let from = Jid::parse("juliet@sip.example").expect("jid");
        let to = Jid::parse("romeo@xmpp.example").expect("jid");
        let p = notify_to_presence(&notify_bytes(), &from, &to).expect("presence");
        assert!(p.contains("<status>In the garden</status>"), "{p}");
        assert!(
            MESSAGE.len() > 380 && MESSAGE.len() < 480,
            "{}",
            MESSAGE.len()
        );
    }

    #[test]
    fn the_baselines_read_every_token() {
        // message, body, its text in three (text, `&amp;`, text), /body, thread, its
        // text, /thread, active, /message.
        assert_eq!(tokenize(MESSAGE.as_bytes()), 11);
        let attrs: usize = [
            "from",
            "romeo@xmpp.example/balcony",
            "to",
            "juliet@sip.example",
            "type",
            "chat",
            "id",
            "m-8d0f1c2a",
            "xml:lang",
            "en",
            "xmlns",
            "http://jabber.org/protocol/chatstates",
        ]
        .iter()
        .map(|s| s.len())
        .sum();
        let mut buf = Vec::new();
        assert_eq!(tokenize_stream(MESSAGE.as_bytes(), &mut buf), 11 + attrs);
        // The reused buffer gives the same answer the second time.
        assert_eq!(tokenize_stream(MESSAGE.as_bytes(), &mut buf), 11 + attrs);
    }

    #[test]
    fn the_whole_gateway_loops_do_the_work() {
        let mut w = whole::WholeGateway::xmpp_to_sip();
        for _ in 0..3000 {
            let sent = w
                .inbound(MESSAGE.as_bytes())
                .expect("a SIP MESSAGE each time");
            let text = String::from_utf8(sent).expect("utf-8");
            assert!(
                text.starts_with("MESSAGE sip:juliet@sip.example SIP/2.0"),
                "{text}"
            );
            assert!(text.contains("kill the envious moon"));
        }
        assert_eq!(w.unexpected, 0, "each MESSAGE answered by its 200, once");
        let mut w = whole::WholeGateway::sip_to_xmpp();
        for _ in 0..3000 {
            let (written, ok) = w.outbound();
            let text = String::from_utf8(written).expect("utf-8");
            assert!(
                text.starts_with("<message from='juliet@sip.example'"),
                "{text}"
            );
            assert!(text.contains("<body>But soft"), "{text}");
            assert!(ok, "answered 200 once written");
        }
        assert_eq!(w.unexpected, 0, "nothing bounced or ignored");
    }
}
