//! SIP messages: parsing (compact header forms, folded and multi-valued headers,
//! Content-Length framing on streams, one message per datagram), serialising, and
//! limits. A malformed request gets a `400` whose reason phrase says what was wrong.

use std::borrow::Cow;
use std::fmt;

/// Parser limits. Defaults suit a gateway: IM bodies are small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipLimits {
    pub max_headers: usize,
    pub max_line: usize,
    /// The whole header block, start line included.
    pub max_head: usize,
    pub max_body: usize,
}

impl Default for SipLimits {
    fn default() -> Self {
        SipLimits {
            max_headers: 100,
            max_line: 8 * 1024,
            max_head: 32 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// A request's method and a response's reason are borrowed when they are the
/// common ones (a reason when it is its code's standard phrase), so that
/// reading them allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Cow<'static, str>,
        uri: String,
    },
    Response {
        code: u16,
        reason: Cow<'static, str>,
    },
}

/// The methods a gateway reads most (RFC 3261 and its extensions), compared
/// case-sensitively as methods are (RFC 3261 §7.1).
const METHODS: [&str; 14] = [
    "MESSAGE",
    "NOTIFY",
    "SUBSCRIBE",
    "OPTIONS",
    "ACK",
    "BYE",
    "CANCEL",
    "INVITE",
    "REGISTER",
    "PUBLISH",
    "INFO",
    "UPDATE",
    "REFER",
    "PRACK",
];

/// A method, borrowed when it is one of [`METHODS`].
fn method_of(text: &str) -> Cow<'static, str> {
    match METHODS.iter().find(|m| **m == text) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(text.to_owned()),
    }
}

/// A response's reason, borrowed when it is the standard phrase for its code.
fn reason_of(code: u16, text: &str) -> Cow<'static, str> {
    match reason_phrase(code) {
        standard if standard == text => Cow::Borrowed(standard),
        _ => Cow::Owned(text.to_owned()),
    }
}

/// RFC 3261 §21 reason phrases (and the later registered ones the gateway uses,
/// 204 from RFC 5839); a code without its own names its class.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// One header field. `name` is the canonical full name (compact forms expanded),
/// borrowed when it is a known one, and `known` its place in [`KNOWN`]; the
/// value lies in the message's `text`.
#[derive(Clone, Debug)]
struct Field {
    name: Cow<'static, str>,
    known: u8,
    at: usize,
    len: usize,
}

/// A SIP message. Its header values share one buffer: a parsed message's is the
/// header block as received, followed by the body when that is UTF-8, so
/// reading one costs one copy whatever the count.
#[derive(Clone, Debug)]
pub struct SipMessage {
    pub start: StartLine,
    fields: Vec<Field>,
    /// Where the first field of each of the first [`INDEXED`] places in
    /// [`KNOWN`] is, plus one: 0 for none, `u8::MAX` for one too far down to
    /// say, found by a scan. Kept by every change to `fields`.
    first: [u8; INDEXED],
    text: String,
    body: Body,
}

/// The known places whose first field a message keeps the place of: those
/// up to Content-Language, which the gateway asks for by place.
const INDEXED: usize = 11;
const _: () = assert!(CONTENT_LANGUAGE as usize + 1 == INDEXED && REQUIRED <= INDEXED);

/// Where a message's body is: in its `text` when the body is UTF-8 (a text or
/// XML body, checked once as it is read), else bytes of its own.
#[derive(Clone, Debug)]
enum Body {
    InText { at: usize, len: usize },
    Bytes(Vec<u8>),
}

/// Equal when the start line, the headers in order and the body are: where the
/// values lie in the buffer does not matter.
impl PartialEq for SipMessage {
    fn eq(&self, other: &Self) -> bool {
        self.start == other.start
            && self.body() == other.body()
            && self.headers().eq(other.headers())
    }
}

impl Eq for SipMessage {}

/// Why a message could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipError {
    /// The message is malformed; the text says where.
    Malformed(String),
    /// A limit on the start line or headers was exceeded.
    TooLarge(String),
    /// The body (or its announced Content-Length) exceeds the limit.
    BodyTooLarge(String),
    /// A stream carried something that cannot start a SIP message; the connection
    /// cannot be resynchronised.
    Garbage(String),
}

impl SipError {
    /// The reason phrase of the `400` (or `413`/`513`) answer to a malformed request:
    /// 413 when the body is too large (RFC 3261 §21.4.11), 513 when the headers are
    /// (§21.5.13).
    pub fn response(&self) -> (u16, String) {
        match self {
            SipError::Malformed(t) | SipError::Garbage(t) => (400, format!("Bad Request ({t})")),
            SipError::TooLarge(t) => (513, format!("Message Too Large ({t})")),
            SipError::BodyTooLarge(t) => (413, format!("Request Entity Too Large ({t})")),
        }
    }
}

impl fmt::Display for SipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SipError::Malformed(t) => write!(f, "malformed SIP message: {t}"),
            SipError::TooLarge(t) => write!(f, "SIP message too large: {t}"),
            SipError::BodyTooLarge(t) => write!(f, "SIP body too large: {t}"),
            SipError::Garbage(t) => write!(f, "not a SIP stream: {t}"),
        }
    }
}

impl std::error::Error for SipError {}

