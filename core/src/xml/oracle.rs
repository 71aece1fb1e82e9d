//! The element parser the reader used before its own: quick-xml's tokenizer with
//! the same namespace and restriction rules. Kept for tests, as an independent
//! oracle the reader's results are compared with.

use quick_xml::events::{BytesStart, Event};

use super::reader::{xml_chars, Limits, XmlError};
use super::{ns, Attribute, Element, Node};

pub(super) fn parse_element(
    bytes: &[u8],
    outer: &[(String, String)],
    limits: &Limits,
) -> Result<Element, XmlError> {
    let mut reader = quick_xml::Reader::from_reader(bytes);
    reader.config_mut().check_end_names = true;
    // Declarations made inside the stanza; the header's are in `outer`.
    let mut scope: Vec<(String, String)> = Vec::new();
    // Open elements with the scope length to restore when each closes.
    let mut stack: Vec<(Element, usize)> = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::NotWellFormed(e.to_string()))?;
        match event {
            Event::Start(s) => {
                let mark = scope.len();
                let el = element(&s, &mut scope, outer, limits)?;
                stack.push((el, mark));
            }
            Event::Empty(s) => {
                let mark = scope.len();
                let el = element(&s, &mut scope, outer, limits)?;
                scope.truncate(mark);
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(Node::Element(el)),
                    None => return Ok(el),
                }
            }
            Event::End(_) => {
                let Some((el, mark)) = stack.pop() else {
                    return Err(XmlError::NotWellFormed("an unmatched end tag".into()));
                };
                scope.truncate(mark);
                match stack.last_mut() {
                    Some((parent, _)) => parent.children.push(Node::Element(el)),
                    None => return Ok(el),
                }
            }
            Event::Text(t) => {
                let text = t
                    .xml10_content()
                    .map_err(|e| XmlError::NotWellFormed(format!("text: {e}")))?;
                append_text(&mut stack, &text)?;
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c)
                    .map_err(|_| XmlError::NotWellFormed("CDATA is not UTF-8".into()))?
                    .to_owned();
                append_text(&mut stack, &text)?;
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        let name = std::str::from_utf8(&r).unwrap_or("?");
                        match name {
                            "amp" => '&',
                            "lt" => '<',
                            "gt" => '>',
                            "apos" => '\'',
                            "quot" => '"',
                            other => {
                                return Err(XmlError::RestrictedXml(format!(
                                    "the entity reference &{other};"
                                )));
                            }
                        }
                    }
                    Err(e) => {
                        return Err(XmlError::NotWellFormed(format!("character reference: {e}")))
                    }
                };
                append_text(&mut stack, c.encode_utf8(&mut [0u8; 4]))?;
            }
            Event::Comment(_) => return Err(XmlError::RestrictedXml("a comment".into())),
            Event::PI(_) => return Err(XmlError::RestrictedXml("a processing instruction".into())),
            Event::DocType(_) => return Err(XmlError::RestrictedXml("a DTD".into())),
            Event::Decl(_) => {
                return Err(XmlError::RestrictedXml(
                    "an XML declaration inside the stream".into(),
                ))
            }
            Event::Eof => return Err(XmlError::NotWellFormed("the element is incomplete".into())),
        }
    }
}

fn append_text(stack: &mut [(Element, usize)], text: &str) -> Result<(), XmlError> {
    xml_chars(text)?;
    let Some((el, _)) = stack.last_mut() else {
        return Err(XmlError::NotWellFormed(
            "text outside of any element".into(),
        ));
    };
    if let Some(Node::Text(t)) = el.children.last_mut() {
        t.push_str(text);
    } else if !text.is_empty() {
        el.children.push(Node::Text(text.to_owned()));
    }
    Ok(())
}

fn element(
    s: &BytesStart<'_>,
    scope: &mut Vec<(String, String)>,
    outer: &[(String, String)],
    limits: &Limits,
) -> Result<Element, XmlError> {
    let (ns_uri, name, attrs) = open_tag_in(s, scope, outer, limits)?;
    Ok(Element {
        ns: ns_uri.into(),
        name: name.into(),
        attrs,
        children: Vec::new(),
    })
}

/// Reads a start tag: declares its namespaces in `scope`, resolves the element's and
/// the attributes' namespaces, with `outer` declarations (the stream header's)
/// consulted after those in `scope`.
fn open_tag_in(
    s: &BytesStart<'_>,
    scope: &mut Vec<(String, String)>,
    outer: &[(String, String)],
    limits: &Limits,
) -> Result<(String, String, Vec<Attribute>), XmlError> {
    let qname = utf8_str(s.name().into_inner())?;
    let mut attrs = Vec::new();
    // Prefixed attributes wait until every declaration on the tag is known.
    let mut prefixed: Vec<(usize, String)> = Vec::new();
    for (count, attr) in s.attributes().with_checks(true).enumerate() {
        if count >= limits.max_attributes {
            return Err(XmlError::PolicyViolation(format!(
                "more than {} attributes on <{qname}>",
                limits.max_attributes
            )));
        }
        let attr =
            attr.map_err(|e| XmlError::NotWellFormed(format!("attribute on <{qname}>: {e}")))?;
        let key = utf8_str(attr.key.into_inner())?;
        let value = attr.unescape_value().map_err(|e| match e {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(..)) => {
                XmlError::RestrictedXml(format!("an entity reference in attribute {key}"))
            }
            other => XmlError::NotWellFormed(format!("attribute {key}: {other}")),
        })?;
        xml_chars(&value)?;
        if key == "xmlns" {
            scope.push((String::new(), value.into_owned()));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            if value.is_empty() {
                return Err(XmlError::NotWellFormed(format!(
                    "prefix {prefix} bound to no namespace"
                )));
            }
            scope.push((prefix.to_owned(), value.into_owned()));
        } else if key.contains(':') {
            prefixed.push((attrs.len(), key.to_owned()));
            attrs.push(Attribute {
                ns: None,
                name: String::new().into(),
                value: value.into_owned(),
            });
        } else {
            attrs.push(Attribute {
                ns: None,
                name: key.to_owned().into(),
                value: value.into_owned(),
            });
        }
    }
    let lookup = |scope: &[(String, String)], prefix: &str| -> Option<String> {
        scope
            .iter()
            .rev()
            .chain(outer.iter().rev())
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.clone())
    };
    let (ns_uri, local) = match qname.split_once(':') {
        Some((prefix, local)) => match lookup(scope, prefix) {
            Some(u) => (u, local.to_owned()),
            None => return Err(XmlError::BadNamespacePrefix(format!("<{qname}>"))),
        },
        None => (lookup(scope, "").unwrap_or_default(), qname.to_owned()),
    };
    for (at, key) in prefixed {
        let (ns_attr, name) = match key.split_once(':') {
            Some(("xml", local)) => (ns::XML.to_owned(), local.to_owned()),
            Some((prefix, local)) => match lookup(scope, prefix) {
                Some(u) => (u, local.to_owned()),
                None => return Err(XmlError::BadNamespacePrefix(format!("attribute {key}"))),
            },
            None => continue,
        };
        if let Some(a) = attrs.get_mut(at) {
            a.ns = Some(ns_attr.into());
            a.name = name.into();
        }
    }
    Ok((ns_uri, local, attrs))
}

/// A name as text, checked: borrowed from the tag, not copied.
fn utf8_str(b: &[u8]) -> Result<&str, XmlError> {
    let name = std::str::from_utf8(b)
        .map_err(|_| XmlError::NotWellFormed("a name is not UTF-8".into()))?;
    xml_chars(name)?;
    Ok(name)
}
