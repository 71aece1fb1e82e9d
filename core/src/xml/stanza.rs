//! A top-level element as the reader read it: its bytes and the steps the parser
//! found in them, with no tree built. What the message path reads (attributes,
//! a child's text, `xml:lang`) comes straight from the bytes; anything else gets
//! the element tree, built on demand.

use std::borrow::Cow;

use super::parse::{same, NsRef, Span, Tok};
use super::{name, ns, Attribute, Element, Node};

/// A stanza (or any top-level element): as read, or built by the gateway.
#[derive(Clone, Debug)]
pub struct Stanza(Repr);

#[derive(Clone, Debug)]
enum Repr {
    Read(Read),
    Built(Element),
}

/// A stanza as read: the element's bytes, checked, followed in the same buffer
/// by the unescaped form of the pieces that held references (one allocation),
/// and the parser's steps.
#[derive(Clone, Debug)]
struct Read {
    buf: String,
    text_len: usize,
    toks: Vec<Tok>,
}

impl Read {
    /// The element's bytes, the unescaped pieces, and the steps.
    fn parts(&self) -> (&str, &str, &[Tok]) {
        // `text_len` is the length of the text the buffer starts with, so a
        // character boundary.
        let (text, side) = self.buf.split_at_checked(self.text_len).unwrap_or_default();
        (text, side, &self.toks)
    }
}

impl From<Element> for Stanza {
    fn from(el: Element) -> Self {
        Stanza(Repr::Built(el))
    }
}

impl PartialEq for Stanza {
    fn eq(&self, other: &Self) -> bool {
        self.element() == other.element()
    }
}

impl Stanza {
    /// The element read from `text`, with its unescaped pieces and steps.
    pub(super) fn read(text: &str, side: &str, toks: &[Tok]) -> Self {
        let mut buf = String::with_capacity(text.len() + side.len());
        buf.push_str(text);
        buf.push_str(side);
        Stanza(Repr::Read(Read {
            buf,
            text_len: text.len(),
            toks: toks.to_vec(),
        }))
    }

    /// The element tree.
    pub fn into_element(self) -> Element {
        match self.0 {
            Repr::Read(r) => {
                let (text, side, toks) = r.parts();
                build(text, side, toks)
            }
            Repr::Built(el) => el,
        }
    }

