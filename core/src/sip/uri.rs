//! SIP URIs (RFC 3261 §19.1), name-addr / addr-spec header values (§20.10, §25.1)
//! and Via (§20.42).

use std::fmt;

use super::message::SipError;

/// A `;name` or `;name=value` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

fn parse_params(text: &str) -> Vec<Param> {
    text.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => Param {
                name: n.trim().to_owned(),
                value: Some(v.trim().to_owned()),
            },
            None => Param {
                name: p.trim().to_owned(),
                value: None,
            },
        })
        .collect()
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

impl SipUri {
    pub fn parse(text: &str) -> Result<SipUri, SipError> {
        let bad = |why: &str| {
            SipError::Malformed(format!(
                "URI '{}': {why}",
                text.chars().take(60).collect::<String>()
            ))
        };
        let (scheme, rest) = text
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("no scheme"))?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(bad("bad scheme"));
        }
        // The user part may contain ';' and '?' (user-unreserved) but never '@', so
        // split at the first '@' before looking for parameters and headers.
        let (userinfo, hostpart) = match rest.find('@') {
            Some(i) => (rest.get(..i), rest.get(i + 1..).unwrap_or_default()),
            None => (None, rest),
        };
        let (hostpart, headers) = match hostpart.split_once('?') {
            Some((r, h)) => (r, Some(h.to_owned())),
            None => (hostpart, None),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
                None => (Some(u.to_owned()), None),
            },
            None => (None, None),
        };
        if user.as_deref() == Some("") {
            return Err(bad("empty user part"));
        }
        let (hostport, params) = match hostpart.split_once(';') {
            Some((h, p)) => (h, parse_params(p)),
            None => (hostpart, Vec::new()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 reference"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().map_err(|_| bad("bad port"))?),
                None if after.is_empty() => None,
                None => return Err(bad("junk after IPv6 reference")),
            };
            (format!("[{addr}]"), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse().map_err(|_| bad("bad port"))?)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(SipUri {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
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

impl NameAddr {
    pub fn parse(text: &str) -> Result<NameAddr, SipError> {
        let text = text.trim();
        let bad = |why: &str| {
            SipError::Malformed(format!(
                "address '{}': {why}",
                text.chars().take(60).collect::<String>()
            ))
        };
        if let Some(lt) = find_unquoted(text, '<') {
            let display = text.get(..lt).unwrap_or_default().trim();
            let display = display.trim_matches('"').trim();
            let after = text.get(lt + 1..).unwrap_or_default();
            let gt = after.find('>').ok_or_else(|| bad("unclosed '<'"))?;
            let uri = SipUri::parse(after.get(..gt).unwrap_or_default())?;
            let params = parse_params(after.get(gt + 1..).unwrap_or_default());
            return Ok(NameAddr {
                display: (!display.is_empty()).then(|| display.to_owned()),
                uri,
                params,
                angle: true,
            });
        }
        // RFC 3261 §20.10: without angle brackets, parameters belong to the header.
        let (uri, params) = match text.split_once(';') {
            Some((u, p)) => (u, parse_params(p)),
            None => (text, Vec::new()),
        };
        Ok(NameAddr {
            display: None,
            uri: SipUri::parse(uri)?,
            params,
            angle: false,
        })
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

fn find_unquoted(text: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
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
        let bad = |why: &str| {
            SipError::Malformed(format!(
                "Via '{}': {why}",
                text.chars().take(60).collect::<String>()
            ))
        };
        let text = text.trim();
        let rest = text
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("SIP/2.0/"))
            .and_then(|_| text.get(8..))
            .ok_or_else(|| bad("not SIP/2.0"))?;
        let (transport, rest) = rest
            .split_once(|c: char| c.is_whitespace())
            .ok_or_else(|| bad("no sent-by"))?;
        let rest = rest.trim_start();
        let (sent_by, params) = match rest.split_once(';') {
            Some((s, p)) => (s.trim(), parse_params(p)),
            None => (rest.trim(), Vec::new()),
        };
        let uri = SipUri::parse(&format!("sip:{sent_by}")).map_err(|_| bad("bad sent-by"))?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host: uri.host,
            port: uri.port,
            params,
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
