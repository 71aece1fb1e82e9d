//! JIDs (RFC 7622): parsing, validation and normalisation, and XEP-0106 escaping.
//!
//! Every part is put in Unicode Normalization Form C. Domainparts are lower-cased and
//! converted to A-labels (IDNA ToASCII with an in-crate RFC 3492 Punycode encoder);
//! localparts are lower-cased (RFC 7613's UsernameCaseMapped, without its
//! disallowed-code-point tables); resourceparts keep their case.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

/// A parsed, normalised JID, held as its string form and where its parts lie in it:
/// one allocation per JID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Jid {
    /// `local@domain/resource`, normalised.
    full: String,
    /// The localpart's length; 0 without one (a localpart is never empty).
    local_len: usize,
    /// Where the domainpart ends: `full.len()` without a resource.
    domain_end: usize,
}

impl fmt::Debug for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jid")
            .field("local", &self.local())
            .field("domain", &self.domain())
            .field("resource", &self.resource())
            .finish()
    }
}

/// Ordered by localpart, then domainpart, then resourcepart (no localpart or
/// resourcepart first).
impl Ord for Jid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.local()
            .cmp(&other.local())
            .then_with(|| self.domain().cmp(other.domain()))
            .then_with(|| self.resource().cmp(&other.resource()))
    }
}

impl PartialOrd for Jid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JidError {
    Empty,
    DomainEmpty,
    DomainTooLong,
    LabelEmpty,
    LabelTooLong(String),
    LabelInvalid(String),
    LocalEmpty,
    LocalTooLong,
    LocalInvalidChar(char),
    ResourceEmpty,
    ResourceTooLong,
    ResourceInvalidChar(char),
    Idna(String),
    Escape(String),
}

impl fmt::Display for JidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JidError::Empty => f.write_str("the JID is empty"),
            JidError::DomainEmpty => f.write_str("the domainpart is empty"),
            JidError::DomainTooLong => f.write_str("the domainpart is longer than 1023 octets"),
            JidError::LabelEmpty => f.write_str("the domainpart has an empty label"),
            JidError::LabelTooLong(l) => {
                write!(f, "the domain label '{l}' is longer than 63 octets")
            }
            JidError::LabelInvalid(l) => {
                write!(
                    f,
                    "the domain label '{l}' may hold only letters, digits and inner hyphens"
                )
            }
            JidError::LocalEmpty => f.write_str("the localpart before '@' is empty"),
            JidError::LocalTooLong => f.write_str("the localpart is longer than 1023 octets"),
            JidError::LocalInvalidChar(c) => write!(f, "the localpart may not contain {c:?}"),
            JidError::ResourceEmpty => f.write_str("the resourcepart after '/' is empty"),
            JidError::ResourceTooLong => f.write_str("the resourcepart is longer than 1023 octets"),
            JidError::ResourceInvalidChar(c) => write!(f, "the resourcepart may not contain {c:?}"),
            JidError::Idna(t) => write!(f, "the domain cannot be converted to ASCII: {t}"),
            JidError::Escape(t) => write!(f, "XEP-0106 escaping: {t}"),
        }
    }
}

impl std::error::Error for JidError {}

const MAX_PART: usize = 1023;

