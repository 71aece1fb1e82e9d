//! The element parser: one pass over the bytes of one element, namespaces resolved
//! as each tag is read, text unescaped only where it holds a reference. It reads
//! what XMPP's restricted XML allows and refuses the rest; it also says when the
//! bytes end before the element does, so the reader can try it on whatever a read
//! brought before falling back to the resumable scanner.

use super::reader::{xml_chars, Limits, XmlError};
use super::{name, Element, Name, Stanza, COMMON_NS};

/// Why parsing stopped short of an element.
#[derive(Debug)]
pub(super) enum Stop {
    /// The bytes end inside the element.
    Incomplete,
    Bad(XmlError),
}

impl From<XmlError> for Stop {
    fn from(e: XmlError) -> Self {
        Stop::Bad(e)
    }
}

/// Where a piece of a stanza's text lies: in the element's own bytes, or in the
/// buffer that holds the unescaped form of the pieces that needed it (the top bit
/// of `to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Span {
    from: u32,
    to: u32,
}

const SIDE: u32 = 1 << 31;

impl Span {
    fn raw(from: usize, to: usize) -> Self {
        // Elements are far shorter than 2 GiB (the stanza size limit).
        Span {
            from: from as u32,
            to: to as u32 & !SIDE,
        }
    }

    fn side(from: usize, to: usize) -> Self {
        Span {
            from: from as u32,
            to: to as u32 | SIDE,
        }
    }

    fn range(self) -> (usize, usize) {
        (self.from as usize, (self.to & !SIDE) as usize)
    }

    fn in_side(self) -> bool {
        self.to & SIDE != 0
    }

    /// The piece's text, given the element's bytes and the side buffer.
    pub fn of<'t>(self, text: &'t str, side: &'t str) -> &'t str {
        let (from, to) = self.range();
        if self.in_side() { side } else { text }
            .get(from..to)
            .unwrap_or_default()
    }

    fn is_empty(self) -> bool {
        let (from, to) = self.range();
        from == to
    }

    /// The piece's bytes, for comparing: no character boundaries to check.
    pub fn bytes<'t>(self, text: &'t str, side: &'t str) -> &'t [u8] {
        let (from, to) = self.range();
        if self.in_side() { side } else { text }
            .as_bytes()
            .get(from..to)
            .unwrap_or_default()
    }
}

/// A namespace URI as a step holds it: one of [`COMMON_NS`], or where its text
/// lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NsRef {
    Common(u8),
    At(Span),
}

impl NsRef {
    pub const NONE: NsRef = NsRef::Common(0);
    pub const XML: NsRef = NsRef::Common(10);

    /// One of [`COMMON_NS`], if `uri` is.
    fn common(uri: &str) -> Option<NsRef> {
        COMMON_NS
            .iter()
            .position(|c| same(c.as_bytes(), uri.as_bytes()))
            .map(|at| NsRef::Common(at as u8))
    }

    pub fn of<'t>(self, text: &'t str, side: &'t str) -> &'t str {
        match self {
            NsRef::Common(at) => COMMON_NS.get(usize::from(at)).copied().unwrap_or_default(),
            NsRef::At(span) => span.of(text, side),
        }
    }

    pub fn bytes<'t>(self, text: &'t str, side: &'t str) -> &'t [u8] {
        self.of(text, side).as_bytes()
    }

    /// The URI as a [`Name`].
    pub fn name(self, text: &str, side: &str) -> Name {
        match self {
            NsRef::Common(at) => {
                Name::Borrowed(COMMON_NS.get(usize::from(at)).copied().unwrap_or_default())
            }
            NsRef::At(span) => name(span.of(text, side)),
        }
    }
}

/// One step of an element as read, in document order: a start tag (its
/// attributes follow it), character data, or an end (an empty tag has one too).
/// Namespaces are resolved; names and text are spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    Start {
        ns: NsRef,
        name: Span,
    },
    /// `ns` is `NsRef::NONE` for an unprefixed attribute.
    Attr {
        ns: NsRef,
        name: Span,
        value: Span,
    },
    Text(Span),
    End,
}

/// The parser's working space, kept by the reader for its allocations: the steps
/// of the element being read, the unescaped pieces, the declarations in scope
/// (prefix and URI), and the elements not yet closed (name, scope length).
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub toks: Vec<Tok>,
    pub side: String,
    scope: Vec<(Span, Span)>,
    /// The current tag's prefixed attributes: where each is in `toks`, and its colon.
    prefixed: Vec<(usize, usize)>,
    open: Vec<(Span, usize)>,
}