/// RFC 3261 §7.3.3 compact forms, plus the event-framework ones (RFC 6665).
const COMPACT: [(&str, &str); 19] = [
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("c", "Content-Type"),
    ("d", "Request-Disposition"),
    ("e", "Content-Encoding"),
    ("f", "From"),
    ("i", "Call-ID"),
    ("j", "Reject-Contact"),
    ("k", "Supported"),
    ("l", "Content-Length"),
    ("m", "Contact"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("s", "Subject"),
    ("t", "To"),
    ("u", "Allow-Events"),
    ("v", "Via"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Spellings of header names that are not simple title case.
const CANONICAL: [&str; 12] = [
    "Call-ID",
    "CSeq",
    "WWW-Authenticate",
    "SIP-ETag",
    "SIP-If-Match",
    "MIME-Version",
    "Content-ID",
    "P-Asserted-Identity",
    "RAck",
    "RSeq",
    "Max-Forwards",
    "Allow-Events",
];

/// Names already in canonical form, matched exactly first: the names this code
/// writes and the ones peers send, so the common case costs one `match` of
/// exact spellings and no case-insensitive scan. Every entry is its own
/// canonical form; a field with one of these names records its place here, so
/// finding a header compares one byte per field. The first [`REQUIRED`] are
/// the headers every request carries (RFC 3261 §8.1.1).
const KNOWN: [&str; 44] = [
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Content-Type",
    "Content-Length",
    "Subject",
    "Content-Language",
    "Expires",
    "Event",
    "Allow",
    "Allow-Events",
    "Supported",
    "Require",
    "Route",
    "Record-Route",
    "User-Agent",
    "Server",
    "Accept",
    "Subscription-State",
    "Retry-After",
    "Min-Expires",
    "Unsupported",
    "Warning",
    "Date",
    "Content-Encoding",
    "Accept-Encoding",
    "Accept-Language",
    "SIP-ETag",
    "SIP-If-Match",
    "Proxy-Require",
    "Reason",
    "P-Asserted-Identity",
    "WWW-Authenticate",
    "Authorization",
    "Organization",
    "Priority",
    "In-Reply-To",
    "MIME-Version",
    "Content-ID",
    "Timestamp",
];

/// The place of `name` in [`KNOWN`], found when compiling: a header the
/// code asks for by place costs one byte compare per field, not a name match.
const fn place(name: &str) -> u8 {
    let mut i = 0;
    while i < KNOWN.len() {
        let (k, n) = (KNOWN[i].as_bytes(), name.as_bytes());
        if k.len() == n.len() {
            let mut j = 0;
            while j < k.len() && k[j] == n[j] {
                j += 1;
            }
            if j == k.len() {
                // Fewer than 256 names, so the place fits.
                return i as u8;
            }
        }
        i += 1;
    }
    panic!("not a known header name")
}

/// Places in [`KNOWN`] that the code asks about by place.
const VIA: u8 = place("Via");
const TO: u8 = place("To");
const CALL_ID: u8 = place("Call-ID");
const CSEQ: u8 = place("CSeq");
const CONTENT_LENGTH: u8 = place("Content-Length");
pub(crate) const FROM: u8 = place("From");
pub(crate) const CONTENT_TYPE: u8 = place("Content-Type");
pub(crate) const CONTENT_LANGUAGE: u8 = place("Content-Language");
pub(crate) const SUBJECT: u8 = place("Subject");
pub(crate) const MAX_FORWARDS: u8 = place("Max-Forwards");
/// A field whose name is not in [`KNOWN`].
const OTHER: u8 = u8::MAX;

/// The headers every request must have (RFC 3261 §8.1.1): the first of [`KNOWN`].
const REQUIRED: usize = 5;

/// The place of `name` in [`KNOWN`], spelled exactly. A `match` on the
/// literals, which compiles to length tests and word compares, where a scan
/// of the table would call `memcmp` for every name of the same length.
#[inline]
fn known_place(name: &str) -> Option<u8> {
    Some(match name {
        "Via" => 0,
        "From" => 1,
        "To" => 2,
        "Call-ID" => 3,
        "CSeq" => 4,
        "Contact" => 5,
        "Max-Forwards" => 6,
        "Content-Type" => 7,
        "Content-Length" => 8,
        "Subject" => 9,
        "Content-Language" => 10,
        "Expires" => 11,
        "Event" => 12,
        "Allow" => 13,
        "Allow-Events" => 14,
        "Supported" => 15,
        "Require" => 16,
        "Route" => 17,
        "Record-Route" => 18,
        "User-Agent" => 19,
        "Server" => 20,
        "Accept" => 21,
        "Subscription-State" => 22,
        "Retry-After" => 23,
        "Min-Expires" => 24,
        "Unsupported" => 25,
        "Warning" => 26,
        "Date" => 27,
        "Content-Encoding" => 28,
        "Accept-Encoding" => 29,
        "Accept-Language" => 30,
        "SIP-ETag" => 31,
        "SIP-If-Match" => 32,
        "Proxy-Require" => 33,
        "Reason" => 34,
        "P-Asserted-Identity" => 35,
        "WWW-Authenticate" => 36,
        "Authorization" => 37,
        "Organization" => 38,
        "Priority" => 39,
        "In-Reply-To" => 40,
        "MIME-Version" => 41,
        "Content-ID" => 42,
        "Timestamp" => 43,
        _ => return None,
    })
}

/// The canonical spelling of a header name, borrowed when it is a known one,
/// with its place in [`KNOWN`] ([`OTHER`] if it has none).
#[inline]
fn canonical_known(name: &str) -> (Cow<'static, str>, u8) {
    if let Some(k) = known_place(name) {
        let known = KNOWN.get(usize::from(k)).copied().unwrap_or_default();
        return (Cow::Borrowed(known), k);
    }
    let name = canonical_spelling(name);
    let k = known_place(&name).unwrap_or(OTHER);
    (name, k)
}

/// What a header is looked up by: its place among the known names, or else
/// its canonical spelling.
enum Key {
    Known(u8),
    Other(Cow<'static, str>),
}

impl Key {
    #[inline]
    fn of(name: &str) -> Key {
        Key::canonical(canonical_known(name))
    }

    /// The key of a name [`canonical_known`] has spelled and placed.
    fn canonical((name, known): (Cow<'static, str>, u8)) -> Key {
        match known {
            OTHER => Key::Other(name),
            k => Key::Known(k),
        }
    }

    fn names(&self, f: &Field) -> bool {
        match self {
            Key::Known(k) => f.known == *k,
            Key::Other(name) => f.name == *name,
        }
    }
}

/// The canonical spelling of a header name, borrowed when it is a known one.
pub(crate) fn canonical(name: &str) -> Cow<'static, str> {
    canonical_known(name).0
}

/// The canonical spelling of a name that is not spelled as a known one.
fn canonical_spelling(name: &str) -> Cow<'static, str> {
    if name.len() == 1 {
        if let Some((_, full)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return Cow::Borrowed(full);
        }
    }
    if let Some(c) = CANONICAL.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        return Cow::Borrowed(c);
    }
    // Title-case each dash-separated word: "content-type" -> "Content-Type". Bytewise:
    // case mapping is ASCII only, so multi-byte characters pass through unchanged.
    let mut out = Vec::with_capacity(name.len());
    let mut word_start = true;
    for &b in name.as_bytes() {
        out.push(if word_start {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        });
        word_start = b == b'-';
    }
    // Only ASCII bytes changed, so the bytes are still the UTF-8 they were.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| name.to_owned()))
}

/// The canonical spelling of a header name.
pub fn canonical_name(name: &str) -> String {
    canonical(name).into_owned()
}

/// Headers whose values may be comma-separated lists (RFC 3261 §7.3.1).
fn is_list_header(name: &str) -> bool {
    matches!(
        name,
        "Via"
            | "Contact"
            | "Route"
            | "Record-Route"
            | "Allow"
            | "Supported"
            | "Require"
            | "Proxy-Require"
            | "Unsupported"
            | "Accept"
            | "Accept-Encoding"
            | "Accept-Language"
            | "Allow-Events"
            | "Content-Encoding"
            | "In-Reply-To"
            | "Warning"
    )
}

/// Splits a header value at commas outside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<String> {
    list_values(value).map(str::to_owned).collect()
}

/// The first of [`split_list`]'s values, borrowed.
fn first_of_list(value: &str) -> Option<&str> {
    list_values(value).next()
}

/// The values of a comma-separated header, borrowed and trimmed: what
/// [`split_list`] returns and [`first_of_list`] stops at the first of.
fn list_values(value: &str) -> impl Iterator<Item = &str> {
    // Without a comma, quote or '<' there is nothing to split or protect: one value.
    let plain = memchr::memchr3(b',', b'"', b'<', value.as_bytes()).is_none();
    let mut start = 0;
    let mut split = false;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        if plain {
            done = true;
            let v = trim(value);
            return (!v.is_empty()).then_some(v);
        }
        // Bytewise: every delimiter is ASCII, and an escape skipping only the lead
        // byte of a multi-byte character is harmless since continuation bytes are
        // never delimiters. At a split nothing is open, so each value starts afresh.
        let (mut quoted, mut angle, mut escaped) = (false, false, false);
        let rest = value.get(start..).unwrap_or_default();
        for (i, &b) in rest.as_bytes().iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                b',' if !quoted && !angle => {
                    start += i + 1;
                    split = true;
                    return Some(rest.get(..i).unwrap_or_default().trim());
                }
                _ => {}
            }
        }
        done = true;
        let last = rest.trim();
        (!last.is_empty() || split).then_some(last)
    })
}

impl SipMessage {
    fn with_start(start: StartLine) -> Self {
        SipMessage {
            start,
            fields: Vec::new(),
            first: [0; INDEXED],
            text: String::new(),
            body: Body::Bytes(Vec::new()),
        }
    }

    /// Finds the first field of each indexed place again, after a change to
    /// `fields`.
    fn reindex(&mut self) {
        self.first = [0; INDEXED];
        for (i, f) in self.fields.iter().enumerate() {
            if let Some(slot) = self.first.get_mut(usize::from(f.known)) {
                if *slot == 0 {
                    *slot = u8::try_from(i + 1).unwrap_or(u8::MAX);
                }
            }
        }
    }

    pub fn request(method: &str, uri: &str) -> Self {
        SipMessage::with_start(StartLine::Request {
            method: method_of(method),
            uri: uri.to_owned(),
        })
    }

    pub fn response(code: u16, reason: &str) -> Self {
        SipMessage::with_start(StartLine::Response {
            code,
            reason: reason_of(code, reason),
        })
    }

    fn value(&self, f: &Field) -> &str {
        self.text.get(f.at..f.at + f.len).unwrap_or_default()
    }

    pub fn body(&self) -> &[u8] {
        match &self.body {
            Body::InText { at, len } => self.text.get(*at..at + len).unwrap_or_default().as_bytes(),
            Body::Bytes(b) => b,
        }
    }

    /// The body as text, if it is UTF-8: read where it lies when it was checked
    /// as it arrived.
    pub fn body_text(&self) -> Option<&str> {
        match &self.body {
            Body::InText { at, len } => self.text.get(*at..at + len),
            Body::Bytes(b) => std::str::from_utf8(b).ok(),
        }
    }

    pub fn set_body(&mut self, body: Vec<u8>) {
        self.body = Body::Bytes(body);
    }