    /// The element tree, built if the stanza is as read.
    pub fn element(&self) -> Cow<'_, Element> {
        match &self.0 {
            Repr::Read(r) => {
                let (text, side, toks) = r.parts();
                Cow::Owned(build(text, side, toks))
            }
            Repr::Built(el) => Cow::Borrowed(el),
        }
    }

    /// The element's namespace and local name.
    pub fn qname(&self) -> (&str, &str) {
        match &self.0 {
            Repr::Read(r) => {
                let (text, side, toks) = r.parts();
                match toks.first() {
                    Some(Tok::Start { ns, name }) => (ns.of(text, side), name.of(text, "")),
                    _ => ("", ""),
                }
            }
            Repr::Built(el) => (&el.ns, &el.name),
        }
    }

    pub fn name(&self) -> &str {
        self.qname().1
    }

    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.qname() == (ns, name)
    }

    /// The value of an unprefixed attribute.
    pub fn get_attr(&self, key: &str) -> Option<&str> {
        match &self.0 {
            Repr::Read(r) => {
                let (text, side, toks) = r.parts();
                attrs(toks).find_map(|(ns, name, value)| {
                    (ns == NsRef::NONE && same(name.bytes(text, ""), key.as_bytes()))
                        .then(|| value.of(text, side))
                })
            }
            Repr::Built(el) => el.get_attr(key),
        }
    }

    /// `xml:lang` on the element itself.
    pub fn lang(&self) -> Option<&str> {
        match &self.0 {
            Repr::Read(r) => {
                let (text, side, toks) = r.parts();
                attrs(toks).find_map(|(ns, name, value)| {
                    (ns == NsRef::XML && same(name.bytes(text, ""), b"lang"))
                        .then(|| value.of(text, side))
                })
            }
            Repr::Built(el) => el
                .attrs
                .iter()
                .find(|a| a.ns.as_deref() == Some(ns::XML) && a.name == "lang")
                .map(|a| a.value.as_str()),
        }
    }

    /// The local name of the first child element in namespace `ns`.
    pub fn child_in(&self, ns: &str) -> Option<&str> {
        match &self.0 {
            Repr::Read(r) => {
                let (text, side, toks) = r.parts();
                children(toks).find_map(|at| match toks.get(at) {
                    Some(Tok::Start { ns: n, name })
                        if same(n.bytes(text, side), ns.as_bytes()) =>
                    {
                        Some(name.of(text, ""))
                    }
                    _ => None,
                })
            }
            Repr::Built(el) => el.elements().find(|e| e.ns == ns).map(|e| &*e.name),
        }
    }

    /// For each `(ns, name)` wanted, the text of the first such child element
    /// (its text children joined), borrowed when it is one piece.
    pub fn child_texts<const N: usize>(
        &self,
        wanted: [(&str, &str); N],
    ) -> [Option<Cow<'_, str>>; N] {
        self.children(wanted, "").0
    }

    /// [`Stanza::child_texts`] and [`Stanza::child_in`] in one pass.
    pub fn children<const N: usize>(
        &self,
        wanted: [(&str, &str); N],
        first_in: &str,
    ) -> ([Option<Cow<'_, str>>; N], Option<&str>) {
        let (text, side, toks) = match &self.0 {
            Repr::Read(r) => r.parts(),
            Repr::Built(el) => {
                return (
                    wanted.map(|(ns, name)| el.find(ns, name).map(text_of)),
                    el.elements().find(|e| e.ns == first_in).map(|e| &*e.name),
                )
            }
        };
        let mut first = None;
        let mut found: [Option<Cow<'_, str>>; N] = std::array::from_fn(|_| None);
        let mut depth = 0usize;
        // The slot of the child being read, if it is one wanted.
        let mut current = None;
        for t in toks {
            match t {
                Tok::Start { ns, name } => {
                    depth += 1;
                    if depth == 2 {
                        let child_ns = ns.bytes(text, side);
                        if first.is_none() && same(child_ns, first_in.as_bytes()) {
                            first = Some(name.of(text, ""));
                        }
                        let local = name.bytes(text, "");
                        current = wanted
                            .iter()
                            .zip(found.iter_mut())
                            .find(|((n, l), slot)| {
                                slot.is_none()
                                    && same(l.as_bytes(), local)
                                    && same(n.as_bytes(), child_ns)
                            })
                            .map(|(_, slot)| slot);
                        if let Some(slot) = current.as_mut() {
                            **slot = Some(Cow::Borrowed(""));
                        }
                    }
                }
                Tok::End => {
                    if depth == 2 {
                        current = None;
                    }
                    depth = depth.saturating_sub(1);
                }
                Tok::Text(span) if depth == 2 => {
                    if let Some(Some(got)) = current.as_deref_mut() {
                        let piece = span.of(text, side);
                        if got.is_empty() {
                            *got = Cow::Borrowed(piece);
                        } else {
                            got.to_mut().push_str(piece);
                        }
                    }
                }
                _ => {}
            }
        }
        (found, first)
    }
}

/// An element's text, borrowed when it is one piece.
fn text_of(el: &Element) -> Cow<'_, str> {
    fn text(n: &Node) -> Option<&str> {
        match n {
            Node::Text(t) => Some(t),
            Node::Element(_) => None,
        }
    }
    let mut pieces = el.children.iter().filter_map(text);
    let Some(first) = pieces.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = pieces.next() else {
        return Cow::Borrowed(first);
    };
    let mut out = String::from(first);
    out.push_str(second);
    pieces.for_each(|t| out.push_str(t));
    Cow::Owned(out)
}

/// The root's attributes: namespace, name and value.
fn attrs(toks: &[Tok]) -> impl Iterator<Item = (NsRef, Span, Span)> + '_ {
    toks.iter().skip(1).map_while(|t| match *t {
        Tok::Attr { ns, name, value } => Some((ns, name, value)),
        _ => None,
    })
}

/// Where the root's child elements start.
fn children(toks: &[Tok]) -> impl Iterator<Item = usize> + '_ {
    let mut depth = 0usize;
    toks.iter().enumerate().filter_map(move |(at, t)| match t {
        Tok::Start { .. } => {
            depth += 1;
            (depth == 2).then_some(at)
        }
        Tok::End => {
            depth = depth.saturating_sub(1);
            None
        }
        _ => None,
    })
}

