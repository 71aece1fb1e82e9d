//! Every message the tool sends, and what became of it: delivered (how often,
//! when first), refused by the gateway (the SIP code or an XMPP error), or nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Sent on an XMPP stream (partner stream or Prosody client), delivered as SIP.
    ToSip,
    /// Sent by a SIP peer, delivered on an XMPP stream.
    ToXmpp,
}

struct Rec {
    dir: Dir,
    sent: Instant,
    delivered: u32,
    first_delivery: Option<Instant>,
    /// Final SIP status at the sending peer, or 0 for an XMPP error stanza.
    answer: Option<u16>,
    retry_after: bool,
}

#[derive(Default)]
pub struct Ledger {
    next: AtomicU64,
    recs: Mutex<HashMap<u64, Rec>>,
    /// SIP requests received again with a branch already seen (next hop side).
    pub gateway_retransmissions: AtomicU64,
    /// Requests our SIP peers sent again because no final response came in time.
    pub peer_retransmissions: AtomicU64,
    /// SIP client transactions that got no final response before the end.
    pub peer_unanswered: AtomicU64,
    /// Bodies the tool could not attribute to a message it sent.
    pub unknown: AtomicU64,
}

/// The text every message carries; its id is what receivers look for.
pub fn body(id: u64) -> String {
    format!("load L{id} the quick brown fox jumps over the lazy dog")
}

/// SIPp numbers its calls from 1 and writes `S<call number>`: ids from here up.
pub const SIPP_BASE: u64 = 1 << 40;

pub fn parse_body(text: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    if words.next()? != "load" {
        return None;
    }
    let word = words.next()?;
    match word.strip_prefix('S') {
        Some(n) => Some(SIPP_BASE + n.parse::<u64>().ok()?),
        None => word.strip_prefix('L')?.parse().ok(),
    }
}

pub fn parse_id(id: &str) -> Option<u64> {
    id.strip_prefix('L')?.parse().ok()
}

impl Ledger {
    pub fn sent(&self, dir: Dir) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Rec {
                dir,
                sent: Instant::now(),
                delivered: 0,
                first_delivery: None,
                answer: None,
                retry_after: false,
            },
        );
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Rec>> {
        // A panicking thread leaves the map consistent (single inserts and updates).
        self.recs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message another program sends (SIPp), expected at `at`.
    pub fn expect(&self, id: u64, dir: Dir, at: Instant) {
        self.lock().insert(
            id,
            Rec {
                dir,
                sent: at,
                delivered: 0,
                first_delivery: None,
                answer: None,
                retry_after: false,
            },
        );
    }

    pub fn delivered(&self, id: u64) {
        let now = Instant::now();
        match self.lock().get_mut(&id) {
            Some(r) => {
                r.delivered += 1;
                r.first_delivery.get_or_insert(now);
            }
            None => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn answered(&self, id: u64, code: u16, retry_after: bool) {
        if let Some(r) = self.lock().get_mut(&id) {
            r.answer.get_or_insert(code);
            r.retry_after |= retry_after;
        }
    }

    /// Messages not yet delivered nor refused.
    pub fn outstanding(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| r.delivered == 0 && !matches!(r.answer, Some(c) if c >= 300 || c == 0))
            .count()
    }

    /// Forgets everything (after the warm-up).
    pub fn clear(&self) {
        self.lock().clear();
        for c in [
            &self.gateway_retransmissions,
            &self.peer_retransmissions,
            &self.peer_unanswered,
            &self.unknown,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub fn summary(&self, dir: Dir) -> Summary {
        let recs = self.lock();
        let mut s = Summary::default();
        let mut lat = Vec::new();
        for r in recs.values().filter(|r| r.dir == dir) {
            s.sent += 1;
            let refused = matches!(r.answer, Some(c) if c >= 300 || c == 0);
            if r.delivered > 0 {
                s.delivered += 1;
                s.duplicates += u64::from(r.delivered - 1);
                if refused {
                    s.delivered_but_refused += 1;
                }
            } else if refused {
                s.refused += 1;
                *s.codes.entry(r.answer.unwrap_or_default()).or_default() += 1;
                match r.answer {
                    Some(503) if r.retry_after => s.refused_503_retry_after += 1,
                    Some(503) => s.refused_503_bare += 1,
                    _ => s.refused_other += 1,
                }
            } else {
                s.lost += 1;
                if r.answer == Some(200) {
                    s.acknowledged_but_lost += 1;
                }
            }
            if let Some(t) = r.first_delivery {
                lat.push(t - r.sent);
                s.first_sent = Some(s.first_sent.map_or(r.sent, |f: Instant| f.min(r.sent)));
                s.last_delivery = Some(s.last_delivery.map_or(t, |l: Instant| l.max(t)));
            }
        }
        lat.sort();
        let pct = |p: f64| {
            if lat.is_empty() {
                Duration::ZERO
            } else {
                lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
            }
        };
        s.p50 = pct(0.50);
        s.p99 = pct(0.99);
        s.max = lat.last().copied().unwrap_or_default();
        s
    }
}

#[derive(Default, Debug)]
pub struct Summary {
    pub sent: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Lost although the sending SIP peer got 200: the worst kind.
    pub acknowledged_but_lost: u64,
    pub refused: u64,
    pub refused_503_retry_after: u64,
    pub refused_503_bare: u64,
    pub refused_other: u64,
    /// Every refusal by code (0: an XMPP error stanza).
    pub codes: std::collections::BTreeMap<u16, u64>,
    pub delivered_but_refused: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub first_sent: Option<Instant>,
    pub last_delivery: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_id() {
        assert_eq!(parse_body(&body(42)), Some(42));
        assert_eq!(parse_body("hello"), None);
        assert_eq!(parse_id("L7"), Some(7));
        assert_eq!(parse_body("load S3 from SIPp"), Some(SIPP_BASE + 3));
    }

    #[test]
    fn each_message_lands_in_one_bucket() {
        let l = Ledger::default();
        let a = l.sent(Dir::ToXmpp);
        let b = l.sent(Dir::ToXmpp);
        let c = l.sent(Dir::ToXmpp);
        let d = l.sent(Dir::ToXmpp);
        l.delivered(a);
        l.delivered(a);
        l.answered(b, 503, true);
        l.answered(c, 200, false);
        l.delivered(d);
        let s = l.summary(Dir::ToXmpp);
        assert_eq!((s.sent, s.delivered, s.duplicates), (4, 2, 1));
        assert_eq!(
            (s.refused_503_retry_after, s.lost, s.acknowledged_but_lost),
            (1, 1, 1)
        );
        assert_eq!(l.outstanding(), 1);
    }
}
