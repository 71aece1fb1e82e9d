//! SIP URIs (RFC 3261 §19.1), name-addr / addr-spec header values (§20.10, §25.1)
//! and Via (§20.42).

use std::fmt;

use super::message::{split_byte, split_once_byte, trim, unquote, SipError};

/// A `;name` or `;name=value` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

/// The parameters of `;`-separated text as borrowed (name, value) pairs, empty
/// ones skipped.
fn params_of(text: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    split_byte(text, b';')
        .filter(|p| !trim(p).is_empty())
        .map(|p| match split_once_byte(p, b'=') {
            Some((n, v)) => (trim(n), Some(trim(v))),
            None => (trim(p), None),
        })
}

/// The value of the first parameter called `name` (any case) in `;`-separated
/// text, if it has one.
fn param_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    // Most URIs have no parameters: nothing to split.
    if text.is_empty() {
        return None;
    }
    params_of(text)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v)
}

fn parse_params(text: &str) -> Vec<Param> {
    params_of(text)
        .map(|(name, value)| Param {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        })
        .collect()
}

/// `s.split_once(char::is_whitespace)`, bytewise up to the first whitespace or
/// non-ASCII byte: the transport before a Via's sent-by is short ASCII, and
/// decoding it as characters costs more than the rest of the Via.
fn split_at_whitespace(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    match b
        .iter()
        .position(|&c| matches!(c, b' ' | b'\t'..=b'\r') || !c.is_ascii())
    {
        Some(i) if b.get(i).is_some_and(u8::is_ascii) => Some((s.get(..i)?, s.get(i + 1..)?)),
        Some(_) => s.split_once(char::is_whitespace),
        None => None,
    }
}

/// `host[:port]` or `[v6][:port]`; an IPv6 host keeps its brackets.
fn host_port(hostport: &str) -> Result<(&str, Option<u16>), &'static str> {
    if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = split_once_byte(v6, b']').ok_or("unclosed IPv6 reference")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| "bad port")?),
            None if after.is_empty() => None,
            None => return Err("junk after IPv6 reference"),
        };
        // '[' and ']' are one byte each: the host is the reference as written.
        Ok((hostport.get(..addr.len() + 2).unwrap_or(hostport), port))
    } else {
        // A host and port are a few dozen bytes: a plain scan from the end
        // costs less than `memrchr`'s setup.
        match hostport.bytes().rposition(|b| b == b':') {
            Some(i) => {
                let h = hostport.get(..i).unwrap_or_default();
                let p = hostport.get(i + 1..).unwrap_or_default();
                Ok((h, Some(p.parse().map_err(|_| "bad port")?)))
            }
            None => Ok((hostport, None)),
        }
    }
}

fn find_param<'a>(params: &'a [Param], name: &str) -> Option<&'a Param> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &[Param]) -> fmt::Result {
    for p in params {
        match &p.value {
            Some(v) => write!(f, ";{}={v}", p.name)?,
            None => write!(f, ";{}", p.name)?,
        }
    }
    Ok(())
}

/// A `sip:`/`sips:` URI (other schemes such as `pres:` and `im:` are read the same way).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: String,
    /// The user part as written (still percent-encoded).
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
    /// `?name=value&…` headers, as written.
    pub headers: Option<String>,
}

/// A URI read in place, as [`SipUri::parse`] reads it: what the gateway maps to a
/// JID per message without copying its parts out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUriRef<'a> {
    /// As written ([`SipUri`] lower-cases it).
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    /// The text after the host part's `;`, empty when there is none.
    params: &'a str,
    pub headers: Option<&'a str>,
}

/// The bytes [`UriMarks::find`] stops at.
const URI_MARK: [bool; 256] = {
    let mut t = [false; 256];
    t[b'@' as usize] = true;
    t[b':' as usize] = true;
    t[b'?' as usize] = true;
    t[b';' as usize] = true;
    t
};

/// Where a URI's separators are, after its scheme's colon, found in one pass:
/// the first `@`; the first `:` before it (the password's); in the host part
/// (after that `@`, or all of it), the first `?` and the first `;` before it.
#[derive(Default)]
struct UriMarks {
    at: Option<usize>,
    colon: Option<usize>,
    question: Option<usize>,
    semicolon: Option<usize>,
}