impl Jid {
    pub fn parse(s: &str) -> Result<Jid, JidError> {
        if s.is_empty() {
            return Err(JidError::Empty);
        }
        // RFC 7622 §3.1: the resource starts at the first '/', the localpart ends at
        // the first '@' before it.
        let (bare, resource) = match split_once_byte(s, b'/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match split_once_byte(bare, b'@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        // The common case: every part is in normal form already, so the JID is the
        // input as it is.
        if local.is_none_or(local_is_normal)
            && domain_is_normal(domain)
            && resource.is_none_or(resource_is_normal)
        {
            return Ok(Jid {
                full: s.to_owned(),
                local_len: local.map_or(0, str::len),
                domain_end: bare.len(),
            });
        }
        Jid::new(local, domain, resource)
    }

    pub fn new(local: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        let local = match local {
            None => None,
            Some(l) if local_is_normal(l) => Some(Cow::Borrowed(l)),
            Some(l) => Some(Cow::Owned(normalize_local(l)?)),
        };
        let resource = match resource {
            None => None,
            Some(r) => Some(resource_part(r)?),
        };
        let domain = if domain_is_normal(domain) {
            Cow::Borrowed(domain)
        } else {
            Cow::Owned(normalize_domain(domain)?)
        };
        Ok(Jid::assemble(
            local.as_deref(),
            &domain,
            resource.as_deref(),
        ))
    }

    /// A JID from parts already normalised and checked.
    fn assemble(local: Option<&str>, domain: &str, resource: Option<&str>) -> Jid {
        let mut full = String::with_capacity(
            local.map_or(0, |l| l.len() + 1) + domain.len() + resource.map_or(0, |r| r.len() + 1),
        );
        if let Some(l) = local {
            full.push_str(l);
            full.push('@');
        }
        full.push_str(domain);
        let domain_end = full.len();
        if let Some(r) = resource {
            full.push('/');
            full.push_str(r);
        }
        Jid {
            full,
            local_len: local.map_or(0, str::len),
            domain_end,
        }
    }

    pub fn local(&self) -> Option<&str> {
        if self.local_len == 0 {
            return None;
        }
        self.full.get(..self.local_len)
    }

    pub fn domain(&self) -> &str {
        let start = if self.local_len == 0 {
            0
        } else {
            self.local_len + 1
        };
        self.full.get(start..self.domain_end).unwrap_or_default()
    }

    pub fn resource(&self) -> Option<&str> {
        if self.domain_end >= self.full.len() {
            return None;
        }
        self.full.get(self.domain_end + 1..)
    }

    /// The string form, `local@domain/resource`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The string form, taken out of the JID.
    pub fn into_string(self) -> String {
        self.full
    }

    /// The bare JID's string form, `local@domain`, borrowed.
    pub fn bare_str(&self) -> &str {
        self.full.get(..self.domain_end).unwrap_or_default()
    }

    pub fn bare(&self) -> Jid {
        Jid::assemble(self.local(), self.domain(), None)
    }

    pub fn is_bare(&self) -> bool {
        self.domain_end >= self.full.len()
    }

    pub fn with_resource(&self, r: &str) -> Result<Jid, JidError> {
        let r = resource_part(r)?;
        Ok(Jid::assemble(self.local(), self.domain(), Some(&r)))
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Splits at the first `b`, an ASCII byte (so both sides are `str`s).
fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = crate::bytes::find(b, s.as_bytes())?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// What a byte may be in a part already in normal form, one lookup per byte.
const LOCAL: u8 = 1;
const RESOURCE: u8 = 2;
/// In a domainpart: a lower-case letter, a digit, '-', '_' or '.'.
const DOMAIN: u8 = 4;
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        // `b` is below 256, so the cast cannot truncate.
        let c = b as u8;
        let mut class = 0;
        if matches!(c, 0x21..=0x7e)
            && !c.is_ascii_uppercase()
            && !matches!(c, b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@')
        {
            class |= LOCAL;
        }
        if matches!(c, 0x20..=0x7e) {
            class |= RESOURCE;
        }
        if matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.') {
            class |= DOMAIN;
        }
        t[b] = class;
        b += 1;
    }
    t
};

/// Whether every byte of `s` is of `class`: the lookups are folded without a
/// branch, as parts are short and nearly always pass.
fn all_of(s: &str, class: u8) -> bool {
    s.bytes().fold(class, |acc, b| acc & CLASS[usize::from(b)]) != 0
}

/// Whether a localpart is valid and already normal: printable ASCII, no upper case,
/// none of the characters a localpart may not hold, within the length limit.
fn local_is_normal(l: &str) -> bool {
    !l.is_empty() && l.len() <= MAX_PART && all_of(l, LOCAL)
}

/// Whether a resourcepart is valid and already normal: printable ASCII (NFC as it
/// is), within the length limit.
fn resource_is_normal(r: &str) -> bool {
    !r.is_empty() && r.len() <= MAX_PART && all_of(r, RESOURCE)
}

/// Whether a domainpart is valid and already normal: lower-case letters, digits,
/// '-' and '_' in non-empty labels of at most 63 octets that neither start nor end
/// with '-', no trailing dot, within the length limit.
fn domain_is_normal(d: &str) -> bool {
    if d.is_empty() || d.len() > MAX_PART {
        return false;
    }
    // The bytes are checked by class without a branch, a label's shape at the
    // dot that ends it.
    let b = d.as_bytes();
    let mut class = DOMAIN;
    let mut from = 0;
    for (i, &c) in b.iter().enumerate() {
        class &= CLASS[usize::from(c)];
        if c == b'.' {
            if !label_is_normal(b.get(from..i).unwrap_or_default()) {
                return false;
            }
            from = i + 1;
        }
    }
    class != 0 && label_is_normal(b.get(from..).unwrap_or_default())
}

/// A label of a normal domainpart: not empty, at most 63 octets, neither starting
/// nor ending with '-' (its bytes are checked by class).
fn label_is_normal(l: &[u8]) -> bool {
    !l.is_empty() && l.len() <= 63 && l.first() != Some(&b'-') && l.last() != Some(&b'-')
}

fn resource_part(r: &str) -> Result<Cow<'_, str>, JidError> {
    if resource_is_normal(r) {
        Ok(Cow::Borrowed(r))
    } else {
        check_resource(r).map(Cow::Owned)
    }
}

