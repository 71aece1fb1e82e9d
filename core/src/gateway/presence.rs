//! Presence across the gateway (RFC 8048, RFC 6665, RFC 3856).
//!
//! Notifier role: a SIP user's SUBSCRIBE to an XMPP contact opens a SIP dialog
//! here; the gateway asks the contact with `<presence type='subscribe'/>` and sends
//! NOTIFYs (pending, then active with PIDF, or terminated).
//! Subscriber role: when an XMPP contact may watch a SIP user, the gateway
//! SUBSCRIBEs to that user through the SIP next hop and turns each NOTIFY into
//! presence for the contact, with status notes only where policy allows.
//! The durable part (who watches whom, who approved) is the roster; dialogs and
//! presence caches are soft state that SIP refreshes rebuild.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::sip::{Purpose, ServerKey};
use super::{Event, Gateway};
use crate::jid::Jid;
use crate::policy::{self, SubscribeDecision};
use crate::roster::Sub;
use crate::sip::pidf::{Basic, Pidf, Tuple};
use crate::sip::uri::NameAddr;
use crate::sip::SipMessage;
use crate::translate::address::{jid_to_sip, sip_to_jid};
use crate::translate::presence::{
    kind, pidf_to_presence, presence_to_pidf, PresenceKind, SubscriptionRequest, SubscriptionState,
};
use crate::xml::{ns, Element};

/// Longest SIP subscription we grant or ask for; refreshed before it ends.
const MAX_EXPIRES: u64 = 3600;
const MIN_EXPIRES: u64 = 60;
/// Wait before subscribing again to a SIP user after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(300);
/// Seconds a SIP watcher is asked to wait before subscribing again after a
/// temporary (`wait`) XMPP error: about one stream-establishment attempt, so the
/// retry finds the partner reachable again or fails afresh, without hammering it.
const PROBATION_RETRY_AFTER: u64 = 60;

#[derive(Default)]
pub(super) struct PresenceState {
    /// Notifier role: SIP dialogs of SIP users watching XMPP contacts, by
    /// Call-ID and the watcher's tag.
    watchers: HashMap<String, Watcher>,
    /// Subscriber role: our subscriptions to SIP users, by Call-ID.
    subscriptions: HashMap<String, Subscription>,
    /// Subscriptions to start again later: (when, SIP user, XMPP contact).
    retries: Vec<(Instant, Jid, Jid)>,
    /// Last presence of each XMPP contact (bare JID).
    remote: HashMap<String, Element>,
    /// Last PIDF of each SIP user (bare JID).
    local: HashMap<String, Pidf>,
    /// Watcher expiries and subscription refreshes, earliest first. An entry whose
    /// dialog moved on (refreshed, ended) is skipped when it comes up, so neither
    /// the next deadline nor the timeouts walk every dialog.
    timers: super::deadlines::Deadlines<PresenceTimer>,
}

/// What a presence timer entry is for. Watchers sort first, as they fired first
/// when timeouts walked the tables.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PresenceTimer {
    Watcher(String),
    Subscription(String),
}

struct Watcher {
    local: Jid,
    remote: Jid,
    call_id: String,
    our_tag: String,
    their_tag: String,
    target: String,
    cseq: u32,
    expires_at: Instant,
}

struct Subscription {
    local: Jid,
    remote: Jid,
    our_tag: String,
    their_tag: Option<String>,
    cseq: u32,
    refresh_at: Instant,
}

fn presence(from: &Jid, to: &Jid, ty: Option<&str>) -> Element {
    let mut p = Element::new(ns::SERVER, "presence")
        .attr("from", &from.to_string())
        .attr("to", &to.to_string());
    if let Some(t) = ty {
        p.set_attr("type", t);
    }
    p
}

fn expires_of(msg: &SipMessage) -> Option<u64> {
    msg.header("Expires").and_then(|e| e.trim().parse().ok())
}

impl Gateway {
    // ---- notifier role: SIP users watching XMPP contacts ------------------------

