//! PIDF presence documents (RFC 3863): parsed into the few things the gateway maps
//! (basic status, notes, contact priority), and written for NOTIFYs toward SIP.

use std::fmt;

use crate::config::XmlLimits;
use crate::xml::{ns, parse_document, Element, Node, XmlError};

pub const NS: &str = "urn:ietf:params:xml:ns:pidf";
/// RFC 4479 data model (`dm:person`) and RFC 4480 rich presence (`rpid:activities`).
pub const NS_DM: &str = "urn:ietf:params:xml:ns:pidf:data-model";
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basic {
    Open,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub lang: Option<String>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub id: String,
    pub basic: Option<Basic>,
    pub contact: Option<String>,
    /// The contact's `priority` attribute (0 to 1), as written.
    pub priority: Option<String>,
    pub notes: Vec<Note>,
    pub timestamp: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pidf {
    pub entity: String,
    pub tuples: Vec<Tuple>,
    /// Notes on the presence element itself.
    pub notes: Vec<Note>,
    /// RPID activities of the person (`away`, `busy`, …), element names only.
    pub activities: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PidfError {
    /// The body is not well-formed XML (the `415` case: PJSIP writes `&` unescaped).
    NotWellFormed(XmlError),
    /// Well-formed, but not a PIDF document.
    NotPidf(String),
}

impl fmt::Display for PidfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidfError::NotWellFormed(e) => write!(f, "the PIDF body is not well-formed XML: {e}"),
            PidfError::NotPidf(t) => write!(f, "the body is not a PIDF document: {t}"),
        }
    }
}

impl std::error::Error for PidfError {}

fn notes(el: &Element) -> Vec<Note> {
    el.elements()
        .filter(|e| e.is(NS, "note"))
        .map(|e| Note {
            lang: e
                .attrs
                .iter()
                .find(|a| a.ns.as_deref() == Some(ns::XML) && a.name == "lang")
                .map(|a| a.value.clone()),
            text: e.text_content(),
        })
        .collect()
}

impl Pidf {
    pub fn parse(body: &[u8]) -> Result<Pidf, PidfError> {
        let limits = XmlLimits {
            max_stanza_bytes: 64 * 1024,
            ..XmlLimits::default()
        };
        let root = parse_document(body, limits).map_err(PidfError::NotWellFormed)?;
        if !root.is(NS, "presence") {
            return Err(PidfError::NotPidf(format!(
                "the root is {{{}}}{}",
                root.ns, root.name
            )));
        }
        let entity = root
            .get_attr("entity")
            .ok_or_else(|| PidfError::NotPidf("<presence> has no entity".into()))?
            .to_owned();
        let mut tuples = Vec::new();
        for t in root.elements().filter(|e| e.is(NS, "tuple")) {
            let id = t
                .get_attr("id")
                .ok_or_else(|| PidfError::NotPidf("a <tuple> has no id".into()))?
                .to_owned();
            let basic = match t
                .find(NS, "status")
                .and_then(|s| s.find(NS, "basic"))
                .map(|b| b.text_content())
                .as_deref()
                .map(str::trim)
            {
                Some("open") => Some(Basic::Open),
                Some("closed") => Some(Basic::Closed),
                Some(other) => return Err(PidfError::NotPidf(format!("<basic> is '{other}'"))),
                None => None,
            };
            let contact = t.find(NS, "contact");
            tuples.push(Tuple {
                id,
                basic,
                contact: contact.map(|c| c.text_content().trim().to_owned()),
                priority: contact
                    .and_then(|c| c.get_attr("priority"))
                    .map(str::to_owned),
                notes: notes(t),
                timestamp: t
                    .find(NS, "timestamp")
                    .map(|e| e.text_content().trim().to_owned()),
            });
        }
        let activities = root
            .elements()
            .filter(|e| e.is(NS_DM, "person"))
            .flat_map(|p| p.elements().filter(|e| e.is(NS_RPID, "activities")))
            .flat_map(|a| {
                a.elements()
                    .filter(|e| e.ns == NS_RPID)
                    .map(|e| e.name.to_string())
            })
            .collect();
        Ok(Pidf {
            entity,
            tuples,
            notes: notes(&root),
            activities,
        })
    }

