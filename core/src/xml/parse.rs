//! The element parser: one pass over the bytes of one element, namespaces resolved
//! as each tag is read, text unescaped only where it holds a reference. It reads
//! what XMPP's restricted XML allows and refuses the rest; it also says when the
//! bytes end before the element does, so the reader can try it on whatever a read
//! brought before falling back to the resumable scanner.

use std::borrow::Cow;

use super::reader::{xml_chars, Limits, XmlError};
use super::{name, ns, Attribute, Element, Name, Node};

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

/// Namespace declarations: prefix (empty for the default namespace) and URI.
type Scope<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// An element not yet closed: where its name lies in the bytes, and the scope
/// length to restore when it closes.
#[derive(Debug)]
pub(super) struct Open {
    el: Element,
    name_at: (usize, usize),
    mark: usize,
}

/// A start tag as read, before it becomes an element.
pub(super) struct Tag<'a> {
    pub qname: &'a str,
    pub ns: Name,
    pub local: &'a str,
    pub attrs: Vec<Attribute>,
    /// `<… />`
    pub empty: bool,
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

    /// Prefix and local part, split at the first colon.
    fn split<'s>(&self, text: &'s str) -> Option<(&'s str, &'s str)> {
        let at = self.colon?;
        Some((text.get(..at)?, text.get(at + 1..)?))
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
    fn name(&mut self) -> Result<RawName<'a>, Stop> {
        let from = self.at;
        let rest = self.b.get(from..).unwrap_or_default();
        let mut plain = true;
        let mut colon = None;
        let mut end = None;
        for (i, b) in rest.iter().enumerate() {
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

/// Parses the element that starts at the first byte of `bytes` (a `<` followed by a
/// name). Returns it with the number of bytes it spans. `outer` holds the
/// declarations in scope from outside (the stream header's).
/// `open` is scratch space for the elements not yet closed, kept by the caller so
/// that its allocation is reused.
/// `clean` says how many leading bytes of `text` are known to hold no character
/// XML forbids.
pub(super) fn element(
    text: &str,
    clean: usize,
    outer: &[(String, Name)],
    limits: &Limits,
    open: &mut Vec<Open>,
) -> Result<(Element, usize), Stop> {
    let mut c = Cursor::new(text, clean);
    if c.peek()? != b'<' {
        return Err(XmlError::NotWellFormed("text outside of any element".into()).into());
    }
    c.at += 1;
    let mut scope: Scope<'_> = Vec::new();
    open.clear();
    let stack = open;
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
                let Some(Open { el, name_at, mark }) = stack.pop() else {
                    return Err(XmlError::NotWellFormed("an unmatched end tag".into()).into());
                };
                let opened = c.b.get(name_at.0..name_at.1).unwrap_or_default();
                if name != opened {
                    return Err(XmlError::NotWellFormed(format!(
                        "</{}> does not close <{}>",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(opened)
                    ))
                    .into());
                }
                scope.truncate(mark);
                match stack.last_mut() {
                    Some(parent) => parent.el.children.push(Node::Element(el)),
                    None => return Ok((el, c.at)),
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
                append_text(stack, Cow::Borrowed(text))?;
                c.at += len + 3;
            }
            b'?' => {
                return Err(XmlError::RestrictedXml("a processing instruction".into()).into());
            }
            _ => {
                let mark = scope.len();
                let raw_name_start = c.at;
                let tag = start_tag(&mut c, &mut scope, outer, limits)?;
                let name_at = (raw_name_start, raw_name_start + tag.qname.len());
                if stack.len() + 1 > limits.max_depth {
                    return Err(XmlError::PolicyViolation(format!(
                        "elements nested deeper than {}",
                        limits.max_depth
                    ))
                    .into());
                }
                let el = Element {
                    ns: tag.ns,
                    name: name(tag.local),
                    attrs: tag.attrs,
                    children: Vec::new(),
                };
                if tag.empty {
                    scope.truncate(mark);
                    match stack.last_mut() {
                        Some(parent) => parent.el.children.push(Node::Element(el)),
                        None => return Ok((el, c.at)),
                    }
                } else {
                    stack.push(Open { el, name_at, mark });
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
            append_text(stack, unescape(raw, Context::Text, check)?)?;
        }
        c.at += len + 1;
    }
}

fn append_text(stack: &mut [Open], text: Cow<'_, str>) -> Result<(), XmlError> {
    let Some(Open { el, .. }) = stack.last_mut() else {
        return Err(XmlError::NotWellFormed(
            "text outside of any element".into(),
        ));
    };
    if let Some(Node::Text(t)) = el.children.last_mut() {
        t.push_str(&text);
    } else if !text.is_empty() {
        el.children.push(Node::Text(text.into_owned()));
    }
    Ok(())
}

/// Reads a start tag from the byte after its `<` through its `>`: declares its
/// namespaces in `scope`, resolves the element's and the attributes' namespaces
/// (`outer` is consulted after `scope`).
fn start_tag<'a>(
    c: &mut Cursor<'a>,
    scope: &mut Scope<'a>,
    outer: &[(String, Name)],
    limits: &Limits,
) -> Result<Tag<'a>, Stop> {
    let raw = c.name()?;
    if raw.text.is_empty() {
        return Err(XmlError::NotWellFormed("a tag without a name".into()).into());
    }
    let qname = raw.text()?;
    let mut attrs: Vec<Attribute> = Vec::new();
    let mark = scope.len();
    let mut count = 0;
    // Prefixed attributes wait until every declaration on the tag is known.
    let mut prefixed: Vec<(usize, &'a str, (&'a str, &'a str))> = Vec::new();
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
        let raw_key = c.name()?;
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
        let prefixed_key = raw_key.split(key);
        // Each key went to one of three places: look where this one would have.
        let twice = match key.strip_prefix("xmlns") {
            Some("") => scope
                .get(mark..)
                .unwrap_or_default()
                .iter()
                .any(|(p, _)| p.is_empty()),
            Some(rest) if rest.starts_with(':') => {
                let prefix = rest.get(1..).unwrap_or_default();
                scope
                    .get(mark..)
                    .unwrap_or_default()
                    .iter()
                    .any(|(p, _)| *p == prefix)
            }
            _ if prefixed_key.is_some() => prefixed.iter().any(|(_, k, _)| *k == key),
            _ => attrs.iter().any(|a| a.ns.is_none() && a.name == key),
        };
        if twice {
            return Err(
                XmlError::NotWellFormed(format!("attribute {key} twice on <{qname}>")).into(),
            );
        }
        count += 1;
        c.at += 1;
        let rest = c.b.get(c.at..).unwrap_or_default();
        let Some(len) = memchr::memchr(quote, rest) else {
            return Err(Stop::Incomplete);
        };
        let raw_value = c.piece(c.at, c.at + len)?;
        let check = c.unchecked(c.at + len);
        c.at += len + 1;
        let value = unescape(raw_value, Context::Attribute(key), check)?;
        if key == "xmlns" {
            scope.push(("", value));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(XmlError::NotWellFormed(format!(
                    "prefix {prefix} bound to no namespace"
                ))
                .into());
            }
            scope.push((prefix, value));
        } else if let Some(split) = prefixed_key {
            reserve_for_stanza(&mut attrs);
            prefixed.push((attrs.len(), key, split));
            attrs.push(Attribute {
                ns: None,
                name: Name::Borrowed(""),
                value: value.into_owned(),
            });
        } else {
            reserve_for_stanza(&mut attrs);
            attrs.push(Attribute {
                ns: None,
                name: name(key),
                value: value.into_owned(),
            });
        }
    };
    let lookup = |prefix: &str| -> Option<Name> {
        match scope.iter().rev().find(|(p, _)| *p == prefix) {
            Some((_, u)) => Some(name(u)),
            None => outer
                .iter()
                .rev()
                .find(|(p, _)| p == prefix)
                .map(|(_, u)| u.clone()),
        }
    };
    let (ns_uri, local) = match raw.split(qname) {
        Some((prefix, local)) => match lookup(prefix) {
            Some(u) => (u, local),
            None => return Err(XmlError::BadNamespacePrefix(format!("<{qname}>")).into()),
        },
        None => (lookup("").unwrap_or_default(), qname),
    };
    for (at, key, split) in prefixed {
        let (ns_attr, local) = match split {
            ("xml", local) => (Name::Borrowed(ns::XML), local),
            (prefix, local) => match lookup(prefix) {
                Some(u) => (u, local),
                None => return Err(XmlError::BadNamespacePrefix(format!("attribute {key}")).into()),
            },
        };
        if let Some(a) = attrs.get_mut(at) {
            a.ns = Some(ns_attr);
            a.name = name(local);
        }
    }
    Ok(Tag {
        qname,
        ns: ns_uri,
        local,
        attrs,
        empty,
    })
}