impl UriMarks {
    fn find(bytes: &[u8]) -> UriMarks {
        let mut m = UriMarks::default();
        // Until an '@' shows the user part's end, a '?' or ';' may be in it.
        let mut question = None;
        let mut semicolon = None;
        let mut from = 0;
        // From separator to separator: the bytes between need one lookup each.
        while let Some(off) = bytes
            .get(from..)
            .and_then(|r| r.iter().position(|&b| URI_MARK[usize::from(b)]))
        {
            let i = from + off;
            from = i + 1;
            match bytes.get(i).copied().unwrap_or_default() {
                b'@' if m.at.is_none() => {
                    m.at = Some(i);
                    question = None;
                    semicolon = None;
                }
                b':' if m.at.is_none() => m.colon = m.colon.or(Some(i)),
                b'?' => question = question.or(Some(i)),
                b';' if question.is_none() => semicolon = semicolon.or(Some(i)),
                _ => {}
            }
        }
        if m.at.is_none() {
            m.colon = None;
        }
        m.question = question;
        m.semicolon = semicolon;
        m
    }
}

impl<'a> SipUriRef<'a> {
    pub fn parse(text: &'a str) -> Result<SipUriRef<'a>, SipError> {
        let bad = |why: &str| {
            SipError::Malformed(format!(
                "URI '{}': {why}",
                text.chars().take(60).collect::<String>()
            ))
        };
        let (scheme, rest) = split_once_byte(trim(text), b':').ok_or_else(|| bad("no scheme"))?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(bad("bad scheme"));
        }
        let marks = UriMarks::find(rest.as_bytes());
        // The user part may contain ';' and '?' (user-unreserved) but never '@':
        // what follows the first '@' is the host part.
        let (userinfo, hostpart) = match marks.at {
            Some(i) => (rest.get(..i), rest.get(i + 1..).unwrap_or_default()),
            None => (None, rest),
        };
        let piece = |from: usize, to: usize| rest.get(from..to).unwrap_or_default();
        let host_from = marks.at.map_or(0, |i| i + 1);
        let (hostpart, headers) = match marks.question {
            Some(i) => (piece(host_from, i), rest.get(i + 1..)),
            None => (hostpart, None),
        };
        let (user, password) = match (userinfo, marks.colon) {
            (Some(u), Some(i)) => (u.get(..i), rest.get(i + 1..marks.at.unwrap_or(i + 1))),
            (u, _) => (u, None),
        };
        if user == Some("") {
            return Err(bad("empty user part"));
        }
        let (hostport, params) = match marks.semicolon {
            Some(i) => (
                piece(host_from, i),
                piece(i + 1, host_from + hostpart.len()),
            ),
            None => (hostpart, ""),
        };
        let (host, port) = host_port(hostport).map_err(bad)?;
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(SipUriRef {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// The value of the first parameter called `name` (any case), if it has one.
    pub fn param_value(&self, name: &str) -> Option<&'a str> {
        param_value(self.params, name)
    }

    /// As [`SipUri::reads_back_unchanged`].
    pub fn reads_back_unchanged(&self) -> bool {
        self.port.is_some()
            || params_of(self.params).next().is_some()
            || self.headers.is_some()
            || !self.host.ends_with(char::is_whitespace)
    }

    pub fn to_owned(&self) -> SipUri {
        SipUri {
            scheme: self.scheme.to_ascii_lowercase(),
            user: self.user.map(str::to_owned),
            password: self.password.map(str::to_owned),
            host: self.host.to_owned(),
            port: self.port,
            params: parse_params(self.params),
            headers: self.headers.map(str::to_owned),
        }
    }
}

impl SipUri {
    pub fn parse(text: &str) -> Result<SipUri, SipError> {
        SipUriRef::parse(text).map(|u| u.to_owned())
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
    }

    /// Whether parsing this URI's serialisation gives it back. It does unless the
    /// host ends in whitespace and nothing follows it (empty parameters are not
    /// written), since parsing trims the text.
    pub fn reads_back_unchanged(&self) -> bool {
        self.port.is_some()
            || !self.params.is_empty()
            || self.headers.is_some()
            || !self.host.ends_with(char::is_whitespace)
    }

    /// `sip:user@host` without port, parameters or headers: the address of record.
    pub fn aor(&self) -> String {
        match &self.user {
            Some(u) => format!("{}:{u}@{}", self.scheme, self.host),
            None => format!("{}:{}", self.scheme, self.host),
        }
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// A From/To/Contact value: `"Display" <uri>;tag=…` or a bare `uri;tag=…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: SipUri,
    /// Header parameters (outside the URI), such as `tag` or `expires`.
    pub params: Vec<Param>,
    /// Whether the URI was in angle brackets (kept for faithful re-serialisation).
    pub angle: bool,
}

/// A From/To/Contact value read in place, as [`NameAddr::parse`] reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddrRef<'a> {
    /// Trimmed and without its quotes; `None` when empty.
    pub display: Option<&'a str>,
    pub uri: SipUriRef<'a>,
    /// The header parameters' text, after the URI.
    params: &'a str,
    pub angle: bool,
}

impl<'a> NameAddrRef<'a> {
    pub fn parse(text: &'a str) -> Result<NameAddrRef<'a>, SipError> {
        let text = trim(text);
        let bad = |why: &str| {
            SipError::Malformed(format!(
                "address '{}': {why}",
                text.chars().take(60).collect::<String>()
            ))
        };
        if let Some(lt) = find_unquoted(text, b'<') {
            let display = trim(unquote(trim(text.get(..lt).unwrap_or_default())));
            let after = text.get(lt + 1..).unwrap_or_default();
            let gt = memchr::memchr(b'>', after.as_bytes()).ok_or_else(|| bad("unclosed '<'"))?;
            return Ok(NameAddrRef {
                display: (!display.is_empty()).then_some(display),
                uri: SipUriRef::parse(after.get(..gt).unwrap_or_default())?,
                params: after.get(gt + 1..).unwrap_or_default(),
                angle: true,
            });
        }
        // RFC 3261 §20.10: without angle brackets, parameters belong to the header.
        let (uri, params) = split_once_byte(text, b';').unwrap_or((text, ""));
        Ok(NameAddrRef {
            display: None,
            uri: SipUriRef::parse(uri)?,
            params,
            angle: false,
        })
    }

    /// The value of the first header parameter called `name` (any case).
    pub fn param_value(&self, name: &str) -> Option<&'a str> {
        param_value(self.params, name)
    }

    pub fn to_owned(&self) -> NameAddr {
        NameAddr {
            display: self.display.map(str::to_owned),
            uri: self.uri.to_owned(),
            params: parse_params(self.params),
            angle: self.angle,
        }
    }
}

impl NameAddr {
    pub fn parse(text: &str) -> Result<NameAddr, SipError> {
        NameAddrRef::parse(text).map(|n| n.to_owned())
    }

    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").and_then(|p| p.value.as_deref())
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "\"{}\" ", d.replace('\\', "\\\\").replace('"', "\\\""))?;
        }
        if self.angle || self.display.is_some() || !self.uri.params.is_empty() {
            write!(f, "<{}>", self.uri)?;
        } else {
            write!(f, "{}", self.uri)?;
        }
        write_params(f, &self.params)
    }
}