impl Scratch {
    /// The element just read from `text`, owning its bytes.
    pub fn stanza(&self, text: &str) -> Stanza {
        Stanza::read(text, &self.side, &self.toks)
    }
}

/// A declaration in scope from outside the element (the stream header's), its
/// URI matched against [`COMMON_NS`] once, not at every element that uses it.
#[derive(Debug, Clone)]
pub(super) struct Outer {
    pub prefix: String,
    pub uri: Name,
    common: Option<NsRef>,
}

impl Outer {
    pub fn new(prefix: String, uri: &str) -> Self {
        Outer {
            prefix,
            uri: name(uri),
            common: NsRef::common(uri),
        }
    }
}

struct Cursor<'a> {
    s: &'a str,
    b: &'a [u8],
    at: usize,
    /// The leading bytes known to hold no character XML forbids: text within them
    /// is not checked again.
    clean: usize,
}

pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// What a byte is to a name: part of it (printable ASCII, a colon, or anything
/// else, which must be checked), or its end. One lookup per byte reads a name.
const NAME_PLAIN: u8 = 0;
const NAME_COLON: u8 = 1;
const NAME_OTHER: u8 = 2;
const NAME_END: u8 = 3;
const NAME_CLASS: [u8; 256] = {
    let mut t = [NAME_OTHER; 256];
    let mut b = 0x20;
    while b < 0x80 {
        t[b] = NAME_PLAIN;
        b += 1;
    }
    t[b':' as usize] = NAME_COLON;
    let ends = b" \t\r\n/>=<'\"&";
    let mut i = 0;
    while i < ends.len() {
        t[ends[i] as usize] = NAME_END;
        i += 1;
    }
    t
};

/// Bytes an attribute value can hold that need no second look: printable ASCII
/// but the quotes, `&` and `<`.
const VALUE_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = !matches!(b as u8, b'\'' | b'"' | b'&' | b'<');
        b += 1;
    }
    t
};

