//! An incremental XMPP stream reader. Bytes may arrive split anywhere. A
//! single-pass parser reads each element that a read brought whole; otherwise a
//! resumable scanner finds where the stream header and each top-level element end
//! (rejecting what XMPP's restricted XML forbids as soon as it is seen), and the
//! parser reads the element once it is complete. Memory is bounded by the
//! stanza-size limit.

use std::fmt;

use super::{is_xml_char, ns, parse, Element, Stanza};

pub type Limits = crate::config::XmlLimits;

/// The attributes of an opening `<stream:stream>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
    /// The default namespace declared on the header (the content namespace).
    pub default_ns: Option<String>,
    /// Some prefix on the header is bound to `jabber:server:dialback`.
    pub dialback_declared: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Header(StreamHeader),
    Element(Element),
    End,
}

/// As [`StreamEvent`], with each top-level element as read: its tree is built
/// only if asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum StanzaEvent {
    Header(StreamHeader),
    Stanza(Stanza),
    End,
}

/// Why the stream cannot be read further. Each maps to an RFC 6120 stream error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XmlError {
    NotWellFormed(String),
    RestrictedXml(String),
    InvalidNamespace(String),
    BadNamespacePrefix(String),
    PolicyViolation(String),
    UnsupportedEncoding(String),
}

impl XmlError {
    /// The stream error condition to send.
    pub fn condition(&self) -> &'static str {
        match self {
            XmlError::NotWellFormed(_) => "not-well-formed",
            XmlError::RestrictedXml(_) => "restricted-xml",
            XmlError::InvalidNamespace(_) => "invalid-namespace",
            XmlError::BadNamespacePrefix(_) => "bad-namespace-prefix",
            XmlError::PolicyViolation(_) => "policy-violation",
            XmlError::UnsupportedEncoding(_) => "unsupported-encoding",
        }
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XmlError::NotWellFormed(t) => write!(f, "not well-formed XML: {t}"),
            XmlError::RestrictedXml(t) => write!(f, "XML that XMPP forbids: {t}"),
            XmlError::InvalidNamespace(t) => write!(f, "invalid namespace: {t}"),
            XmlError::BadNamespacePrefix(t) => write!(f, "undeclared namespace prefix: {t}"),
            XmlError::PolicyViolation(t) => write!(f, "limit exceeded: {t}"),
            XmlError::UnsupportedEncoding(t) => write!(f, "unsupported encoding: {t}"),
        }
    }
}

impl std::error::Error for XmlError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Before the header: optional `<?xml?>` declaration, then `<stream:stream>`.
    Prolog,
    Body,
    Ended,
    Failed,
}

/// Where the resumable scanner stands inside the construct being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    Content,
    AfterLt,
    StartTag {
        quote: u8,
        slash: bool,
    },
    EndTag {
        quote: u8,
    },
    /// After `<!`: bytes matched so far against `[CDATA[`.
    Bang {
        matched: usize,
    },
    Cdata {
        brackets: usize,
    },
    /// `<?…?>`: only the leading XML declaration is allowed.
    Pi {
        question: bool,
    },
}

#[derive(Clone, Copy, Debug)]
struct Scan {
    /// Absolute index of the construct's first byte.
    start: usize,
    /// Next byte to examine.
    at: usize,
    depth: usize,
    lex: Lex,
    /// The construct is a stream-closing `</…>` at top level.
    closing: bool,
    /// The construct is the prolog's `<?xml?>` declaration.
    decl: bool,
    /// Where the current tag's name starts and ends (absolute indexes).
    name_start: usize,
    name_end: Option<usize>,
}

/// The incremental reader for one direction of one s2s connection.
pub struct StreamReader {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes before `pos` are consumed.
    pos: usize,
    stage: Stage,
    scan: Option<Scan>,
    /// Namespace declarations in scope for top-level elements (from the header),
    /// each URI resolved to its [`Name`] once rather than per element.
    scope: Vec<parse::Outer>,
    seen_decl: bool,
    /// Names of the elements open in the construct being scanned, so that a wrong
    /// end tag is refused at once instead of waiting for the size limit.
    open_names: Vec<(usize, usize)>,
    /// The parser's scratch space, kept for its allocations.
    scratch: parse::Scratch,
    /// The buffered bytes from `text_at` on, as far as they are known to be UTF-8,
    /// so that each byte is checked once however many elements a read brought.
    text: String,
    text_at: usize,
    /// Bytes before this index (and from `text_at`) hold no character XML forbids.
    clean_to: usize,
    /// Tests compare the reader with quick-xml's parse of the same bytes.
    #[cfg(any(test, feature = "oracle"))]
    oracle: bool,
}

impl StreamReader {
    pub fn new(limits: Limits) -> Self {
        StreamReader {
            limits,
            buf: Vec::new(),
            pos: 0,
            stage: Stage::Prolog,
            scan: None,
            scope: Vec::new(),
            seen_decl: false,
            open_names: Vec::new(),
            scratch: parse::Scratch::default(),
            text: String::new(),
            text_at: 0,
            clean_to: 0,
            #[cfg(any(test, feature = "oracle"))]
            oracle: false,
        }
    }

