//! Instant messages (RFC 7572): SIP MESSAGE ⇄ XMPP `<message/>`. Body ⇄ text/plain
//! (UTF-8), `<subject/>` ⇄ Subject, `<thread/>` ⇄ Call-ID, `xml:lang` ⇄
//! Content-Language; typing notifications (RFC 3994) ⇄ chat states (XEP-0085).

use std::borrow::Cow;
use std::fmt;

use crate::jid::Jid;
use crate::sip::message::{
    split_byte, split_once_byte, trim, unquote, CONTENT_LANGUAGE, CONTENT_TYPE, FROM, SUBJECT,
};
use crate::sip::uri::NameAddrRef;
use crate::sip::SipMessage;
use crate::translate::address::{push_jid_sip, sip_to_jid, sip_uri_capacity, uri_to_jid};
use crate::xml::{escape_into, ns, parse_document, Attribute, Element, Name, Node, Stanza};

pub const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
pub const ISCOMPOSING: &str = "urn:ietf:params:xml:ns:im-iscomposing";
/// What the gateway accepts in a MESSAGE, for `Accept` on a 415.
pub const ACCEPTED_TYPES: &str = "text/plain, application/im-iscomposing+xml";

/// Why a SIP MESSAGE cannot become a stanza: the response to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// Parses a Content-Type into (type/subtype lower-cased, charset as written).
fn content_type(value: &str) -> (Cow<'_, str>, Option<&str>) {
    let mut parts = split_byte(value, b';');
    let mime = trim(parts.next().unwrap_or_default());
    // Lower-cased only when it is not already, as it usually is.
    let mime = if mime.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(mime.to_ascii_lowercase())
    } else {
        Cow::Borrowed(mime)
    };
    let charset = parts.find_map(|p| {
        let (k, v) = split_once_byte(p, b'=')?;
        trim(k)
            .eq_ignore_ascii_case("charset")
            .then(|| unquote(trim(v)))
    });
    (mime, charset)
}

/// SIP MESSAGE → `<message type='chat'/>` from the sender's JID to the Request-URI's.
/// `id` becomes the stanza id, so that an XMPP error can find its SIP transaction.
pub fn sip_to_message(msg: &SipMessage, id: &str) -> Result<Element, Refusal> {
    sip_to_message_stanza(msg, id.to_owned()).map(MessageStanza::into_element)
}

/// A `<message/>` translated from a SIP MESSAGE, its texts borrowed from the
/// request: written straight onto a stream when it can go at once, built as an
/// element only when it has to wait, come back or stay local.
#[derive(Debug)]
pub struct MessageStanza<'a> {
    pub from: Jid,
    pub to: Jid,
    pub id: String,
    lang: Option<&'a str>,
    subject: Option<&'a str>,
    content: Content<'a>,
    thread: Option<&'a str>,
}