/// Where the first byte of `bytes` that is not [`VALUE_PLAIN`] is. Eight bytes
/// at a time: an attribute value is mostly plain, and testing a word per step
/// costs a third of testing its bytes one by one.
fn first_unplain(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` equal to `b`. A borrow only runs upward
    // from a real match, so the lowest bit set is always a real one.
    let equal = |x: u64, b: u8| {
        let v = x ^ (ONES * u64::from(b));
        v.wrapping_sub(ONES) & !v & HIGH
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Below 0x20 (same reasoning about borrows), non-ASCII, DEL, and the
        // four bytes a value cannot hold as they are.
        let odd = (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | (x & HIGH)
            | equal(x, 0x7f)
            | equal(x, b'\'')
            | equal(x, b'"')
            | equal(x, b'&')
            | equal(x, b'<');
        if odd != 0 {
            return Some(at + (odd.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| !VALUE_PLAIN[usize::from(*b)])
        .map(|i| at + i)
}

/// How many ASCII lowercase letters `bytes` starts with, counted eight at a time
/// while eight are there: most names are mostly such letters, and the byte loop
/// that follows need not look at them.
fn lowercase_run(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Seven bits per byte, so that no sum carries into the next byte.
        let y = x & !HIGH;
        let from_a = y.wrapping_add(ONES * u64::from(0x80 - b'a'));
        let past_z = y.wrapping_add(ONES * u64::from(0x7f - b'z'));
        let other = !(from_a & !past_z & !x) & HIGH;
        if other != 0 {
            return at + (other.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at
}

struct RawName<'a> {
    text: &'a str,
    /// Printable ASCII only: nothing in it to check.
    plain: bool,
    colon: Option<usize>,
}

impl<'a> RawName<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The name as text, checked.
    fn text(&self) -> Result<&'a str, XmlError> {
        if !self.plain {
            xml_chars(self.text)?;
        }
        Ok(self.text)
    }
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str, clean: usize) -> Self {
        Cursor {
            s,
            b: s.as_bytes(),
            at: 0,
            clean,
        }
    }

    /// The text between two markup bytes (always character boundaries).
    fn piece(&self, from: usize, to: usize) -> Result<&'a str, XmlError> {
        self.s
            .get(from..to)
            .ok_or_else(|| XmlError::NotWellFormed("markup inside a character".into()))
    }

    /// Whether text ending at `to` lies past what is known to be clean.
    fn unchecked(&self, to: usize) -> bool {
        to > self.clean
    }

    fn peek(&self) -> Result<u8, Stop> {
        self.b.get(self.at).copied().ok_or(Stop::Incomplete)
    }

    fn skip_space(&mut self) -> bool {
        let from = self.at;
        while self.b.get(self.at).is_some_and(|b| is_space(*b)) {
            self.at += 1;
        }
        self.at > from
    }

    /// The name at the cursor, with whether it is plain (printable ASCII, so
    /// nothing in it needs checking beyond the conversion) and where its first
    /// colon is.
    #[inline(always)]
    fn name(&mut self) -> Result<RawName<'a>, Stop> {
        let from = self.at;
        let rest = self.b.get(from..).unwrap_or_default();
        let mut plain = true;
        let mut colon = None;
        let mut end = None;
        let lower = lowercase_run(rest);
        for (i, b) in rest.iter().enumerate().skip(lower) {
            match NAME_CLASS[usize::from(*b)] {
                NAME_PLAIN => {}
                NAME_COLON => {
                    colon = colon.or(Some(i));
                }
                NAME_END => {
                    end = Some(i);
                    break;
                }
                _ => plain = false,
            }
        }
        self.at += end.ok_or(Stop::Incomplete)?;
        Ok(RawName {
            text: self.piece(from, self.at)?,
            plain: plain || !self.unchecked(self.at),
            colon,
        })
    }
}

/// Parses the element that starts at the first byte of `text` (a `<` followed by a
/// name) into `s.toks` (and `s.side`, for what needed unescaping). Returns the
/// number of bytes it spans. `outer` holds the declarations in scope from outside
/// (the stream header's). `clean` says how many leading bytes of `text` are known
/// to hold no character XML forbids.
pub(super) fn element(
    text: &str,
    clean: usize,
    outer: &[Outer],
    limits: &Limits,
    s: &mut Scratch,
) -> Result<usize, Stop> {
    let mut c = Cursor::new(text, clean);
    if c.peek()? != b'<' {
        return Err(XmlError::NotWellFormed("text outside of any element".into()).into());
    }
    c.at += 1;
    s.toks.clear();
    s.side.clear();
    s.scope.clear();
    s.open.clear();
    loop {
        // At the byte after a '<'.
        match c.peek()? {
            b'/' => {
                c.at += 1;
                let name = c.name()?.bytes();
                c.skip_space();
                if c.peek()? != b'>' {
                    return Err(XmlError::NotWellFormed(format!(
                        "</{}> is malformed",
                        String::from_utf8_lossy(name)
                    ))
                    .into());
                }
                c.at += 1;
                let Some((opened, mark)) = s.open.pop() else {
                    return Err(XmlError::NotWellFormed("an unmatched end tag".into()).into());
                };
                let opened = opened.bytes(c.s, "");
                if name != opened {
                    return Err(XmlError::NotWellFormed(format!(
                        "</{}> does not close <{}>",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(opened)
                    ))
                    .into());
                }
                s.scope.truncate(mark);
                s.toks.push(Tok::End);
                if s.open.is_empty() {
                    return Ok(c.at);
                }
            }
            b'!' => {
                c.at += 1;
                let rest = c.b.get(c.at..).unwrap_or_default();
                const CDATA: &[u8] = b"[CDATA[";
                if !rest.starts_with(CDATA) {
                    if CDATA.starts_with(rest) {
                        return Err(Stop::Incomplete);
                    }
                    return Err(XmlError::RestrictedXml(if rest.first() == Some(&b'-') {
                        "a comment".into()
                    } else {
                        "a DTD or entity declaration".into()
                    })
                    .into());
                }
                c.at += CDATA.len();
                let body = c.b.get(c.at..).unwrap_or_default();
                let Some(len) = memchr::memmem::find(body, b"]]>") else {
                    return Err(Stop::Incomplete);
                };
                let text = c.piece(c.at, c.at + len)?;
                if c.unchecked(c.at + len) {
                    xml_chars(text)?;
                }
                push_text(s, Span::raw(c.at, c.at + len))?;
                c.at += len + 3;
            }
            b'?' => {
                return Err(XmlError::RestrictedXml("a processing instruction".into()).into());
            }
            _ => {
                let mark = s.scope.len();
                let (name, empty) = start_tag(&mut c, s, outer, limits)?;
                if s.open.len() + 1 > limits.max_depth {
                    return Err(XmlError::PolicyViolation(format!(
                        "elements nested deeper than {}",
                        limits.max_depth
                    ))
                    .into());
                }
                if empty {
                    s.scope.truncate(mark);
                    s.toks.push(Tok::End);
                    if s.open.is_empty() {
                        return Ok(c.at);
                    }
                } else {
                    s.open.push((name, mark));
                }
            }
        }
        // Character data up to the next markup.
        let rest = c.b.get(c.at..).unwrap_or_default();
        let Some(len) = memchr::memchr(b'<', rest) else {
            return Err(Stop::Incomplete);
        };
        if len > 0 {
            let raw = c.piece(c.at, c.at + len)?;
            let check = c.unchecked(c.at + len);
            let span = unescape(raw, c.at, Context::Text, check, &mut s.side)?;
            push_text(s, span)?;
        }
        c.at += len + 1;
    }
}

/// Character data inside the element being read (never outside it).
fn push_text(s: &mut Scratch, span: Span) -> Result<(), XmlError> {
    if s.open.is_empty() {
        return Err(XmlError::NotWellFormed(
            "text outside of any element".into(),
        ));
    }
    if !span.is_empty() {
        s.toks.push(Tok::Text(span));
    }
    Ok(())
}

/// Reads a start tag from the byte after its `<` through its `>` into `s.toks`:
/// declares its namespaces in `s.scope`, resolves the element's and the
/// attributes' namespaces (`outer` is consulted after the scope). Returns the
/// span of the tag's qualified name and whether the tag is empty.
fn start_tag(
    c: &mut Cursor<'_>,
    s: &mut Scratch,
    outer: &[Outer],
    limits: &Limits,
) -> Result<(Span, bool), Stop> {
    let from = c.at;
    let raw = c.name()?;
    if raw.text.is_empty() {
        return Err(XmlError::NotWellFormed("a tag without a name".into()).into());
    }
    let qname = raw.text()?;
    let qname_span = Span::raw(from, c.at);
    let mark = s.scope.len();
    let start = s.toks.len();
    // Its place, filled once the namespace is known: a one-byte placeholder, so
    // that the step is written once, from registers.
    s.toks.push(Tok::End);
    let mut count = 0;
    // Prefixed attributes are resolved once every declaration on the tag is known.
    s.prefixed.clear();
    let empty = loop {
        let spaced = c.skip_space();
        match c.peek()? {
            b'>' => {
                c.at += 1;
                break false;
            }
            b'/' => {
                c.at += 1;
                if c.peek()? != b'>' {
                    return Err(XmlError::NotWellFormed(format!(
                        "'/' not followed by '>' in <{qname}>"
                    ))
                    .into());
                }
                c.at += 1;
                break true;
            }
            b'<' => return Err(XmlError::NotWellFormed("'<' inside a tag".into()).into()),
            _ if !spaced => {
                return Err(XmlError::NotWellFormed(format!(
                    "no whitespace before an attribute of <{qname}>"
                ))
                .into());
            }
            _ => {}
        }
        if count >= limits.max_attributes {
            return Err(XmlError::PolicyViolation(format!(
                "more than {} attributes on <{qname}>",
                limits.max_attributes
            ))
            .into());
        }
        let key_from = c.at;
        let raw_key = c.name()?;
        let key_span = Span::raw(key_from, c.at);
        c.skip_space();
        let quote = if c.peek()? == b'=' {
            c.at += 1;
            c.skip_space();
            c.peek()?
        } else {
            0
        };
        if raw_key.text.is_empty() || !matches!(quote, b'\'' | b'"') {
            return Err(XmlError::NotWellFormed(format!(
                "a malformed attribute on <{qname}>: {}",
                raw_key.text
            ))
            .into());
        }
        let key = raw_key.text()?;
        // Each key went to one of two places: look where this one would have.
        let b = c.b;
        let bytes = |span: Span| {
            let (from, to) = span.range();
            b.get(from..to)
        };
        let declared = |prefix: &str| {
            s.scope
                .get(mark..)
                .unwrap_or_default()
                .iter()
                .any(|(p, _)| bytes(*p).is_some_and(|p| same(p, prefix.as_bytes())))
        };
        // A namespace declaration (`Some`, with the prefix it binds) or an attribute.
        let binds = match key.strip_prefix("xmlns") {
            Some("") => Some(""),
            Some(rest) => rest.strip_prefix(':'),
            None => None,
        };
        let twice = match binds {
            Some(prefix) => declared(prefix),
            None => s.toks.get(start + 1..).unwrap_or_default().iter().any(
                |t| matches!(t, Tok::Attr { name, .. } if bytes(*name).is_some_and(|n| same(n, key.as_bytes()))),
            ),
        };
        if twice {
            return Err(
                XmlError::NotWellFormed(format!("attribute {key} twice on <{qname}>")).into(),
            );
        }
        count += 1;
        c.at += 1;
        // Most values are printable ASCII with nothing to unescape: read to
        // the quote in the same pass that checks them.
        let rest = c.b.get(c.at..).unwrap_or_default();
        let plain = first_unplain(rest);
        let (value, len) = match plain {
            Some(len) if rest.get(len) == Some(&quote) => (Span::raw(c.at, c.at + len), len),
            _ => {
                let from = plain.unwrap_or(rest.len());
                let Some(len) = memchr::memchr(quote, rest.get(from..).unwrap_or_default()) else {
                    return Err(Stop::Incomplete);
                };
                let len = from + len;
                let raw_value = c.piece(c.at, c.at + len)?;
                let check = c.unchecked(c.at + len);
                let value = unescape(raw_value, c.at, Context::Attribute(key), check, &mut s.side)?;
                (value, len)
            }
        };
        c.at += len + 1;
        if let Some(prefix) = binds {
            if key.len() == "xmlns".len() {
                s.scope.push((Span::default(), value));
            } else {
                if value.is_empty() {
                    return Err(XmlError::NotWellFormed(format!(
                        "prefix {prefix} bound to no namespace"
                    ))
                    .into());
                }
                s.scope
                    .push((Span::raw(key_from + 6, key_from + key.len()), value));
            }
        } else {
            if let Some(colon) = raw_key.colon {
                s.prefixed.push((s.toks.len(), colon));
            }
            s.toks.push(Tok::Attr {
                ns: NsRef::NONE,
                name: key_span,
                value,
            });
        }
    };
    let text = c.s;
    let (ns_uri, local) = match raw.colon {
        Some(at) => {
            let (prefix, local) = split(text, qname_span, at);
            match lookup(prefix, text, s, outer) {
                Some(u) => (u, local),
                None => return Err(XmlError::BadNamespacePrefix(format!("<{qname}>")).into()),
            }
        }
        None => (
            lookup("", text, s, outer).unwrap_or(NsRef::NONE),
            qname_span,
        ),
    };
    for i in 0..s.prefixed.len() {
        let Some(&(at, colon)) = s.prefixed.get(i) else {
            break;
        };
        let Some(&Tok::Attr { name, .. }) = s.toks.get(at) else {
            continue;
        };
        let key = name.of(text, "");
        let (prefix, local) = split(text, name, colon);
        let resolved = match prefix {
            "xml" => NsRef::XML,
            prefix => match lookup(prefix, text, s, outer) {
                Some(u) => u,
                None => return Err(XmlError::BadNamespacePrefix(format!("attribute {key}")).into()),
            },
        };
        if let Some(Tok::Attr { ns, name, .. }) = s.toks.get_mut(at) {
            *ns = resolved;
            *name = local;
        }
    }
    if let Some(t) = s.toks.get_mut(start) {
        *t = Tok::Start {
            ns: ns_uri,
            name: local,
        };
    }
    Ok((qname_span, empty))
}

/// The URI bound to `prefix` (empty for the default namespace) in the element's
/// scope, then in `outer`'s. One of the outer scope's uncommon URIs is copied
/// into the side buffer, so that the stanza holds everything it names.
#[inline(always)]
fn lookup(prefix: &str, text: &str, s: &mut Scratch, outer: &[Outer]) -> Option<NsRef> {
    let inner = s
        .scope
        .iter()
        .rev()
        .find(|(p, _)| same(p.bytes(text, ""), prefix.as_bytes()))
        .map(|(_, u)| *u);
    if let Some(uri) = inner {
        return Some(NsRef::At(uri));
    }
    let declared = outer
        .iter()
        .rev()
        .find(|o| same(o.prefix.as_bytes(), prefix.as_bytes()))?;
    if let Some(common) = declared.common {
        return Some(common);
    }
    let from = s.side.len();
    s.side.push_str(&declared.uri);
    Some(NsRef::At(Span::side(from, s.side.len())))
}

/// Whether two short byte strings (names, prefixes) are equal, compared in
/// place: a call to `memcmp` costs more than the comparison.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A qualified name's prefix, and the span of its local part (after the first
/// colon, at `at` in the name).
fn split(text: &str, span: Span, at: usize) -> (&str, Span) {
    let (from, to) = span.range();
    let colon = from + at;
    (
        span.of(text, "").get(..at).unwrap_or_default(),
        Span::raw(colon + 1, to),
    )
}

/// Reads the stream header's start tag (`bytes` starts with its `<`), returning it
/// (as an element without children) with the declarations it makes.
pub(super) fn header_tag(
    text: &str,
    limits: &Limits,
) -> Result<(Element, Vec<(String, String)>), XmlError> {
    let mut c = Cursor::new(text, 0);
    let incomplete = || XmlError::NotWellFormed("the stream header is incomplete".into());
    if c.peek().map_err(|_| incomplete())? != b'<' {
        return Err(XmlError::NotWellFormed("expected the stream header".into()));
    }
    c.at += 1;
    let mut s = Scratch::default();
    let empty = match start_tag(&mut c, &mut s, &[], limits) {
        Ok((_, empty)) => empty,
        Err(Stop::Incomplete) => return Err(incomplete()),
        Err(Stop::Bad(e)) => return Err(e),
    };
    if empty {
        return Err(XmlError::NotWellFormed(
            "the stream header closes itself".into(),
        ));
    }
    s.toks.push(Tok::End);
    let scope = s
        .scope
        .iter()
        .map(|(p, u)| (p.of(text, "").to_owned(), u.of(text, &s.side).to_owned()))
        .collect();
    Ok((super::stanza::build(text, &s.side, &s.toks), scope))
}

#[derive(Clone, Copy)]
enum Context<'a> {
    Text,
    Attribute(&'a str),
}

/// Character data or an attribute value (`text`, which lies at `at` in the
/// element) with its references replaced, checked for characters XML does not
/// allow (`check`: the raw text may hold some). Its span in the element when
/// nothing is escaped; otherwise the unescaped text is appended to `side`.
fn unescape(
    text: &str,
    at: usize,
    context: Context<'_>,
    check: bool,
    side: &mut String,
) -> Result<Span, XmlError> {
    let raw = text.as_bytes();
    // One scan finds what needs more than a copy: a reference, and in an
    // attribute a '<' (an error), in character data a CR.
    let special = match context {
        Context::Attribute(key) => {
            let found = memchr::memchr2(b'&', b'<', raw);
            let lt = match found {
                Some(at) if raw.get(at) == Some(&b'<') => true,
                Some(at) => memchr::memchr(b'<', raw.get(at..).unwrap_or_default()).is_some(),
                None => false,
            };
            if lt {
                return Err(XmlError::NotWellFormed(format!(
                    "'<' in the value of attribute {key}"
                )));
            }
            found
        }
        Context::Text => memchr::memchr2(b'&', b'\r', raw),
    };
    let Some(first) = special else {
        if check {
            xml_chars(text)?;
        }
        return Ok(Span::raw(at, at + text.len()));
    };
    // Character data has its line ends normalised (XML 1.0 §2.11); what a
    // reference writes is kept as it is.
    let eol = matches!(context, Context::Text)
        && memchr::memchr(b'\r', raw.get(first..).unwrap_or_default()).is_some();
    // Checked piece by piece, so that the first fault in document order is the
    // one reported.
    let literal = |out: &mut String, run: &str| -> Result<(), XmlError> {
        if check {
            xml_chars(run)?;
        }
        if eol {
            push_normalised_eols(out, run);
        } else {
            out.push_str(run);
        }
        Ok(())
    };
    let from = side.len();
    let out = side;
    out.reserve(text.len());
    let mut rest = text;
    // The scan above found the first '&', unless a CR came before it.
    let mut next = match raw.get(first) {
        Some(b'&') => Some(first),
        _ => memchr::memchr(b'&', raw.get(first..).unwrap_or_default()).map(|at| first + at),
    };
    while let Some(amp) = next {
        literal(out, rest.get(..amp).unwrap_or_default())?;
        let after = rest.get(amp + 1..).unwrap_or_default();
        let Some(semi) = memchr::memchr(b';', after.as_bytes()) else {
            return Err(XmlError::NotWellFormed(
                "an '&' that starts no reference".into(),
            ));
        };
        let name = after.get(..semi).unwrap_or_default();
        let c = match name {
            // The predefined entities need no further look (nor a check: each
            // is a character XML allows).
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "apos" => '\'',
            "quot" => '"',
            _ => {
                let is_name = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_alphanumeric() || matches!(c, '#' | '_' | '-' | '.' | ':'));
                if !is_name {
                    return Err(XmlError::NotWellFormed(
                        "an '&' that starts no reference".into(),
                    ));
                }
                let c = match name.strip_prefix('#') {
                    Some(code) => char_ref(code).ok_or_else(|| {
                        XmlError::NotWellFormed(format!(
                            "character reference: &{name}; is not a character"
                        ))
                    })?,
                    None => {
                        return Err(XmlError::RestrictedXml(match context {
                            Context::Text => format!("the entity reference &{name};"),
                            Context::Attribute(key) => {
                                format!("an entity reference in attribute {key}")
                            }
                        }))
                    }
                };
                xml_chars(c.encode_utf8(&mut [0; 4]))?;
                c
            }
        };
        out.push(c);
        rest = after.get(semi + 1..).unwrap_or_default();
        next = memchr::memchr(b'&', rest.as_bytes());
    }
    literal(out, rest)?;
    Ok(Span::side(from, out.len()))
}

/// `\r\n` and a lone `\r` become `\n`.
fn push_normalised_eols(out: &mut String, run: &str) {
    let mut rest = run;
    while let Some(cr) = rest.find('\r') {
        out.push_str(rest.get(..cr).unwrap_or_default());
        out.push('\n');
        rest = rest.get(cr + 1..).unwrap_or_default();
        if let Some(after) = rest.strip_prefix('\n') {
            rest = after;
        }
    }
    out.push_str(rest);
}

/// `#x1F389` or `#127881`, without the `&#` and `;`.
fn char_ref(code: &str) -> Option<char> {
    let (digits, radix) = match code.strip_prefix('x') {
        Some(hex) => (hex, 16),
        None => (code, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = u32::from_str_radix(digits, radix).ok()?;
    char::from_u32(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowercase_run_is_what_a_byte_loop_counts() {
        // Whole words only: a tail shorter than eight is left to the byte loop.
        let by_byte = |bytes: &[u8]| {
            let words = bytes.len() / 8 * 8;
            let head = bytes.get(..words).unwrap_or_default();
            head.iter()
                .position(|b| !b.is_ascii_lowercase())
                .unwrap_or(words)
        };
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'q'; len];
                    if let Some(x) = bytes.get_mut(at) {
                        *x = b;
                    }
                    assert_eq!(
                        lowercase_run(&bytes),
                        by_byte(&bytes),
                        "{b:#x} at {at} of {len}"
                    );
                    for next in [0x00, b'`', b'{', 0x7f, 0x80, 0xe0, 0xff] {
                        if let Some(x) = bytes.get_mut(at + 1) {
                            *x = next;
                        }
                        assert_eq!(
                            lowercase_run(&bytes),
                            by_byte(&bytes),
                            "{b:#x} at {at} before {next:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_word_scan_finds_what_the_table_finds() {
        let by_byte = |bytes: &[u8]| bytes.iter().position(|b| !VALUE_PLAIN[usize::from(*b)]);
        // Every byte value at every place of a word and of the tail, after plain
        // bytes, and after another odd byte that a borrow could run up from.
        for len in 0..20 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut bytes = vec![b'a'; len];
                    if let Some(x) = bytes.get_mut(at) {
                        *x = b;
                    }
                    assert_eq!(
                        first_unplain(&bytes),
                        by_byte(&bytes),
                        "{b:#x} at {at} of {len}"
                    );
                    for before in [0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'&'] {
                        if let Some(x) = at.checked_sub(1).and_then(|i| bytes.get_mut(i)) {
                            *x = before;
                        }
                        assert_eq!(
                            first_unplain(&bytes),
                            by_byte(&bytes),
                            "{b:#x} at {at} after {before:#x}"
                        );
                    }
                }
            }
        }
    }
}