impl FromStr for Jid {
    type Err = JidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jid::parse(s)
    }
}

fn normalize_local(l: &str) -> Result<String, JidError> {
    if l.is_empty() {
        return Err(JidError::LocalEmpty);
    }
    let forbidden = |c: char| {
        matches!(c, '"' | '&' | '\'' | '/' | ':' | '<' | '>' | '@')
            || c.is_whitespace()
            || c.is_control()
    };
    // ASCII bytes are chars: one pass over bytes on the common path.
    let bad = if l.is_ascii() {
        l.bytes().map(char::from).find(|c| forbidden(*c))
    } else {
        l.chars().find(|c| forbidden(*c))
    };
    if let Some(c) = bad {
        return Err(JidError::LocalInvalidChar(c));
    }
    // ASCII is already in NFC: skip the Unicode passes on the common path.
    let lower: String = if l.is_ascii() {
        l.to_ascii_lowercase()
    } else {
        l.to_lowercase().nfc().collect()
    };
    if lower.len() > MAX_PART {
        return Err(JidError::LocalTooLong);
    }
    Ok(lower)
}

fn check_resource(r: &str) -> Result<String, JidError> {
    if r.is_empty() {
        return Err(JidError::ResourceEmpty);
    }
    if r.len() > MAX_PART {
        return Err(JidError::ResourceTooLong);
    }
    if r.is_ascii() {
        if let Some(b) = r.bytes().find(|b| b.is_ascii_control()) {
            return Err(JidError::ResourceInvalidChar(char::from(b)));
        }
        return Ok(r.to_owned());
    }
    if let Some(c) = r.chars().find(|c| c.is_control()) {
        return Err(JidError::ResourceInvalidChar(c));
    }
    Ok(r.nfc().collect())
}