/// The element tree of what the parser read.
pub(super) fn build(text: &str, side: &str, toks: &[Tok]) -> Element {
    let mut stack: Vec<Element> = Vec::new();
    let mut at = 0;
    while let Some(t) = toks.get(at) {
        at += 1;
        match t {
            Tok::Start { ns, name: local } => {
                let count = toks
                    .get(at..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|t| matches!(t, Tok::Attr { .. }))
                    .count();
                let mut attrs = Vec::with_capacity(count);
                for t in toks.get(at..at + count).unwrap_or_default() {
                    if let Tok::Attr { ns, name: n, value } = t {
                        attrs.push(Attribute {
                            ns: (*ns != NsRef::NONE).then(|| ns.name(text, side)),
                            name: name(n.of(text, "")),
                            value: value.of(text, side).to_owned(),
                        });
                    }
                }
                at += count;
                stack.push(Element {
                    ns: ns.name(text, side),
                    name: name(local.of(text, "")),
                    attrs,
                    children: Vec::new(),
                });
            }
            Tok::Attr { .. } => {}
            Tok::Text(span) => {
                let piece = span.of(text, side);
                if let Some(el) = stack.last_mut() {
                    if let Some(Node::Text(t)) = el.children.last_mut() {
                        t.push_str(piece);
                    } else {
                        el.children.push(Node::Text(piece.to_owned()));
                    }
                }
            }
            Tok::End => {
                let Some(el) = stack.pop() else { break };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(el)),
                    None => return el,
                }
            }
        }
    }
    // The parser ends every element it starts; should it not, what is open
    // closes here.
    let mut el = stack.pop().unwrap_or_else(|| Element::new("", ""));
    while let Some(mut parent) = stack.pop() {
        parent.children.push(Node::Element(el));
        el = parent;
    }
    el
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::{StanzaEvent, StreamReader};

    const HEADER: &str = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:x='urn:example:outer' version='1.0'>";

    fn read(stanza: &str) -> Stanza {
        let mut r = StreamReader::new(crate::config::XmlLimits::default());
        r.push(HEADER.as_bytes());
        r.push(stanza.as_bytes());
        assert!(matches!(
            r.next_stanza_event(),
            Ok(Some(StanzaEvent::Header(_)))
        ));
        match r.next_stanza_event() {
            Ok(Some(StanzaEvent::Stanza(s))) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stanza_as_read_answers_from_its_bytes() {
        let s = read(
            "<message from='a@b/c' to=\"d&amp;e@f\" xml:lang='en' type='chat'>\
             <body xml:lang='de'>one <![CDATA[<two>]]> &lt;three&gt;</body>\
             <body>second</body><subject/>\
             <x:thread>not this one</x:thread><thread>th<i>nested</i>-1</thread>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        );
        assert_eq!(s.qname(), (ns::SERVER, "message"));
        assert_eq!(s.get_attr("from"), Some("a@b/c"));
        assert_eq!(s.get_attr("to"), Some("d&e@f"));
        // xml:lang is not the unprefixed attribute lang.
        assert_eq!(s.get_attr("lang"), None);
        assert_eq!(s.lang(), Some("en"));
        let [body, subject, thread, outer] = s.child_texts([
            (ns::SERVER, "body"),
            (ns::SERVER, "subject"),
            (ns::SERVER, "thread"),
            ("urn:example:outer", "thread"),
        ]);
        assert_eq!(body.as_deref(), Some("one <two> <three>"));
        assert_eq!(subject.as_deref(), Some(""));
        // Only the element's own text, not its children's.
        assert_eq!(thread.as_deref(), Some("th-1"));
        assert_eq!(outer.as_deref(), Some("not this one"));
        assert_eq!(
            s.child_in("http://jabber.org/protocol/chatstates"),
            Some("composing")
        );
        assert_eq!(s.child_in("urn:none"), None);
        // The same answers from the tree it builds.
        let built = Stanza::from(s.clone().into_element());
        assert_eq!(built.get_attr("to"), Some("d&e@f"));
        assert_eq!(built.lang(), Some("en"));
        let [body] = built.child_texts([(ns::SERVER, "body")]);
        assert_eq!(body.as_deref(), Some("one <two> <three>"));
        assert_eq!(built, s);
    }
}