/// Room for a stanza's usual attributes at once (from, to, id, type, xml:lang),
/// not four and then eight; a tag that declares only a namespace gets none.
fn reserve_for_stanza(attrs: &mut Vec<Attribute>) {
    if attrs.capacity() == 0 {
        attrs.reserve(6);
    }
}

/// Reads the stream header's start tag (`bytes` starts with its `<`), returning it
/// with the declarations it makes.
pub(super) fn header_tag<'a>(
    text: &'a str,
    limits: &Limits,
) -> Result<(Tag<'a>, Vec<(String, String)>), XmlError> {
    let mut c = Cursor::new(text, 0);
    let incomplete = || XmlError::NotWellFormed("the stream header is incomplete".into());
    if c.peek().map_err(|_| incomplete())? != b'<' {
        return Err(XmlError::NotWellFormed("expected the stream header".into()));
    }
    c.at += 1;
    let mut scope = Vec::new();
    let tag = match start_tag(&mut c, &mut scope, &[], limits) {
        Ok(tag) => tag,
        Err(Stop::Incomplete) => return Err(incomplete()),
        Err(Stop::Bad(e)) => return Err(e),
    };
    if tag.empty {
        return Err(XmlError::NotWellFormed(
            "the stream header closes itself".into(),
        ));
    }
    let scope = scope
        .into_iter()
        .map(|(p, u)| (p.to_owned(), u.into_owned()))
        .collect();
    Ok((tag, scope))
}

