//! SASL EXTERNAL for server-to-server streams (XEP-0178), and the base64 it needs.

use crate::xml::{ns, Element};

/// `<auth mechanism='EXTERNAL'>base64(authzid)</auth>`. XEP-0178 asks initiators to
/// send their domain as authzid for older receivers, though `=` would do.
pub fn auth(authzid: &str) -> Element {
    Element::new(ns::SASL, "auth")
        .attr("mechanism", "EXTERNAL")
        .text(&base64_encode(authzid.as_bytes()))
}

pub fn mechanisms_external() -> Element {
    Element::new(ns::SASL, "mechanisms").child(Element::new(ns::SASL, "mechanism").text("EXTERNAL"))
}

pub fn success() -> Element {
    Element::new(ns::SASL, "success")
}

pub fn failure(condition: &str, text: &str) -> Element {
    let mut el = Element::new(ns::SASL, "failure").child(Element::new(ns::SASL, condition));
    if !text.is_empty() {
        el = el.child(Element::new(ns::SASL, "text").text(text));
    }
    el
}

/// An authzid that is not base64 of UTF-8 text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadAuthzid;

/// The authzid an `<auth/>` carries: `None` for empty or `=`.
pub fn authzid(auth: &Element) -> Result<Option<String>, BadAuthzid> {
    let text = auth.text_content();
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(None);
    }
    let bytes = base64_decode(text).ok_or(BadAuthzid)?;
    let s = String::from_utf8(bytes).map_err(|_| BadAuthzid)?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(ALPHABET[idx as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let chunks = bytes.len() / 4;
    for (ci, chunk) in bytes.chunks(4).enumerate() {
        let mut n: u32 = 0;
        let mut pad = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                // Padding only at the end of the last quantum.
                b'=' if ci + 1 == chunks && i >= 2 => {
                    pad += 1;
                    0
                }
                _ => return None,
            };
            if pad > 0 && c != b'=' {
                return None;
            }
            n = n << 6 | u32::from(v);
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(decoded.get(..3 - pad)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("xmpp-a.test", "eG1wcC1hLnRlc3Q="),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64_decode("Zg="), None);
        assert_eq!(base64_decode("Z=g="), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
        assert_eq!(base64_decode("Z!=="), None);
    }

    #[test]
    fn authzid_forms() {
        assert_eq!(authzid(&auth("a.example")), Ok(Some("a.example".into())));
        let empty = Element::new(ns::SASL, "auth").text("=");
        assert_eq!(authzid(&empty), Ok(None));
        let bad = Element::new(ns::SASL, "auth").text("***");
        assert_eq!(authzid(&bad), Err(BadAuthzid));
    }
}