    /// A received body: after the headers in the buffer when it is UTF-8.
    fn put_body(&mut self, body: &[u8]) {
        self.body = match std::str::from_utf8(body) {
            Ok(text) => {
                let at = self.text.len();
                self.text.push_str(text);
                Body::InText {
                    at,
                    len: text.len(),
                }
            }
            Err(_) => Body::Bytes(body.to_vec()),
        };
    }

    /// Every header as (canonical name, value), in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|f| (&*f.name, self.value(f)))
    }

    /// A field for `value`, appended to the buffer.
    fn field(&mut self, (name, known): (Cow<'static, str>, u8), value: &str) -> Field {
        let at = self.text.len();
        self.text.push_str(value);
        Field {
            name,
            known,
            at,
            len: value.len(),
        }
    }

    /// Puts a header at `index` among the headers (0: first, as a Via is added).
    pub fn insert_header(&mut self, index: usize, name: &str, value: &str) {
        let f = self.field(canonical_known(name), value);
        self.fields.insert(index.min(self.fields.len()), f);
        self.reindex();
    }

    /// Builder: appends a header.
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.push_header(name, value);
        self
    }

    pub fn push_header(&mut self, name: &str, value: &str) {
        let f = self.field(canonical_known(name), value);
        let known = f.known;
        self.fields.push(f);
        // Last, so the first of its name only if there was none.
        if let Some(slot @ 0) = self.first.get_mut(usize::from(known)) {
            *slot = u8::try_from(self.fields.len()).unwrap_or(u8::MAX);
        }
    }

    /// Removes every value of `name`.
    pub fn remove_header(&mut self, name: &str) {
        let key = Key::of(name);
        self.fields.retain(|h| !key.names(h));
        self.reindex();
    }

    /// Replaces every value of `name` with one.
    pub fn set_header(&mut self, name: &str, value: &str) {
        let name = canonical_known(name);
        self.fields.retain(|h| h.name != name.0);
        let f = self.field(name, value);
        self.fields.push(f);
        self.reindex();
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The first value of a header (any spelling, compact or full).
    #[inline]
    pub fn header(&self, name: &str) -> Option<&str> {
        match Key::of(name) {
            Key::Known(k) => self.known_value(k),
            key => self
                .fields
                .iter()
                .find(|h| key.names(h))
                .map(|h| self.value(h)),
        }
    }

    /// The first value of the known header at `known` in [`KNOWN`] (a place
    /// such as [`FROM`]): [`SipMessage::header`] without the name to match.
    pub(crate) fn known_value(&self, known: u8) -> Option<&str> {
        match self.first.get(usize::from(known)) {
            Some(0) => None,
            Some(&i) if i < u8::MAX => self.fields.get(usize::from(i) - 1).map(|h| self.value(h)),
            _ => self
                .fields
                .iter()
                .find(|h| h.known == known)
                .map(|h| self.value(h)),
        }
    }

    /// Every value of a header, list headers split at their commas.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let name = canonical_known(name);
        let list = is_list_header(&name.0);
        let key = Key::canonical(name);
        let mut out = Vec::new();
        for h in self.fields.iter().filter(|h| key.names(h)) {
            let value = self.value(h);
            if !list {
                out.push(value.to_owned());
            } else if out.is_empty() {
                // The usual single header: its split is the answer, not copied again.
                out = split_list(value);
            } else {
                out.extend(split_list(value));
            }
        }
        out
    }

    /// The first of [`SipMessage::header_values`], borrowed: the top Via, say.
    pub fn first_value(&self, name: &str) -> Option<&str> {
        let name = canonical_known(name);
        let list = is_list_header(&name.0);
        self.first_of(&Key::canonical(name), list)
    }

    /// The top Via's value: [`SipMessage::first_value`] of "Via", without the
    /// name to match, for every request and response that arrives.
    pub(crate) fn top_via(&self) -> Option<&str> {
        self.first_of(&Key::Known(VIA), true)
    }

    fn first_of(&self, key: &Key, list: bool) -> Option<&str> {
        self.fields.iter().filter(|h| key.names(h)).find_map(|h| {
            if list {
                first_of_list(self.value(h))
            } else {
                Some(self.value(h))
            }
        })
    }

    pub fn call_id(&self) -> Option<&str> {
        self.known_value(CALL_ID)
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, String)> {
        self.cseq_ref().map(|(n, m)| (n, m.to_owned()))
    }

    fn cseq_ref(&self) -> Option<(u32, &str)> {
        let v = self.known_value(CSEQ)?;
        // SIP's whitespace is ASCII (RFC 3261 §25.1), and an ASCII split reads
        // bytes rather than characters.
        let mut it = v.split_ascii_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?;
        Some((n, m))
    }

    /// Parses one complete message, as received in a datagram. Without a
    /// Content-Length the body is the rest of the datagram (RFC 3261 §18.3).
    pub fn parse(bytes: &[u8], limits: &SipLimits) -> Result<SipMessage, SipError> {
        match SipMessage::parse_crlf_head(bytes, limits) {
            Some(read) => read,
            None => SipMessage::parse_delimited(bytes, limits),
        }
    }

    /// The exact reading: the head ends at the earliest blank line of either kind,
    /// found first; then its lines are read.
    fn parse_delimited(bytes: &[u8], limits: &SipLimits) -> Result<SipMessage, SipError> {
        let head_end = find_head_end(bytes)
            .ok_or_else(|| SipError::Malformed("no empty line after the headers".into()))?;
        let (head, rest) = bytes.split_at(head_end.0);
        let (msg, _) = parse_head(head, limits, Until::End, rest.len())?;
        msg.read_body(rest.get(head_end.1..).unwrap_or_default(), limits)
    }

    /// The usual datagram, read with one search: its head ends at the first
    /// CR LF CR LF, with no LF LF before it but maybe in its lines, which are
    /// read up to it. `None` where this finds something wrong or no CR LF CR LF:
    /// the datagram is read again the exact way, to say what is wrong first.
    fn parse_crlf_head(bytes: &[u8], limits: &SipLimits) -> Option<Result<SipMessage, SipError>> {
        let at = find_crlf_crlf(bytes)?;
        let (msg, head_len) = parse_head(
            bytes.get(..at)?,
            limits,
            Until::LfLf,
            bytes.len().saturating_sub(at),
        )
        .ok()?;
        let sep = if head_len == at { 4 } else { 2 };
        Some(msg.read_body(bytes.get(head_len + sep..)?, limits))
    }

    /// The message with its body taken from `rest`, the bytes after the head.
    fn read_body(mut self, rest: &[u8], limits: &SipLimits) -> Result<SipMessage, SipError> {
        let body = match self.content_length()? {
            Some(n) => {
                if n > limits.max_body {
                    return Err(SipError::BodyTooLarge(format!(
                        "body of {n} bytes exceeds {}",
                        limits.max_body
                    )));
                }
                // Bytes past Content-Length are discarded (RFC 3261 §18.3).
                rest.get(..n).ok_or_else(|| {
                    SipError::Malformed(format!(
                        "Content-Length {n} but only {} body bytes",
                        rest.len()
                    ))
                })?
            }
            None => {
                if rest.len() > limits.max_body {
                    return Err(SipError::BodyTooLarge(format!(
                        "body exceeds {} bytes",
                        limits.max_body
                    )));
                }
                rest
            }
        };
        self.put_body(body);
        Ok(self)
    }

    fn content_length(&self) -> Result<Option<usize>, SipError> {
        match self.known_value(CONTENT_LENGTH) {
            None => Ok(None),
            Some(v) => {
                let v = trim(v);
                match v.parse::<usize>() {
                    Ok(n) => Ok(Some(n)),
                    // Digits too many for a usize: a size no limit allows.
                    Err(_) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                        Err(SipError::BodyTooLarge(format!(
                            "Content-Length {} is too large",
                            truncate(v)
                        )))
                    }
                    Err(_) => Err(SipError::Malformed(format!(
                        "Content-Length '{}' is not a number",
                        truncate(v)
                    ))),
                }
            }
        }
    }

    /// Serialises with canonical header names and a Content-Length that matches the
    /// body.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Sized up front so the message is written with one allocation.
        let body = self.body();
        let mut cap = 16 + 2 + 20 + 2 + body.len();
        cap += match &self.start {
            StartLine::Request { method, uri } => method.len() + uri.len() + 12,
            StartLine::Response { reason, .. } => reason.len() + 12,
        };
        for h in &self.fields {
            cap += h.name.len() + h.len + 4;
        }
        let mut out = Vec::with_capacity(cap);
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                push_decimal(&mut out, usize::from(*code));
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        let mut wrote_length = false;
        for h in &self.fields {
            if h.known == CONTENT_LENGTH {
                if wrote_length {
                    continue;
                }
                wrote_length = true;
                push_content_length(&mut out, body.len());
            } else {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(self.value(h).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        if !wrote_length {
            push_content_length(&mut out, body.len());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    /// A response to this request that copies Via, From, To, Call-ID and CSeq
    /// (RFC 3261 §8.2.6.2); `to_tag` is added to To when it has none.
    pub fn reply(&self, code: u16, reason: &str, to_tag: Option<&str>) -> SipMessage {
        let mut resp = SipMessage::response(code, reason);
        self.copy_reply_fields(&mut resp, to_tag);
        resp
    }

    /// The bytes of [`SipMessage::reply`]'s response, written straight from the
    /// request: what a response with nothing more to add is sent as.
    pub fn reply_bytes(&self, code: u16, reason: &str, to_tag: Option<&str>) -> Vec<u8> {
        let len: usize = self.reply_fields().map(|h| h.name.len() + h.len + 4).sum();
        let mut out = Vec::with_capacity(len + reason.len() + to_tag.map_or(0, str::len) + 48);
        out.extend_from_slice(b"SIP/2.0 ");
        push_decimal(&mut out, usize::from(code));
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in self.reply_fields() {
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            let value = self.value(h);
            out.extend_from_slice(value.as_bytes());
            if h.known == TO {
                if let Some(tag) = to_tag.filter(|_| !has_tag(value.as_bytes())) {
                    out.extend_from_slice(b";tag=");
                    out.extend_from_slice(tag.as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        push_content_length(&mut out, 0);
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The fields a response copies (RFC 3261 §8.2.6.2), in order.
    fn reply_fields(&self) -> impl Iterator<Item = &Field> {
        self.fields
            .iter()
            .filter(|h| usize::from(h.known) < REQUIRED)
    }

    /// Copies Via, From, To, Call-ID and CSeq into `to`, in order, into one buffer
    /// sized for them, with room for the fields a response adds.
    fn copy_reply_fields(&self, to: &mut SipMessage, to_tag: Option<&str>) {
        let len: usize = self.reply_fields().map(|h| h.len).sum();
        to.text
            .reserve(len + to_tag.map_or(0, |t| t.len() + 5) + 64);
        to.fields.reserve(8);
        for h in self.reply_fields() {
            let f = to.field((h.name.clone(), h.known), self.value(h));
            if h.known == TO {
                add_to_tag(&mut to.text, to_tag, f.at);
                let len = to.text.len() - f.at;
                to.fields.push(Field { len, ..f });
            } else {
                to.fields.push(f);
            }
        }
        to.reindex();
    }
}

/// Where the header block ends: (end of the last header line, length of the blank
/// line separator). Bare LF line ends are accepted, as RFC 3261 §7.5 suggests.
pub(crate) fn find_head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    // A blank line is CR LF CR LF, or LF LF; the earlier of the two ends the
    // head. Two searches over the head, not one per line.
    use memchr::memmem::Finder;
    use std::sync::OnceLock;
    static LF: OnceLock<Finder<'static>> = OnceLock::new();
    let crlf = find_crlf_crlf(bytes);
    let before = crlf.map_or(bytes, |at| bytes.get(..at + 2).unwrap_or(bytes));
    match LF.get_or_init(|| Finder::new(b"\n\n")).find(before) {
        Some(at) => Some((at, 2)),
        None => crlf.map(|at| (at, 4)),
    }
}

/// Where the first CR LF CR LF is, by a searcher built once.
fn find_crlf_crlf(bytes: &[u8]) -> Option<usize> {
    use memchr::memmem::Finder;
    use std::sync::OnceLock;
    static CRLF: OnceLock<Finder<'static>> = OnceLock::new();
    CRLF.get_or_init(|| Finder::new(b"\r\n\r\n")).find(bytes)
}

/// Adds `;tag=` to a To value that has none (a response's To, RFC 3261 §8.2.6.2):
/// the value is `text` from `at` on.
fn add_to_tag(text: &mut String, to_tag: Option<&str>, at: usize) {
    let Some(tag) = to_tag else {
        return;
    };
    if !has_tag(text.get(at..).unwrap_or_default().as_bytes()) {
        text.push_str(";tag=");
        text.push_str(tag);
    }
}

/// Whether a To value carries a tag already: `;tag=` anywhere, in any case.
/// Only the bytes after each `;` are compared, not a window at every byte.
pub(crate) fn has_tag(value: &[u8]) -> bool {
    let mut rest = value;
    while let Some(i) = crate::bytes::find(b';', rest) {
        rest = rest.get(i + 1..).unwrap_or_default();
        if rest
            .get(..4)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"tag="))
        {
            return true;
        }
    }
    false
}

/// Where a head handed to [`parse_head`] ends.
#[derive(Clone, Copy, PartialEq)]
enum Until {
    /// Where the bytes end: they are the head, found by [`find_head_end`].
    End,
    /// At an LF LF within the bytes, if there is one, else where they end.
    LfLf,
}

/// The start line and headers of `head`, and where the head ends in it; `room`
/// is what follows the head in the datagram, for the body to be kept after it.
fn parse_head(
    head: &[u8],
    limits: &SipLimits,
    until: Until,
    room: usize,
) -> Result<(SipMessage, usize), SipError> {
    if head.len() > limits.max_head {
        return Err(SipError::TooLarge(format!(
            "headers of more than {} bytes",
            limits.max_head
        )));
    }
    let text = std::str::from_utf8(head)
        .map_err(|_| SipError::Malformed("headers are not UTF-8".into()))?;
    let mut lines = lines(text);
    let first = lines.next().unwrap_or_default();
    if first.len() > limits.max_line {
        return Err(SipError::TooLarge(format!(
            "start line longer than {} bytes",
            limits.max_line
        )));
    }
    let start = parse_start(first)?;
    // One header per line at most, and lines are seldom shorter than 20 bytes:
    // sized once, not grown, without counting the lines first.
    let line_count = head.len() / 20 + 1;
    let mut msg = SipMessage {
        start,
        fields: Vec::with_capacity(line_count.min(limits.max_headers)),
        first: [0; INDEXED],
        // The values are read where they lie: one copy of the block, with room
        // for the body after it.
        text: with_room(text, room.min(limits.max_body)),
        body: Body::Bytes(Vec::new()),
    };
    // The headers other than Content-Length.
    let mut others = 0;
    let mut head_len = text.len();
    for line in lines {
        if until == Until::LfLf && line.is_empty() {
            // An LF right where the line starts: LF LF, which ends the head.
            let at = offset_in(text, line).unwrap_or_default();
            if at > 0 && text.as_bytes().get(at) == Some(&b'\n') {
                head_len = at - 1;
                break;
            }
        }
        if line.len() > limits.max_line {
            return Err(SipError::TooLarge(format!(
                "a header line is longer than {} bytes",
                limits.max_line
            )));
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation (RFC 3261 §7.3.1): joined with one space.
            let Some(last) = msg.fields.pop() else {
                return Err(SipError::Malformed(
                    "a continuation line before any header".into(),
                ));
            };
            let joined = [msg.value(&last), " ", trim(line)].concat();
            if joined.len() > limits.max_line {
                return Err(SipError::TooLarge(format!(
                    "a folded header is longer than {} bytes",
                    limits.max_line
                )));
            }
            let f = msg.field((last.name, last.known), &joined);
            msg.fields.push(f);
            continue;
        }
        // The name is the token characters up to the colon, which only blanks
        // may come before (HCOLON, RFC 3261 §25.1): one pass finds and checks it.
        let name_len = line.bytes().position(|b| !is_token_char(b));
        let (name, after) = line.split_at(name_len.unwrap_or(line.len()));
        let colon = after
            .strip_prefix(':')
            .or_else(|| after.trim_start_matches([' ', '\t']).strip_prefix(':'));
        let value = match colon {
            Some(value) if !name.is_empty() => trim(value),
            _ => return Err(bad_header_line(line)),
        };
        let (name, known) = canonical_known(name);
        // Content-Length is left out of the count, once: a message without one
        // is written with one, and must still be within the limit when read back.
        if known != CONTENT_LENGTH {
            others += 1;
        }
        if others > limits.max_headers || msg.fields.len() > limits.max_headers {
            return Err(SipError::TooLarge(format!(
                "more than {} headers",
                limits.max_headers
            )));
        }
        let Some(at) = offset_in(text, value) else {
            return Err(SipError::Malformed("a header outside its block".into()));
        };
        msg.fields.push(Field {
            name,
            known,
            at,
            len: value.len(),
        });
    }
    msg.reindex();
    // RFC 3261 §8.1.1: the mandatory headers.
    if let Some(i) = msg.first.iter().take(REQUIRED).position(|&s| s == 0) {
        let missing = KNOWN.get(i).copied().unwrap_or_default();
        return Err(SipError::Malformed(format!("missing {missing}")));
    }
    let Some((_, cm)) = msg.cseq_ref() else {
        return Err(SipError::Malformed(
            "CSeq is not '<number> <method>'".into(),
        ));
    };
    if let Some(m) = msg.method() {
        if m != cm {
            return Err(SipError::Malformed(format!(
                "CSeq method {cm} does not match {m}"
            )));
        }
    }
    Ok((msg, head_len))
}

/// `text` in a buffer with `room` to spare.
fn with_room(text: &str, room: usize) -> String {
    let mut s = String::with_capacity(text.len() + room);
    s.push_str(text);
    s
}

/// Why a header line is refused: it has no colon, or what comes before the
/// colon is not a name.
fn bad_header_line(line: &str) -> SipError {
    match split_once_byte(line, b':') {
        None => SipError::Malformed(format!("header line without ':': '{}'", truncate(line))),
        Some((name, _)) => SipError::Malformed(format!(
            "bad header name '{}'",
            truncate(name.trim_end_matches([' ', '\t']))
        )),
    }
}

/// Where `inner`, a slice of `outer`, starts in it: `outer` is the header block
/// the message keeps, and every line and value is read from it in place.
fn offset_in(outer: &str, inner: &str) -> Option<usize> {
    let at = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (at + inner.len() <= outer.len()).then_some(at)
}

/// The lines of a header block, as `split('\n')` with any `\r` before the LF removed.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let t = rest?;
        let line = match crate::bytes::find(b'\n', t.as_bytes()) {
            Some(i) => {
                rest = t.get(i + 1..);
                t.get(..i).unwrap_or_default()
            }
            None => {
                rest = None;
                t
            }
        };
        Some(line.strip_suffix('\r').unwrap_or(line))
    })
}

/// `str::split_once` for an ASCII delimiter.
pub(crate) fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = crate::bytes::find(b, s.as_bytes())?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// `str::split` for an ASCII delimiter; see [`split_once_byte`].
pub(crate) fn split_byte(s: &str, b: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let t = rest?;
        match split_once_byte(t, b) {
            Some((piece, after)) => {
                rest = Some(after);
                Some(piece)
            }
            None => {
                rest = None;
                Some(t)
            }
        }
    })
}