/// Normalises a domainpart: lower case, A-labels, no trailing dot, RFC 7622 lengths.
/// IP literals (IPv4 dotted quad, `[IPv6]`) are accepted as they are.
pub fn normalize_domain(s: &str) -> Result<String, JidError> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err(JidError::DomainEmpty);
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|a| format!("[{a}]"))
            .map_err(|_| JidError::LabelInvalid(s.to_owned()));
    }
    let ip_like = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if ip_like && s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(s.to_owned());
    }
    if s.is_ascii() {
        // The common case: check the labels in place and lower-case once.
        for label in s.split('.') {
            if label.is_empty() {
                return Err(JidError::LabelEmpty);
            }
            if label.len() > 63 {
                return Err(JidError::LabelTooLong(label.to_owned()));
            }
            let ldh = label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ldh || label.starts_with('-') || label.ends_with('-') {
                return Err(JidError::LabelInvalid(label.to_owned()));
            }
        }
        if s.len() > MAX_PART {
            return Err(JidError::DomainTooLong);
        }
        return Ok(s.to_ascii_lowercase());
    }
    let mut labels = Vec::new();
    for label in s.split('.') {
        if label.is_empty() {
            return Err(JidError::LabelEmpty);
        }
        let lower: String = label.to_lowercase().nfc().collect();
        let ascii = if lower.is_ascii() {
            lower
        } else {
            let encoded =
                punycode_encode(&lower).ok_or_else(|| JidError::Idna(label.to_owned()))?;
            format!("xn--{encoded}")
        };
        if ascii.len() > 63 {
            return Err(JidError::LabelTooLong(label.to_owned()));
        }
        let ldh = ascii
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ldh || ascii.starts_with('-') || ascii.ends_with('-') {
            return Err(JidError::LabelInvalid(label.to_owned()));
        }
        labels.push(ascii);
    }
    let domain = labels.join(".");
    if domain.len() > MAX_PART {
        return Err(JidError::DomainTooLong);
    }
    Ok(domain)
}

/// RFC 3492 Punycode encoding of one label.
fn punycode_encode(input: &str) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    fn adapt(mut delta: u32, num_points: u32, first: bool) -> u32 {
        delta /= if first { DAMP } else { 2 };
        delta += delta / num_points;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        k + (BASE - TMIN + 1) * delta / (delta + SKEW)
    }
    fn digit(d: u32) -> char {
        let b = if d < 26 {
            b'a' + d as u8
        } else {
            b'0' + (d - 26) as u8
        };
        char::from(b)
    }
    let chars: Vec<u32> = input.chars().map(u32::from).collect();
    let mut out: String = input.chars().filter(char::is_ascii).collect();
    let basic = out.len() as u32;
    if basic > 0 {
        out.push('-');
    }
    let mut n: u32 = 0x80;
    let mut delta: u32 = 0;
    let mut bias: u32 = 72;
    let mut h = basic;
    let total = chars.len() as u32;
    while h < total {
        let m = chars.iter().copied().filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(h + 1)?)?;
        n = m;
        for &c in &chars {
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        TMIN
                    } else if k >= bias + TMAX {
                        TMAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    out.push(digit(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                out.push(digit(q));
                bias = adapt(delta, h + 1, h == basic);
                delta = 0;
                h += 1;
            }
        }
        delta = delta.checked_add(1)?;
        n = n.checked_add(1)?;
    }
    Some(out)
}

const ESCAPES: [(char, &str); 10] = [
    (' ', "\\20"),
    ('"', "\\22"),
    ('&', "\\26"),
    ('\'', "\\27"),
    ('/', "\\2f"),
    (':', "\\3a"),
    ('<', "\\3c"),
    ('>', "\\3e"),
    ('@', "\\40"),
    ('\\', "\\5c"),
];

fn starts_with_escape(s: &str) -> bool {
    ESCAPES
        .iter()
        .any(|(_, e)| s.get(..3).is_some_and(|p| p.eq_ignore_ascii_case(e)))
}

/// XEP-0106: escapes a string for use as a localpart. A backslash is escaped only
/// where it would otherwise start an escape sequence; leading or trailing spaces
/// are refused.
pub fn escape_node(s: &str) -> Result<Cow<'_, str>, JidError> {
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(JidError::Escape(
            "a localpart may not start or end with a space".into(),
        ));
    }
    // Every character XEP-0106 escapes is ASCII: a user part without any is the
    // localpart as it is.
    if !s.bytes().any(|b| {
        matches!(
            b,
            b' ' | b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@' | b'\\'
        )
    }) {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        match ESCAPES.iter().find(|(ch, _)| *ch == c) {
            Some((_, e)) if c != '\\' => out.push_str(e),
            Some((_, e)) => {
                if starts_with_escape(s.get(i..).unwrap_or_default()) {
                    out.push_str(e);
                } else {
                    out.push('\\');
                }
            }
            None => out.push(c),
        }
    }
    Ok(Cow::Owned(out))
}

