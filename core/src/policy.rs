//! Partner-type policy (DESIGN.md), decided here and nowhere else, the way
//! Prosody's `make_authenticated` keeps its s2s decisions in one function.
//!
//! | partner type | subscribe without approval | IM a SIP user who has not added them | sees notes |
//! |---|---|---|---|
//! | federated | yes | yes | yes |
//! | public_verified | yes | yes | no |
//! | public_unverified | no: once the SIP user added them | no: same | no |
//!
//! "Added" means the SIP user subscribed to the contact's presence or approved its
//! subscription; that state is durable and passed in by the caller.

use std::fmt;

use crate::config::{Config, PartnerType};
use crate::jid::Jid;

/// A refusal, with the stanza error condition (or its SIP mapping) and a text
/// that names the partner and the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub condition: &'static str,
    pub text: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.condition, self.text)
    }
}

/// What to do with a subscription request from an XMPP contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// Approve on the SIP user's behalf and start sending presence.
    Approve,
    /// Keep the request pending until the SIP user adds the contact.
    Pending,
    Refuse(Refusal),
}

/// The partner type for `remote`'s domain, or the refusal for a domain that is
/// not a configured partner.
pub fn partner_type(config: &Config, remote: &Jid) -> Result<PartnerType, Refusal> {
    config
        .partner_for(remote.domain())
        .map(|p| p.partner_type)
        .ok_or_else(|| Refusal {
            // Nobody from or to that domain may federate: RFC 6120's not-allowed.
            condition: "not-allowed",
            text: format!(
                "{} is not a configured XMPP partner of this gateway",
                remote.domain()
            ),
        })
}

/// May `from` (an XMPP contact) send an IM to a SIP user?
pub fn inbound_message(config: &Config, from: &Jid, contact_added: bool) -> Result<(), Refusal> {
    match partner_type(config, from)? {
        PartnerType::Federated | PartnerType::PublicVerified => Ok(()),
        PartnerType::PublicUnverified if contact_added => Ok(()),
        PartnerType::PublicUnverified => Err(Refusal {
            condition: "forbidden",
            text: format!(
                "{} is a public_unverified partner: its users may send messages only to SIP users who added them",
                from.domain()
            ),
        }),
    }
}

/// What to do when `from` asks to see a SIP user's presence.
pub fn inbound_subscribe(config: &Config, from: &Jid, contact_added: bool) -> SubscribeDecision {
    match partner_type(config, from) {
        Err(r) => SubscribeDecision::Refuse(r),
        Ok(PartnerType::Federated | PartnerType::PublicVerified) => SubscribeDecision::Approve,
        Ok(PartnerType::PublicUnverified) if contact_added => SubscribeDecision::Approve,
        Ok(PartnerType::PublicUnverified) => SubscribeDecision::Pending,
    }
}

/// Whether `watcher` may see the SIP user's status notes.
pub fn sees_notes(config: &Config, watcher: &Jid) -> bool {
    matches!(partner_type(config, watcher), Ok(PartnerType::Federated))
}

/// May a SIP user send anything to `to`? Only partners get federation.
pub fn outbound(config: &Config, to: &Jid) -> Result<(), Refusal> {
    partner_type(config, to).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Partner;

    fn config() -> Config {
        let mut c = Config::default();
        c.gateway.served_domains = vec!["sip.example".into()];
        for (d, t) in [
            ("fed.example", PartnerType::Federated),
            ("ver.example", PartnerType::PublicVerified),
            ("unv.example", PartnerType::PublicUnverified),
        ] {
            let mut p = Partner::new(d);
            p.partner_type = t;
            c.partners.push(p);
        }
        c
    }

    fn j(s: &str) -> Jid {
        Jid::parse(s).expect("jid")
    }

    #[test]
    fn the_design_table() {
        let c = config();
        // (partner, subscribe without approval, IM without being added, sees notes)
        for (who, sub, im, notes) in [
            ("u@fed.example", true, true, true),
            ("u@ver.example", true, true, false),
            ("u@unv.example", false, false, false),
        ] {
            let jid = j(who);
            assert_eq!(
                inbound_subscribe(&c, &jid, false) == SubscribeDecision::Approve,
                sub,
                "{who}"
            );
            assert_eq!(inbound_message(&c, &jid, false).is_ok(), im, "{who}");
            assert_eq!(sees_notes(&c, &jid), notes, "{who}");
            // Once the SIP user added the contact, everyone may subscribe and write.
            assert_eq!(
                inbound_subscribe(&c, &jid, true),
                SubscribeDecision::Approve,
                "{who}"
            );
            assert!(inbound_message(&c, &jid, true).is_ok(), "{who}");
        }
        assert_eq!(
            inbound_subscribe(&c, &j("u@unv.example"), false),
            SubscribeDecision::Pending
        );
    }

    #[test]
    fn non_partners_get_nothing() {
        let c = config();
        let stranger = j("eve@elsewhere.example");
        let refusal = inbound_message(&c, &stranger, true).expect_err("refused");
        assert_eq!(refusal.condition, "not-allowed");
        assert!(refusal.text.contains("elsewhere.example"));
        assert!(matches!(
            inbound_subscribe(&c, &stranger, true),
            SubscribeDecision::Refuse(_)
        ));
        assert!(outbound(&c, &stranger).is_err());
        assert!(outbound(&c, &j("bob@fed.example")).is_ok());
        assert!(!sees_notes(&c, &stranger));
    }
}
