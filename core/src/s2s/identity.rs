//! Certificate identity for XMPP s2s (RFC 6120 §13.7.1.2, RFC 6125): the presented
//! identifiers of a certificate and their match against a peer's domain.
//!
//! Only subjectAltName identifiers count: DNS-ID, SRV-ID (`_xmpp-server.`) and
//! XmppAddr. The subject CN is never used (RFC 9525 removed the CN-ID fallback).

/// Identifiers a certificate presents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PresentedIds {
    pub dns: Vec<String>,
    pub srv: Vec<String>,
    pub xmpp_addr: Vec<String>,
}

impl PresentedIds {
    /// Every identifier, labelled, for error messages.
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self.dns.iter().map(|d| format!("DNS-ID {d}")).collect();
        v.extend(self.srv.iter().map(|s| format!("SRV-ID {s}")));
        v.extend(self.xmpp_addr.iter().map(|x| format!("XmppAddr {x}")));
        v
    }
}

const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
const OID_XMPP_ADDR: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05];
const OID_SRV_NAME: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x07];

/// One DER TLV: (tag, contents, rest).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        (len, rest.get(n..)?)
    };
    let contents = rest.get(..len)?;
    Some((tag, contents, rest.get(len..)?))
}

/// Reads the subjectAltName identifiers of a DER certificate.
pub fn presented_ids(cert_der: &[u8]) -> Result<PresentedIds, String> {
    let bad = |what: &str| format!("malformed certificate: {what}");
    let (tag, cert, _) = tlv(cert_der).ok_or_else(|| bad("outer"))?;
    if tag != 0x30 {
        return Err(bad("not a SEQUENCE"));
    }
    let (tag, mut tbs, _) = tlv(cert).ok_or_else(|| bad("tbsCertificate"))?;
    if tag != 0x30 {
        return Err(bad("tbsCertificate is not a SEQUENCE"));
    }
    let mut ids = PresentedIds::default();
    while !tbs.is_empty() {
        let (tag, contents, rest) = tlv(tbs).ok_or_else(|| bad("tbsCertificate field"))?;
        tbs = rest;
        if tag != 0xa3 {
            continue;
        }
        let (_, mut exts, _) = tlv(contents).ok_or_else(|| bad("extensions"))?;
        while !exts.is_empty() {
            let (_, ext, rest) = tlv(exts).ok_or_else(|| bad("extension"))?;
            exts = rest;
            let (tag, oid, mut body) = tlv(ext).ok_or_else(|| bad("extension id"))?;
            if tag != 0x06 || oid != OID_SAN {
                continue;
            }
            // Skip the optional `critical` BOOLEAN.
            let (mut tag, mut value, mut after) = tlv(body).ok_or_else(|| bad("SAN value"))?;
            if tag == 0x01 {
                body = after;
                (tag, value, after) = tlv(body).ok_or_else(|| bad("SAN value"))?;
            }
            let _ = after;
            if tag != 0x04 {
                return Err(bad("SAN is not an OCTET STRING"));
            }
            let (_, mut names, _) = tlv(value).ok_or_else(|| bad("GeneralNames"))?;
            while !names.is_empty() {
                let (tag, name, rest) = tlv(names).ok_or_else(|| bad("GeneralName"))?;
                names = rest;
                match tag {
                    0x82 => ids.dns.push(String::from_utf8_lossy(name).into_owned()),
                    0xa0 => {
                        let (t, oid, rest) = tlv(name).ok_or_else(|| bad("otherName"))?;
                        if t != 0x06 {
                            continue;
                        }
                        let (_, explicit, _) = tlv(rest).ok_or_else(|| bad("otherName value"))?;
                        let (_, text, _) = tlv(explicit).ok_or_else(|| bad("otherName string"))?;
                        let text = String::from_utf8_lossy(text).into_owned();
                        if oid == OID_XMPP_ADDR {
                            ids.xmpp_addr.push(text);
                        } else if oid == OID_SRV_NAME {
                            ids.srv.push(text);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(ids)
}

/// Whether the identifiers match `reference` (a normalised XMPP domain); returns the
/// identifier that matched.
pub fn matches(ids: &PresentedIds, reference: &str) -> Option<String> {
    let reference = reference.trim_end_matches('.').to_ascii_lowercase();
    for d in &ids.dns {
        if dns_id_matches(d, &reference) {
            return Some(format!("DNS-ID {d}"));
        }
    }
    let srv_ref = format!("_xmpp-server.{reference}");
    for s in &ids.srv {
        if s.trim_end_matches('.').eq_ignore_ascii_case(&srv_ref) {
            return Some(format!("SRV-ID {s}"));
        }
    }
    for x in &ids.xmpp_addr {
        // A bare domain XmppAddr identifies the server; user JIDs never do.
        if !x.contains('@')
            && !x.contains('/')
            && x.trim_end_matches('.').eq_ignore_ascii_case(&reference)
        {
            return Some(format!("XmppAddr {x}"));
        }
    }
    None
}

/// RFC 6125 §6.4.3: a wildcard only as the whole left-most label, matching exactly
/// one label.
fn dns_id_matches(presented: &str, reference: &str) -> bool {
    let presented = presented.trim_end_matches('.').to_ascii_lowercase();
    if presented == reference {
        return true;
    }
    let Some(parent) = presented.strip_prefix("*.") else {
        return false;
    };
    if parent.is_empty() || parent.contains('*') {
        return false;
    }
    match reference.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest == parent,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(dns: &[&str], srv: &[&str], xmpp: &[&str]) -> PresentedIds {
        PresentedIds {
            dns: dns.iter().map(|s| s.to_string()).collect(),
            srv: srv.iter().map(|s| s.to_string()).collect(),
            xmpp_addr: xmpp.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn dns_id_rules() {
        assert!(matches(&ids(&["example.org"], &[], &[]), "example.org").is_some());
        assert!(matches(&ids(&["EXAMPLE.org."], &[], &[]), "example.org").is_some());
        assert!(matches(&ids(&["*.example.org"], &[], &[]), "a.example.org").is_some());
        assert!(matches(&ids(&["*.example.org"], &[], &[]), "example.org").is_none());
        assert!(matches(&ids(&["*.example.org"], &[], &[]), "a.b.example.org").is_none());
        assert!(matches(&ids(&["f*.example.org"], &[], &[]), "foo.example.org").is_none());
        assert!(matches(&ids(&["a.*.org"], &[], &[]), "a.example.org").is_none());
        assert!(matches(&ids(&["*"], &[], &[]), "org").is_none());
        assert!(matches(&ids(&["other.org"], &[], &[]), "example.org").is_none());
    }

    #[test]
    fn srv_id_and_xmpp_addr() {
        assert!(matches(&ids(&[], &["_xmpp-server.example.org"], &[]), "example.org").is_some());
        assert!(matches(&ids(&[], &["_xmpp-client.example.org"], &[]), "example.org").is_none());
        assert!(matches(&ids(&[], &["_xmpp-server.*.org"], &[]), "example.org").is_none());
        assert!(matches(&ids(&[], &[], &["example.org"]), "example.org").is_some());
        assert!(matches(&ids(&[], &[], &["user@example.org"]), "example.org").is_none());
        assert!(matches(&ids(&[], &[], &["*.org"]), "example.org").is_none());
    }

    /// A minimal certificate-shaped DER carrying one SRVName otherName (rcgen can only
    /// write UTF8String otherNames).
    fn synthetic_cert_with_srv(srv: &str) -> Vec<u8> {
        fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            if body.len() < 0x80 {
                v.push(body.len() as u8);
            } else {
                v.push(0x82);
                v.extend_from_slice(&(body.len() as u16).to_be_bytes());
            }
            v.extend_from_slice(body);
            v
        }
        let ia5 = wrap(0x16, srv.as_bytes());
        let other = wrap(0xa0, &[wrap(0x06, OID_SRV_NAME), wrap(0xa0, &ia5)].concat());
        let names = wrap(0x30, &other);
        let ext = wrap(0x30, &[wrap(0x06, OID_SAN), wrap(0x04, &names)].concat());
        let exts = wrap(0xa3, &wrap(0x30, &ext));
        let tbs = wrap(0x30, &[wrap(0x02, &[1]), wrap(0x30, &[]), exts].concat());
        wrap(0x30, &[tbs, wrap(0x30, &[]), wrap(0x03, &[0])].concat())
    }

    #[test]
    fn parses_srv_name() {
        let der = synthetic_cert_with_srv("_xmpp-server.example.org");
        let got = presented_ids(&der).expect("parse");
        assert_eq!(got.srv, vec!["_xmpp-server.example.org".to_owned()]);
        assert!(matches(&got, "example.org").is_some());
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let der = synthetic_cert_with_srv("_xmpp-server.example.org");
        for i in 0..der.len() {
            let _ = presented_ids(&der[..i]);
        }
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..2000 {
            let mut d = der.clone();
            let i = (rng.next_u64() as usize) % d.len();
            d[i] = rng.next_u64() as u8;
            let _ = presented_ids(&d);
        }
    }
}
