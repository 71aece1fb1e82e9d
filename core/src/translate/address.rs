//! Address mapping (RFC 7247 §5): `sip:user@domain;gr=instance` ⇄
//! `user@domain/instance`. The SIP user part is percent-decoded and then
//! XEP-0106-escaped into a localpart; the way back unescapes and percent-encodes.

use std::borrow::Cow;
use std::fmt;

use crate::jid::{escape_node, unescape_node, Jid, JidError};
use crate::sip::uri::SipUriRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Not a sip:, sips:, pres: or im: URI.
    Scheme(String),
    Malformed(String),
    Jid(JidError),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Scheme(s) => write!(f, "URI scheme '{s}' cannot be mapped to a JID"),
            AddressError::Malformed(t) => write!(f, "malformed address: {t}"),
            AddressError::Jid(e) => write!(f, "the mapped JID is invalid: {e}"),
        }
    }
}

impl std::error::Error for AddressError {}

/// RFC 3986 percent-decoding; invalid sequences stay as written (XEP-0106's example
/// keeps `%zy`). Returns `None` when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    decode(s).map(Cow::into_owned)
}

/// Percent-decoding that borrows when there is nothing to decode, as in most user
/// parts.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    // A user part is a few bytes: a plain scan costs less than a search's setup.
    if !s.bytes().any(|b| b == b'%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `%XX` for one byte.
fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    for nibble in [b >> 4, b & 0x0f] {
        out.push(char::from(
            HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
        ));
    }
}

/// Appends `s` percent-encoded, keeping the ASCII bytes `keep` holds. Runs of kept
/// bytes are copied as slices.
fn push_encoded(out: &mut String, s: &str, keep: &ByteSet) {
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        if !keep.has(b) {
            out.push_str(s.get(run..i).unwrap_or_default());
            push_escaped(out, b);
            run = i + 1;
        }
    }
    out.push_str(s.get(run..).unwrap_or_default());
}

/// A set of ASCII bytes, looked up in one step.
struct ByteSet([bool; 256]);

impl ByteSet {
    /// ASCII letters and digits and the bytes of `extra`.
    const fn alphanumeric_and(extra: &[u8]) -> ByteSet {
        let mut t = [false; 256];
        let mut b = 0u8;
        loop {
            t[b as usize] = b.is_ascii_alphanumeric();
            if b == u8::MAX {
                break;
            }
            b += 1;
        }
        let mut i = 0;
        while i < extra.len() {
            t[extra[i] as usize] = true;
            i += 1;
        }
        ByteSet(t)
    }

    fn has(&self, b: u8) -> bool {
        self.0.get(usize::from(b)).copied().unwrap_or(false)
    }
}

/// RFC 3261 `user` characters: unreserved and user-unreserved (all ASCII, so a kept
/// run always ends on a character boundary).
static USER_CHARS: ByteSet = ByteSet::alphanumeric_and(b"-_.!~*'()&=+$,;?/");

/// Unreserved characters, for a URI parameter value.
static UNRESERVED: ByteSet = ByteSet::alphanumeric_and(b"-_.!~*'()");

/// Percent-encodes everything outside RFC 3261's `user` characters (unreserved and
/// user-unreserved), non-ASCII as UTF-8 bytes.
pub fn percent_encode_user(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_encoded(&mut out, s, &USER_CHARS);
    out
}

/// `sip:`, `sips:`, `pres:` or `im:` URI → JID.
pub fn sip_to_jid(uri: &str) -> Result<Jid, AddressError> {
    let parsed = SipUriRef::parse(uri).map_err(|e| AddressError::Malformed(e.to_string()))?;
    uri_to_jid(&parsed)
}

/// A parsed URI → JID, as `sip_to_jid` maps it.
pub fn uri_to_jid(parsed: &SipUriRef<'_>) -> Result<Jid, AddressError> {
    let scheme = parsed.scheme;
    if !["sip", "sips", "pres", "im"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return Err(AddressError::Scheme(scheme.to_ascii_lowercase()));
    }
    let decoded = match parsed.user {
        Some(u) => Some(
            decode(u).ok_or_else(|| AddressError::Malformed("user part is not UTF-8".into()))?,
        ),
        None => None,
    };
    let local = match &decoded {
        Some(d) => Some(escape_node(d).map_err(AddressError::Jid)?),
        None => None,
    };
    let resource = match parsed.param_value("gr") {
        Some(gr) => {
            Some(decode(gr).ok_or_else(|| AddressError::Malformed("gr is not UTF-8".into()))?)
        }
        None => None,
    };
    // Jid::new puts the host in normal form unless it is already.
    Jid::new(local.as_deref(), parsed.host, resource.as_deref()).map_err(AddressError::Jid)
}

/// JID → `sip:` URI; a resource becomes the `gr` parameter.
pub fn jid_to_sip(jid: &Jid) -> String {
    jid_to_sip_split(jid).0
}