/// Where an ASCII `needle` first occurs outside double quotes. Bytewise: neither it
/// nor '"' can be part of a multi-byte character.
fn find_unquoted(text: &str, needle: u8) -> Option<usize> {
    let mut quoted = false;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b if b == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// One Via value: `SIP/2.0/UDP host:port;branch=…;received=…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
}

impl Via {
    pub fn parse(text: &str) -> Result<Via, SipError> {
        let v = ViaRef::parse(text)?;
        Ok(Via {
            transport: v.transport.to_ascii_uppercase(),
            host: v.host.to_owned(),
            port: v.port,
            params: parse_params(v.params),
        })
    }

    pub fn branch(&self) -> Option<&str> {
        find_param(&self.params, "branch").and_then(|p| p.value.as_deref())
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)
    }
}

/// A Via value read in place, as [`Via::parse`] reads it: what the transaction
/// layer looks up per message (branch, sent-by) without copying it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ViaRef<'a> {
    /// As written (`Via::parse` upper-cases it).
    pub(crate) transport: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
    /// The text after the sent-by's `;`, empty when there is none.
    params: &'a str,
}

impl<'a> ViaRef<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<ViaRef<'a>, SipError> {
        let bad = |why: &str| {
            SipError::Malformed(format!(
                "Via '{}': {why}",
                text.chars().take(60).collect::<String>()
            ))
        };
        let text = trim(text);
        let rest = text
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("SIP/2.0/"))
            .and_then(|_| text.get(8..))
            .ok_or_else(|| bad("not SIP/2.0"))?;
        let (transport, rest) = split_at_whitespace(rest).ok_or_else(|| bad("no sent-by"))?;
        let rest = rest.trim_start();
        let (sent_by, params) = match split_once_byte(rest, b';') {
            Some((s, p)) => (trim(s), p),
            None => (trim(rest), ""),
        };
        // Read as the host part of `sip:{sent_by}` would be: a user part before '@'
        // must not be empty and is dropped, as are URI headers after '?'.
        let hostpart = match split_once_byte(sent_by, b'@') {
            Some((userinfo, hostpart)) => {
                let user = split_once_byte(userinfo, b':').map_or(userinfo, |(u, _)| u);
                if user.is_empty() {
                    return Err(bad("bad sent-by"));
                }
                hostpart
            }
            None => sent_by,
        };
        let hostport = split_once_byte(hostpart, b'?').map_or(hostpart, |(h, _)| h);
        let (host, port) = host_port(hostport).map_err(|_| bad("bad sent-by"))?;
        if host.is_empty() {
            return Err(bad("bad sent-by"));
        }
        Ok(ViaRef {
            transport,
            host,
            port,
            params,
        })
    }

    /// As [`Via::branch`]: the value of the first `branch` parameter.
    pub(crate) fn branch(&self) -> Option<&'a str> {
        param_value(self.params, "branch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = SipUri::parse(
            "sip:juliet@example.com:5061;transport=tcp;gr=yn0cl4bnw0yr3vym?subject=x",
        )
        .expect("uri");
        assert_eq!(u.user.as_deref(), Some("juliet"));
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, Some(5061));
        assert_eq!(
            u.param("gr").and_then(|p| p.value.as_deref()),
            Some("yn0cl4bnw0yr3vym")
        );
        assert_eq!(
            u.to_string(),
            "sip:juliet@example.com:5061;transport=tcp;gr=yn0cl4bnw0yr3vym?subject=x"
        );
        assert_eq!(u.aor(), "sip:juliet@example.com");
        let v6 = SipUri::parse("sip:[::1]:5060").expect("v6");
        assert_eq!((v6.host.as_str(), v6.port), ("[::1]", Some(5060)));
        assert!(SipUri::parse("no-scheme").is_err());
        assert!(SipUri::parse("sip:@host").is_err());
        assert!(SipUri::parse("sip:a@host:port").is_err());
    }

    #[test]
    fn name_addrs() {
        let n = NameAddr::parse("\"Bob \\\"B\\\" <x>\" <sip:bob@sip.test;transport=tcp>;tag=abc")
            .expect("name-addr");
        assert_eq!(n.tag(), Some("abc"));
        assert_eq!(
            n.uri.param("transport").and_then(|p| p.value.as_deref()),
            Some("tcp")
        );
        let bare = NameAddr::parse("sip:bob@sip.test;tag=xyz").expect("addr-spec");
        assert_eq!(bare.tag(), Some("xyz"));
        assert!(bare.uri.params.is_empty());
        assert_eq!(bare.to_string(), "sip:bob@sip.test;tag=xyz");
        assert!(NameAddr::parse("<sip:unclosed").is_err());
    }

    fn random_text(rng: &mut crate::rng::Rng, alphabet: &[char], max: u64) -> String {
        let len = (rng.next_u64() % max) as usize;
        (0..len)
            .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
            .collect()
    }

    /// A URI's pieces as a split at each separator in turn finds them.
    fn pieces_by_splits(rest: &str) -> [Option<&str>; 5] {
        let (userinfo, hostpart) = match rest.split_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (hostpart, headers) = match hostpart.split_once('?') {
            Some((r, h)) => (r, Some(h)),
            None => (hostpart, None),
        };
        let (user, password) = match userinfo.map(|u| u.split_once(':')) {
            Some(Some((u, p))) => (Some(u), Some(p)),
            _ => (userinfo, None),
        };
        let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
        [user, password, Some(hostport), Some(params), headers]
    }

    #[test]
    fn the_separators_found_in_one_pass_are_those_the_splits_find() {
        let alphabet: Vec<char> = "a1@:?;.é".chars().collect();
        let mut rng = crate::rng::Rng::new(79);
        for _ in 0..50_000 {
            let rest = random_text(&mut rng, &alphabet, 14);
            let text = format!("sip:{rest}");
            let expected = pieces_by_splits(&rest);
            match SipUriRef::parse(&text) {
                Ok(u) => {
                    let hostport = match u.port {
                        Some(p) => format!("{}:{p}", u.host),
                        None => u.host.to_owned(),
                    };
                    assert_eq!(u.user, expected[0], "{text:?}");
                    assert_eq!(u.password, expected[1], "{text:?}");
                    assert_eq!(Some(hostport.as_str()), expected[2], "{text:?}");
                    assert_eq!(Some(u.params), expected[3], "{text:?}");
                    assert_eq!(u.headers, expected[4], "{text:?}");
                }
                Err(_) => {
                    // Refused only for an empty user or a host part with no host
                    // or a bad port.
                    let hostport = expected[2].unwrap_or_default();
                    let refused = expected[0] == Some("")
                        || host_port(hostport).is_err()
                        || host_port(hostport).is_ok_and(|(h, _)| h.is_empty());
                    assert!(refused, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn the_bytewise_whitespace_split_is_the_character_split() {
        let alphabet: Vec<char> = "ab/ \t\u{b}\u{c}\r\n\u{a0}\u{85}\u{3000}é\u{1c}"
            .chars()
            .collect();
        let mut rng = crate::rng::Rng::new(78);
        for _ in 0..20_000 {
            let text = random_text(&mut rng, &alphabet, 12);
            assert_eq!(
                split_at_whitespace(&text),
                text.split_once(char::is_whitespace),
                "{text:?}"
            );
        }
    }

    #[test]
    fn reading_a_uri_back_gives_the_same_uri() {
        // What lets a parsed URI be mapped without serialising and parsing it again.
        let alphabet: Vec<char> = "sip:ab@;=?[]:1 5x.\"<>é\t".chars().collect();
        let mut rng = crate::rng::Rng::new(77);
        for _ in 0..20_000 {
            let text = random_text(&mut rng, &alphabet, 24);
            for text in [text.clone(), format!("sip:{text}")] {
                if let Ok(u) = SipUri::parse(&text) {
                    let again = SipUri::parse(&u.to_string());
                    assert_eq!(again == Ok(u.clone()), u.reads_back_unchanged(), "{text:?}");
                }
            }
        }
    }

    #[test]
    fn via_sent_by_reads_as_a_uri_host() {
        let reference = |text: &str| -> Result<(String, Option<u16>), ()> {
            let rest = text.trim().get(8..).ok_or(())?;
            let (_, rest) = rest.split_once(|c: char| c.is_whitespace()).ok_or(())?;
            let rest = rest.trim_start();
            let sent_by = rest.split_once(';').map_or(rest, |(s, _)| s).trim();
            let uri = SipUri::parse(&format!("sip:{sent_by}")).map_err(|_| ())?;
            Ok((uri.host, uri.port))
        };
        let alphabet: Vec<char> = "ab@:;?[]1 5.é=".chars().collect();
        let mut rng = crate::rng::Rng::new(78);
        for _ in 0..20_000 {
            let text = format!("SIP/2.0/UDP {}", random_text(&mut rng, &alphabet, 16));
            let got = Via::parse(&text).map(|v| (v.host, v.port)).map_err(|_| ());
            assert_eq!(got, reference(&text), "{text:?}");
            let borrowed = ViaRef::parse(&text);
            assert_eq!(
                borrowed
                    .map(|v| (v.host.to_owned(), v.port))
                    .map_err(|_| ()),
                got,
                "{text:?}"
            );
        }
        let params: Vec<char> = "bBrRanch=;x1 \t".chars().collect();
        for _ in 0..20_000 {
            let text = format!("SIP/2.0/udp h:1;{}", random_text(&mut rng, &params, 24));
            let (owned, borrowed) = (Via::parse(&text), ViaRef::parse(&text));
            assert_eq!(
                owned.as_ref().ok().and_then(Via::branch),
                borrowed.ok().and_then(|v| v.branch()),
                "{text:?}"
            );
            assert_eq!(owned.map(|v| v.transport), Ok("UDP".to_owned()));
        }
    }

    #[test]
    fn vias() {
        let v = Via::parse(
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.1;rport=44424;received=127.0.0.1",
        )
        .expect("via");
        assert_eq!(
            (v.transport.as_str(), v.host.as_str(), v.port),
            ("UDP", "127.0.0.1", Some(5070))
        );
        assert_eq!(v.branch(), Some("z9hG4bK.1"));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK.1;rport=44424;received=127.0.0.1"
        );
        assert!(Via::parse("HTTP/1.1 x").is_err());
    }
}