/// The ASCII characters `char::is_whitespace` accepts.
fn is_ascii_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r')
}

/// `str::trim`, bytewise over ASCII edges; only text whose first or last
/// non-blank byte is non-ASCII needs the Unicode-aware trim.
pub(crate) fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    let Some(start) = b.iter().position(|&c| !is_ascii_ws(c)) else {
        // Empty, but still within `s`: a header's value is found by its place.
        return s.get(s.len()..).unwrap_or_default();
    };
    let end = b
        .iter()
        .rposition(|&c| !is_ascii_ws(c))
        .map_or(start, |i| i + 1);
    match (b.get(start), end.checked_sub(1).and_then(|i| b.get(i))) {
        (Some(x), Some(y)) if x.is_ascii() && y.is_ascii() => s.get(start..end).unwrap_or(s),
        _ => s.trim(),
    }
}

/// `s` without the quotes at either end (`trim_matches('"')`, bytewise: a
/// quote is ASCII, so each end found is a character boundary).
pub(crate) fn unquote(s: &str) -> &str {
    let b = s.as_bytes();
    let start = b.iter().position(|&c| c != b'"').unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b'"').map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or_default()
}

pub(crate) fn push_content_length(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(b"Content-Length: ");
    push_decimal(out, len);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal without the formatting machinery.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            // `n % 10` is below 10, so the cast cannot truncate.
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn is_token_char(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// RFC 3261 §25.1 `token` characters, one lookup per byte of a header name.
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        // `b` is below 256, so the cast cannot truncate.
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        b += 1;
    }
    t
};