    pub(super) fn sip_subscribe(&mut self, key: &ServerKey, msg: &SipMessage, now: Instant) {
        let event = msg.header("Event").map(|e| {
            e.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        if event.as_deref() != Some("presence") {
            let mut resp = self.server_reply(
                key,
                489,
                "Bad Event (this gateway serves the presence package)",
            );
            resp.push_header("Allow-Events", "presence");
            self.sip_respond(key, resp, now);
            return;
        }
        let expires = expires_of(msg).unwrap_or(MAX_EXPIRES).min(MAX_EXPIRES);
        if expires != 0 && expires < MIN_EXPIRES {
            let mut resp = self.server_reply(key, 423, "Interval Too Brief");
            resp.push_header("Min-Expires", &MIN_EXPIRES.to_string());
            self.sip_respond(key, resp, now);
            return;
        }
        let from = msg.header("From").and_then(|f| NameAddr::parse(f).ok());
        let Some((from, from_tag)) = from.and_then(|f| f.tag().map(|t| (f.clone(), t.to_owned())))
        else {
            self.sip_answer(key, 400, "Bad Request (SUBSCRIBE needs a From tag)", now);
            return;
        };
        let local = match sip_to_jid(&from.uri.to_string()) {
            Ok(j) if self.config.serves(j.domain()) => j.bare(),
            Ok(j) => {
                let reason = format!(
                    "Forbidden ({} is not a SIP domain this gateway serves)",
                    j.domain()
                );
                self.sip_answer(key, 403, &reason, now);
                return;
            }
            Err(e) => {
                self.sip_answer(key, 400, &format!("Bad Request (From: {e})"), now);
                return;
            }
        };
        let target_uri = match &msg.start {
            crate::sip::StartLine::Request { uri, .. } => uri.clone(),
            crate::sip::StartLine::Response { .. } => return,
        };
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let dialog = format!("{call_id}|{from_tag}");
        if self.presence.watchers.contains_key(&dialog) {
            self.refresh_watcher(key, &dialog, expires, now);
            return;
        }
        let in_dialog = msg
            .header("To")
            .and_then(|t| NameAddr::parse(t).ok())
            .is_some_and(|t| t.tag().is_some());
        if in_dialog {
            // A refresh for a dialog we do not have (expired, or never ours).
            self.sip_answer(key, 481, "Subscription Does Not Exist", now);
            return;
        }
        let remote = match sip_to_jid(&target_uri) {
            Ok(j) => j.bare(),
            Err(e) => {
                self.sip_answer(key, 416, &format!("Unsupported URI Scheme ({e})"), now);
                return;
            }
        };
        if let Err(refusal) = policy::outbound(&self.config, &remote) {
            let (code, phrase) = crate::translate::error::condition_to_sip(refusal.condition);
            self.sip_answer(key, code, &format!("{phrase} ({})", refusal.text), now);
            return;
        }
        if self.presence.watchers.len() >= super::sip::MAX_SIP_STATE {
            self.sip_overloaded(key, "too many subscriptions", now);
            return;
        }
        let target = msg
            .header_values("Contact")
            .first()
            .and_then(|c| NameAddr::parse(c).ok())
            .map_or_else(|| from.uri.to_string(), |c| c.uri.to_string());
        let our_tag = self.server_to_tag(key).unwrap_or_default();
        // The SIP user adds the contact: durable before anything goes out.
        let (l, r) = (local.to_string(), remote.to_string());
        let mut item = self.roster.get(&l, &r);
        let ask = item.watch == Sub::None;
        if ask {
            item.watch = Sub::Pending;
        }
        let approve_pending = item.watched_by == Sub::Pending;
        if approve_pending {
            item.watched_by = Sub::Active;
        }
        self.roster_set(&l, &r, item);
        let mut resp = self.server_reply(key, 200, "OK");
        resp.push_header("Expires", &expires.to_string());
        resp.push_header(
            "Contact",
            &format!("<sip:{}>", self.config.gateway.sip_address),
        );
        self.sip_respond(key, resp, now);
        let expires_at = now + Duration::from_secs(expires);
        let timer = PresenceTimer::Watcher(dialog.clone());
        self.presence.timers.push(expires_at, timer);
        self.presence.watchers.insert(
            dialog.clone(),
            Watcher {
                local: local.clone(),
                remote: remote.clone(),
                call_id,
                our_tag,
                their_tag: from_tag,
                target,
                cseq: 0,
                expires_at,
            },
        );
        if ask {
            let _ = self.route_stanza(now, presence(&local, &remote, Some("subscribe")), None);
        }
        if approve_pending {
            // Adding a contact who asked first approves it (DESIGN.md policy).
            let _ = self.route_stanza(now, presence(&local, &remote, Some("subscribed")), None);
            self.start_subscription(&local, &remote, now);
        }
        if item.watch == Sub::Active && !self.presence.remote.contains_key(&r) {
            let _ = self.route_stanza(now, presence(&local, &remote, Some("probe")), None);
        }
        if expires == 0 {
            // A fetch: one NOTIFY, then the dialog ends.
            self.notify(&dialog, Some("timeout"), now);
            self.presence.watchers.remove(&dialog);
        } else {
            self.notify(&dialog, None, now);
        }
    }

    fn refresh_watcher(&mut self, key: &ServerKey, dialog: &str, expires: u64, now: Instant) {
        let mut resp = self.server_reply(key, 200, "OK");
        resp.push_header("Expires", &expires.to_string());
        self.sip_respond(key, resp, now);
        if expires == 0 {
            // The SIP client logs off: its dialog ends, the XMPP subscription stays
            // (RFC 8048: an un-SUBSCRIBE is not an XMPP unsubscribe).
            self.notify(dialog, Some("timeout"), now);
            self.presence.watchers.remove(dialog);
        } else {
            if let Some(w) = self.presence.watchers.get_mut(dialog) {
                w.expires_at = now + Duration::from_secs(expires);
                let timer = PresenceTimer::Watcher(dialog.to_owned());
                self.presence.timers.push(w.expires_at, timer);
            }
            self.notify(dialog, None, now);
        }
    }

    /// Sends a NOTIFY in a watcher dialog: the state the roster says, or
    /// `terminated` with `reason`.
    fn notify(&mut self, dialog: &str, terminated: Option<&str>, now: Instant) {
        let Some(w) = self.presence.watchers.get_mut(dialog) else {
            return;
        };
        w.cseq += 1;
        let (local, remote) = (w.local.clone(), w.remote.clone());
        let remaining = w.expires_at.saturating_duration_since(now).as_secs();
        let item = self.roster.get(&local.to_string(), &remote.to_string());
        let state = match (terminated, item.watch) {
            (Some(reason), _) => format!("terminated;reason={reason}"),
            (None, Sub::Active) => format!("active;expires={remaining}"),
            (None, _) => format!("pending;expires={remaining}"),
        };
        let mut request = SipMessage::request("NOTIFY", &w.target)
            .with(
                "From",
                &format!("<{}>;tag={}", jid_to_sip(&remote), w.our_tag),
            )
            .with(
                "To",
                &format!("<{}>;tag={}", jid_to_sip(&local), w.their_tag),
            )
            .with("Call-ID", &w.call_id)
            .with("CSeq", &format!("{} NOTIFY", w.cseq))
            .with(
                "Contact",
                &format!("<sip:{}>", self.config.gateway.sip_address),
            )
            .with("Event", "presence")
            .with("Subscription-State", &state);
        let send_body =
            item.watch == Sub::Active && (terminated.is_none() || terminated == Some("timeout"));
        if send_body {
            let pidf = match self.presence.remote.get(&remote.to_string()) {
                Some(p) => {
                    let from = p
                        .get_attr("from")
                        .and_then(|f| Jid::parse(f).ok())
                        .unwrap_or_else(|| remote.clone());
                    presence_to_pidf(p, &from, true)
                }
                None => Pidf {
                    entity: jid_to_sip(&remote),
                    tuples: vec![Tuple {
                        id: "xmpp".into(),
                        basic: Some(Basic::Closed),
                        contact: None,
                        priority: None,
                        notes: Vec::new(),
                        timestamp: None,
                    }],
                    notes: Vec::new(),
                    activities: Vec::new(),
                },
            };
            request.push_header("Content-Type", "application/pidf+xml");
            request.set_body(pidf.to_xml().into_bytes());
        }
        self.sip_request_out(request, Purpose::Notify(dialog.to_owned()), now);
    }

    /// Every watcher dialog of `local` for `remote`.
    fn dialogs_for(&self, local: &Jid, remote: &Jid) -> Vec<String> {
        let mut v: Vec<String> = self
            .presence
            .watchers
            .iter()
            .filter(|(_, w)| &w.local == local && &w.remote == remote)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    pub(super) fn notify_failed(&mut self, dialog: &str, code: u16) {
        // 481 (or no answer): the watcher is gone; its dialog ends here too.
        if code == 481 || code == 0 || code >= 400 {
            self.presence.watchers.remove(dialog);
        }
    }

    // ---- XMPP presence for SIP users ---------------------------------------------

    pub(super) fn xmpp_presence(&mut self, stanza: Element, from: Jid, to: Jid, now: Instant) {
        let (remote, local) = (from.bare(), to.bare());
        let (l, r) = (local.to_string(), remote.to_string());
        let mut item = self.roster.get(&l, &r);
        let Some(k) = kind(&stanza) else {
            return;
        };
        match k {
            PresenceKind::Subscription(SubscriptionRequest::Subscribe) => {
                match policy::inbound_subscribe(&self.config, &remote, item.contact_added()) {
                    SubscribeDecision::Approve => {
                        item.watched_by = Sub::Active;
                        self.roster_set(&l, &r, item);
                        let _ = self.route_stanza(
                            now,
                            presence(&local, &remote, Some("subscribed")),
                            None,
                        );
                        self.start_subscription(&local, &remote, now);
                    }
                    SubscribeDecision::Pending => {
                        item.watched_by = Sub::Pending;
                        self.roster_set(&l, &r, item);
                        self.event(Event::Ignored {
                            conn: super::ConnId(0),
                            what: format!("{remote} asks to see {local}'s presence; pending until {local} adds {remote}"),
                        });
                    }
                    SubscribeDecision::Refuse(_) => {
                        let _ = self.route_stanza(
                            now,
                            presence(&local, &remote, Some("unsubscribed")),
                            None,
                        );
                    }
                }
            }
            PresenceKind::Subscription(SubscriptionRequest::Unsubscribe) => {
                item.watched_by = Sub::None;
                self.roster_set(&l, &r, item);
                self.end_subscription(&local, &remote, now);
            }
            PresenceKind::Subscription(SubscriptionRequest::Subscribed) => {
                if item.watch == Sub::Pending {
                    item.watch = Sub::Active;
                    self.roster_set(&l, &r, item);
                    for d in self.dialogs_for(&local, &remote) {
                        self.notify(&d, None, now);
                    }
                }
            }
            PresenceKind::Subscription(SubscriptionRequest::Unsubscribed) => {
                if item.watch != Sub::None {
                    item.watch = Sub::None;
                    self.roster_set(&l, &r, item);
                }
                for d in self.dialogs_for(&local, &remote) {
                    self.notify(&d, Some("rejected"), now);
                    self.presence.watchers.remove(&d);
                }
            }
            PresenceKind::Subscription(SubscriptionRequest::Probe) => match item.watched_by {
                Sub::Active => self.send_local_presence(&local, &remote, now),
                Sub::Pending => {}
                Sub::None => {
                    let _ = self.route_stanza(
                        now,
                        presence(&local, &remote, Some("unsubscribed")),
                        None,
                    );
                }
            },
            PresenceKind::Available | PresenceKind::Unavailable => {
                self.presence.remote.insert(r.clone(), stanza);
                if item.watch == Sub::Active {
                    for d in self.dialogs_for(&local, &remote) {
                        self.notify(&d, None, now);
                    }
                }
            }
            PresenceKind::Error => self.presence_error(&stanza, &local, &remote, now),
        }
    }

    /// A presence error from an XMPP contact, or our own bounce of a stanza sent on
    /// a SIP user's behalf (a subscribe or probe that found no stream): the SIP
    /// user's watcher dialogs for that contact end, and a request the contact never
    /// saw stops being pending. An approved subscription stays: only `unsubscribed`
    /// revokes one (RFC 6121 §3.2). Nothing is sent to XMPP, so an error never
    /// answers an error.
    fn presence_error(&mut self, stanza: &Element, local: &Jid, remote: &Jid, now: Instant) {
        let condition = crate::translate::error::stanza_error_condition(stanza);
        let error_type = stanza
            .find(ns::SERVER, "error")
            .and_then(|e| e.get_attr("type"))
            .unwrap_or_else(|| crate::translate::error::error_type(condition));
        // RFC 6665 §4.2.2: `probation` asks the client to come back after
        // retry-after, right for a temporary failure; `rejected` says authorization
        // policy refused it; `noresource` says the watched resource cannot be had
        // (no such domain or user). The last two tell the client not to retry.
        let reason = match (error_type, condition) {
            ("wait", _) => format!("probation;retry-after={PROBATION_RETRY_AFTER}"),
            ("auth", _) | (_, "not-allowed") => "rejected".to_owned(),
            _ => "noresource".to_owned(),
        };
        let (l, r) = (local.to_string(), remote.to_string());
        let mut item = self.roster.get(&l, &r);
        if item.watch == Sub::Pending {
            item.watch = Sub::None;
            self.roster_set(&l, &r, item);
        }
        let dialogs = self.dialogs_for(local, remote);
        self.event(Event::Ignored {
            conn: super::ConnId(0),
            what: format!(
                "presence error from {remote} for {local} ({error_type}/{condition}); {} SIP watcher dialog(s) terminated with reason={reason}",
                dialogs.len()
            ),
        });
        for d in dialogs {
            self.notify(&d, Some(&reason), now);
            self.presence.watchers.remove(&d);
        }
    }

    /// The SIP user's last known presence, to a contact allowed to see it.
    fn send_local_presence(&mut self, local: &Jid, remote: &Jid, now: Instant) {
        let with_status = policy::sees_notes(&self.config, remote);
        let p = match self.presence.local.get(&local.to_string()) {
            Some(pidf) => pidf_to_presence(pidf, local, remote, with_status),
            None => presence(local, remote, Some("unavailable")),
        };
        let _ = self.route_stanza(now, p, None);
    }

    // ---- subscriber role: XMPP contacts watching SIP users -----------------------

    fn subscription_for(&self, local: &Jid, remote: &Jid) -> Option<String> {
        self.presence
            .subscriptions
            .iter()
            .find(|(_, s)| &s.local == local && &s.remote == remote)
            .map(|(k, _)| k.clone())
    }

    fn start_subscription(&mut self, local: &Jid, remote: &Jid, now: Instant) {
        if self.subscription_for(local, remote).is_some() {
            self.send_local_presence(local, remote, now);
            return;
        }
        let call_id = format!(
            "{}@{}",
            self.rng.hex(8),
            self.config.gateway.sip_address.ip()
        );
        let our_tag = self.rng.hex(6);
        let refresh_at = now + Duration::from_secs(MAX_EXPIRES * 4 / 5);
        let timer = PresenceTimer::Subscription(call_id.clone());
        self.presence.timers.push(refresh_at, timer);
        self.presence.subscriptions.insert(
            call_id.clone(),
            Subscription {
                local: local.clone(),
                remote: remote.clone(),
                our_tag,
                their_tag: None,
                cseq: 0,
                refresh_at,
            },
        );
        self.send_subscribe(&call_id, MAX_EXPIRES, now);
    }

    fn send_subscribe(&mut self, call_id: &str, expires: u64, now: Instant) {
        let Some(s) = self.presence.subscriptions.get_mut(call_id) else {
            return;
        };
        s.cseq += 1;
        let to = match &s.their_tag {
            Some(t) => format!("<{}>;tag={t}", jid_to_sip(&s.local)),
            None => format!("<{}>", jid_to_sip(&s.local)),
        };
        let request = SipMessage::request("SUBSCRIBE", &jid_to_sip(&s.local))
            .with(
                "From",
                &format!("<{}>;tag={}", jid_to_sip(&s.remote), s.our_tag),
            )
            .with("To", &to)
            .with("Call-ID", call_id)
            .with("CSeq", &format!("{} SUBSCRIBE", s.cseq))
            .with(
                "Contact",
                &format!("<sip:{}>", self.config.gateway.sip_address),
            )
            .with("Event", "presence")
            .with("Accept", "application/pidf+xml")
            .with("Expires", &expires.to_string());
        self.sip_request_out(request, Purpose::Subscribe(call_id.to_owned()), now);
    }

    fn end_subscription(&mut self, local: &Jid, remote: &Jid, now: Instant) {
        if let Some(call_id) = self.subscription_for(local, remote) {
            self.send_subscribe(&call_id, 0, now);
            self.presence.subscriptions.remove(&call_id);
        }
    }

    pub(super) fn subscribe_succeeded(
        &mut self,
        call_id: &str,
        response: &SipMessage,
        now: Instant,
    ) {
        let Some(s) = self.presence.subscriptions.get_mut(call_id) else {
            return;
        };
        if s.their_tag.is_none() {
            s.their_tag = response
                .header("To")
                .and_then(|t| NameAddr::parse(t).ok())
                .and_then(|t| t.tag().map(str::to_owned));
        }
        let granted = expires_of(response)
            .unwrap_or(MAX_EXPIRES)
            .clamp(MIN_EXPIRES, MAX_EXPIRES);
        s.refresh_at = now + Duration::from_secs(granted * 4 / 5);
        let timer = PresenceTimer::Subscription(call_id.to_owned());
        self.presence.timers.push(s.refresh_at, timer);
    }

    pub(super) fn subscribe_failed(&mut self, call_id: &str, code: u16, now: Instant) {
        let Some(s) = self.presence.subscriptions.remove(call_id) else {
            return;
        };
        // The contact sees the SIP user as offline until a later attempt works.
        let _ = self.route_stanza(
            now,
            presence(&s.local, &s.remote, Some("unavailable")),
            None,
        );
        self.event(Event::Ignored {
            conn: super::ConnId(0),
            what: format!(
                "SUBSCRIBE to {} for {} failed ({code}); trying again later",
                s.local, s.remote
            ),
        });
        self.presence
            .retries
            .push((now + RETRY_AFTER, s.local, s.remote));
    }

    /// A NOTIFY for one of our subscriptions.
    pub(super) fn sip_notify(&mut self, key: &ServerKey, msg: &SipMessage, now: Instant) {
        let call_id = msg.call_id().unwrap_or_default().to_owned();
        let Some(s) = self.presence.subscriptions.get_mut(&call_id) else {
            self.sip_answer(key, 481, "Subscription Does Not Exist", now);
            return;
        };
        if s.their_tag.is_none() {
            s.their_tag = msg
                .header("From")
                .and_then(|f| NameAddr::parse(f).ok())
                .and_then(|f| f.tag().map(str::to_owned));
        }
        let (local, remote) = (s.local.clone(), s.remote.clone());
        let state = msg
            .header("Subscription-State")
            .and_then(SubscriptionState::parse);
        let Some(state) = state else {
            self.sip_answer(
                key,
                400,
                "Bad Request (missing or unknown Subscription-State)",
                now,
            );
            return;
        };
        if !msg.body().is_empty() {
            match Pidf::parse(msg.body()) {
                Ok(pidf) => {
                    self.presence.local.insert(local.to_string(), pidf);
                }
                Err(e) => {
                    self.sip_answer(key, 400, &format!("Bad Request ({e})"), now);
                    return;
                }
            }
        }
        self.sip_answer(key, 200, "OK", now);
        let watched = self
            .roster
            .get(&local.to_string(), &remote.to_string())
            .watched_by
            == Sub::Active;
        match &state {
            SubscriptionState::Active | SubscriptionState::Pending => {
                if watched && !msg.body().is_empty() {
                    self.send_local_presence(&local, &remote, now);
                }
            }
            SubscriptionState::Terminated { reason } => {
                self.presence.subscriptions.remove(&call_id);
                match reason.as_deref() {
                    Some("rejected") | Some("noresource") => {
                        // The SIP side refuses for good: the contact hears it.
                        let (l, r) = (local.to_string(), remote.to_string());
                        let mut item = self.roster.get(&l, &r);
                        item.watched_by = Sub::None;
                        self.roster_set(&l, &r, item);
                        let _ = self.route_stanza(
                            now,
                            presence(&local, &remote, Some("unsubscribed")),
                            None,
                        );
                    }
                    _ => {
                        let _ = self.route_stanza(
                            now,
                            presence(&local, &remote, Some("unavailable")),
                            None,
                        );
                        if watched {
                            self.presence.retries.push((
                                now + Duration::from_secs(MIN_EXPIRES),
                                local,
                                remote,
                            ));
                        }
                    }
                }
            }
        }
    }

    // ---- timers -----------------------------------------------------------------

    pub(super) fn presence_next_deadline(&self) -> Option<Instant> {
        let r = self.presence.retries.iter().map(|(t, _, _)| *t);
        self.presence.timers.next().into_iter().chain(r).min()
    }

    pub(super) fn presence_timeouts(&mut self, now: Instant) {
        while let Some((_, timer)) = self.presence.timers.pop_due(now) {
            match timer {
                PresenceTimer::Watcher(d) => {
                    if self
                        .presence
                        .watchers
                        .get(&d)
                        .is_some_and(|w| w.expires_at <= now)
                    {
                        self.notify(&d, Some("timeout"), now);
                        self.presence.watchers.remove(&d);
                    }
                }
                PresenceTimer::Subscription(call_id) => {
                    let Some(s) = self.presence.subscriptions.get_mut(&call_id) else {
                        continue;
                    };
                    if s.refresh_at > now {
                        continue;
                    }
                    s.refresh_at = now + Duration::from_secs(MAX_EXPIRES * 4 / 5);
                    let timer = PresenceTimer::Subscription(call_id.clone());
                    self.presence.timers.push(s.refresh_at, timer);
                    self.send_subscribe(&call_id, MAX_EXPIRES, now);
                }
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.presence.retries)
            .into_iter()
            .partition(|(t, _, _)| *t <= now);
        self.presence.retries = later;
        for (_, local, remote) in due {
            if self
                .roster
                .get(&local.to_string(), &remote.to_string())
                .watched_by
                == Sub::Active
            {
                self.start_subscription(&local, &remote, now);
            }
        }
    }
}
