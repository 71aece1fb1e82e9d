//! JIDs (RFC 7622): parsing, validation and normalisation, and XEP-0106 escaping.
//!
//! Every part is put in Unicode Normalization Form C. Domainparts are lower-cased and
//! converted to A-labels (IDNA ToASCII with an in-crate RFC 3492 Punycode encoder);
//! localparts are lower-cased (RFC 7613's UsernameCaseMapped, without its
//! disallowed-code-point tables); resourceparts keep their case.

use std::fmt;
use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

/// A parsed, normalised JID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    local: Option<String>,
    domain: String,
    resource: Option<String>,
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
        let (bare, resource) = match s.split_once('/') {
            Some((b, r)) => (b, Some(r)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((l, d)) => (Some(l), d),
            None => (None, bare),
        };
        Jid::new(local, domain, resource)
    }

    pub fn new(local: Option<&str>, domain: &str, resource: Option<&str>) -> Result<Jid, JidError> {
        let local = match local {
            None => None,
            Some(l) => Some(normalize_local(l)?),
        };
        let resource = match resource {
            None => None,
            Some(r) => Some(check_resource(r)?),
        };
        Ok(Jid {
            local,
            domain: normalize_domain(domain)?,
            resource,
        })
    }

    pub fn local(&self) -> Option<&str> {
        self.local.as_deref()
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn resource(&self) -> Option<&str> {
        self.resource.as_deref()
    }

    pub fn bare(&self) -> Jid {
        Jid {
            local: self.local.clone(),
            domain: self.domain.clone(),
            resource: None,
        }
    }

    pub fn is_bare(&self) -> bool {
        self.resource.is_none()
    }

    pub fn with_resource(&self, r: &str) -> Result<Jid, JidError> {
        Ok(Jid {
            resource: Some(check_resource(r)?),
            ..self.bare()
        })
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.local {
            write!(f, "{l}@")?;
        }
        f.write_str(&self.domain)?;
        if let Some(r) = &self.resource {
            write!(f, "/{r}")?;
        }
        Ok(())
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
pub fn escape_node(s: &str) -> Result<String, JidError> {
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(JidError::Escape(
            "a localpart may not start or end with a space".into(),
        ));
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
    Ok(out)
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
}