    /// A reader that parses each element with quick-xml (the scanner and the
    /// header are shared): the reference the reader is compared with.
    #[cfg(any(test, feature = "oracle"))]
    pub fn quick_xml_oracle(limits: Limits) -> Self {
        let mut r = StreamReader::new(limits);
        r.oracle = true;
        r
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scan = None;
            self.text.clear();
        }
        self.buf.extend_from_slice(bytes);
    }

    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A stream restart (after STARTTLS or SASL): a new header is expected.
    /// Bytes already received stay buffered.
    pub fn restart(&mut self) {
        self.stage = Stage::Prolog;
        self.scan = None;
        self.scope.clear();
        self.seen_decl = false;
    }

    /// The bytes after the last returned event (the start of TLS after `<proceed/>`).
    pub fn take_unconsumed(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.pos.min(self.buf.len()));
        self.buf.clear();
        self.text.clear();
        self.pos = 0;
        self.scan = None;
        rest
    }

    /// The next complete event, or `None` until more bytes arrive.
    pub fn next_event(&mut self) -> Result<Option<StreamEvent>, XmlError> {
        Ok(self.next_stanza_event()?.map(|event| match event {
            StanzaEvent::Header(h) => StreamEvent::Header(h),
            StanzaEvent::Stanza(s) => StreamEvent::Element(s.into_element()),
            StanzaEvent::End => StreamEvent::End,
        }))
    }

    /// As [`StreamReader::next_event`], with the element as read.
    pub fn next_stanza_event(&mut self) -> Result<Option<StanzaEvent>, XmlError> {
        match self.stage {
            Stage::Ended | Stage::Failed => return Ok(None),
            Stage::Prolog | Stage::Body => {}
        }
        let result = self.next_inner();
        if result.is_err() {
            self.stage = Stage::Failed;
        }
        result
    }

    fn next_inner(&mut self) -> Result<Option<StanzaEvent>, XmlError> {
        if self.stage == Stage::Body && self.scan.is_none() {
            if let Some(el) = self.try_element() {
                self.compact();
                return Ok(Some(StanzaEvent::Stanza(el)));
            }
        }
        loop {
            let Some((start, end, scan)) = self.scan_construct()? else {
                return Ok(None);
            };
            self.pos = end;
            self.scan = None;
            if scan.decl {
                check_declaration(self.buf.get(start..end).unwrap_or_default())?;
                self.compact();
                continue;
            }
            if scan.closing {
                if self.stage != Stage::Body {
                    return Err(XmlError::NotWellFormed(
                        "a closing tag before the stream header".into(),
                    ));
                }
                self.stage = Stage::Ended;
                self.compact();
                return Ok(Some(StanzaEvent::End));
            }
            let event = match self.stage {
                Stage::Prolog => {
                    let bytes = self.buf.get(start..end).unwrap_or_default().to_vec();
                    let header = self.parse_header(&bytes)?;
                    self.stage = Stage::Body;
                    StanzaEvent::Header(header)
                }
                _ => StanzaEvent::Stanza(self.parse_element(start, end)?),
            };
            self.compact();
            return Ok(Some(event));
        }
    }

    /// Keeps the buffer from growing without bound on long streams.
    fn compact(&mut self) {
        if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.text.clear();
        }
    }

    /// Advances the scanner over buffered bytes; returns the byte range of the next
    /// complete construct.
    fn scan_construct(&mut self) -> Result<Option<(usize, usize, Scan)>, XmlError> {
        let mut scan = match self.scan {
            Some(s) => s,
            None => {
                self.skip_keepalives();
                match self.buf.get(self.pos) {
                    None => return Ok(None),
                    Some(b'<') => {}
                    Some(_) => {
                        return Err(XmlError::NotWellFormed(
                            "text outside of any element".into(),
                        ));
                    }
                }
                self.open_names.clear();
                Scan {
                    start: self.pos,
                    at: self.pos + 1,
                    depth: 0,
                    lex: Lex::AfterLt,
                    closing: false,
                    decl: false,
                    name_start: self.pos + 1,
                    name_end: None,
                }
            }
        };
        let header_mode = self.stage == Stage::Prolog;
        let result = loop {
            if scan.at - scan.start > self.limits.max_stanza_bytes {
                break Err(XmlError::PolicyViolation(format!(
                    "an element is larger than {} bytes",
                    self.limits.max_stanza_bytes
                )));
            }
            // Character data and quoted attribute values hold nothing the scanner
            // acts on but their end: skip to it in one search.
            let skip_to = match scan.lex {
                Lex::Content => Some(b'<'),
                Lex::StartTag { quote, .. } | Lex::EndTag { quote } if quote != 0 => Some(quote),
                _ => None,
            };
            if let Some(stop) = skip_to {
                let rest = self.buf.get(scan.at..).unwrap_or_default();
                match memchr::memchr(stop, rest) {
                    Some(i) => scan.at += i,
                    None => {
                        scan.at += rest.len();
                        if scan.at - scan.start > self.limits.max_stanza_bytes {
                            continue;
                        }
                        break Ok(None);
                    }
                }
                if scan.at - scan.start > self.limits.max_stanza_bytes {
                    continue;
                }
            }
            let Some(&b) = self.buf.get(scan.at) else {
                break Ok(None);
            };
            scan.at += 1;
            let top = scan.depth == 0;
            match scan.lex {
                Lex::Content => {
                    if b == b'<' {
                        scan.lex = Lex::AfterLt;
                    }
                }
                Lex::AfterLt => match b {
                    b'/' => {
                        if top {
                            scan.closing = true;
                        }
                        scan.name_start = scan.at;
                        scan.name_end = None;
                        scan.lex = Lex::EndTag { quote: 0 };
                    }
                    b'!' => {
                        if top {
                            break Err(XmlError::RestrictedXml(
                                "a comment, DTD or CDATA section outside of a stanza".into(),
                            ));
                        }
                        scan.lex = Lex::Bang { matched: 0 };
                    }
                    b'?' => {
                        let leading = top && header_mode && !self.seen_decl;
                        if !leading {
                            break Err(XmlError::RestrictedXml("a processing instruction".into()));
                        }
                        scan.decl = true;
                        scan.lex = Lex::Pi { question: false };
                    }
                    _ => {
                        scan.name_start = scan.at - 1;
                        scan.name_end = None;
                        scan.lex = Lex::StartTag {
                            quote: 0,
                            slash: false,
                        }
                    }
                },
                Lex::StartTag { quote, slash } => {
                    if quote == 0
                        && scan.name_end.is_none()
                        && (b.is_ascii_whitespace() || b == b'/' || b == b'>')
                    {
                        scan.name_end = Some(scan.at - 1);
                    }
                    if quote != 0 {
                        if b == quote {
                            scan.lex = Lex::StartTag {
                                quote: 0,
                                slash: false,
                            };
                        }
                    } else if b == b'\'' || b == b'"' {
                        scan.lex = Lex::StartTag {
                            quote: b,
                            slash: false,
                        };
                    } else if b == b'>' {
                        if header_mode {
                            // The stream header is complete at its '>'.
                            break Ok(Some(scan.at));
                        }
                        if scan.depth + 1 > self.limits.max_depth {
                            break Err(XmlError::PolicyViolation(format!(
                                "elements nested deeper than {}",
                                self.limits.max_depth
                            )));
                        }
                        if slash {
                            if top {
                                break Ok(Some(scan.at));
                            }
                        } else {
                            scan.depth += 1;
                            let end = scan.name_end.unwrap_or(scan.at - 1);
                            self.open_names.push((scan.name_start, end));
                        }
                        scan.lex = Lex::Content;
                    } else if b == b'<' {
                        break Err(XmlError::NotWellFormed("'<' inside a tag".into()));
                    } else {
                        scan.lex = Lex::StartTag {
                            quote: 0,
                            slash: b == b'/',
                        };
                    }
                }
                Lex::EndTag { quote } => {
                    if scan.name_end.is_none() && (b.is_ascii_whitespace() || b == b'>') {
                        scan.name_end = Some(scan.at - 1);
                    }
                    if quote != 0 {
                        if b == quote {
                            scan.lex = Lex::EndTag { quote: 0 };
                        }
                    } else if b == b'>' {
                        if scan.closing {
                            break Ok(Some(scan.at));
                        }
                        let closing = self
                            .buf
                            .get(scan.name_start..scan.name_end.unwrap_or(scan.at - 1));
                        let opened = self.open_names.pop().and_then(|(s, e)| self.buf.get(s..e));
                        if closing != opened || closing.is_none() {
                            break Err(XmlError::NotWellFormed(format!(
                                "</{}> does not close <{}>",
                                String::from_utf8_lossy(closing.unwrap_or_default()),
                                String::from_utf8_lossy(opened.unwrap_or_default())
                            )));
                        }
                        scan.depth = scan.depth.saturating_sub(1);
                        if scan.depth == 0 {
                            break Ok(Some(scan.at));
                        }
                        scan.lex = Lex::Content;
                    }
                }
                Lex::Bang { matched } => {
                    const CDATA: &[u8] = b"[CDATA[";
                    if CDATA.get(matched) == Some(&b) {
                        scan.lex = if matched + 1 == CDATA.len() {
                            Lex::Cdata { brackets: 0 }
                        } else {
                            Lex::Bang {
                                matched: matched + 1,
                            }
                        };
                    } else if matched == 0 && b == b'-' {
                        break Err(XmlError::RestrictedXml("a comment".into()));
                    } else {
                        break Err(XmlError::RestrictedXml(
                            "a DTD or entity declaration".into(),
                        ));
                    }
                }
                Lex::Cdata { brackets } => {
                    scan.lex = match b {
                        b']' => Lex::Cdata {
                            brackets: brackets + 1,
                        },
                        b'>' if brackets >= 2 => Lex::Content,
                        _ => Lex::Cdata { brackets: 0 },
                    };
                }
                Lex::Pi { question } => {
                    if question && b == b'>' {
                        self.seen_decl = true;
                        break Ok(Some(scan.at));
                    }
                    scan.lex = Lex::Pi {
                        question: b == b'?',
                    };
                }
            }
        };
        match result {
            Ok(Some(end)) => Ok(Some((scan.start, end, scan))),
            Ok(None) => {
                self.scan = Some(scan);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn parse_header(&mut self, bytes: &[u8]) -> Result<StreamHeader, XmlError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| XmlError::NotWellFormed("the stream header is not UTF-8".into()))?;
        let (tag, scope) = parse::header_tag(text, &self.limits)?;
        if tag.ns != ns::STREAM || tag.name != "stream" {
            return Err(XmlError::InvalidNamespace(format!(
                "the root element is {{{}}}{}, not {{{}}}stream",
                tag.ns,
                tag.name,
                ns::STREAM
            )));
        }
        let get = |n: &str| {
            tag.attrs
                .iter()
                .find(|a| a.ns.is_none() && a.name == n)
                .map(|a| a.value.clone())
        };
        let header = StreamHeader {
            from: get("from"),
            to: get("to"),
            id: get("id"),
            version: get("version"),
            lang: tag
                .attrs
                .iter()
                .find(|a| a.ns.as_deref() == Some(ns::XML) && a.name == "lang")
                .map(|a| a.value.clone()),
            default_ns: scope
                .iter()
                .rev()
                .find(|(p, _)| p.is_empty())
                .map(|(_, u)| u.to_string()),
            dialback_declared: scope
                .iter()
                .any(|(p, u)| !p.is_empty() && u == ns::DIALBACK),
        };
        self.scope = scope
            .into_iter()
            .map(|(p, u)| parse::Outer::new(p, &u))
            .collect();
        Ok(header)
    }

    /// A complete element, as the scanner delimited it.
    fn parse_element(&mut self, start: usize, end: usize) -> Result<Stanza, XmlError> {
        let bytes = self.buf.get(start..end).unwrap_or_default();
        #[cfg(any(test, feature = "oracle"))]
        if self.oracle {
            let outer: Vec<(String, String)> = self
                .scope
                .iter()
                .map(|o| (o.prefix.clone(), o.uri.to_string()))
                .collect();
            return super::oracle::parse_element(bytes, &outer, &self.limits).map(Stanza::from);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| XmlError::NotWellFormed("the element is not UTF-8".into()))?;
        match parse::element(text, 0, &self.scope, &self.limits, &mut self.scratch) {
            Ok(len) => Ok(self.scratch.stanza(text.get(..len).unwrap_or_default())),
            Err(parse::Stop::Bad(e)) => Err(e),
            Err(parse::Stop::Incomplete) => {
                Err(XmlError::NotWellFormed("the element is incomplete".into()))
            }
        }
    }

    /// Extends `text` over the bytes pushed since, as far as they are UTF-8 (a
    /// character split between reads waits for its end; invalid bytes stop it, and
    /// the scanner's path reports them).
    fn sync_text(&mut self) {
        let end = self.text_at + self.text.len();
        if self.text.is_empty() || self.pos < self.text_at || self.pos > end {
            self.text.clear();
            self.text_at = self.pos;
            self.clean_to = self.pos;
        }
        let from = self.text_at + self.text.len();
        let new = self.buf.get(from..).unwrap_or_default();
        let valid = match std::str::from_utf8(new) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(new.get(..e.valid_up_to()).unwrap_or_default())
                .unwrap_or_default(),
        };
        if self.clean_to == from {
            self.clean_to = from + first_suspicious(valid.as_bytes()).unwrap_or(valid.len());
        }
        self.text.push_str(valid);
    }

    /// Passes over whitespace (keep-alives) between constructs.
    fn skip_keepalives(&mut self) {
        while self.buf.get(self.pos).is_some_and(|b| parse::is_space(*b)) {
            self.pos += 1;
        }
    }

    /// The common case, tried first: the next element is complete in the buffer and
    /// parses in one pass. Anything else (bytes missing, an error) is left to the
    /// scanner, which resumes across reads and reports errors as it finds them.
    fn try_element(&mut self) -> Option<Stanza> {
        #[cfg(any(test, feature = "oracle"))]
        if self.oracle {
            return None;
        }
        self.skip_keepalives();
        let rest = self.buf.get(self.pos..)?;
        if rest.first() != Some(&b'<') || matches!(rest.get(1), None | Some(b'/' | b'!' | b'?')) {
            return None;
        }
        self.sync_text();
        let window = self.text.get(self.pos.checked_sub(self.text_at)?..)?;
        // Never more than the limit allows: past it, the scanner says so.
        let mut end = window.len().min(self.limits.max_stanza_bytes);
        while !window.is_char_boundary(end) {
            end -= 1;
        }
        let window = window.get(..end)?;
        let clean = self.clean_to.saturating_sub(self.pos);
        let len =
            parse::element(window, clean, &self.scope, &self.limits, &mut self.scratch).ok()?;
        self.pos += len;
        Some(self.scratch.stanza(window.get(..len)?))
    }
}

