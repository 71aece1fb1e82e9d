//! Serialising elements and stream headers. Attributes are quoted with `'`.

use std::borrow::Cow;

use super::{is_xml_char, ns, Element, Node};

/// Escapes character data: `&`, `<`, `>` (the last so `]]>` can never appear).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Escapes an attribute value for `'`-quoting (both quotes, for safety either way).
pub fn escape_attr(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// Which bytes may need escaping: in text, the markup characters and CR; in an
/// attribute value, the quotes, LF and tab as well; anywhere, the C0 controls and
/// 0xEF (the lead byte of U+FFFE and U+FFFF), which XML cannot carry.
const fn table(attr: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = !matches!(b as u8, b'\t' | b'\n') || attr;
        b += 1;
    }
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[0xEF] = true;
    if attr {
        t[b'\'' as usize] = true;
        t[b'"' as usize] = true;
    }
    t
}

const TEXT: [bool; 256] = table(false);
const ATTR: [bool; 256] = table(true);

fn first_escape(s: &str, attr: bool) -> Option<usize> {
    let t = if attr { &ATTR } else { &TEXT };
    let hit = |b: u8| t[usize::from(b)];
    let bytes = s.as_bytes();
    // Eight lookups and one branch per block: most text has nothing to escape.
    let mut at = 0;
    for block in bytes.chunks_exact(8) {
        if let [b0, b1, b2, b3, b4, b5, b6, b7] = *block {
            if hit(b0) | hit(b1) | hit(b2) | hit(b3) | hit(b4) | hit(b5) | hit(b6) | hit(b7) {
                break;
            }
        }
        at += 8;
    }
    let tail = bytes.get(at..).unwrap_or_default();
    tail.iter().position(|b| hit(*b)).map(|i| at + i)
}

fn escape(s: &str, attr: bool) -> Cow<'_, str> {
    match first_escape(s, attr) {
        None => Cow::Borrowed(s),
        Some(_) => {
            let mut out = String::with_capacity(s.len() + 16);
            escape_into(&mut out, s, attr);
            Cow::Owned(out)
        }
    }
}

/// Appends `s` to `out`, escaped: runs that need nothing are copied whole.
pub(crate) fn escape_into(out: &mut String, s: &str, attr: bool) {
    let mut rest = s;
    while let Some(at) = first_escape(rest, attr) {
        out.push_str(rest.get(..at).unwrap_or_default());
        let tail = rest.get(at..).unwrap_or_default();
        let Some(c) = tail.chars().next() else {
            return;
        };
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Kept as references so that XML end-of-line and attribute-value
            // normalisation do not change the value on the way through.
            '\r' => out.push_str("&#13;"),
            '\'' if attr => out.push_str("&apos;"),
            '"' if attr => out.push_str("&quot;"),
            '\n' if attr => out.push_str("&#10;"),
            '\t' if attr => out.push_str("&#9;"),
            // Text from the SIP side may hold characters XML cannot carry at all,
            // not even as references; written raw they would end the stream.
            c if !is_xml_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
        rest = tail.get(c.len_utf8()..).unwrap_or_default();
    }
    out.push_str(rest);
}

/// About how many bytes `el` takes written out, so the output is allocated once.
pub(super) fn size_hint(el: &Element) -> usize {
    let tags = 2 * el.name.len() + el.ns.len() + 16;
    let attrs: usize = el
        .attrs
        .iter()
        .map(|a| a.name.len() + a.value.len() + 8)
        .sum();
    let children: usize = el
        .children
        .iter()
        .map(|c| match c {
            Node::Element(e) => size_hint(e),
            Node::Text(t) => t.len() + 8,
        })
        .sum();
    tags + attrs + children
}

/// Writes `el` as it appears inside a stream whose default namespace is `default_ns`.
/// Stream elements use the `stream:` prefix and dialback elements `db:`, both
/// declared on every header this gateway writes; any other namespace is declared
/// on the element that enters it.
pub fn write_element(out: &mut String, el: &Element, default_ns: &str) {
    write_inner(out, el, default_ns, true);
}

/// As [`write_element`], for a stream whose header may not declare `xmlns:db`
/// (`db_prefix` false): dialback elements then carry their namespace themselves.
pub fn write_element_with(out: &mut String, el: &Element, default_ns: &str, db_prefix: bool) {
    write_inner(out, el, default_ns, db_prefix);
}

fn write_inner(out: &mut String, el: &Element, inherited: &str, db_prefix: bool) {
    let (prefix, declare) = if el.ns == ns::STREAM {
        ("stream:", false)
    } else if el.ns == ns::DIALBACK && db_prefix {
        ("db:", false)
    } else {
        ("", el.ns != inherited)
    };
    out.push('<');
    out.push_str(prefix);
    out.push_str(&el.name);
    if declare {
        out.push_str(" xmlns='");
        escape_into(out, &el.ns, true);
        out.push('\'');
    }
    for a in &el.attrs {
        out.push(' ');
        match a.ns.as_deref() {
            None => {}
            Some(ns::XML) => out.push_str("xml:"),
            // Foreign attribute namespaces are rare in s2s; keep them, prefixed.
            Some(_) => out.push_str("ns1:"),
        }
        out.push_str(&a.name);
        out.push_str("='");
        escape_into(out, &a.value, true);
        out.push('\'');
    }
    // Children in no-prefix form inherit this element's namespace; prefixed ones
    // (stream:, db:) leave the default namespace as it was.
    let child_default = if prefix.is_empty() {
        &*el.ns
    } else {
        inherited
    };
    if el.children.is_empty() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for child in &el.children {
        match child {
            Node::Element(c) => write_inner(out, c, child_default, db_prefix),
            Node::Text(t) => escape_into(out, t, false),
        }
    }
    out.push_str("</");
    out.push_str(prefix);
    out.push_str(&el.name);
    out.push('>');
}

