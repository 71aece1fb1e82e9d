//! XMPP's restricted XML: an incremental stream reader, a writer, and the element tree.

#[cfg(any(test, feature = "oracle"))]
mod oracle;
mod parse;
mod reader;
mod stanza;
mod writer;

use std::borrow::Cow;

pub use reader::{
    parse_document, Limits, StanzaEvent, StreamEvent, StreamHeader, StreamReader, XmlError,
};
pub use stanza::Stanza;
pub(crate) use writer::escape_into;
pub use writer::{escape_attr, escape_text, write_element, write_element_with, StreamHeaderOut};

/// Whether XML 1.0 allows `c` in a document (the `Char` production): not the C0
/// controls other than tab, LF and CR, not surrogates, not U+FFFE or U+FFFF.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Namespace URIs the gateway speaks.
pub mod ns {
    pub const STREAM: &str = "http://etherx.jabber.org/streams";
    pub const SERVER: &str = "jabber:server";
    pub const CLIENT: &str = "jabber:client";
    pub const DIALBACK: &str = "jabber:server:dialback";
    pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
    pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
    pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
    pub const STREAMS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-streams";
    pub const STANZAS_ERR: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
    pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
}

/// An element's or attribute's namespace or local name. The names the gateway
/// reads on every stanza are borrowed from a fixed table (see [`name`]), so only
/// unusual names cost an allocation.
pub type Name = Cow<'static, str>;

/// `s` as a [`Name`]: one of the common names without a copy, any other copied.
pub fn name(s: &str) -> Name {
    match common(s) {
        Some(common) => Cow::Borrowed(common),
        None => Cow::Owned(s.to_owned()),
    }
}

/// The namespaces stanzas name most. The parser names one by its place here
/// (the first is no namespace), so its order is fixed.
pub(crate) const COMMON_NS: [&str; 15] = [
    "",
    ns::SERVER,
    ns::CLIENT,
    ns::STREAM,
    ns::DIALBACK,
    ns::DIALBACK_FEATURE,
    ns::TLS,
    ns::SASL,
    ns::STREAMS_ERR,
    ns::STANZAS_ERR,
    ns::XML,
    "http://jabber.org/protocol/chatstates",
    "urn:ietf:params:xml:ns:pidf",
    "urn:xmpp:receipts",
    "urn:xmpp:delay",
];

/// `s` as one of the names the gateway reads on every stanza, if it is one.
fn common(s: &str) -> Option<&'static str> {
    if let Some(uri) = COMMON_NS.iter().find(|uri| **uri == s) {
        return Some(uri);
    }
    let common: &'static str = match s {
        // Stanzas and their children.
        "message" => "message",
        "presence" => "presence",
        "iq" => "iq",
        "body" => "body",
        "thread" => "thread",
        "subject" => "subject",
        "active" => "active",
        "composing" => "composing",
        "paused" => "paused",
        "inactive" => "inactive",
        "gone" => "gone",
        "show" => "show",
        "status" => "status",
        "priority" => "priority",
        "error" => "error",
        "text" => "text",
        "delay" => "delay",
        "request" => "request",
        "received" => "received",
        // Stream negotiation.
        "stream" => "stream",
        "features" => "features",
        "result" => "result",
        "verify" => "verify",
        "starttls" => "starttls",
        "proceed" => "proceed",
        "required" => "required",
        "mechanisms" => "mechanisms",
        "mechanism" => "mechanism",
        "auth" => "auth",
        "success" => "success",
        "failure" => "failure",
        "dialback" => "dialback",
        // Attributes.
        "from" => "from",
        "to" => "to",
        "type" => "type",
        "id" => "id",
        "lang" => "lang",
        "version" => "version",
        "code" => "code",
        "by" => "by",
        "stamp" => "stamp",
        _ => return None,
    };
    Some(common)
}

/// One attribute. `ns` is `None` for unprefixed attributes (the common case) and the
/// resolved namespace URI otherwise (`xml:lang` has [`ns::XML`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub ns: Option<Name>,
    pub name: Name,
    pub value: String,
}

/// A child of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// A namespace-resolved element: `ns` is the element's namespace URI whatever prefix
/// carried it on the wire, `name` its local name. Text is unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub ns: Name,
    pub name: Name,
    pub attrs: Vec<Attribute>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(ns: &str, name: &str) -> Self {
        Element {
            ns: self::name(ns),
            name: self::name(name),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: adds an unprefixed attribute.
    pub fn attr(mut self, name: &str, value: &str) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: appends a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: appends text.
    pub fn text(mut self, text: &str) -> Self {
        self.children.push(Node::Text(text.to_owned()));
        self
    }

    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// The value of an unprefixed attribute.
    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns.is_none() && a.name == name)
            .map(|a| a.value.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: &str) {
        match self
            .attrs
            .iter_mut()
            .find(|a| a.ns.is_none() && a.name == name)
        {
            Some(a) => a.value = value.to_owned(),
            None => self.attrs.push(Attribute {
                ns: None,
                name: self::name(name),
                value: value.to_owned(),
            }),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self
            .attrs
            .iter()
            .position(|a| a.ns.is_none() && a.name == name)?;
        Some(self.attrs.remove(pos).value)
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn find(&self, ns: &str, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, name))
    }

    /// Concatenated direct text children.
    pub fn text_content(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialises the element as it would appear inside a stream whose default
    /// namespace is `default_ns` (see [`write_element`]).
    pub fn to_xml(&self, default_ns: &str) -> String {
        let mut out = String::with_capacity(writer::size_hint(self));
        write_element(&mut out, self, default_ns);
        out
    }
}