/// What a MESSAGE's body becomes.
#[derive(Debug)]
enum Content<'a> {
    /// text/plain: a `<body/>`.
    Body(&'a str),
    /// An isComposing document: this chat state.
    ChatState(&'static str),
}

impl MessageStanza<'_> {
    /// The stanza as an element, in the order [`MessageStanza::write`] writes it.
    pub fn into_element(self) -> Element {
        // Built in place, at its size: the attributes are known to be distinct.
        let attr = |name: &'static str, value: String| Attribute {
            ns: None,
            name: Name::Borrowed(name),
            value,
        };
        // A child that holds only text, built at its size with its names unlooked-up.
        let leaf = |name: &'static str, text: &str| {
            Node::Element(Element {
                ns: Name::Borrowed(ns::SERVER),
                name: Name::Borrowed(name),
                attrs: Vec::new(),
                children: vec![Node::Text(text.to_owned())],
            })
        };
        let mut attrs = Vec::with_capacity(5);
        attrs.push(attr("from", self.from.into_string()));
        attrs.push(attr("to", self.to.into_string()));
        attrs.push(attr("type", "chat".to_owned()));
        attrs.push(attr("id", self.id));
        if let Some(lang) = self.lang {
            attrs.push(Attribute {
                ns: Some(ns::XML.into()),
                name: "lang".into(),
                value: lang.to_owned(),
            });
        }
        let mut children = Vec::with_capacity(3);
        if let Some(subject) = self.subject {
            children.push(leaf("subject", subject));
        }
        match self.content {
            Content::Body(text) => children.push(leaf("body", text)),
            Content::ChatState(state) => {
                children.push(Node::Element(Element::new(CHATSTATES, state)));
            }
        }
        if let Some(thread) = self.thread {
            children.push(leaf("thread", thread));
        }
        Element {
            ns: Name::Borrowed(ns::SERVER),
            name: Name::Borrowed("message"),
            attrs,
            children,
        }
    }

    /// Appends the stanza to `out` as [`crate::xml::write_element`] writes its
    /// element on a `jabber:server` stream, without building the element.
    pub fn write(&self, out: &mut String) {
        let leaf = |out: &mut String, name: &str, text: &str| {
            out.push('<');
            out.push_str(name);
            out.push('>');
            escape_into(out, text, false);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        };
        out.push_str("<message from='");
        escape_into(out, self.from.as_str(), true);
        out.push_str("' to='");
        escape_into(out, self.to.as_str(), true);
        out.push_str("' type='chat' id='");
        escape_into(out, &self.id, true);
        if let Some(lang) = self.lang {
            out.push_str("' xml:lang='");
            escape_into(out, lang, true);
        }
        out.push_str("'>");
        if let Some(subject) = self.subject {
            leaf(out, "subject", subject);
        }
        match self.content {
            Content::Body(text) => leaf(out, "body", text),
            Content::ChatState(state) => {
                out.push('<');
                out.push_str(state);
                out.push_str(" xmlns='");
                out.push_str(CHATSTATES);
                out.push_str("'/>");
            }
        }
        if let Some(thread) = self.thread {
            leaf(out, "thread", thread);
        }
        out.push_str("</message>");
    }
}

/// The translation of a SIP MESSAGE, not yet built or written.
pub fn sip_to_message_stanza(msg: &SipMessage, id: String) -> Result<MessageStanza<'_>, Refusal> {
    let from_header = msg
        .known_value(FROM)
        .ok_or_else(|| Refusal::new(400, "Bad Request (missing From)"))?;
    let from_addr = NameAddrRef::parse(from_header)
        .map_err(|e| Refusal::new(400, format!("Bad Request ({e})")))?;
    // The parsed URI maps directly when reading its serialisation back would give
    // the same URI, as it does but for a host with trailing whitespace.
    let from = if from_addr.uri.reads_back_unchanged() {
        uri_to_jid(&from_addr.uri)
    } else {
        sip_to_jid(&from_addr.uri.to_owned().to_string())
    }
    .map_err(|e| Refusal::new(400, format!("Bad Request (From: {e})")))?;
    let target = match &msg.start {
        crate::sip::StartLine::Request { uri, .. } => uri,
        crate::sip::StartLine::Response { .. } => {
            return Err(Refusal::new(400, "Bad Request (not a request)"))
        }
    };
    let to = sip_to_jid(target)
        .map_err(|e| Refusal::new(416, format!("Unsupported URI Scheme ({e})")))?;
    let lang = msg
        .known_value(CONTENT_LANGUAGE)
        .map(|lang| trim(split_byte(lang, b',').next().unwrap_or_default()))
        .filter(|first| !first.is_empty());
    let mut subject = None;
    let (mime, charset) = content_type(msg.known_value(CONTENT_TYPE).unwrap_or("text/plain"));
    let content = match &*mime {
        "text/plain" => {
            if charset.is_some_and(|c| {
                !c.eq_ignore_ascii_case("utf-8") && !c.eq_ignore_ascii_case("us-ascii")
            }) {
                return Err(Refusal::new(
                    415,
                    format!(
                        "Unsupported Media Type (charset {}; send UTF-8)",
                        charset.unwrap_or_default().to_ascii_lowercase()
                    ),
                ));
            }
            let text = msg
                .body_text()
                .ok_or_else(|| Refusal::new(400, "Bad Request (body is not UTF-8)"))?;
            subject = msg.known_value(SUBJECT);
            Content::Body(text)
        }
        "application/im-iscomposing+xml" => {
            let doc = parse_document(msg.body(), crate::config::XmlLimits::default())
                .map_err(|e| Refusal::new(400, format!("Bad Request (isComposing: {e})")))?;
            let state = doc
                .find(ISCOMPOSING, "state")
                .map(|s| s.text_content().trim().to_ascii_lowercase());
            Content::ChatState(if state.as_deref() == Some("active") {
                "composing"
            } else {
                "active"
            })
        }
        other => {
            return Err(Refusal::new(
                415,
                format!("Unsupported Media Type ({other}; accepted: {ACCEPTED_TYPES})"),
            ));
        }
    };
    Ok(MessageStanza {
        from,
        to,
        id,
        lang,
        subject,
        content,
        thread: msg.call_id(),
    })
}

