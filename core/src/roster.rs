//! Durable subscription and authorization state, per SIP user × XMPP contact.
//! The core keeps the working set; every change leaves as a `Persist` output,
//! before any transmit that depends on it, so that nothing is acknowledged on the
//! wire before it is durable.

use std::collections::BTreeMap;

/// One direction of a presence subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Sub {
    #[default]
    None,
    /// Asked, not yet approved.
    Pending,
    Active,
}

impl Sub {
    pub fn as_str(self) -> &'static str {
        match self {
            Sub::None => "none",
            Sub::Pending => "pending",
            Sub::Active => "active",
        }
    }

    pub fn parse(s: &str) -> Option<Sub> {
        match s {
            "none" => Some(Sub::None),
            "pending" => Some(Sub::Pending),
            "active" => Some(Sub::Active),
            _ => None,
        }
    }
}

/// The state between one SIP user and one XMPP contact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Item {
    /// The SIP user watches the contact's presence.
    pub watch: Sub,
    /// The contact watches the SIP user's presence.
    pub watched_by: Sub,
}

impl Item {
    /// DESIGN.md: "added to the contact list" = the SIP user subscribed to the
    /// contact's presence or approved its subscription.
    pub fn contact_added(&self) -> bool {
        self.watch != Sub::None || self.watched_by == Sub::Active
    }
}

/// A change to persist: the new state of one (SIP user, contact) pair, keyed by
/// bare JIDs. `Item::default()` means the pair can be forgotten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist {
    pub local: String,
    pub remote: String,
    pub item: Item,
}

/// The working set, by SIP user and then contact: nested so that a lookup borrows
/// both keys instead of building an owned pair.
#[derive(Clone, Debug, Default)]
pub struct Roster {
    items: BTreeMap<String, BTreeMap<String, Item>>,
}

impl Roster {
    /// Loads state a host read back from its store.
    pub fn restore(records: impl IntoIterator<Item = Persist>) -> Self {
        let mut r = Roster::default();
        for p in records {
            if p.item != Item::default() {
                r.items.entry(p.local).or_default().insert(p.remote, p.item);
            }
        }
        r
    }

    pub fn get(&self, local: &str, remote: &str) -> Item {
        self.items
            .get(local)
            .and_then(|contacts| contacts.get(remote))
            .copied()
            .unwrap_or_default()
    }

    /// Applies a change; returns the record to persist when something changed.
    pub fn set(&mut self, local: &str, remote: &str, item: Item) -> Option<Persist> {
        if self.get(local, remote) == item {
            return None;
        }
        if item == Item::default() {
            if let Some(contacts) = self.items.get_mut(local) {
                contacts.remove(remote);
                if contacts.is_empty() {
                    self.items.remove(local);
                }
            }
        } else {
            self.items
                .entry(local.to_owned())
                .or_default()
                .insert(remote.to_owned(), item);
        }
        Some(Persist {
            local: local.to_owned(),
            remote: remote.to_owned(),
            item,
        })
    }

    /// Every SIP user watched by `remote`, or watching it.
    pub fn pairs(&self) -> impl Iterator<Item = ((&str, &str), &Item)> {
        self.items.iter().flat_map(|(local, contacts)| {
            contacts
                .iter()
                .map(move |(remote, item)| ((local.as_str(), remote.as_str()), item))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_reports_changes_only_and_restore_round_trips() {
        let mut r = Roster::default();
        let item = Item {
            watch: Sub::Pending,
            watched_by: Sub::None,
        };
        let p = r.set("a@sip", "b@x", item).expect("changed");
        assert!(r.set("a@sip", "b@x", item).is_none());
        assert!(r.get("a@sip", "b@x").contact_added());
        let again = Roster::restore([p]);
        assert_eq!(again.get("a@sip", "b@x"), item);
        assert!(r.set("a@sip", "b@x", Item::default()).is_some());
        assert_eq!(r.pairs().count(), 0);
        assert!(!Item {
            watch: Sub::None,
            watched_by: Sub::Pending
        }
        .contact_added());
        assert_eq!(Sub::parse(Sub::Active.as_str()), Some(Sub::Active));
    }
}
