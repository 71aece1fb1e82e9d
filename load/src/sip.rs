//! The SIP side over UDP: the next hop (the gateway's `sip_next_hop`, which answers
//! every request with 200 and records MESSAGE deliveries) and the SIP peers that
//! send MESSAGE toward partner users, retransmitting as RFC 3261 non-INVITE client
//! transactions do (Timer E from T1 doubling to T2, Timer F at 64·T1).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_core::sip::{SipLimits, SipMessage};

use crate::ledger::{self, Dir, Ledger};
use crate::pace::Pacer;

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const TIMER_F: Duration = Duration::from_secs(32);

fn limits() -> SipLimits {
    SipLimits::default()
}

/// Answers every request from the gateway with 200; MESSAGE bodies are deliveries.
/// Returns when `stop` says so.
pub fn next_hop(sock: UdpSocket, ledger: Arc<Ledger>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut seen: HashSet<String> = HashSet::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(msg) = SipMessage::parse(&buf[..n], &limits()) else {
            ledger.unknown.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Some(method) = msg.method() else {
            continue;
        };
        let _ = sock.send_to(&msg.reply(200, "OK", Some("hop")).to_bytes(), from);
        // The same Via branch again is the gateway's transaction retransmitting
        // (our 200 came late or was lost), not a second delivery.
        let branch = msg.header("Via").unwrap_or_default().to_owned();
        if !seen.insert(branch) {
            ledger
                .gateway_retransmissions
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if method == "MESSAGE" {
            match ledger::parse_body(&String::from_utf8_lossy(msg.body())) {
                Some(id) => ledger.delivered(id),
                None => {
                    ledger.unknown.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

struct Tx {
    id: u64,
    bytes: Vec<u8>,
    first: Instant,
    next: Instant,
    interval: Duration,
}

pub struct Peer {
    pub index: usize,
    pub gateway: SocketAddr,
    /// Partner users, addressed in turn: `sip:load@<domain>`.
    pub targets: Vec<String>,
    pub pacer: Pacer,
    /// Most transactions in flight at once (only binding when the rate is unlimited
    /// or the gateway is slower than the offered rate).
    pub window: usize,
    /// Hard end: transactions still open then are counted as unanswered.
    pub give_up: Instant,
}

/// One SIP user agent: sends its share of messages, retransmits, records answers.
pub fn run_peer(p: Peer, sock: UdpSocket, ledger: Arc<Ledger>) -> Result<(), String> {
    let local = sock
        .local_addr()
        .map_err(|e| format!("SIP peer {}: {e}", p.index))?;
    let mut pacer = p.pacer;
    let mut inflight: HashMap<String, Tx> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut seq = 0u64;
    let mut last_scan = Instant::now();
    loop {
        let now = Instant::now();
        while inflight.len() < p.window && pacer.due(now) {
            let id = ledger.sent(Dir::ToXmpp);
            let target = &p.targets[(seq as usize) % p.targets.len()];
            let branch = format!("z9hG4bK-p{}-{seq}", p.index);
            let body = ledger::body(id);
            let text = format!(
                "MESSAGE sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice{}@sip.test>;tag=p{}\r\nTo: <sip:{target}>\r\nCall-ID: load-{}-{seq}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
                p.index, p.index, p.index, body.len()
            );
            seq += 1;
            let bytes = text.into_bytes();
            let _ = sock.send_to(&bytes, p.gateway);
            inflight.insert(
                branch,
                Tx {
                    id,
                    bytes,
                    first: now,
                    next: now + T1,
                    interval: T1,
                },
            );
        }
        if now.duration_since(last_scan) >= Duration::from_millis(20) {
            last_scan = now;
            inflight.retain(|_, tx| {
                if now.duration_since(tx.first) >= TIMER_F {
                    ledger.peer_unanswered.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                if now >= tx.next {
                    let _ = sock.send_to(&tx.bytes, p.gateway);
                    ledger.peer_retransmissions.fetch_add(1, Ordering::Relaxed);
                    tx.interval = (tx.interval * 2).min(T2);
                    tx.next = now + tx.interval;
                }
                true
            });
        }
        if pacer.finished() && inflight.is_empty() {
            return Ok(());
        }
        if now >= p.give_up {
            ledger
                .peer_unanswered
                .fetch_add(inflight.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        let wait = pacer
            .next_at()
            .filter(|_| inflight.len() < p.window)
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(5))
            .clamp(Duration::from_micros(200), Duration::from_millis(5));
        let _ = sock.set_read_timeout(Some(wait));
        // Drain what has arrived; the first read waits at most `wait`.
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let _ = sock.set_nonblocking(true);
            let Ok(msg) = SipMessage::parse(&buf[..n], &limits()) else {
                continue;
            };
            let Some(code) = msg.status() else {
                continue;
            };
            let branch = msg
                .header("Via")
                .and_then(|v| v.split(";branch=").nth(1))
                .map(|b| b.split(';').next().unwrap_or(b).trim().to_owned())
                .unwrap_or_default();
            if code < 200 {
                // Proceeding: retransmit at T2 from now on (RFC 3261 §17.1.2.2).
                if let Some(tx) = inflight.get_mut(&branch) {
                    tx.interval = T2;
                }
                continue;
            }
            if let Some(tx) = inflight.remove(&branch) {
                ledger.answered(tx.id, code, msg.header("Retry-After").is_some());
            }
        }
        let _ = sock.set_nonblocking(false);
    }
}