/// JID → `sip:` URI, with the length of its prefix that is the bare JID's URI (the
/// whole URI when there is no resource), so both come from one encoding.
pub fn jid_to_sip_split(jid: &Jid) -> (String, usize) {
    let mut s = String::with_capacity(sip_uri_capacity(jid));
    let bare = push_jid_sip(&mut s, jid);
    (s, bare)
}

/// Room for a JID's `sip:` URI when nothing in it needs escaping, and some to
/// spare for a resource.
pub fn sip_uri_capacity(jid: &Jid) -> usize {
    8 + jid.local().map_or(0, str::len)
        + jid.domain().len()
        + jid.resource().map_or(0, |r| r.len() + 8)
}

/// Appends a JID's `sip:` URI to `out`, as [`jid_to_sip`] writes it; returns where
/// in `out` the bare JID's URI ends.
pub fn push_jid_sip(out: &mut String, jid: &Jid) -> usize {
    out.push_str("sip:");
    if let Some(l) = jid.local() {
        // Without a backslash there is no XEP-0106 escape to undo.
        if l.contains('\\') {
            push_encoded(out, &unescape_node(l), &USER_CHARS);
        } else {
            push_encoded(out, l, &USER_CHARS);
        }
        out.push('@');
    }
    out.push_str(jid.domain());
    let bare = out.len();
    if let Some(r) = jid.resource() {
        out.push_str(";gr=");
        // A URI parameter value: keep it to unreserved characters.
        push_encoded(out, r, &UNRESERVED);
    }
    bare
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::parse(s).expect("jid")
    }

    #[test]
    fn byte_sets_hold_the_rfc_3261_characters() {
        for b in 0..=u8::MAX {
            let user = b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/".contains(&b);
            let unreserved = b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b);
            assert_eq!(USER_CHARS.has(b), user, "{b}");
            assert_eq!(UNRESERVED.has(b), unreserved, "{b}");
        }
    }

    #[test]
    fn rfc_7247_examples() {
        assert_eq!(
            sip_to_jid("sip:romeo@example.net"),
            Ok(j("romeo@example.net"))
        );
        assert_eq!(jid_to_sip(&j("romeo@example.net")), "sip:romeo@example.net");
        let gruu = "sip:juliet@example.com;gr=yn0cl4bnw0yr3vym";
        assert_eq!(
            sip_to_jid(gruu),
            Ok(j("juliet@example.com/yn0cl4bnw0yr3vym"))
        );
        assert_eq!(jid_to_sip(&j("juliet@example.com/yn0cl4bnw0yr3vym")), gruu);
        assert_eq!(
            sip_to_jid("sips:a@b.example:5061;transport=tls?subject=x"),
            Ok(j("a@b.example"))
        );
        assert_eq!(sip_to_jid("pres:a@b.example"), Ok(j("a@b.example")));
    }

    #[test]
    fn xep_0106_sip_example() {
        let jid =
            sip_to_jid("sip:here%27s_a_wild_%26_%2Fcr%zy%2F_address@example.com").expect("maps");
        assert_eq!(
            jid.to_string(),
            "here\\27s_a_wild_\\26_\\2fcr%zy\\2f_address@example.com"
        );
        assert_eq!(
            jid_to_sip(&jid),
            "sip:here's_a_wild_&_/cr%25zy/_address@example.com"
        );
    }

    #[test]
    fn idn_and_errors() {
        assert_eq!(
            sip_to_jid("sip:anna@xn--mnchen-3ya.example"),
            Ok(j("anna@münchen.example"))
        );
        assert!(matches!(
            sip_to_jid("http://example.com"),
            Err(AddressError::Scheme(_))
        ));
        assert!(sip_to_jid("romeo@example.net").is_err());
        assert!(sip_to_jid("sip:a@").is_err());
        assert!(
            sip_to_jid("sip:%20lead@example.com").is_err(),
            "XEP-0106 forbids a leading space"
        );
    }

    #[test]
    fn round_trips() {
        let alphabet: Vec<char> = "aZ9 -_.!~*'()&=+$,;?/:@\"<>\\%é日".chars().collect();
        let mut rng = crate::rng::Rng::new(21);
        for _ in 0..500 {
            let len = (rng.next_u64() % 10 + 1) as usize;
            let user: String = (0..len)
                .map(|_| alphabet[(rng.next_u64() as usize) % alphabet.len()])
                .collect();
            let uri = format!("sip:{}@example.com", percent_encode_user(&user));
            match sip_to_jid(&uri) {
                Ok(jid) => {
                    assert_eq!(sip_to_jid(&jid_to_sip(&jid)), Ok(jid.clone()), "{uri}");
                    assert_eq!(
                        jid.local().map(unescape_node),
                        Some(user.to_lowercase()),
                        "{uri}"
                    );
                }
                Err(e) => assert!(user.starts_with(' ') || user.ends_with(' '), "{uri}: {e}"),
            }
        }
    }
}
