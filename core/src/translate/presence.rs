//! Presence (RFC 8048): XMPP presence ⇄ PIDF, and the subscription vocabulary of
//! both sides.
//!
//! `<show/>` has no PIDF equivalent; it maps to RFC 4480 activities on a
//! `dm:person`: `away` and `xa` ⇄ `away` (RPID has no "extended away"), `dnd` ⇄
//! `busy` (also read from `on-the-phone` and `meeting`), `chat` and none ⇄ no
//! activity. `<status/>` ⇄ `<note/>`, with `xml:lang`, only where policy lets the
//! other side see notes.

use crate::jid::Jid;
use crate::sip::pidf::{Basic, Note, Pidf, Tuple};
use crate::translate::address::jid_to_sip;
use crate::xml::{ns, Attribute, Element};

/// What a `<presence/>` type asks of the subscription (RFC 6121 / RFC 8048 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionRequest {
    /// `subscribe`: SUBSCRIBE toward the SIP user.
    Subscribe,
    /// `subscribed`: the XMPP user approves; NOTIFY `active` to the SIP subscriber.
    Subscribed,
    /// `unsubscribe`: SUBSCRIBE with `Expires: 0`.
    Unsubscribe,
    /// `unsubscribed`: NOTIFY `terminated` to the SIP subscriber.
    Unsubscribed,
    /// `probe`: a fetch (SUBSCRIBE `Expires: 0`) answered by one NOTIFY.
    Probe,
}

/// The meaning of a `<presence/>` stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceKind {
    Available,
    Unavailable,
    Subscription(SubscriptionRequest),
    Error,
}

pub fn kind(stanza: &Element) -> Option<PresenceKind> {
    Some(match stanza.get_attr("type") {
        None => PresenceKind::Available,
        Some("unavailable") => PresenceKind::Unavailable,
        Some("subscribe") => PresenceKind::Subscription(SubscriptionRequest::Subscribe),
        Some("subscribed") => PresenceKind::Subscription(SubscriptionRequest::Subscribed),
        Some("unsubscribe") => PresenceKind::Subscription(SubscriptionRequest::Unsubscribe),
        Some("unsubscribed") => PresenceKind::Subscription(SubscriptionRequest::Unsubscribed),
        Some("probe") => PresenceKind::Subscription(SubscriptionRequest::Probe),
        Some("error") => PresenceKind::Error,
        Some(_) => return None,
    })
}

/// The `Subscription-State` of a NOTIFY, as far as XMPP cares (RFC 6665 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionState {
    Active,
    Pending,
    Terminated { reason: Option<String> },
}

impl SubscriptionState {
    pub fn parse(value: &str) -> Option<SubscriptionState> {
        let mut parts = value.split(';');
        let state = parts.next()?.trim().to_ascii_lowercase();
        let reason = parts.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("reason")
                .then(|| v.trim().to_ascii_lowercase())
        });
        match state.as_str() {
            "active" => Some(SubscriptionState::Active),
            "pending" => Some(SubscriptionState::Pending),
            "terminated" => Some(SubscriptionState::Terminated { reason }),
            _ => None,
        }
    }

    /// The presence type a NOTIFY with this state becomes, if any: the first
    /// `active` is `subscribed`; `pending` becomes nothing; `terminated` becomes
    /// `unsubscribed` only when the notifier really ended it (`rejected`,
    /// `noresource`, `deactivated` without retry), not for a timeout or probation.
    pub fn to_presence_type(&self, first_active: bool) -> Option<&'static str> {
        match self {
            SubscriptionState::Active if first_active => Some("subscribed"),
            SubscriptionState::Active | SubscriptionState::Pending => None,
            SubscriptionState::Terminated { reason } => match reason.as_deref() {
                Some("timeout") | Some("probation") | Some("giveup") => None,
                _ => Some("unsubscribed"),
            },
        }
    }
}

fn lang(el: &Element) -> Option<String> {
    el.attrs
        .iter()
        .find(|a| a.ns.as_deref() == Some(ns::XML) && a.name == "lang")
        .map(|a| a.value.clone())
}

/// XMPP presence (available or unavailable) → PIDF. The tuple id is the resource
/// (or `xmpp` for a bare JID); notes only when `with_note`.
pub fn presence_to_pidf(stanza: &Element, from: &Jid, with_note: bool) -> Pidf {
    let available = stanza.get_attr("type") != Some("unavailable");
    let status_note = if with_note {
        stanza.find(ns::SERVER, "status").map(|s| Note {
            lang: lang(s).or_else(|| lang(stanza)),
            text: s.text_content(),
        })
    } else {
        None
    };
    let activities = match stanza
        .find(ns::SERVER, "show")
        .map(|s| s.text_content())
        .as_deref()
        .map(str::trim)
    {
        Some("away") | Some("xa") => vec!["away".to_owned()],
        Some("dnd") => vec!["busy".to_owned()],
        _ => Vec::new(),
    };
    let id: String = from
        .resource()
        .unwrap_or("xmpp")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Pidf {
        entity: jid_to_sip(&from.bare()),
        tuples: vec![Tuple {
            id: format!("x{id}"),
            basic: Some(if available {
                Basic::Open
            } else {
                Basic::Closed
            }),
            contact: None,
            priority: None,
            notes: status_note.into_iter().collect(),
            timestamp: None,
        }],
        notes: Vec::new(),
        activities: if available { activities } else { Vec::new() },
    }
}

