//! Instant messages (RFC 7572): SIP MESSAGE ⇄ XMPP `<message/>`. Body ⇄ text/plain
//! (UTF-8), `<subject/>` ⇄ Subject, `<thread/>` ⇄ Call-ID, `xml:lang` ⇄
//! Content-Language; typing notifications (RFC 3994) ⇄ chat states (XEP-0085).

use std::borrow::Cow;
use std::fmt;

use crate::jid::Jid;
use crate::sip::message::{split_byte, split_once_byte, trim, unquote};
use crate::sip::uri::NameAddrRef;
use crate::sip::SipMessage;
use crate::translate::address::{push_jid_sip, sip_to_jid, sip_uri_capacity, uri_to_jid};
use crate::xml::{ns, parse_document, Attribute, Element, Name, Node, Stanza};

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
    let jids_as_attrs = |from: Jid, to: Jid| (from.into_string(), to.into_string(), ());
    translate_message(msg, id.to_owned(), jids_as_attrs).map(|(stanza, ())| stanza)
}

/// As [`sip_to_message`], with the stanza's `from` and `to` as JIDs.
pub fn sip_to_message_between(
    msg: &SipMessage,
    id: String,
) -> Result<(Element, Jid, Jid), Refusal> {
    let kept = |from: Jid, to: Jid| (from.as_str().to_owned(), to.as_str().to_owned(), (from, to));
    translate_message(msg, id, kept).map(|(stanza, (from, to))| (stanza, from, to))
}

/// The translation; `addresses` makes the `from` and `to` attribute values of
/// the two JIDs, and says what of them the caller keeps.
fn translate_message<T>(
    msg: &SipMessage,
    id: String,
    addresses: impl FnOnce(Jid, Jid) -> (String, String, T),
) -> Result<(Element, T), Refusal> {
    let from_header = msg
        .header("From")
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
    let (from_value, to_value, kept) = addresses(from, to);
    let mut attrs = Vec::with_capacity(5);
    attrs.push(attr("from", from_value));
    attrs.push(attr("to", to_value));
    attrs.push(attr("type", "chat".to_owned()));
    attrs.push(attr("id", id));
    let mut stanza = Element {
        ns: Name::Borrowed(ns::SERVER),
        name: Name::Borrowed("message"),
        attrs,
        children: Vec::with_capacity(3),
    };
    if let Some(lang) = msg.header("Content-Language") {
        let first = trim(split_byte(lang, b',').next().unwrap_or_default());
        if !first.is_empty() {
            stanza.attrs.push(Attribute {
                ns: Some(ns::XML.into()),
                name: "lang".into(),
                value: first.to_owned(),
            });
        }
    }
    let (mime, charset) = content_type(msg.header("Content-Type").unwrap_or("text/plain"));
    match &*mime {
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
            let text = std::str::from_utf8(&msg.body)
                .map_err(|_| Refusal::new(400, "Bad Request (body is not UTF-8)"))?;
            if let Some(subject) = msg.header("Subject") {
                stanza.children.push(leaf("subject", subject));
            }
            stanza.children.push(leaf("body", text));
        }
        "application/im-iscomposing+xml" => {
            let doc = parse_document(&msg.body, crate::config::XmlLimits::default())
                .map_err(|e| Refusal::new(400, format!("Bad Request (isComposing: {e})")))?;
            let state = doc
                .find(ISCOMPOSING, "state")
                .map(|s| s.text_content().trim().to_ascii_lowercase());
            let chat_state = if state.as_deref() == Some("active") {
                "composing"
            } else {
                "active"
            };
            stanza = stanza.child(Element::new(CHATSTATES, chat_state));
        }
        other => {
            return Err(Refusal::new(
                415,
                format!("Unsupported Media Type ({other}; accepted: {ACCEPTED_TYPES})"),
            ));
        }
    }
    if let Some(call_id) = msg.call_id() {
        stanza.children.push(leaf("thread", call_id));
    }
    Ok((stanza, kept))
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
        assert_eq!(m.body, "a & b < c".as_bytes());
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
