//! Server Dialback (XEP-0220) keys and elements. Keys follow XEP-0185:
//! `HMAC-SHA256(key = hex(SHA256(secret)), receiving + " " + originating + " " + stream-id)`,
//! written as lowercase hex.

use ring::{digest, hmac};

use crate::xml::{ns, Element};

/// The XEP-0185 key for a stream.
pub fn key(secret: &str, receiving: &str, originating: &str, stream_id: &str) -> String {
    let tag = hmac::sign(
        &hmac_key(secret),
        message(receiving, originating, stream_id).as_bytes(),
    );
    hex(tag.as_ref())
}

/// Checks a key offered by a peer in constant time.
pub fn verify(
    secret: &str,
    receiving: &str,
    originating: &str,
    stream_id: &str,
    offered: &str,
) -> bool {
    let Some(tag) = unhex(offered.trim()) else {
        return false;
    };
    hmac::verify(
        &hmac_key(secret),
        message(receiving, originating, stream_id).as_bytes(),
        &tag,
    )
    .is_ok()
}

fn hmac_key(secret: &str) -> hmac::Key {
    // XEP-0185 keys the HMAC with the hex *text* of SHA-256(secret), not its raw bytes.
    let hashed = hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref());
    hmac::Key::new(hmac::HMAC_SHA256, hashed.as_bytes())
}

fn message(receiving: &str, originating: &str, stream_id: &str) -> String {
    format!("{receiving} {originating} {stream_id}")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// `<db:result from to>key</db:result>`: step 1, initiating → receiving server.
pub fn result_request(from: &str, to: &str, key: &str) -> Element {
    Element::new(ns::DIALBACK, "result")
        .attr("from", from)
        .attr("to", to)
        .text(key)
}

/// `<db:verify from to id>key</db:verify>`: step 2, receiving → authoritative server.
pub fn verify_request(from: &str, to: &str, id: &str, key: &str) -> Element {
    Element::new(ns::DIALBACK, "verify")
        .attr("from", from)
        .attr("to", to)
        .attr("id", id)
        .text(key)
}

/// A `valid`/`invalid` answer (`name` is `result` or `verify`; `id` only for verify).
pub fn answer(name: &str, from: &str, to: &str, id: Option<&str>, valid: bool) -> Element {
    let mut el = Element::new(ns::DIALBACK, name)
        .attr("from", from)
        .attr("to", to);
    if let Some(id) = id {
        el.set_attr("id", id);
    }
    el.set_attr("type", if valid { "valid" } else { "invalid" });
    el
}

/// A dialback error (`type='error'`) carrying an RFC 6120 stanza error condition.
pub fn error(
    name: &str,
    from: &str,
    to: &str,
    id: Option<&str>,
    condition: &str,
    text: &str,
) -> Element {
    let mut el = Element::new(ns::DIALBACK, name)
        .attr("from", from)
        .attr("to", to);
    if let Some(id) = id {
        el.set_attr("id", id);
    }
    el.set_attr("type", "error");
    el.child(
        Element::new(ns::SERVER, "error")
            .attr("type", "cancel")
            .child(Element::new(ns::STANZAS_ERR, condition))
            .child(Element::new(ns::STANZAS_ERR, "text").text(text)),
    )
}

/// The condition of a dialback error element, if any.
pub fn error_condition(el: &Element) -> Option<String> {
    el.elements()
        .find(|e| e.name == "error")?
        .elements()
        .find(|e| e.ns == ns::STANZAS_ERR && e.name != "text")
        .map(|e| e.name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep_0185_vector() {
        assert_eq!(
            hex(digest::digest(&digest::SHA256, b"s3cr3tf0rd14lb4ck").as_ref()),
            "a7136eb1f46c9ef18c5e78c36ca257067c69b3d518285f0b18a96c33beae9acc"
        );
        assert_eq!(
            key(
                "s3cr3tf0rd14lb4ck",
                "xmpp.example.com",
                "example.org",
                "D60000229F"
            ),
            "37c69b1cf07a3f67c04a5ef5902fa5114f2c76fe4a2686482ba5b89323075643"
        );
    }

    #[test]
    fn xep_0220_vectors() {
        assert_eq!(
            key(
                "s3cr3tf0rd14lb4ck",
                "montague.example",
                "capulet.example",
                "D60000229F"
            ),
            "b4835385f37fe2895af6c196b59097b16862406db80559900d96bf6fa7d23df3"
        );
        assert_eq!(
            key(
                "d14lb4ck43v3r",
                "capulet.example",
                "montague.example",
                "417GAF25"
            ),
            "225cc5aa6a071133249d25fef42ae516fc7a86c523aa1c6980a7f73e784c972d"
        );
    }

    #[test]
    fn verify_accepts_own_key_and_rejects_forgeries() {
        let k = key("secret", "b.example", "a.example", "id1");
        assert!(verify("secret", "b.example", "a.example", "id1", &k));
        assert!(verify(
            "secret",
            "b.example",
            "a.example",
            "id1",
            &k.to_uppercase()
        ));
        assert!(!verify("secret", "b.example", "a.example", "id2", &k));
        assert!(!verify("other", "b.example", "a.example", "id1", &k));
        assert!(!verify("secret", "a.example", "b.example", "id1", &k));
        assert!(!verify("secret", "b.example", "a.example", "id1", "zz"));
        assert!(!verify("secret", "b.example", "a.example", "id1", "abc"));
        assert!(!verify("secret", "b.example", "a.example", "id1", ""));
    }
}