fn parse_start(line: &str) -> Result<StartLine, SipError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = split_once_byte(rest, b' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| SipError::Malformed(format!("bad status code '{}'", truncate(code))))?;
        return Ok(StartLine::Response {
            code,
            reason: reason_of(code, reason),
        });
    }
    let mut parts = split_byte(line, b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SipError::Malformed(format!(
            "bad request line '{}'",
            truncate(line)
        )));
    };
    if version != "SIP/2.0" {
        return Err(SipError::Malformed(format!(
            "unsupported version '{}'",
            truncate(version)
        )));
    }
    if method.is_empty() || !method.bytes().all(is_token_char) {
        return Err(SipError::Malformed(format!(
            "bad method '{}'",
            truncate(method)
        )));
    }
    if uri.is_empty() || memchr::memchr(b':', uri.as_bytes()).is_none() {
        return Err(SipError::Malformed(format!(
            "bad Request-URI '{}'",
            truncate(uri)
        )));
    }
    Ok(StartLine::Request {
        method: method_of(method),
        uri: uri.to_owned(),
    })
}

/// Frames SIP messages on a stream transport by Content-Length (RFC 3261 §18.3).
/// Memory is bounded by the header and body limits, and each byte is searched once
/// for the end of the headers however the stream is split.
#[derive(Debug)]
pub struct StreamDecoder {
    limits: SipLimits,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the end of the headers.
    scanned: usize,
    /// Where the header line being read starts in `buf`.
    line_start: usize,
    /// A message whose headers are read, waiting for its body: (message, where the
    /// body starts, where the message ends).
    pending: Option<(SipMessage, usize, usize)>,
}