/// `<message/>` → a SIP MESSAGE (Request-URI, From with `tag`, To, Call-ID from
/// `<thread/>` or `call_id`, CSeq, Content-Type, Subject, Content-Language,
/// body), as a model. Via and Max-Forwards are the SIP layer's. Returns `None` for
/// messages that carry nothing SIP can show (a chat state alone).
pub fn message_to_sip(
    stanza: &Element,
    tag: &str,
    call_id: &str,
) -> Result<Option<SipMessage>, String> {
    let jid = |name: &str| -> Result<Jid, String> {
        let v = stanza
            .get_attr(name)
            .ok_or_else(|| format!("no '{name}'"))?;
        Jid::parse(v).map_err(|e| format!("'{name}': {e}"))
    };
    let from = jid("from")?;
    let to = jid("to")?;
    let stanza = Stanza::from(stanza.clone());
    let Some(request) = message_to_sip_between(&stanza, &from, &to, tag, call_id)? else {
        return Ok(None);
    };
    // The model is what goes on the wire: the bytes as written, read back, less
    // what the SIP layer adds (a reader wants a Via) and the length.
    let bytes = request.to_bytes(Some("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK0"));
    let mut msg =
        SipMessage::parse(&bytes, &crate::sip::SipLimits::default()).map_err(|e| e.to_string())?;
    for added in ["Via", "Max-Forwards", "Content-Length"] {
        msg.remove_header(added);
    }
    Ok(Some(msg))
}

/// A SIP MESSAGE translated from a stanza, borrowing from it, written straight
/// into bytes: a message on the hot path is never built as a header model.
#[derive(Debug)]
pub struct MessageRequest<'a> {
    from: &'a Jid,
    to: &'a Jid,
    tag: &'a str,
    call_id: Cow<'a, str>,
    content_type: &'static str,
    subject: Option<Cow<'a, str>>,
    lang: Option<&'a str>,
    body: Cow<'a, str>,
}