/// Parses a standalone XML document (a PIDF body, say) with the same restrictions
/// and limits as stream content: one root element, optionally preceded by an XML
/// declaration; comments, DTDs and processing instructions are refused.
pub fn parse_document(bytes: &[u8], limits: Limits) -> Result<Element, XmlError> {
    let mut rest = bytes;
    // A UTF-8 byte order mark is allowed before the declaration.
    if let Some(stripped) = rest.strip_prefix(b"\xef\xbb\xbf") {
        rest = stripped;
    }
    let trimmed = rest.trim_ascii_start();
    if trimmed.starts_with(b"<?xml") {
        let end = trimmed
            .windows(2)
            .position(|w| w == b"?>")
            .ok_or_else(|| XmlError::NotWellFormed("the XML declaration is not closed".into()))?;
        check_declaration(trimmed.get(..end + 2).unwrap_or_default())?;
        rest = trimmed.get(end + 2..).unwrap_or_default();
    }
    let mut reader = StreamReader::new(limits);
    reader.stage = Stage::Body;
    reader.push(rest);
    let root = match reader.next_event()? {
        Some(StreamEvent::Element(el)) => el,
        Some(_) => return Err(XmlError::NotWellFormed("no root element".into())),
        None => {
            return Err(XmlError::NotWellFormed(
                "the document is empty or incomplete".into(),
            ))
        }
    };
    match reader.next_event()? {
        None if reader.buffered_len() == 0 => Ok(root),
        _ => Err(XmlError::NotWellFormed(
            "content after the root element".into(),
        )),
    }
}