impl StreamDecoder {
    pub fn new(limits: SipLimits) -> Self {
        StreamDecoder {
            limits,
            buf: Vec::new(),
            scanned: 0,
            line_start: 0,
            pending: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The bytes buffered of the message being read: after an error, what a
    /// response to it can be built from.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next complete message, `None` until more bytes arrive. An error leaves
    /// the stream unusable (its framing is lost): close the connection.
    pub fn next_message(&mut self) -> Result<Option<SipMessage>, SipError> {
        if self.pending.is_none() {
            if self.scanned == 0 {
                // CRLF keep-alives between messages (RFC 5626 §3.5.1).
                let skip = self
                    .buf
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                self.buf.drain(..skip);
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            let Some((head_len, sep)) = self.find_head_end()? else {
                return Ok(None);
            };
            let head = self.buf.get(..head_len).unwrap_or_default();
            let (msg, _) = parse_head(head, &self.limits, Until::End, 0)?;
            let Some(len) = msg.content_length()? else {
                return Err(SipError::Malformed(
                    "Content-Length is required on stream transports".into(),
                ));
            };
            // Refused on the headers alone: the body is never waited for.
            if len > self.limits.max_body {
                return Err(SipError::BodyTooLarge(format!(
                    "body of {len} bytes exceeds {}",
                    self.limits.max_body
                )));
            }
            self.pending = Some((msg, head_len + sep, head_len + sep + len));
        }
        match &self.pending {
            Some((_, _, total)) if self.buf.len() >= *total => {}
            _ => return Ok(None),
        }
        let Some((mut msg, start, total)) = self.pending.take() else {
            return Ok(None);
        };
        msg.put_body(self.buf.get(start..total).unwrap_or_default());
        self.buf.drain(..total);
        self.scanned = 0;
        self.line_start = 0;
        Ok(Some(msg))
    }

    /// Searches the bytes not searched yet for the end of the headers, enforcing the
    /// line and header limits on what has arrived so far.
    fn find_head_end(&mut self) -> Result<Option<(usize, usize)>, SipError> {
        // Back a few bytes: the blank line may straddle two reads.
        let from = self.scanned.saturating_sub(3);
        let fresh = self.buf.get(from..).unwrap_or_default();
        if let Some((at, sep)) = find_head_end(fresh) {
            return Ok(Some((from + at, sep)));
        }
        if let Some(nl) = fresh.iter().rposition(|b| *b == b'\n') {
            self.line_start = self.line_start.max(from + nl + 1);
        }
        self.scanned = self.buf.len();
        if self.buf.len() - self.line_start.min(self.buf.len()) > self.limits.max_line {
            return Err(SipError::TooLarge(format!(
                "a header line is longer than {} bytes",
                self.limits.max_line
            )));
        }
        if self.buf.len() > self.limits.max_head {
            return Err(SipError::TooLarge(format!(
                "no end of headers within {} bytes",
                self.limits.max_head
            )));
        }
        if !self.buf.starts_with(b"SIP/2.0 ")
            && !self
                .buf
                .iter()
                .take(32)
                .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\r' || *b == b'\n')
        {
            return Err(SipError::Garbage(
                "binary data where a SIP message should start".into(),
            ));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn common_methods_and_reasons_are_borrowed_and_the_rest_kept_as_written() {
        use super::{SipLimits, SipMessage, StartLine};
        use std::borrow::Cow;
        let parse = |text: &str| {
            SipMessage::parse(text.as_bytes(), &SipLimits::default())
                .unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
                .start
        };
        let head = |cseq: &str| {
            format!(
                "\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 {cseq}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        for (line, method_or_reason, borrowed) in [
            ("MESSAGE sip:a@b SIP/2.0", "MESSAGE", true),
            ("NOTIFY sip:a@b SIP/2.0", "NOTIFY", true),
            // Methods are case-sensitive: this one is not MESSAGE, and stays as sent.
            ("message sip:a@b SIP/2.0", "message", false),
            ("FROBNICATE sip:a@b SIP/2.0", "FROBNICATE", false),
            ("SIP/2.0 200 OK", "OK", true),
            (
                "SIP/2.0 503 Service Unavailable",
                "Service Unavailable",
                true,
            ),
            ("SIP/2.0 100 Trying", "Trying", true),
            ("SIP/2.0 202 Accepted", "Accepted", true),
            // A standard phrase, but not its code's: kept as sent.
            (
                "SIP/2.0 200 Service Unavailable",
                "Service Unavailable",
                false,
            ),
            ("SIP/2.0 200 Okay then", "Okay then", false),
            ("SIP/2.0 200 ok", "ok", false),
            ("SIP/2.0 200 ", "", false),
        ] {
            let cseq = if line.starts_with("SIP/") {
                "MESSAGE"
            } else {
                method_or_reason
            };
            let text = match parse(&format!("{line}{}", head(cseq))) {
                StartLine::Request { method, .. } => method,
                StartLine::Response { reason, .. } => reason,
            };
            assert_eq!(text, method_or_reason, "{line}");
            assert_eq!(matches!(text, Cow::Borrowed(_)), borrowed, "{line}");
        }
        assert!(matches!(
            SipMessage::response(200, "OK").start,
            StartLine::Response {
                reason: Cow::Borrowed("OK"),
                ..
            }
        ));
        assert!(matches!(
            SipMessage::request("MESSAGE", "sip:a@b").start,
            StartLine::Request {
                method: Cow::Borrowed("MESSAGE"),
                ..
            }
        ));
    }

    #[test]
    fn a_tag_is_found_where_a_five_byte_window_finds_it() {
        let window = |v: &str| {
            v.as_bytes()
                .windows(5)
                .any(|w| w.eq_ignore_ascii_case(b";tag="))
        };
        let pieces = [
            ";",
            "t",
            "tag",
            "TaG",
            "ta",
            "g=",
            "=",
            "x",
            "<sip:a@b>",
            "é",
        ];
        let mut rng = crate::rng::Rng::new(11);
        let mut found = 0;
        for _ in 0..50_000 {
            let len = (rng.next_u64() % 10) as usize;
            let v: String = (0..len)
                .map(|_| pieces[(rng.next_u64() as usize) % pieces.len()])
                .collect();
            assert_eq!(has_tag(v.as_bytes()), window(&v), "{v:?}");
            found += usize::from(window(&v));
        }
        // Both answers come up often enough to compare.
        assert!(found > 100, "{found}");
        for v in [
            "<sip:a@b>;TAG=1",
            "<sip:a@b>;tag=",
            "<sip:a@b>;tag",
            ";;tag=x",
            "tag=1",
        ] {
            assert_eq!(has_tag(v.as_bytes()), window(v), "{v:?}");
        }
    }

    #[test]
    fn unquoting_is_trim_matches() {
        for s in [
            "",
            "\"",
            "\"\"",
            "a",
            "\"a\"",
            "\"\"é\"",
            "a\"b",
            "\"utf-8",
            "utf-8\"\"",
        ] {
            assert_eq!(unquote(s), s.trim_matches('"'), "{s:?}");
        }
    }

    use super::*;

    const MSG: &str = "MESSAGE sip:bob@b.example SIP/2.0\r\n\
        v: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n\
        f: <sip:alice@a.example>;tag=1\r\n\
        t: sip:bob@b.example\r\n\
        i: abc@10.0.0.1\r\n\
        CSeq: 1 MESSAGE\r\n\
        Subject: folded\r\n \t line\r\n\
        c: text/plain\r\n\
        l:   5\r\n\r\nhello";

    #[test]
    fn a_message_at_the_header_limit_reads_back_with_its_content_length() {
        let limits = SipLimits::default();
        // Five mandatory headers and padding up to the limit, no Content-Length.
        let pad: String = (0..limits.max_headers - 5)
            .map(|i| format!("X-Pad-{i}: {i}\r\n"))
            .collect();
        let text = format!(
            "MESSAGE sip:b@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             From: <sip:a@a.example>;tag=1\r\nTo: <sip:b@b.example>\r\nCall-ID: c\r\n\
             CSeq: 1 MESSAGE\r\n{pad}\r\n"
        );
        let m = SipMessage::parse(text.as_bytes(), &limits).expect("at the limit");
        let again = SipMessage::parse(&m.to_bytes(), &limits).expect("reads back");
        assert_eq!(again.header("Content-Length"), Some("0"));
        let over = text.replace("\r\n\r\n", "\r\nX-One-More: 1\r\n\r\n");
        assert!(matches!(
            SipMessage::parse(over.as_bytes(), &limits),
            Err(SipError::TooLarge(_))
        ));
    }

    #[test]
    fn an_empty_header_value_is_a_header() {
        let text = MSG.replace("Subject: folded\r\n \t line", "Subject:\r\nSupported:   ");
        let m = SipMessage::parse(text.as_bytes(), &SipLimits::default()).expect("parses");
        assert_eq!(m.header("Subject"), Some(""));
        assert_eq!(m.header("Supported"), Some(""));
        assert_eq!(m.header("Content-Type"), Some("text/plain"));
        let again = SipMessage::parse(&m.to_bytes(), &SipLimits::default()).expect("re-parses");
        assert_eq!(again.header("Subject"), Some(""));
    }

    #[test]
    fn a_reply_written_from_the_request_is_the_reply_serialised() {
        let tagged = MSG.replace("t: sip:bob@b.example", "t: <sip:bob@b.example>;TAG=x9");
        let two_vias = MSG.replace(
            "f: <sip",
            "Via: SIP/2.0/UDP 10.0.0.3;branch=z9hG4bK3\r\nf: <sip",
        );
        for text in [MSG, tagged.as_str(), two_vias.as_str()] {
            let m = SipMessage::parse(text.as_bytes(), &SipLimits::default()).expect("parses");
            for (code, reason, tag) in
                [(200, "OK", Some("gw1")), (503, "Service Unavailable", None)]
            {
                let written = m.reply_bytes(code, reason, tag);
                assert_eq!(
                    String::from_utf8_lossy(&written),
                    String::from_utf8_lossy(&m.reply(code, reason, tag).to_bytes())
                );
            }
        }
        let m = SipMessage::parse(MSG.as_bytes(), &SipLimits::default()).expect("parses");
        let text = String::from_utf8(m.reply_bytes(200, "OK", Some("gw1"))).expect("utf-8");
        assert!(
            text.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.0.0.1"),
            "{text}"
        );
        assert!(
            text.contains("\r\nTo: sip:bob@b.example;tag=gw1\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn compact_folded_and_list_headers() {
        let m = SipMessage::parse(MSG.as_bytes(), &SipLimits::default()).expect("parses");
        assert_eq!(m.method(), Some("MESSAGE"));
        assert_eq!(m.call_id(), Some("abc@10.0.0.1"));
        assert_eq!(m.header("Subject"), Some("folded line"));
        assert_eq!(m.header("content-type"), Some("text/plain"));
        assert_eq!(m.header_values("Via").len(), 2);
        assert_eq!(m.body(), b"hello");
        let again = SipMessage::parse(&m.to_bytes(), &SipLimits::default()).expect("re-parses");
        assert_eq!(again, m);
        assert_eq!(again.header("Content-Length"), Some("5"));
    }

    #[test]
    fn malformed_requests_say_why() {
        let cases = [
            ("MESSAGE sip:b@b SIP/2.0\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\n\r\n", "missing Via"),
            ("MESSAGE sip:b@b SIP/3.0\r\n\r\n", "unsupported version"),
            ("MESSAGE\r\n\r\n", "bad request line"),
            ("MESSAGE sip:b@b SIP/2.0\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n", "does not match"),
            ("MESSAGE sip:b@b SIP/2.0\r\nVia x\r\n\r\n", "without ':'"),
            ("MESSAGE sip:b@b SIP/2.0\r\nVi a: x\r\n\r\n", "bad header name 'Vi a'"),
            ("MESSAGE sip:b@b SIP/2.0\r\n: x\r\n\r\n", "bad header name ''"),
            ("MESSAGE sip:b@b SIP/2.0\r\nVia\u{a0}: x\r\n\r\n", "bad header name 'Via\u{a0}'"),
            ("MESSAGE sip:b@b SIP/2.0\r\nVia\t :x\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n", "does not match"),
            ("MESSAGE sip:b@b SIP/2.0\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 9\r\n\r\nab", "only 2 body bytes"),
        ];
        for (text, why) in cases {
            let err = SipMessage::parse(text.as_bytes(), &SipLimits::default()).expect_err(why);
            let (code, reason) = err.response();
            assert_eq!(code, 400, "{why}");
            assert!(reason.contains(why), "{reason} should say {why}");
        }
    }

    #[test]
    fn stream_framing_and_limits() {
        let mut d = StreamDecoder::new(SipLimits::default());
        let two = format!("\r\n\r\n{MSG}{MSG}");
        for b in two.as_bytes() {
            d.push(std::slice::from_ref(b));
        }
        assert!(d.next_message().expect("first").is_some());
        assert!(d.next_message().expect("second").is_some());
        assert_eq!(d.next_message(), Ok(None));
        let mut d = StreamDecoder::new(SipLimits {
            max_body: 3,
            ..SipLimits::default()
        });
        d.push(MSG.as_bytes());
        assert!(matches!(d.next_message(), Err(SipError::BodyTooLarge(_))));
        let mut d = StreamDecoder::new(SipLimits::default());
        d.push(b"MESSAGE sip:b@b SIP/2.0\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\n\r\n");
        assert!(
            matches!(d.next_message(), Err(SipError::Malformed(t)) if t.contains("Content-Length"))
        );
    }

    #[test]
    fn stream_read_byte_by_byte_and_bounded() {
        // Asked after every byte, as a host does when reads are tiny.
        let mut d = StreamDecoder::new(SipLimits::default());
        let mut got = 0;
        for b in format!("\r\n{MSG}\r\n{MSG}").as_bytes() {
            d.push(std::slice::from_ref(b));
            if let Some(m) = d.next_message().expect("frames") {
                assert_eq!(m.body(), b"hello");
                got += 1;
            }
        }
        assert_eq!(got, 2);
        assert_eq!(d.buffered_len(), 0);
        // An endless header line is cut at the line limit, endless headers at the
        // header limit, whatever the read sizes.
        let limits = SipLimits::default();
        let mut d = StreamDecoder::new(limits);
        d.push(b"MESSAGE sip:b@b SIP/2.0\r\nSubject: ");
        let mut err = None;
        while err.is_none() && d.buffered_len() < 1 << 20 {
            d.push(b"sssssss");
            err = d.next_message().err();
        }
        assert!(matches!(err, Some(SipError::TooLarge(t)) if t.contains("header line")));
        assert!(d.buffered_len() <= limits.max_line + 64);
        let mut d = StreamDecoder::new(limits);
        d.push(b"MESSAGE sip:b@b SIP/2.0\r\n");
        let mut err = None;
        while err.is_none() && d.buffered_len() < 1 << 20 {
            d.push(b"X-A: b\r\n");
            err = d.next_message().err();
        }
        assert!(matches!(err, Some(SipError::TooLarge(t)) if t.contains("no end of headers")));
        assert!(d.buffered_len() <= limits.max_head + 16);
        // A huge Content-Length is refused on the headers alone.
        let mut d = StreamDecoder::new(limits);
        d.push(b"MESSAGE sip:b@b SIP/2.0\r\nVia: x\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 999999999\r\n\r\n");
        assert!(matches!(d.next_message(), Err(SipError::BodyTooLarge(_))));
    }

    /// The spelling rules as first written, to check the fast paths against.
    fn canonical_reference(name: &str) -> String {
        if name.len() == 1 {
            if let Some((_, full)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
                return (*full).to_owned();
            }
        }
        if let Some(c) = CANONICAL.iter().find(|c| c.eq_ignore_ascii_case(name)) {
            return (*c).to_owned();
        }
        name.split('-')
            .map(|w| {
                let mut cs = w.chars();
                match cs.next() {
                    Some(f) => {
                        f.to_ascii_uppercase().to_string() + &cs.as_str().to_ascii_lowercase()
                    }
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join("-")
    }

    #[test]
    fn canonical_names_match_the_reference() {
        let mut names: Vec<String> = [
            "Via",
            "via",
            "VIA",
            "t",
            "T",
            "i",
            "x",
            "q",
            "call-id",
            "CALL-ID",
            "cseq",
            "www-authenticate",
            "sip-etag",
            "content-type",
            "X-Custom-header",
            "-a--b-",
            "",
            "-",
            "é-ü",
            "éa-Üb",
            "a",
            "Ab",
            "max-forwards",
            "SUBSCRIPTION-STATE",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        names.extend(COMPACT.iter().map(|(c, full)| format!("{c}{full}")));
        names.extend(CANONICAL.iter().map(|c| c.to_ascii_lowercase()));
        let mut rng = crate::rng::Rng::new(9);
        let alphabet: Vec<char> = "aZcIdD-éSsTt".chars().collect();
        for _ in 0..2000 {
            let len = (rng.next_u64() % 8) as usize;
            names.push(
                (0..len)
                    .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
                    .collect(),
            );
        }
        for name in &names {
            assert_eq!(canonical_name(name), canonical_reference(name), "{name:?}");
        }
        // Every known name is its own canonical form and knows its place, and
        // any other spelling of it finds the same place.
        for (i, name) in KNOWN.iter().enumerate() {
            let place = u8::try_from(i).unwrap();
            assert_eq!(canonical_known(name), (Cow::Borrowed(*name), place));
            assert_eq!(canonical_reference(name), *name);
            assert_eq!(
                canonical_known(&name.to_ascii_lowercase()).1,
                place,
                "{name}"
            );
        }
        for (c, full) in COMPACT {
            assert_eq!(canonical_known(c).1, known_place(full).unwrap_or(OTHER));
        }
        assert_eq!(canonical_known("X-Custom").1, OTHER);
        let places = [TO, CALL_ID, CSEQ, CONTENT_LENGTH].map(|k| KNOWN[usize::from(k)]);
        assert_eq!(places, ["To", "Call-ID", "CSeq", "Content-Length"]);
        assert_eq!(KNOWN[..REQUIRED], ["Via", "From", "To", "Call-ID", "CSeq"]);
    }

    #[test]
    fn headers_are_found_by_place_after_every_change() {
        let mut m = SipMessage::parse(
            b"MESSAGE sip:b@b SIP/2.0\r\nVia: v1\r\nf: a\r\nTo: b\r\ni: 1\r\nCSeq: 7 MESSAGE\r\nl: 2\r\n\r\nhi",
            &SipLimits::default(),
        )
        .expect("parses");
        assert_eq!(m.call_id(), Some("1"));
        assert_eq!(m.cseq(), Some((7, "MESSAGE".to_owned())));
        assert_eq!(m.body_text(), Some("hi"));
        m.insert_header(0, "Via", "v0");
        assert_eq!(m.header("v"), Some("v0"));
        assert_eq!(m.known_value(FROM), Some("a"));
        m.remove_header("Via");
        assert_eq!(m.header("Via"), None);
        assert_eq!(m.header("From"), Some("a"));
        m.set_header("From", "c");
        assert_eq!(m.known_value(FROM), Some("c"));
        assert_eq!(m.header("To"), Some("b"));
        let r = m.reply(200, "OK", Some("t"));
        assert_eq!(r.header("To"), Some("b;tag=t"));
        assert_eq!(r.call_id(), Some("1"));
        assert_eq!(r.header("From"), Some("c"));
        // Past the places a message keeps: found by a scan.
        let mut many = SipMessage::request("MESSAGE", "sip:b@b");
        for i in 0..300 {
            many.push_header("X-N", &i.to_string());
        }
        many.push_header("Subject", "last");
        many.push_header("Subject", "later");
        assert_eq!(many.known_value(SUBJECT), Some("last"));
        assert_eq!(many.header("Call-ID"), None);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_kept_as_bytes() {
        let m = SipMessage::parse(
            b"MESSAGE sip:b@b SIP/2.0\r\nVia: v\r\nFrom: a\r\nTo: b\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 3\r\n\r\na\xffb",
            &SipLimits::default(),
        )
        .expect("parses");
        assert_eq!(m.body(), b"a\xffb");
        assert_eq!(m.body_text(), None);
        assert_eq!(
            SipMessage::parse(&m.to_bytes(), &SipLimits::default()),
            Ok(m)
        );
    }

    #[test]
    fn serialises_start_lines_and_one_content_length() {
        let mut r = SipMessage::response(200, "OK")
            .with("content-length", "99")
            .with("Via", "x")
            .with("l", "7");
        r.set_body(b"hello".to_vec());
        assert_eq!(
            r.to_bytes(),
            b"SIP/2.0 200 OK\r\nContent-Length: 5\r\nVia: x\r\n\r\nhello".to_vec()
        );
        let q = SipMessage::request("OPTIONS", "sip:a@b").with("To", "<sip:a@b>");
        assert_eq!(
            q.to_bytes(),
            b"OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b>\r\nContent-Length: 0\r\n\r\n".to_vec()
        );
        let mut big = SipMessage::response(699, "");
        big.set_body(vec![b'x'; 1_234_567]);
        assert!(big
            .to_bytes()
            .starts_with(b"SIP/2.0 699 \r\nContent-Length: 1234567\r\n\r\nx"));
    }

    #[test]
    fn trims_as_str_does() {
        let alphabet: Vec<char> = " \t\r\n\x0b\x0c\u{a0}\u{2003}\u{85}aé-".chars().collect();
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 7) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
                .collect();
            assert_eq!(trim(&s), s.trim(), "{s:?}");
            let parts: Vec<&str> = split_byte(&s, b'-').collect();
            assert_eq!(parts, s.split('-').collect::<Vec<_>>(), "{s:?}");
            assert_eq!(split_once_byte(&s, b'-'), s.split_once('-'), "{s:?}");
        }
    }

    #[test]
    fn split_list_and_head_end() {
        for (v, want) in [
            ("a, b ,c", vec!["a", "b", "c"]),
            (
                "\"x, \\\" y\" <sip:a,b>, z",
                vec!["\"x, \\\" y\" <sip:a,b>", "z"],
            ),
            ("", vec![]),
            (" , ", vec!["", ""]),
            ("é,ü", vec!["é", "ü"]),
        ] {
            assert_eq!(split_list(v), want, "{v:?}");
        }
        let mut rng = crate::rng::Rng::new(11);
        let alphabet = b"a ,\"\\<>";
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 10) as usize;
            let v: String = (0..len)
                .map(|_| char::from(alphabet[(rng.next_u64() as usize) % alphabet.len()]))
                .collect();
            let want = split_list(&v);
            assert_eq!(first_of_list(&v), want.first().map(String::as_str), "{v:?}");
            let m = SipMessage::response(200, "OK")
                .with("Via", &v)
                .with("To", &v)
                .with("v", "x, y");
            assert_eq!(
                m.first_value("Via"),
                m.header_values("Via").first().map(String::as_str),
                "{v:?}"
            );
            assert_eq!(
                m.first_value("t"),
                m.header_values("To").first().map(String::as_str)
            );
        }
        assert_eq!(find_head_end(b"a\r\n\r\nb"), Some((1, 4)));
        assert_eq!(find_head_end(b"a\n\nb\r\n\r\n"), Some((1, 2)));
        assert_eq!(find_head_end(b"a\r\n\nb"), Some((2, 2)));
        assert_eq!(find_head_end(b"\n\r\n"), None);
        assert_eq!(find_head_end(b"\r\n\r\n"), Some((0, 4)));
        assert_eq!(find_head_end(b"\n\n"), Some((0, 2)));
        assert_eq!(find_head_end(b"abc\r\n"), None);
    }

    /// Reading the head up to the first CR LF CR LF gives what finding the
    /// earliest blank line first and then reading the lines before it gives,
    /// message or error, over generated datagrams: line breaks of
    /// every kind, blank, folded and bad lines, bytes that are not UTF-8, and
    /// limits that the head meets or exceeds.
    #[test]
    fn a_head_read_to_crlf_crlf_reads_as_the_delimited_head() {
        const PIECES: &[&[u8]] = &[
            b"MESSAGE sip:a@b SIP/2.0",
            b"Via: SIP/2.0/UDP h;branch=z9hG4bK1",
            b"From: <sip:c@d>;tag=1",
            b"To: <sip:a@b>",
            b"Call-ID: x",
            b"CSeq: 1 MESSAGE",
            b"Content-Length: 2",
            b"  folded on",
            b"Subject: \xff",
            b"no colon",
            b"",
            b"hi",
        ];
        const BREAKS: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r",
            b"\r\n\r\n",
            b"\n\r\n",
            b"\r\r\n",
            b"\r\n\r\r\n",
        ];
        let tight = SipLimits {
            max_headers: 5,
            max_line: 30,
            max_head: 120,
            max_body: 4,
        };
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut read = 0;
        for case in 0..50_000 {
            let mut bytes = Vec::new();
            // Mostly the pieces of a good request in order, sometimes any piece.
            let count = match next(2) {
                0 => 7 + next(4),
                _ => 2 + next(12),
            };
            for i in 0..count {
                let piece = match next(8) {
                    0 => PIECES[next(PIECES.len())],
                    _ => PIECES[i % 7],
                };
                bytes.extend_from_slice(piece);
                bytes.extend_from_slice(match next(10) {
                    0 => BREAKS[next(BREAKS.len())],
                    _ => b"\r\n",
                });
            }
            if next(2) == 0 {
                bytes.extend_from_slice(b"\r\nhi");
            }
            let limits = if case % 3 == 0 {
                tight
            } else {
                SipLimits::default()
            };
            let got = SipMessage::parse(&bytes, &limits);
            read += usize::from(got.is_ok());
            assert_eq!(
                got,
                SipMessage::parse_delimited(&bytes, &limits),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // The generated datagrams are not all refused.
        assert!(read > 1000, "{read} read");
    }

    /// The end of the head is where the earliest blank line of either kind
    /// starts, over every string of up to 9 bytes of `a`, CR and LF.
    #[test]
    fn head_end_is_the_earliest_blank_line() {
        fn earliest(bytes: &[u8]) -> Option<(usize, usize)> {
            (0..bytes.len()).find_map(|i| {
                let rest = &bytes[i..];
                if rest.starts_with(b"\n\n") {
                    Some((i, 2))
                } else if rest.starts_with(b"\r\n\r\n") {
                    Some((i, 4))
                } else {
                    None
                }
            })
        }
        for len in 0..=9u32 {
            for mut n in 0..3usize.pow(len) {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = [b'a', b'\r', b'\n'][n % 3];
                        n /= 3;
                        b
                    })
                    .collect();
                assert_eq!(find_head_end(&bytes), earliest(&bytes), "{bytes:?}");
            }
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = crate::rng::Rng::new(5);
        let alphabet = b"SIP/2.0 :\r\n;=,<>\"abcdefVCLl0123456789";
        for _ in 0..2000 {
            let len = (rng.next_u64() % 200) as usize;
            let junk: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                .collect();
            let _ = SipMessage::parse(&junk, &SipLimits::default());
            let mut d = StreamDecoder::new(SipLimits::default());
            d.push(&junk);
            let _ = d.next_message();
        }
    }
}