#[derive(Clone, Copy)]
enum Context<'a> {
    Text,
    Attribute(&'a str),
}

/// Character data or an attribute value with its references replaced, checked for
/// characters XML does not allow (`check`: the raw text may hold some).
/// Borrowed when nothing is escaped.
fn unescape<'a>(
    text: &'a str,
    context: Context<'_>,
    check: bool,
) -> Result<Cow<'a, str>, XmlError> {
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
        return Ok(Cow::Borrowed(text));
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
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        literal(&mut out, rest.get(..amp).unwrap_or_default())?;
        let after = rest.get(amp + 1..).unwrap_or_default();
        let Some(semi) = after.find(';') else {
            return Err(XmlError::NotWellFormed(
                "an '&' that starts no reference".into(),
            ));
        };
        let name = after.get(..semi).unwrap_or_default();
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '#' | '_' | '-' | '.' | ':'));
        if !is_name {
            return Err(XmlError::NotWellFormed(
                "an '&' that starts no reference".into(),
            ));
        }
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "apos" => '\'',
            "quot" => '"',
            _ => match name.strip_prefix('#') {
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
            },
        };
        xml_chars(c.encode_utf8(&mut [0; 4]))?;
        out.push(c);
        rest = after.get(semi + 1..).unwrap_or_default();
    }
    literal(&mut out, rest)?;
    Ok(Cow::Owned(out))
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