    /// Open if any tuple is open (RFC 3863 §4.1.4: tuples are alternatives).
    pub fn is_open(&self) -> bool {
        self.tuples.iter().any(|t| t.basic == Some(Basic::Open))
    }

    /// The note to show: the first on an open tuple, else any.
    pub fn note(&self) -> Option<&Note> {
        self.tuples
            .iter()
            .filter(|t| t.basic == Some(Basic::Open))
            .flat_map(|t| t.notes.iter())
            .chain(self.notes.iter())
            .chain(self.tuples.iter().flat_map(|t| t.notes.iter()))
            .next()
    }

    pub fn to_element(&self) -> Element {
        let note_el = |n: &Note| {
            let mut e = Element::new(NS, "note").text(&n.text);
            if let Some(l) = &n.lang {
                e.attrs.push(crate::xml::Attribute {
                    ns: Some(ns::XML.into()),
                    name: "lang".into(),
                    value: l.clone(),
                });
            }
            e
        };
        let mut root = Element::new(NS, "presence").attr("entity", &self.entity);
        for t in &self.tuples {
            let mut te = Element::new(NS, "tuple").attr("id", &t.id);
            if let Some(b) = t.basic {
                let text = match b {
                    Basic::Open => "open",
                    Basic::Closed => "closed",
                };
                te = te
                    .child(Element::new(NS, "status").child(Element::new(NS, "basic").text(text)));
            }
            if let Some(c) = &t.contact {
                let mut ce = Element::new(NS, "contact").text(c);
                if let Some(p) = &t.priority {
                    ce.set_attr("priority", p);
                }
                te = te.child(ce);
            }
            for n in &t.notes {
                te.children.push(Node::Element(note_el(n)));
            }
            if let Some(ts) = &t.timestamp {
                te = te.child(Element::new(NS, "timestamp").text(ts));
            }
            root = root.child(te);
        }
        for n in &self.notes {
            root.children.push(Node::Element(note_el(n)));
        }
        if !self.activities.is_empty() {
            let mut acts = Element::new(NS_RPID, "activities");
            for a in &self.activities {
                acts = acts.child(Element::new(NS_RPID, a));
            }
            root = root.child(Element::new(NS_DM, "person").attr("id", "p").child(acts));
        }
        root
    }

    /// The document as a NOTIFY body.
    pub fn to_xml(&self) -> String {
        let mut s = String::from("<?xml version='1.0' encoding='UTF-8'?>");
        crate::xml::write_element(&mut s, &self.to_element(), "");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence entity=\"sip:alice@sip.test\" xmlns=\"urn:ietf:params:xml:ns:pidf\">\n <tuple id=\"t1\">\n  <status>\n   <basic>open</basic>\n  </status>\n  <contact priority=\"0.8\">sip:alice@sip.test</contact>\n  <note xml:lang=\"de\">Im Büro ☕</note>\n </tuple>\n</presence>\n";

    #[test]
    fn parse_and_round_trip() {
        let p = Pidf::parse(DOC.as_bytes()).expect("parses");
        assert_eq!(p.entity, "sip:alice@sip.test");
        assert!(p.is_open());
        let note = p.note().expect("note");
        assert_eq!(
            (note.lang.as_deref(), note.text.as_str()),
            (Some("de"), "Im Büro ☕")
        );
        assert_eq!(p.tuples[0].priority.as_deref(), Some("0.8"));
        assert_eq!(Pidf::parse(p.to_xml().as_bytes()), Ok(p));
    }

    #[test]
    fn refusals() {
        let amp = DOC.replace("Im Büro ☕", "Kaffee & Kuchen");
        assert!(matches!(
            Pidf::parse(amp.as_bytes()),
            Err(PidfError::NotWellFormed(_))
        ));
        let other = "<foo xmlns='urn:x'/>";
        assert!(matches!(
            Pidf::parse(other.as_bytes()),
            Err(PidfError::NotPidf(_))
        ));
        let bad_basic = DOC.replace(">open<", ">maybe<");
        assert!(matches!(
            Pidf::parse(bad_basic.as_bytes()),
            Err(PidfError::NotPidf(_))
        ));
    }
}