/// PIDF → `<presence/>` from `from` to `to`; the note becomes `<status/>` only when
/// `with_status`.
pub fn pidf_to_presence(pidf: &Pidf, from: &Jid, to: &Jid, with_status: bool) -> Element {
    let mut p = Element::new(ns::SERVER, "presence")
        .attr("from", &from.to_string())
        .attr("to", &to.to_string());
    if !pidf.is_open() {
        p.set_attr("type", "unavailable");
    } else {
        let show = pidf.activities.iter().find_map(|a| match a.as_str() {
            "away" => Some("away"),
            "busy" | "on-the-phone" | "meeting" => Some("dnd"),
            _ => None,
        });
        if let Some(show) = show {
            p = p.child(Element::new(ns::SERVER, "show").text(show));
        }
    }
    if with_status {
        if let Some(note) = pidf.note() {
            let mut status = Element::new(ns::SERVER, "status").text(&note.text);
            if let Some(l) = &note.lang {
                status.attrs.push(Attribute {
                    ns: Some(ns::XML.into()),
                    name: "lang".into(),
                    value: l.clone(),
                });
            }
            p = p.child(status);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(s: &str) -> Jid {
        Jid::parse(s).expect("jid")
    }

    #[test]
    fn available_with_show_and_status() {
        let st = Element::new(ns::SERVER, "presence")
            .attr("from", "juliet@xmpp.example/balcony")
            .child(Element::new(ns::SERVER, "show").text("dnd"))
            .child(Element::new(ns::SERVER, "status").text("Im Meeting & so"));
        let pidf = presence_to_pidf(&st, &j("juliet@xmpp.example/balcony"), true);
        assert!(pidf.is_open());
        assert_eq!(pidf.activities, ["busy"]);
        assert_eq!(
            pidf.note().map(|n| n.text.as_str()),
            Some("Im Meeting & so")
        );
        let again = Pidf::parse(pidf.to_xml().as_bytes()).expect("valid PIDF");
        assert_eq!(again, pidf);
        let back = pidf_to_presence(
            &again,
            &j("juliet@xmpp.example"),
            &j("alice@sip.example"),
            true,
        );
        assert_eq!(
            back.to_xml(ns::SERVER),
            "<presence from='juliet@xmpp.example' to='alice@sip.example'><show>dnd</show><status>Im Meeting &amp; so</status></presence>"
        );
        let hidden = presence_to_pidf(&st, &j("juliet@xmpp.example/balcony"), false);
        assert!(hidden.note().is_none());
    }

    #[test]
    fn unavailable_and_kinds() {
        let st = Element::new(ns::SERVER, "presence").attr("type", "unavailable");
        let pidf = presence_to_pidf(&st, &j("a@x.example"), true);
        assert!(!pidf.is_open());
        let back = pidf_to_presence(&pidf, &j("a@x.example"), &j("b@y.example"), true);
        assert_eq!(back.get_attr("type"), Some("unavailable"));
        assert_eq!(kind(&st), Some(PresenceKind::Unavailable));
        let sub = Element::new(ns::SERVER, "presence").attr("type", "subscribe");
        assert_eq!(
            kind(&sub),
            Some(PresenceKind::Subscription(SubscriptionRequest::Subscribe))
        );
        assert_eq!(
            kind(&Element::new(ns::SERVER, "presence").attr("type", "bogus")),
            None
        );
    }

    #[test]
    fn subscription_states() {
        let t = SubscriptionState::parse("terminated;reason=timeout").expect("state");
        assert_eq!(
            t.to_presence_type(false),
            None,
            "a SIP log-off is not an XMPP unsubscribe"
        );
        let r = SubscriptionState::parse("terminated;reason=rejected").expect("state");
        assert_eq!(r.to_presence_type(false), Some("unsubscribed"));
        let a = SubscriptionState::parse("active;expires=600").expect("state");
        assert_eq!(a.to_presence_type(true), Some("subscribed"));
        assert_eq!(a.to_presence_type(false), None);
        assert_eq!(
            SubscriptionState::parse("pending").and_then(|p| p.to_presence_type(true)),
            None
        );
        assert_eq!(SubscriptionState::parse("weird"), None);
    }
}