/// XEP-0106: the inverse of [`escape_node`].
pub fn unescape_node(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(rest) = s.get(i..) {
        let Some(c) = rest.chars().next() else {
            break;
        };
        if c == '\\' {
            if let Some((ch, _)) = ESCAPES
                .iter()
                .find(|(_, e)| rest.get(..3).is_some_and(|p| p.eq_ignore_ascii_case(e)))
            {
                out.push(*ch);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let j = Jid::parse("Juliet@EXAMPLE.com./balcony/with@slash").expect("valid");
        assert_eq!(j.local(), Some("juliet"));
        assert_eq!(j.domain(), "example.com");
        assert_eq!(j.resource(), Some("balcony/with@slash"));
        assert_eq!(j.to_string(), "juliet@example.com/balcony/with@slash");
        assert_eq!(j.bare().to_string(), "juliet@example.com");
        assert!(Jid::parse("example.com").expect("domain").is_bare());
        assert_eq!(
            Jid::parse("[::1]").map(|j| j.domain().to_owned()),
            Ok("[::1]".into())
        );
        assert_eq!(
            Jid::parse("192.0.2.1").map(|j| j.domain().to_owned()),
            Ok("192.0.2.1".into())
        );
    }

    #[test]
    fn rejects_bad_jids() {
        assert_eq!(Jid::parse(""), Err(JidError::Empty));
        assert_eq!(Jid::parse("@example.com"), Err(JidError::LocalEmpty));
        assert_eq!(Jid::parse("a@example.com/"), Err(JidError::ResourceEmpty));
        assert_eq!(Jid::parse("a@"), Err(JidError::DomainEmpty));
        assert_eq!(
            Jid::parse("a b@example.com"),
            Err(JidError::LocalInvalidChar(' '))
        );
        assert_eq!(Jid::parse("a@b..c"), Err(JidError::LabelEmpty));
        assert!(matches!(
            Jid::parse("a@-bad.com"),
            Err(JidError::LabelInvalid(_))
        ));
        assert!(matches!(
            Jid::parse("a@exa mple.com"),
            Err(JidError::LabelInvalid(_))
        ));
        let long_label = "x".repeat(64);
        assert!(matches!(
            normalize_domain(&format!("{long_label}.com")),
            Err(JidError::LabelTooLong(_))
        ));
        assert!(normalize_domain(&format!("{}.com", "x".repeat(63))).is_ok());
        let long_domain = vec!["abcdefghi"; 103].join(".");
        assert_eq!(normalize_domain(&long_domain), Err(JidError::DomainTooLong));
        assert_eq!(
            Jid::parse(&format!("{}@a.b", "l".repeat(1024))),
            Err(JidError::LocalTooLong)
        );
    }

    #[test]
    fn idna_to_ascii() {
        assert_eq!(
            normalize_domain("münchen.example"),
            Ok("xn--mnchen-3ya.example".into())
        );
        assert_eq!(
            normalize_domain("ÉXAMPLE.com"),
            Ok("xn--xample-9ua.com".into())
        );
        assert_eq!(
            normalize_domain("例え.テスト"),
            Ok("xn--r8jz45g.xn--zckzah".into())
        );
        assert_eq!(normalize_domain("bücher.de"), Ok("xn--bcher-kva.de".into()));
        // A decomposed ü (u + combining diaeresis) is the same domain.
        assert_eq!(
            normalize_domain("bu\u{308}cher.de"),
            Ok("xn--bcher-kva.de".into())
        );
        assert_eq!(
            Jid::parse("Ju\u{308}rgen@example.com/Ca\u{301}fe").map(|j| j.to_string()),
            Ok("j\u{fc}rgen@example.com/C\u{e1}fe".into())
        );
    }

    #[test]
    fn xep_0106_vectors() {
        for (raw, escaped) in [
            ("space cadet", "space\\20cadet"),
            ("call me \"ishmael\"", "call\\20me\\20\\22ishmael\\22"),
            ("at&t guy", "at\\26t\\20guy"),
            ("d'artagnan", "d\\27artagnan"),
            ("/.fanboy", "\\2f.fanboy"),
            ("::foo::", "\\3a\\3afoo\\3a\\3a"),
            ("<foo>", "\\3cfoo\\3e"),
            ("user@host", "user\\40host"),
            ("c:\\net", "c\\3a\\net"),
            ("c:\\\\net", "c\\3a\\\\net"),
            ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
            ("c:\\5commas", "c\\3a\\5c5commas"),
        ] {
            assert_eq!(escape_node(raw).as_deref(), Ok(escaped), "{raw}");
            assert_eq!(unescape_node(escaped), raw, "{escaped}");
        }
        assert!(escape_node(" lead").is_err());
    }

    /// The full normalisation of every part, with no fast path: what `parse` must
    /// agree with.
    fn parse_slowly(s: &str) -> Result<(Option<String>, String, Option<String>), JidError> {
        if s.is_empty() {
            return Err(JidError::Empty);
        }
        let (bare, resource) = match s.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        let local = local.map(normalize_local).transpose()?;
        let resource = resource.map(check_resource).transpose()?;
        Ok((local, normalize_domain(domain)?, resource))
    }

    #[test]
    fn the_fast_path_agrees_with_full_normalisation() {
        let alphabet: Vec<char> = "aZ0-_.@/ \t\"é\u{308}[]:x9-.".chars().collect();
        let mut rng = crate::rng::Rng::new(7);
        let label = "y".repeat(63);
        for i in 0..20_000 {
            let len = (rng.next_u64() % 14) as usize;
            let mut s: String = (0..len)
                .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
                .collect();
            if i % 7 == 0 {
                s.insert_str(0, &label);
            }
            let fast = Jid::parse(&s).map(|j| {
                assert_eq!(j.to_string(), j.as_str());
                (
                    j.local().map(str::to_owned),
                    j.domain().to_owned(),
                    j.resource().map(str::to_owned),
                )
            });
            assert_eq!(fast, parse_slowly(&s), "{s:?}");
        }
        for s in [
            "a@b.c",
            "a@b.c.",
            "a@-b.c",
            "a@b-.c",
            "a@b..c",
            "a@.b",
            "a@b.c/r",
            "a@b.c/ r ",
            "b.c/r@s/t",
            "192.0.2.1",
            "1.2.3.4.5",
            "a@[::1]/x",
            "A@B.C/D",
        ] {
            let fast = Jid::parse(s).map(|j| {
                (
                    j.local().map(str::to_owned),
                    j.domain().to_owned(),
                    j.resource().map(str::to_owned),
                )
            });
            assert_eq!(fast, parse_slowly(s), "{s:?}");
        }
        let long = format!("{}@a.b", "l".repeat(MAX_PART));
        assert!(Jid::parse(&long).is_ok());
        let long_label = format!("a@{}.b", "x".repeat(64));
        assert_eq!(
            Jid::parse(&long_label).map(|j| j.to_string()),
            parse_slowly(&long_label).map(|_| String::new())
        );
    }

    #[test]
    fn parts_order_and_debug() {
        let j = Jid::parse("romeo@xmpp.example/balcony").expect("jid");
        assert_eq!(
            format!("{j:?}"),
            "Jid { local: Some(\"romeo\"), domain: \"xmpp.example\", resource: Some(\"balcony\") }"
        );
        assert_eq!(j.bare().as_str(), "romeo@xmpp.example");
        assert_eq!(j.bare_str(), "romeo@xmpp.example");
        assert_eq!(j.bare().bare_str(), "romeo@xmpp.example");
        assert_eq!(
            j.bare().with_resource("orchard").map(|j| j.to_string()),
            Ok("romeo@xmpp.example/orchard".into())
        );
        let d = Jid::parse("xmpp.example").expect("jid");
        assert_eq!((d.local(), d.resource()), (None, None));
        assert_eq!(
            Jid::new(Some("Romeo"), "XMPP.example.", Some("Balcony")).map(|j| j.to_string()),
            Ok("romeo@xmpp.example/Balcony".into())
        );
        // As the (local, domain, resource) tuples order.
        let mut v: Vec<Jid> = ["b@a", "a", "a/x", "a@b", "a@a/z", "a@a", "b"]
            .iter()
            .map(|s| Jid::parse(s).expect("jid"))
            .collect();
        v.sort();
        let got: Vec<String> = v.iter().map(Jid::to_string).collect();
        assert_eq!(got, ["a", "a/x", "b", "a@a", "a@a/z", "a@b", "b@a"]);
    }

    #[test]
    fn escape_round_trip_and_no_panics() {
        let alphabet: Vec<char> = "ab \\\"&'/:<>@2035cfé😀".chars().collect();
        let mut rng = crate::rng::Rng::new(11);
        for _ in 0..500 {
            let len = (rng.next_u64() % 12) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
                .collect();
            if let Ok(e) = escape_node(&s) {
                assert_eq!(unescape_node(&e), s, "{s:?} -> {e:?}");
                assert!(!e.contains(['@', '/', ' ', ':']));
            }
            let _ = Jid::parse(&s);
            let _ = normalize_domain(&s);
        }
    }

    /// The part checks by class and by label, against their byte-by-byte
    /// definitions, on every string of up to five bytes from an alphabet of each
    /// kind of byte, and on the label length limit.
    #[test]
    fn part_checks_match_their_definitions() {
        fn local(l: &str) -> bool {
            !l.is_empty()
                && l.bytes().all(|b| {
                    matches!(b, 0x21..=0x7e)
                        && !b.is_ascii_uppercase()
                        && !matches!(b, b'"' | b'&' | b'\'' | b'/' | b':' | b'<' | b'>' | b'@')
                })
        }
        fn resource(r: &str) -> bool {
            !r.is_empty() && r.bytes().all(|b| matches!(b, 0x20..=0x7e))
        }
        fn domain(d: &str) -> bool {
            let mut label_len = 0usize;
            let mut prev = b'.';
            for b in d.bytes() {
                match b {
                    b'a'..=b'z' | b'0'..=b'9' | b'_' => {}
                    b'-' if prev != b'.' => {}
                    b'.' if prev != b'.' && prev != b'-' => label_len = 0,
                    _ => return false,
                }
                if b != b'.' {
                    label_len += 1;
                    if label_len > 63 {
                        return false;
                    }
                }
                prev = b;
            }
            !d.is_empty() && prev != b'.' && prev != b'-'
        }
        let alphabet = [
            "a", "Z", "0", "-", ".", "_", "@", "/", " ", "~", "\u{7f}", "é", "\t",
        ];
        let mut words = vec![String::new()];
        let mut checked = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for w in &words {
                for a in alphabet {
                    let s = format!("{w}{a}");
                    assert_eq!(local_is_normal(&s), local(&s), "local {s:?}");
                    assert_eq!(resource_is_normal(&s), resource(&s), "resource {s:?}");
                    assert_eq!(domain_is_normal(&s), domain(&s), "domain {s:?}");
                    checked += 1;
                    longer.push(s);
                }
            }
            words = longer;
        }
        assert!(checked > 400_000);
        for len in [62, 63, 64] {
            for d in [
                "a".repeat(len),
                format!("x.{}", "b".repeat(len)),
                format!("{}.x", "c".repeat(len)),
            ] {
                assert_eq!(domain_is_normal(&d), domain(&d), "{len}: {d}");
            }
        }
    }
}