/// Refuses characters XML does not allow, raw or as character references: passed
/// on, they would break the stream of whoever gets the stanza next.
pub(super) fn xml_chars(text: &str) -> Result<(), XmlError> {
    // In UTF-8 the only characters outside XML's set are the C0 controls (bytes
    // below 0x20 but tab, LF, CR) and U+FFFE/U+FFFF (which start with 0xEF): a byte
    // scan clears the common text without decoding it.
    if !suspicious(text.as_bytes()) {
        return Ok(());
    }
    match text.chars().find(|c| !is_xml_char(*c)) {
        None => Ok(()),
        Some(c) => Err(XmlError::NotWellFormed(format!(
            "the character U+{:04X} is not allowed in XML",
            u32::from(c)
        ))),
    }
}

/// Whether `bytes` holds a C0 control other than tab, LF and CR, or a 0xEF byte.
fn suspicious(bytes: &[u8]) -> bool {
    first_suspicious(bytes).is_some()
}

/// Where `bytes` first holds a C0 control other than tab, LF and CR, or a 0xEF
/// byte. A block at a time, with no early exit inside a block, so that the
/// compiler can test many bytes per instruction.
fn first_suspicious(bytes: &[u8]) -> Option<usize> {
    let odd = |b: u8| (b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r') || b == 0xEF;
    let mut at = 0;
    for block in bytes.chunks(64) {
        if block.iter().fold(false, |any, b| any | odd(*b)) {
            return block.iter().position(|b| odd(*b)).map(|i| at + i);
        }
        at += block.len();
    }
    None
}

/// `<?xml version='1.0' encoding='…'?>`: only UTF-8 is allowed (RFC 6120 §11.6).
fn check_declaration(bytes: &[u8]) -> Result<(), XmlError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| XmlError::NotWellFormed("declaration is not UTF-8".into()))?;
    if !text.starts_with("<?xml")
        || !text
            .get(5..6)
            .is_some_and(|c| c.trim().is_empty() || c == "?")
    {
        return Err(XmlError::RestrictedXml("a processing instruction".into()));
    }
    if let Some(pos) = text.find("encoding") {
        let rest = text.get(pos + 8..).unwrap_or_default();
        let value: String = rest
            .trim_start()
            .trim_start_matches('=')
            .trim_start()
            .chars()
            .skip(1)
            .take_while(|c| *c != '\'' && *c != '"')
            .collect();
        if !value.eq_ignore_ascii_case("utf-8") {
            return Err(XmlError::UnsupportedEncoding(format!(
                "'{value}'; XMPP uses UTF-8"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
        xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
        from='a.example' to='b.example' version='1.0' xml:lang='en'>\
        <db:result from='a.example' to='b.example'>k3y</db:result> \n\
        <message from='x@a.example' to='y@b.example'><body>caf\u{e9} &amp; &#x1F389; <![CDATA[<raw>]]></body>\
        <x xmlns='urn:example'><y a='1&apos;'/></x></message>\
        <stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>\
        </stream:stream>";

    fn read_all(chunks: &[&[u8]]) -> Result<Vec<StreamEvent>, XmlError> {
        let mut r = StreamReader::new(Limits::default());
        let mut events = Vec::new();
        for c in chunks {
            r.push(c);
            while let Some(e) = r.next_event()? {
                events.push(e);
            }
        }
        Ok(events)
    }

    fn reference() -> Vec<StreamEvent> {
        read_all(&[STREAM.as_bytes()]).expect("reference parse")
    }

    #[test]
    fn reads_header_elements_and_end() {
        let events = reference();
        assert_eq!(events.len(), 5);
        let StreamEvent::Header(h) = &events[0] else {
            panic!("header first")
        };
        assert_eq!(h.from.as_deref(), Some("a.example"));
        assert_eq!(h.default_ns.as_deref(), Some(ns::SERVER));
        assert!(h.dialback_declared);
        assert_eq!(h.lang.as_deref(), Some("en"));
        let StreamEvent::Element(db) = &events[1] else {
            panic!()
        };
        assert!(db.is(ns::DIALBACK, "result"));
        assert_eq!(db.text_content(), "k3y");
        let StreamEvent::Element(msg) = &events[2] else {
            panic!()
        };
        assert!(msg.is(ns::SERVER, "message"));
        let body = msg.find(ns::SERVER, "body").expect("body");
        assert_eq!(body.text_content(), "caf\u{e9} & \u{1F389} <raw>");
        let x = msg.find("urn:example", "x").expect("x");
        assert_eq!(
            x.find("urn:example", "y").and_then(|y| y.get_attr("a")),
            Some("1'")
        );
        let StreamEvent::Element(f) = &events[3] else {
            panic!()
        };
        assert!(f.is(ns::STREAM, "features"));
        assert!(f
            .find(ns::TLS, "starttls")
            .and_then(|s| s.find(ns::TLS, "required"))
            .is_some());
        assert_eq!(events[4], StreamEvent::End);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let all = reference();
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(read_all(&[a, b]).as_ref(), Ok(&all), "split at {i}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(read_all(&singles), Ok(all));
    }

    #[test]
    fn any_prefix_works() {
        let s = "<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns='jabber:server' xmlns:d='jabber:server:dialback'>\
                 <d:verify id='1'/><s:features/>";
        let ev = read_all(&[s.as_bytes()]).expect("parse");
        let StreamEvent::Element(v) = &ev[1] else {
            panic!()
        };
        assert!(v.is(ns::DIALBACK, "verify"));
        let StreamEvent::Element(f) = &ev[2] else {
            panic!()
        };
        assert!(f.is(ns::STREAM, "features"));
    }

    fn first_error(s: &str) -> XmlError {
        read_all(&[s.as_bytes()]).expect_err("must fail")
    }

    const H: &str =
        "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>";

    #[test]
    fn the_word_scan_finds_what_the_byte_scan_finds() {
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.next_u64() % 8 {
                    0 => (rng.next_u64() % 0x21) as u8,
                    1 => 0xEF,
                    _ => b"abc \xc3\xa9\xbf\x7f"[(rng.next_u64() % 8) as usize],
                })
                .collect();
            let slow = bytes
                .iter()
                .position(|b| (*b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || *b == 0xEF);
            assert_eq!(first_suspicious(&bytes), slow, "{bytes:?}");
        }
    }

    #[test]
    fn characters_xml_does_not_allow() {
        for bad in [
            "<a>&#x1;</a>",
            "<a>\u{1}</a>",
            "<a b='&#xFFFE;'/>",
            "<a\u{1}/>",
        ] {
            let e = first_error(&format!("{H}{bad}"));
            assert!(
                matches!(&e, XmlError::NotWellFormed(t) if t.contains("not allowed in XML")),
                "{bad}: {e}"
            );
        }
        assert!(read_all(&[format!("{H}<a b='&#9;'>&#xD;\t&#x10FFFF;</a>").as_bytes()]).is_ok());
        // Fullwidth forms start with 0xEF too, and are fine.
        assert!(read_all(&[format!("{H}<a b='\u{FF48}'>\u{FF49}\u{FEFF}</a>").as_bytes()]).is_ok());
        // In one read: what precedes a bad character or byte is still delivered.
        for bad in [
            &b"<b>\x01</b>"[..],
            b"<b>\xff</b>",
            b"<b c='\xef\xbf\xbe'/>",
        ] {
            let mut r = StreamReader::new(Limits::default());
            r.push(&[H.as_bytes(), b"<a>\xef\xbd\x88</a>", bad].concat());
            assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Header(_)))));
            assert!(
                matches!(r.next_event(), Ok(Some(StreamEvent::Element(e))) if e.text_content() == "\u{FF48}")
            );
            assert_eq!(
                r.next_event().map_err(|e| e.condition()),
                Err("not-well-formed"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn restricted_xml_and_errors() {
        assert_eq!(
            first_error(&format!("{H}<!-- hi -->")).condition(),
            "restricted-xml"
        );
        assert_eq!(
            first_error(&format!("{H}<message><!-- hi --></message>")).condition(),
            "restricted-xml"
        );
        assert_eq!(
            first_error("<!DOCTYPE x [<!ENTITY a 'b'>]>").condition(),
            "restricted-xml"
        );
        assert_eq!(
            first_error(&format!("{H}<message><!ENTITY a 'b'></message>")).condition(),
            "restricted-xml"
        );
        assert_eq!(
            first_error(&format!("{H}<?pi x?>")).condition(),
            "restricted-xml"
        );
        assert_eq!(
            first_error(&format!("{H}<message>&ent;</message>")).condition(),
            "restricted-xml"
        );
        assert_eq!(
            first_error(&format!("{H}<a></b>")).condition(),
            "not-well-formed"
        );
        assert_eq!(
            first_error(&format!("{H}text")).condition(),
            "not-well-formed"
        );
        assert_eq!(
            first_error(&format!("{H}<a x='1' x='2'/>")).condition(),
            "not-well-formed"
        );
        assert_eq!(
            first_error(&format!("{H}<p:a/>")).condition(),
            "bad-namespace-prefix"
        );
        assert_eq!(
            first_error("<stream xmlns='jabber:server'>").condition(),
            "invalid-namespace"
        );
        assert_eq!(
            first_error(&format!("<?xml version='1.0' encoding='ISO-8859-1'?>{H}")).condition(),
            "unsupported-encoding"
        );
        // XML forbids these though quick-xml reads them.
        for bad in [
            "<a v='a<b'/>",
            "<a x='1'y='2'/>",
            "<ax='1'/>",
            "<a x&y='1'/>",
            "<a>&amp&lt;</a>",
        ] {
            assert_eq!(
                first_error(&format!("{H}{bad}")).condition(),
                "not-well-formed",
                "{bad}"
            );
        }
        let bad_utf8 = [H.as_bytes(), b"<a b='\xff'/>"].concat();
        let mut r = StreamReader::new(Limits::default());
        r.push(&bad_utf8);
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Header(_)))));
        assert_eq!(
            r.next_event().map_err(|e| e.condition()),
            Err("not-well-formed")
        );
    }

    #[test]
    fn limits_are_enforced_before_the_element_completes() {
        let limits = Limits {
            max_stanza_bytes: 100,
            max_depth: 3,
            max_attributes: 2,
        };
        let mut r = StreamReader::new(limits);
        r.push(H.as_bytes());
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Header(_)))));
        r.push(b"<message>");
        assert_eq!(r.next_event(), Ok(None));
        r.push(&[b'x'; 200]);
        assert_eq!(
            r.next_event().map_err(|e| e.condition()),
            Err("policy-violation")
        );

        let deep = format!("{H}<a><b><c><d/></c></b></a>");
        assert!(matches!(
            read_limited(&deep, limits),
            Err(XmlError::PolicyViolation(_))
        ));
        let attrs = format!("{H}<a x='1' y='2' z='3'/>");
        assert!(matches!(
            read_limited(&attrs, limits),
            Err(XmlError::PolicyViolation(_))
        ));
        let ok = format!("{H}<a x='1' y='2'><b><c/></b></a>");
        assert!(read_limited(&ok, limits).is_ok());
    }

    fn read_limited(s: &str, limits: Limits) -> Result<Vec<StreamEvent>, XmlError> {
        let mut r = StreamReader::new(limits);
        r.push(s.as_bytes());
        let mut v = Vec::new();
        while let Some(e) = r.next_event()? {
            v.push(e);
        }
        Ok(v)
    }

    #[test]
    fn take_unconsumed_after_proceed_and_restart() {
        let mut r = StreamReader::new(Limits::default());
        r.push(H.as_bytes());
        r.push(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\x16\x03\x01\x00");
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Header(_)))));
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Element(e))) if e.name == "proceed"));
        assert_eq!(r.take_unconsumed(), b"\x16\x03\x01\x00");
        assert_eq!(r.buffered_len(), 0);
        // After SASL success the next header may already be buffered.
        r.restart();
        r.push(format!("<?xml version='1.0'?>{H}<a/>").as_bytes());
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Header(_)))));
        assert!(matches!(r.next_event(), Ok(Some(StreamEvent::Element(_)))));
    }

    #[test]
    fn writer_round_trip() {
        let StreamEvent::Element(msg) = reference().remove(2) else {
            panic!()
        };
        let text = format!("{H}{}", msg.to_xml(ns::SERVER));
        let again = read_all(&[text.as_bytes()]).expect("re-read");
        assert_eq!(again.get(1), Some(&StreamEvent::Element(msg)));
    }

    /// Everything the reader yields for `data` (after `H`) fed in `chunk`-byte
    /// pieces, errors by condition; the oracle reader parses with quick-xml.
    fn transcript(
        data: &[u8],
        chunk: usize,
        oracle: bool,
    ) -> Vec<Result<StreamEvent, &'static str>> {
        let limits = Limits {
            max_stanza_bytes: 4096,
            ..Limits::default()
        };
        let mut r = StreamReader::new(limits);
        r.oracle = oracle;
        let mut out = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            r.push(piece);
            loop {
                match r.next_event() {
                    Ok(Some(e)) => {
                        if matches!(&e, StreamEvent::Element(el) if el.name == "proceed") {
                            r.restart();
                        }
                        out.push(Ok(e));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e.condition()));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Stanzas built at random from XML's pieces, well-formed or nearly so.
    fn random_stream(rng: &mut crate::rng::Rng) -> Vec<u8> {
        const NAMES: &[&str] = &["a", "body", "p:x", "db:result", "stream:features", "m"];
        const ATTRS: &[&str] = &[
            " to='b.example'",
            " from=\"x@a.example/r\"",
            " xml:lang='en'",
            " xmlns='urn:x'",
            " xmlns:p='urn:p'",
            " p:k='v'",
            " id='&amp;&lt;&#x41;&#66;'",
            " v='\t\n'",
            " a1='1' a2='2'",
        ];
        const BAD_ATTRS: &[&str] = &[
            " xmlns:q=''",
            " q:k='v'",
            " id='&bad;'",
            " w=x",
            " w",
            " xx='1' xx='2'",
            " a1='1' a2='2' a3='3' a4='4' a5='5' a6='6' a7='7' a8='8' a9='9' a10='10' a11='11'",
        ];
        const TEXT: &[&str] = &[
            "hi",
            " ",
            "&amp;",
            "\r\n",
            "\r",
            "&#13;\n",
            "\u{2028}\u{85}",
            "&gt;&quot;&apos;",
            "&#x1F389;",
            "caf\u{e9}",
            "<![CDATA[<raw>&]]>",
            "<![CDATA[]]>",
            "]]>",
            ">",
        ];
        const BAD_TEXT: &[&str] = &[
            "&#1;",
            "&#xD800;",
            "&nope;",
            "&amp",
            "<!-- c -->",
            "<?pi?>",
            "<!DOCTYPE x>",
            "\u{1}",
        ];
        // Now and then a piece XML or XMPP forbids.
        let pick = |rng: &mut crate::rng::Rng, good: &[&'static str], bad: &[&'static str]| {
            let set = if rng.next_u64() % 40 == 0 { bad } else { good };
            set[(rng.next_u64() % set.len() as u64) as usize]
        };
        let mut out = String::from(H);
        out.insert_str(
            H.len() - 1,
            " xmlns:db='jabber:server:dialback' xmlns:p='urn:p'",
        );
        for _ in 0..(rng.next_u64() % 4 + 1) {
            let mut open = Vec::new();
            for _ in 0..(rng.next_u64() % 12 + 1) {
                match if open.is_empty() {
                    0
                } else {
                    rng.next_u64() % 6
                } {
                    0 | 1 => {
                        let name = pick(rng, NAMES, &["q:r"]);
                        out.push('<');
                        out.push_str(name);
                        for _ in 0..(rng.next_u64() % 3) {
                            out.push_str(pick(rng, ATTRS, BAD_ATTRS));
                        }
                        if rng.next_u64() % 3 == 0 {
                            out.push_str("/>");
                        } else {
                            out.push('>');
                            open.push(name);
                        }
                    }
                    2 | 3 => out.push_str(pick(rng, TEXT, BAD_TEXT)),
                    _ => {
                        if let Some(name) = open.pop() {
                            out.push_str("</");
                            // Now and then the wrong name.
                            out.push_str(if rng.next_u64() % 40 == 0 { "zz" } else { name });
                            out.push('>');
                        }
                    }
                }
                if open.is_empty() && rng.next_u64() % 2 == 0 {
                    break;
                }
            }
            while let Some(name) = open.pop() {
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            }
        }
        let mut bytes = out.into_bytes();
        // Now and then one byte changed, so that half-broken input is covered too.
        if rng.next_u64() % 8 == 0 && !bytes.is_empty() {
            let at = (rng.next_u64() % bytes.len() as u64) as usize;
            bytes[at] = b"<>/='\"&;:x \xff"[(rng.next_u64() % 12) as usize];
        }
        bytes
    }

    #[test]
    fn the_parser_agrees_with_quick_xml() {
        let mut rng = crate::rng::Rng::new(7);
        let mut inputs: Vec<Vec<u8>> = (0..3000).map(|_| random_stream(&mut rng)).collect();
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/xml_reader");
        let files = std::fs::read_dir(&corpus).expect("the xml_reader fuzz corpus");
        for f in files {
            let data = std::fs::read(f.expect("corpus entry").path()).expect("corpus file");
            inputs.push(data);
        }
        let mut elements = 0;
        let mut errors = 0;
        let mut stricter = 0;
        for data in &inputs {
            for chunk in [usize::MAX, 7, 1] {
                let ours = transcript(data, chunk, false);
                let theirs = transcript(data, chunk, true);
                // Where they part, only one way is allowed: we refuse as malformed
                // what XML forbids and quick-xml lets through or names otherwise
                // ('<' in a value, names with '=' or '&', attributes run together).
                let same = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
                if ours != theirs {
                    assert_eq!(
                        ours.get(same),
                        Some(&Err("not-well-formed")),
                        "chunks of {chunk}, event {same}, quick-xml has {:?}: {}",
                        theirs.get(same),
                        String::from_utf8_lossy(data)
                    );
                    assert_eq!(ours.len(), same + 1);
                    stricter += 1;
                }
                elements += ours
                    .iter()
                    .filter(|e| matches!(e, Ok(StreamEvent::Element(_))))
                    .count();
                errors += ours.iter().filter(|e| e.is_err()).count();
            }
        }
        eprintln!("{elements} elements, {errors} errors, {stricter} refused only by us");
        // Both sides of the comparison were exercised.
        assert!(
            elements > 3000 && errors > 1000,
            "{elements} elements, {errors} errors"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::rng::Rng::new(42);
        for _ in 0..500 {
            let mut r = StreamReader::new(Limits::default());
            r.push(H.as_bytes());
            let len = (rng.next_u64() % 200) as usize;
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    let alphabet = b"<>/='\"ab:x!?[]-&;# \xc3\xa9";
                    alphabet[(rng.next_u64() % alphabet.len() as u64) as usize]
                })
                .collect();
            r.push(&junk);
            for _ in 0..50 {
                match r.next_event() {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }
}