impl MessageRequest<'_> {
    /// The request's bytes. With `via`, a Via with that value comes first and a
    /// Max-Forwards of 70 last, as the SIP layer sends a request.
    pub fn to_bytes(&self, via: Option<&str>) -> Vec<u8> {
        let optional = |v: Option<&str>, name: &str| v.map_or(0, |v| v.len() + name.len() + 4);
        let cap = 2 * sip_uri_capacity(self.to)
            + sip_uri_capacity(self.from)
            + self.tag.len()
            + self.call_id.len()
            + self.content_type.len()
            + optional(via, "Via")
            + optional(self.subject.as_deref(), "Subject")
            + optional(self.lang, "Content-Language")
            + self.body.len()
            + 160;
        let mut head = String::with_capacity(cap);
        head.push_str("MESSAGE ");
        let uri_at = head.len();
        // The To header is the Request-URI without `gr`.
        let bare_end = push_jid_sip(&mut head, self.to);
        head.push_str(" SIP/2.0\r\n");
        if let Some(via) = via {
            head.push_str("Via: ");
            head.push_str(via);
            head.push_str("\r\n");
        }
        head.push_str("From: <");
        push_jid_sip(&mut head, self.from);
        head.push_str(">;tag=");
        head.push_str(self.tag);
        head.push_str("\r\nTo: <");
        let mut out = head.into_bytes();
        out.extend_from_within(uri_at..bare_end);
        out.extend_from_slice(b">\r\n");
        let mut field = |name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        field(b"Call-ID: ", self.call_id.as_bytes());
        field(b"CSeq: ", b"1 MESSAGE");
        field(b"Content-Type: ", self.content_type.as_bytes());
        if let Some(subject) = &self.subject {
            field(b"Subject: ", subject.as_bytes());
        }
        if let Some(lang) = self.lang {
            field(b"Content-Language: ", lang.as_bytes());
        }
        if via.is_some() {
            field(b"Max-Forwards: ", b"70");
        }
        crate::sip::message::push_content_length(&mut out, self.body.len());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// As [`message_to_sip`], for a caller that has already parsed (and checked) the
/// stanza's `from` and `to`, and without the model: the request as it is written.
pub fn message_to_sip_between<'a>(
    stanza: &'a Stanza,
    from: &'a Jid,
    to: &'a Jid,
    tag: &'a str,
    call_id: &'a str,
) -> Result<Option<MessageRequest<'a>>, String> {
    let ([body, thread, subject], composing) = stanza.children(
        [
            (ns::SERVER, "body"),
            (ns::SERVER, "thread"),
            (ns::SERVER, "subject"),
        ],
        CHATSTATES,
    );
    let (content_type, body) = match (body, composing) {
        (Some(b), _) => ("text/plain;charset=UTF-8", b),
        (None, Some(state)) => {
            let active = state == "composing";
            let doc = format!(
                "<?xml version='1.0' encoding='UTF-8'?><isComposing xmlns='{ISCOMPOSING}'><state>{}</state><contenttype>text/plain</contenttype></isComposing>",
                if active { "active" } else { "idle" }
            );
            ("application/im-iscomposing+xml", Cow::Owned(doc))
        }
        (None, None) => return Ok(None),
    };
    let call_id = thread
        .filter(|t| !t.trim().is_empty())
        .unwrap_or(Cow::Borrowed(call_id));
    let subject = subject.map(|subject| {
        if subject.contains(['\r', '\n']) {
            Cow::Owned(subject.replace(['\r', '\n'], " "))
        } else {
            subject
        }
    });
    Ok(Some(MessageRequest {
        from,
        to,
        tag,
        call_id,
        content_type,
        subject,
        lang: stanza.lang(),
        body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::SipLimits;

    fn sip(text: &str) -> SipMessage {
        SipMessage::parse(text.as_bytes(), &SipLimits::default()).expect("sip")
    }

    const MESSAGE: &str = "MESSAGE sip:romeo@xmpp-a.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
        From: \"Alice\" <sip:alice@sip.test>;tag=a1\r\nTo: <sip:romeo@xmpp-a.test>\r\nCall-ID: c-1\r\nCSeq: 7 MESSAGE\r\n\
        Subject: Gruß\r\nContent-Language: de\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 12\r\n\r\nGrüße 🙂";

    #[test]
    fn sip_to_xmpp() {
        let m = sip(MESSAGE);
        let st = sip_to_message(&m, "s1").expect("maps");
        assert_eq!(
            st.to_xml(ns::SERVER),
            "<message from='alice@sip.test' to='romeo@xmpp-a.test' type='chat' id='s1' xml:lang='de'>\
             <subject>Gruß</subject><body>Grüße 🙂</body><thread>c-1</thread></message>"
        );
    }

    /// Writing the translation straight to text gives the bytes its element
    /// gives, on streams with and without the dialback prefix, for the captured
    /// MESSAGEs and for variants that exercise every child and every escape.
    #[test]
    fn the_written_stanza_is_its_element_written() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sip");
        let mut requests: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("the SIP fixtures")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.to_string_lossy().ends_with("-MESSAGE-udp.sip")
                    || p.to_string_lossy().ends_with("-MESSAGE-tcp.sip")
            })
            .map(|p| std::fs::read(p).expect("fixture"))
            .collect();
        assert!(requests.len() >= 10, "{} fixtures", requests.len());
        let with_body = |head: &str, body: &str| {
            let head = head.split("Content-Length").next().unwrap_or_default();
            format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
        };
        let base = MESSAGE;
        requests.push(base.as_bytes().to_vec());
        requests.push(with_body(base, "a < b && c > d 'q' \"dq\" \r\n\t\u{1}end"));
        requests.push(with_body(base, ""));
        requests.push(with_body(
            &base.replace("Subject: Gruß", "Subject: <&'\">"),
            "x",
        ));
        requests.push(with_body(
            &base.replace("Content-Language: de", "Content-Language: d'e\"<&, fr"),
            "x",
        ));
        requests.push(with_body(
            &base.replace("Call-ID: c-1", "Call-ID: c<&>'1"),
            "x",
        ));
        requests.push(with_body(
            &base
                .replace("Subject: Gruß\r\n", "")
                .replace("Content-Language: de\r\n", ""),
            "plain",
        ));
        for (state, composing) in [("active", true), ("idle", false)] {
            let doc = format!("<?xml version='1.0' encoding='UTF-8'?><isComposing xmlns='urn:ietf:params:xml:ns:im-iscomposing'><state>{state}</state></isComposing>");
            let head = base.replace("text/plain;charset=UTF-8", "application/im-iscomposing+xml");
            let bytes = with_body(&head, &doc);
            let written = {
                let m = SipMessage::parse(&bytes, &SipLimits::default()).expect("sip");
                let mut out = String::new();
                sip_to_message_stanza(&m, "c".into())
                    .expect("maps")
                    .write(&mut out);
                out
            };
            assert_eq!(written.contains("<composing "), composing, "{written}");
            requests.push(bytes);
        }
        let mut mapped = 0;
        for bytes in &requests {
            let Ok(m) = SipMessage::parse(bytes, &SipLimits::default()) else {
                continue;
            };
            for id in ["s1", "i<&>'\"d"] {
                let (Ok(direct), Ok(built)) = (
                    sip_to_message_stanza(&m, id.into()),
                    sip_to_message_stanza(&m, id.into()),
                ) else {
                    continue;
                };
                let mut written = String::new();
                direct.write(&mut written);
                let el = built.into_element();
                for db in [false, true] {
                    let mut expected = String::new();
                    crate::xml::write_element_with(&mut expected, &el, ns::SERVER, db);
                    assert_eq!(written, expected);
                }
                mapped += 1;
            }
        }
        // Every fixture and variant maps (none is refused), with both ids.
        assert_eq!(mapped, 2 * requests.len());
    }

    #[test]
    fn refusals() {
        let html = MESSAGE.replace("text/plain;charset=UTF-8", "text/html");
        assert_eq!(
            sip_to_message(&sip(&html), "x").map_err(|r| r.code),
            Err(415)
        );
        let latin = MESSAGE.replace("charset=UTF-8", "charset=ISO-8859-1");
        assert_eq!(
            sip_to_message(&sip(&latin), "x").map_err(|r| r.code),
            Err(415)
        );
        let tel = MESSAGE.replace("MESSAGE sip:romeo@xmpp-a.test", "MESSAGE tel:+123");
        assert_eq!(
            sip_to_message(&sip(&tel), "x").map_err(|r| r.code),
            Err(416)
        );
    }

    #[test]
    fn xmpp_to_sip() {
        let st = Element::new(ns::SERVER, "message")
            .attr("from", "romeo@xmpp-a.test/balcony")
            .attr("to", "alice@sip.test")
            .attr("type", "chat")
            .child(Element::new(ns::SERVER, "body").text("a & b < c"))
            .child(Element::new(ns::SERVER, "thread").text("th-9"));
        let m = message_to_sip(&st, "t1", "fallback")
            .expect("maps")
            .expect("has a body");
        assert_eq!(
            m.header("From"),
            Some("<sip:romeo@xmpp-a.test;gr=balcony>;tag=t1")
        );
        assert_eq!(m.header("Call-ID"), Some("th-9"));
        assert_eq!(m.body(), "a & b < c".as_bytes());
        let typing = Element::new(ns::SERVER, "message")
            .attr("from", "romeo@xmpp-a.test")
            .attr("to", "alice@sip.test")
            .child(Element::new(CHATSTATES, "composing"));
        let t = message_to_sip(&typing, "t", "c")
            .expect("maps")
            .expect("typing");
        assert_eq!(
            t.header("Content-Type"),
            Some("application/im-iscomposing+xml")
        );
        let gone = Element::new(ns::SERVER, "message")
            .attr("from", "romeo@xmpp-a.test")
            .attr("to", "alice@sip.test");
        assert_eq!(message_to_sip(&gone, "t", "c"), Ok(None));
    }
}