/// An opening stream header as this gateway writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeaderOut {
    pub from: Option<String>,
    pub to: Option<String>,
    pub id: Option<String>,
    /// Write `version='1.0'`.
    pub version: bool,
    pub lang: Option<String>,
    pub default_ns: String,
    /// Declare `xmlns:db`, which also advertises dialback (XEP-0220 §2.4).
    pub dialback: bool,
}

impl StreamHeaderOut {
    pub fn to_xml(&self) -> String {
        let mut s = String::from("<?xml version='1.0'?><stream:stream xmlns='");
        s.push_str(&escape_attr(&self.default_ns));
        s.push_str("' xmlns:stream='http://etherx.jabber.org/streams'");
        if self.dialback {
            s.push_str(" xmlns:db='jabber:server:dialback'");
        }
        for (name, value) in [("from", &self.from), ("to", &self.to), ("id", &self.id)] {
            if let Some(v) = value {
                s.push_str(&format!(" {name}='{}'", escape_attr(v)));
            }
        }
        if self.version {
            s.push_str(" version='1.0'");
        }
        if let Some(l) = &self.lang {
            s.push_str(&format!(" xml:lang='{}'", escape_attr(l)));
        }
        s.push('>');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_text("a<b>&c'\""), "a&lt;b&gt;&amp;c'\"");
        assert_eq!(
            escape_attr("it's \"q\" <&>"),
            "it&apos;s &quot;q&quot; &lt;&amp;&gt;"
        );
        assert!(matches!(escape_text("plain"), Cow::Borrowed(_)));
        // Characters XML cannot carry become U+FFFD; tab and LF stay in text.
        assert_eq!(escape_text("a\u{1}b\u{FFFF}\t\n"), "a\u{FFFD}b\u{FFFD}\t\n");
        assert_eq!(escape_attr("\u{0}"), "\u{FFFD}");
    }

    /// The byte-table escaper against the definition, one character at a time.
    #[test]
    fn escaping_matches_the_definition() {
        fn by_char(s: &str, attr: bool) -> String {
            s.chars()
                .map(|c| match c {
                    '&' => "&amp;".to_owned(),
                    '<' => "&lt;".to_owned(),
                    '>' => "&gt;".to_owned(),
                    '\r' => "&#13;".to_owned(),
                    '\'' if attr => "&apos;".to_owned(),
                    '"' if attr => "&quot;".to_owned(),
                    '\n' if attr => "&#10;".to_owned(),
                    '\t' if attr => "&#9;".to_owned(),
                    c if !is_xml_char(c) => "\u{FFFD}".to_owned(),
                    c => c.to_string(),
                })
                .collect()
        }
        let alphabet = [
            'a',
            ' ',
            '&',
            '<',
            '>',
            '\'',
            '"',
            '\r',
            '\n',
            '\t',
            '\u{0}',
            '\u{1f}',
            '\u{e9}',
            '\u{feff}',
            '\u{fffd}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1f389}',
        ];
        let mut rng = crate::rng::Rng::new(11);
        for _ in 0..5000 {
            let len = (rng.next_u64() % 12) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(rng.next_u64() % alphabet.len() as u64) as usize])
                .collect();
            assert_eq!(escape_text(&s), by_char(&s, false), "{s:?}");
            assert_eq!(escape_attr(&s), by_char(&s, true), "{s:?}");
        }
    }

    #[test]
    fn namespaces_and_prefixes() {
        let el = Element::new(ns::STREAM, "features")
            .child(Element::new(ns::TLS, "starttls").child(Element::new(ns::TLS, "required")))
            .child(
                Element::new(ns::DIALBACK_FEATURE, "dialback")
                    .child(Element::new(ns::DIALBACK_FEATURE, "errors")),
            );
        assert_eq!(
            el.to_xml(ns::SERVER),
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
             <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>"
        );
        let db = Element::new(ns::DIALBACK, "result")
            .attr("from", "a")
            .attr("to", "b")
            .text("k");
        assert_eq!(
            db.to_xml(ns::SERVER),
            "<db:result from='a' to='b'>k</db:result>"
        );
        let msg = Element::new(ns::SERVER, "message")
            .attr("to", "x@y")
            .child(Element::new(ns::SERVER, "body").text("a & b"));
        assert_eq!(
            msg.to_xml(ns::SERVER),
            "<message to='x@y'><body>a &amp; b</body></message>"
        );
    }

    #[test]
    fn header() {
        let h = StreamHeaderOut {
            from: Some("a.test".into()),
            to: Some("b.test".into()),
            id: None,
            version: true,
            lang: None,
            default_ns: ns::SERVER.into(),
            dialback: true,
        };
        assert_eq!(
            h.to_xml(),
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
             xmlns:db='jabber:server:dialback' from='a.test' to='b.test' version='1.0'>"
        );
    }
}
