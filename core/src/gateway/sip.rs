//! The gateway's SIP side: SIP requests from SIP users become stanzas on s2s routes,
//! stanzas for SIP users become SIP requests through the configured next hop, and
//! each SIP transaction is answered with what happened on the XMPP side.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{error_reply, Event, Gateway, Output};
use crate::jid::Jid;
use crate::sip::message::MAX_FORWARDS;
use crate::sip::transaction::{ClientTransaction, ServerTransaction, Timers, TxAction};
use crate::sip::uri::ViaRef;
use crate::sip::{SipError, SipLimits, SipMessage, StartLine};
use crate::translate::error::sip_to_condition;
use crate::translate::message::{message_to_sip_between, sip_to_message_stanza};
use crate::xml::{ns, Element, Stanza};

/// Most SIP requests (either way) in progress: received and not yet answered, or
/// sent and not yet answered (past that, 503 rather than memory without bound).
/// Also the cap on presence dialogs.
pub(super) const MAX_SIP_STATE: usize = 10_000;

/// Most server transactions kept in all, answered ones included: on UDP an
/// answered transaction stays for Timer J (32 s) to absorb retransmissions, so
/// this bounds memory at high rates (about 6000 requests per second sustained)
/// while answered requests no longer count against `MAX_SIP_STATE`.
const MAX_SIP_RETAINED: usize = 200_000;

fn open(state: crate::sip::transaction::State) -> bool {
    use crate::sip::transaction::State;
    matches!(state, State::Trying | State::Proceeding)
}

/// Seconds a SIP client refused for want of capacity is asked to wait.
pub const RETRY_AFTER: &str = "5";

/// The answer to a SIP datagram that arrives while the gateway is too busy to take
/// it in: a request (other than ACK, which has no answer) gets 503 with
/// Retry-After, statelessly (RFC 3261 §8.2.6, §21.5.4); a response or unparsable
/// bytes get nothing. The To tag is derived from the request so that a
/// retransmission is answered alike.
///
/// It reads the head in place and copies the header lines a response repeats
/// (Via, From, To, Call-ID, CSeq, in any form) as they are: refusing must cost
/// far less than taking a request in, or refusals would eat the capacity the
/// gateway lacks.
pub fn overloaded_reply(datagram: &[u8]) -> Option<Vec<u8>> {
    let (head_end, _) = crate::sip::message::find_head_end(datagram)?;
    let head = datagram.get(..head_end)?;
    // Each line as the span of `head` it covers, its line break left out.
    let mut lines = head.split(|b| *b == b'\n').scan(0usize, |at, l| {
        let from = *at;
        *at += l.len() + 1;
        Some((from, from + l.strip_suffix(b"\r").unwrap_or(l).len()))
    });
    let (_, start_end) = lines.next()?;
    let mut start = head.get(..start_end)?.split(|b| *b == b' ');
    let method = start.next()?;
    let (Some(_uri), Some(b"SIP/2.0"), None) = (start.next(), start.next(), start.next()) else {
        return None;
    };
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b);
    if method.is_empty() || !method.iter().all(token) || method == b"ACK" {
        return None;
    }
    // (which of the five, span), in the request's order.
    let mut headers: Vec<(usize, (usize, usize))> = Vec::with_capacity(8);
    let mut copying = false;
    for (from, to) in lines {
        let line = head.get(from..to)?;
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // A folded continuation of the header before it.
            if let (true, Some((_, span))) = (copying, headers.last_mut()) {
                span.1 = to;
            }
            continue;
        }
        let colon = memchr::memchr(b':', line)?;
        // Only blanks may come between a name and its colon (HCOLON, RFC 3261
        // §25.1), as the parser reads it: a name that ends in another control
        // byte is not one of the five, and must not be copied.
        let mut name = line.get(..colon)?;
        while let [rest @ .., b' ' | b'\t'] = name {
            name = rest;
        }
        let which = [
            (&b"via"[..], &b"v"[..]),
            (b"from", b"f"),
            (b"to", b"t"),
            (b"call-id", b"i"),
            (b"cseq", b"cseq"),
        ]
        .iter()
        .position(|(long, short)| {
            name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
        });
        copying = which.is_some();
        if let Some(which) = which {
            headers.push((which, (from, to)));
        }
    }
    if !(0..5).all(|w| headers.iter().any(|(h, _)| *h == w)) {
        return None;
    }
    // What is repeated must make a response that parses: UTF-8, lines and
    // header count within the limits, and a CSeq of the request's method.
    let limits = crate::sip::SipLimits::default();
    std::str::from_utf8(head).ok()?;
    // Retry-After and Content-Length join what is repeated.
    if headers.len() + 2 > limits.max_headers
        || headers
            .iter()
            .any(|(_, (from, to))| to.saturating_sub(*from) > limits.max_line)
    {
        return None;
    }
    // The value of the first of header `which`, folded lines and all.
    let value = |which: usize| {
        headers
            .iter()
            .find(|(h, _)| *h == which)
            .and_then(|(_, (from, to))| head.get(*from..*to))
            .and_then(|l| l.get(memchr::memchr(b':', l)? + 1..))
    };
    let mut cseq = value(4)?
        .split(u8::is_ascii_whitespace)
        .filter(|t| !t.is_empty());
    let number = cseq
        .next()
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u32>().ok());
    if number.is_none() || cseq.next() != Some(method) {
        return None;
    }
    let seed = value(0).unwrap_or_default().trim_ascii();
    // As `format!("{:08x}", ...)` writes it, without the allocation.
    let tag = crate::rng::Hex::of(u64::from(fnv1a(seed) as u32) << 32, 4);
    let mut out = Vec::with_capacity(head.len() + 96);
    out.extend_from_slice(b"SIP/2.0 503 Service Unavailable (the gateway is overloaded)\r\n");
    for (which, (from, to)) in &headers {
        let line = head.get(*from..*to).unwrap_or_default();
        out.extend_from_slice(line);
        if *which == 2 && !crate::sip::message::has_tag(line) {
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(tag.as_str().as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Retry-After: ");
    out.extend_from_slice(RETRY_AFTER.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    (out.len() <= limits.max_head).then_some(out)
}

/// Requests an [`Admission`] remembers: at 10 000 requests a second, several
/// seconds of retransmission intervals (RFC 3261 Timer E doubles from 500 ms).
pub const ADMISSION_MEMORY: usize = 65_536;

/// What a runtime's SIP UDP reader remembers of the requests it handed to the
/// core, so that when the core is too busy it refuses new requests with
/// [`overloaded_reply`] but never a retransmission of one it handed over: the
/// core's server transaction answers that one, and a 503 to it would tell the
/// client its request failed although it is delivered.
#[derive(Default)]
pub struct Admission {
    keys: std::collections::HashSet<u64>,
    order: VecDeque<u64>,
}

impl Admission {
    /// The datagram goes to the core.
    pub fn admitted(&mut self, datagram: &[u8]) {
        let Some(key) = request_key(datagram) else {
            return;
        };
        if self.keys.insert(key) {
            self.order.push_back(key);
            if self.order.len() > ADMISSION_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
    }

    /// The core is too busy to take the datagram: the stateless 503 to send, or
    /// `None` (a response, an ACK, unparsable bytes, or a retransmission of a
    /// request the core has; the client retransmits again).
    pub fn refusal(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if request_key(datagram).is_some_and(|k| self.keys.contains(&k)) {
            return None;
        }
        overloaded_reply(datagram)
    }
}

/// A request's method and top Via branch (the first `branch=` in the message),
/// hashed: what a retransmission repeats (RFC 3261 §17.2.3). `None` for a
/// response or bytes without a method and a branch.
fn request_key(datagram: &[u8]) -> Option<u64> {
    if datagram.starts_with(b"SIP/2.0") {
        return None;
    }
    let method = datagram.get(..memchr::memchr(b' ', datagram)?)?;
    let at = memchr::memmem::find(datagram, b"branch=")? + 7;
    let rest = datagram.get(at..)?;
    let end = rest
        .iter()
        .position(|b| matches!(b, b';' | b',' | b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    let branch = rest.get(..end)?;
    Some(fnv1a(branch) ^ fnv1a(method).rotate_left(17))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The response to a request that could not be parsed or framed (RFC 3261
/// §18.3, §21.4.11, §21.5.13), built from the raw bytes: only a request whose
/// Via, From, To, Call-ID and CSeq are readable can be answered (§8.2.6.2). On a
/// stream the bytes may stop mid-header; only complete lines count then.
fn malformed_reply(bytes: &[u8], e: &SipError) -> Option<SipMessage> {
    let text = String::from_utf8_lossy(bytes);
    if text.starts_with("SIP/2.0") {
        // A response is never answered.
        return None;
    }
    let head = match text.find("\r\n\r\n") {
        Some(end) => text.get(..end)?,
        None => text.get(..text.rfind("\r\n")?)?,
    };
    let (code, reason) = e.response();
    let mut r = SipMessage::response(code, &reason);
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = crate::sip::message::canonical_name(name.trim());
        if matches!(name.as_str(), "Via" | "From" | "To" | "Call-ID" | "CSeq") {
            r.push_header(&name, value.trim());
        }
    }
    ["Via", "From", "To", "Call-ID", "CSeq"]
        .iter()
        .all(|h| r.header(h).is_some())
        .then_some(r)
}

/// Methods this gateway answers, for `Allow`.
const ALLOW: &str = "MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY";

/// An FxHash-style hasher for maps whose keys the gateway makes itself (its own
/// random branches, its connection ids), so none can be chosen to collide:
/// SipHash's resistance is not needed there and costs several times more per
/// lookup. Maps keyed by what peers send keep the default hasher, or hash with
/// it once and key by the result (the server transactions, [`ServerKey`]).
#[derive(Default)]
pub(super) struct OwnKeyHasher(u64);

impl OwnKeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for OwnKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(c.try_into().map_or(0, u64::from_le_bytes));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type OwnKeys = BuildHasherDefault<OwnKeyHasher>;

/// A client transaction's key (our branch), shared by its table entry and its
/// timer entries, so that neither copies it.
pub(super) type TxKey = Arc<str>;

/// A server transaction's key (branch, sent-by and method, RFC 3261 §17.2.3),
/// shared by its table entry, its timer entries and the stanza it waits on, with
/// its keyed hash. The hash is taken once, when the request is read: the answer
/// and Timer J find the transaction without hashing the text again.
#[derive(Clone, Debug)]
pub(super) struct ServerKey {
    hash: u64,
    text: Arc<str>,
}

impl ServerKey {
    fn new(text: &str, keyed: &RandomState) -> Self {
        ServerKey {
            hash: keyed.hash_one(text),
            text: Arc::from(text),
        }
    }
}

impl PartialEq for ServerKey {
    fn eq(&self, other: &Self) -> bool {
        // A timer's key is the transaction's own: no need to read the text.
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for ServerKey {}

impl PartialOrd for ServerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ServerKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl Hash for ServerKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// What a timer entry is for: a client or a server transaction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerOf {
    Client(TxKey),
    Server(ServerKey),
}

#[derive(Default)]
pub(super) struct SipState {
    /// Keyed by the peer's branch and sent-by, hashed with `keyed` (SipHash with
    /// random keys) when the request is read.
    /// Boxed: up to [`MAX_SIP_RETAINED`] are kept through Timer J, and a table
    /// grown for them should not hold a whole transaction in every free slot.
    server: HashMap<ServerKey, Box<ServerTx>, OwnKeys>,
    keyed: RandomState,
    /// Keyed by our own branches.
    /// Boxed, as `server` is.
    pub(super) client: HashMap<TxKey, Box<ClientTx>, OwnKeys>,
    /// SIP over TCP or TLS: each accepted connection's framing and TLS state.
    streams: HashMap<super::ConnId, SipStream, OwnKeys>,
    /// Transaction deadlines, earliest first: (when, sequence, client?, key). The
    /// sequence number makes deadlines that fall together fire in the order they
    /// were set, so simultaneous timeouts are reported in the order the requests
    /// went out. An entry may be stale (its transaction moved on or ended); that
    /// costs one empty wakeup, and keeps `poll_timeout` from walking every transaction.
    timers: super::deadlines::Deadlines<(u64, TimerOf)>,
    timer_seq: u64,
    /// Where a request's transaction key is written before it is shared.
    key_text: String,
    /// Our address as the requests we send write it.
    own: OwnAddress,
    /// Server transactions not yet answered with a final response.
    answering: usize,
    /// Client transactions not yet answered with a final response (or timed out).
    in_flight: usize,
    /// SIP stream deadlines, earliest first: at most about one live entry per
    /// connection (see `SipStream::scheduled`); entries for closed connections or
    /// superseded deadlines are dropped when they come up.
    stream_timers: super::deadlines::Deadlines<super::ConnId>,
}

impl SipState {
    /// How near the client side is to refusing new requests, in requests waiting
    /// for an answer: [`MAX_SIP_STATE`] of those, or [`MAX_SIP_RETAINED`]
    /// transactions kept in all, and requests are refused.
    pub(super) fn load(&self) -> usize {
        self.in_flight
            .max(self.client.len() / (MAX_SIP_RETAINED / MAX_SIP_STATE))
    }
}

/// The magic cookie every RFC 3261 branch starts with (§8.1.1.7).
const BRANCH_MAGIC: &str = "z9hG4bK";

/// Our SIP address as each request we send writes it, written once per address
/// rather than formatted for every request.
#[derive(Default)]
struct OwnAddress {
    of: Option<SocketAddr>,
    /// The top Via of the request being sent: `SIP/2.0/UDP {address};branch=z9hG4bK`,
    /// then the branch's random part.
    via: String,
    /// How much of `via` stays from one request to the next.
    via_prefix: usize,
    /// `@{ip}`, which ends our Call-IDs.
    call_id_host: String,
}

impl OwnAddress {
    /// Written afresh when the address changed (a reload).
    fn at(&mut self, addr: SocketAddr) -> &mut Self {
        if self.of != Some(addr) {
            self.via.clear();
            self.via.push_str("SIP/2.0/UDP ");
            push_socket_addr(&mut self.via, addr);
            self.via.push_str(";branch=");
            self.via.push_str(BRANCH_MAGIC);
            self.via_prefix = self.via.len();
            self.call_id_host.clear();
            self.call_id_host.push('@');
            push_ip(&mut self.call_id_host, addr.ip());
            self.of = Some(addr);
        }
        self
    }
}

/// How long a SIP stream may hold an unfinished message (or TLS handshake): the
/// span of a whole transaction (64·T1, Timer F, RFC 3261 §17.1.2.2). A client
/// whose request has not arrived by then has given up on it anyway.
pub const SIP_STREAM_PARTIAL_TIMEOUT: Duration = Duration::from_secs(32);

struct SipStream {
    decoder: crate::sip::StreamDecoder,
    tls: Option<rustls::Connection>,
    /// When bytes last arrived (CRLF keep-alives included, RFC 5626 §3.5.1).
    last_activity: Instant,
    /// When the unfinished message (or TLS handshake) now buffered began.
    partial_since: Option<Instant>,
    /// The deadline this connection has on the timer heap: a later deadline is
    /// not pushed (the earlier entry reschedules when it comes up), so traffic
    /// does not grow the heap.
    scheduled: Option<Instant>,
}

impl SipStream {
    /// When the connection is closed for want of progress; `true` when that is
    /// for an unfinished message rather than idleness.
    fn deadline(&self, idle: Duration) -> (Instant, bool) {
        let idle_at = self.last_activity + idle;
        match self.partial_since {
            Some(p) if p + SIP_STREAM_PARTIAL_TIMEOUT < idle_at => {
                (p + SIP_STREAM_PARTIAL_TIMEOUT, true)
            }
            _ => (idle_at, false),
        }
    }
}

/// Where a SIP request came from, and so where its responses go (RFC 3261 §18.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SipPeer {
    Udp(SocketAddr),
    /// The same TCP or TLS connection.
    Stream(super::ConnId),
}

struct ServerTx {
    key: ServerKey,
    tx: ServerTransaction,
    /// The request, shared with whoever is handling it, until the final
    /// response: a transaction waiting out Timer J keeps only what it sent.
    request: Option<Arc<SipMessage>>,
    peer: SipPeer,
    to_tag: crate::rng::Hex,
}

/// What a response did to a server transaction.
struct Responded {
    key: ServerKey,
    /// The bytes to send, unless the transaction takes no more responses.
    sent: Option<Vec<u8>>,
    peer: SipPeer,
    /// This was the final response.
    answered: bool,
    /// The transaction's next deadline (Timer J), if any.
    deadline: Option<Instant>,
}

impl ServerTx {
    fn respond(&mut self, resp: &SipMessage, now: Instant) -> Responded {
        match resp.status() {
            Some(code) => self.respond_bytes(code, resp.to_bytes(), now),
            // Not a response: nothing to send, and the transaction is as it was.
            None => Responded {
                key: self.key.clone(),
                sent: None,
                peer: self.peer,
                answered: false,
                deadline: self.tx.next_deadline(),
            },
        }
    }

    /// The final (or provisional) response `code` with nothing to add to the
    /// request's copied fields, written straight from the request.
    fn answer(&mut self, code: u16, reason: &str, now: Instant) -> Responded {
        let bytes = match &self.request {
            Some(r) => r.reply_bytes(code, reason, Some(self.to_tag.as_str())),
            None => SipMessage::response(code, reason).to_bytes(),
        };
        self.respond_bytes(code, bytes, now)
    }

    fn respond_bytes(&mut self, code: u16, bytes: Vec<u8>, now: Instant) -> Responded {
        let was_open = open(self.tx.state);
        let sent = self.tx.respond_bytes(code, bytes, now);
        let answered = was_open && !open(self.tx.state);
        if answered {
            // Only the response is needed from here on (retransmissions get it).
            self.request = None;
        }
        Responded {
            key: self.key.clone(),
            sent,
            peer: self.peer,
            answered,
            deadline: self.tx.next_deadline(),
        }
    }

    /// A response to the request with our To tag; once the final response has
    /// gone (and the request with it) one the transaction will not send anyway.
    fn reply(&self, code: u16, reason: &str) -> SipMessage {
        match &self.request {
            Some(r) => r.reply(code, reason, Some(self.to_tag.as_str())),
            None => SipMessage::response(code, reason),
        }
    }
}

/// Whether a request may go toward the SIP side now.
enum Outbound {
    /// Yes, to the next hop, in the client transaction with this branch, carried
    /// by the Via now in [`OwnAddress::via`].
    Admitted { next_hop: SocketAddr, branch: TxKey },
    /// No: too many requests are waiting for an answer (the text says so).
    Refused(String),
    /// There is no SIP side to send to.
    NoNextHop,
}

pub(super) struct ClientTx {
    key: TxKey,
    pub(super) tx: ClientTransaction,
    pub(super) purpose: Purpose,
}

/// Why we sent a request, to know what its answer means.
#[derive(Clone)]
pub(super) enum Purpose {
    /// A MESSAGE carrying this stanza; a failure goes back to its sender.
    Message(Stanza),
    /// A MESSAGE telling a SIP user about an XMPP error: nothing to report back.
    Notice,
    /// A NOTIFY in the watcher dialog with this key.
    Notify(String),
    /// A SUBSCRIBE for our subscription with this Call-ID.
    Subscribe(String),
}

/// The server-transaction key (RFC 3261 §17.2.3): top Via branch, sent-by, method.
/// Appends an address as its `Display` writes it; IPv4 without the formatting
/// machinery.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_ipv4(out: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, u32::from(octet));
    }
}

/// Appends a socket address as its `Display` writes it; IPv4 without the
/// formatting machinery.
fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            push_ipv4(out, *v4.ip());
            out.push(':');
            push_decimal(out, u32::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn push_decimal(out: &mut String, n: u32) {
    let mut div = 1;
    while div <= n / 10 {
        div *= 10;
    }
    loop {
        out.push(char::from(b'0' + (n / div % 10) as u8));
        if div == 1 {
            break;
        }
        div /= 10;
    }
}

/// A stanza's `from` and `to`, when both are there and valid.
fn addresses_of(stanza: &Stanza) -> Option<(Jid, Jid)> {
    let from = stanza.get_attr("from").and_then(|f| Jid::parse(f).ok());
    let to = stanza.get_attr("to").and_then(|t| Jid::parse(t).ok());
    Some((from?, to?))
}

fn server_key(msg: &SipMessage, key: &mut String, keyed: &RandomState) -> Option<ServerKey> {
    let via = ViaRef::parse(msg.top_via()?).ok()?;
    let method = match msg.method()? {
        // An ACK or CANCEL belongs to the INVITE transaction it refers to.
        "ACK" | "CANCEL" => "INVITE",
        m => m,
    };
    let branch = via.branch()?;
    // "{branch}|{host}:{port}|{method}"
    key.clear();
    key.push_str(branch);
    key.push('|');
    key.push_str(via.host);
    key.push(':');
    push_decimal(key, u32::from(via.port.unwrap_or(5060)));
    key.push('|');
    key.push_str(method);
    Some(ServerKey::new(key, keyed))
}

impl Gateway {
    /// Records that SIP user `local` added XMPP contact `remote` (as a SIP client's
    /// SUBSCRIBE does), which the partner-type policy consults.
    pub fn add_contact(&mut self, local: &Jid, remote: &Jid) {
        let (l, r) = (local.bare_str(), remote.bare_str());
        let mut item = self.roster.get(l, r);
        if item.watch == crate::roster::Sub::None {
            item.watch = crate::roster::Sub::Pending;
        }
        self.roster_set(l, r, item);
    }

    pub(super) fn contact_added(&self, local: &Jid, remote: &Jid) -> bool {
        self.roster
            .get(local.bare_str(), remote.bare_str())
            .contact_added()
    }

    /// Changes the durable state; the persist output precedes whatever follows.
    pub(super) fn roster_set(&mut self, local: &str, remote: &str, item: crate::roster::Item) {
        if let Some(p) = self.roster.set(local, remote, item) {
            self.out.push(Output::Persist(p));
        }
    }

    /// Sends a request toward the SIP side in a new client transaction.
    pub(super) fn sip_request_out(
        &mut self,
        mut request: SipMessage,
        purpose: Purpose,
        now: Instant,
    ) {
        let (next_hop, branch) = match self.sip_admit() {
            Outbound::Admitted { next_hop, branch } => (next_hop, branch),
            Outbound::Refused(text) => {
                self.purpose_failed(&purpose, 503, "resource-constraint", &text, now);
                return;
            }
            Outbound::NoNextHop => return,
        };
        request.insert_header(0, "Via", &self.sip.own.via);
        if request.known_value(MAX_FORWARDS).is_none() {
            request.push_header("Max-Forwards", "70");
        }
        self.sip_request_send(next_hop, branch, request.to_bytes(), purpose, now);
    }

    /// Whether a new request may go toward the SIP side; if so, its branch and the
    /// Via that carries it. Admitted, it counts as in flight.
    fn sip_admit(&mut self) -> Outbound {
        let Some(next_hop) = self.config.gateway.sip_next_hop else {
            return Outbound::NoNextHop;
        };
        if self.sip.in_flight >= MAX_SIP_STATE || self.sip.client.len() >= MAX_SIP_RETAINED {
            // A next hop this far behind gets no more: what would have been sent is
            // refused now, rather than retransmitted into it or left to Timer F.
            return Outbound::Refused(format!(
                "more than {MAX_SIP_STATE} requests toward the SIP side are waiting for an answer"
            ));
        }
        self.sip.in_flight += 1;
        self.sip_load_changed();
        let own = self.sip.own.at(self.config.gateway.sip_address);
        own.via.truncate(own.via_prefix);
        self.rng.push_hex(&mut own.via, 8);
        let branch = own
            .via
            .get(own.via_prefix.saturating_sub(BRANCH_MAGIC.len())..)
            .unwrap_or_default();
        Outbound::Admitted {
            next_hop,
            branch: TxKey::from(branch),
        }
    }

    /// Sends an admitted request's bytes in a new client transaction.
    fn sip_request_send(
        &mut self,
        next_hop: SocketAddr,
        key: TxKey,
        bytes: Vec<u8>,
        purpose: Purpose,
        now: Instant,
    ) {
        let tx = ClientTransaction::begin(bytes, false, Timers::default(), now);
        // The first send, as `ClientTransaction::start` would ask for it.
        let bytes = tx.request().to_vec();
        if let Some(d) = tx.next_deadline() {
            self.sip_timer(d, TimerOf::Client(key.clone()));
        }
        self.sip
            .client
            .insert(key.clone(), Box::new(ClientTx { key, tx, purpose }));
        self.out.push(Output::SipSend {
            to: next_hop,
            bytes,
        });
    }

    /// Puts a client transaction's next deadline on the timer heap.
    fn sip_schedule(&mut self, key: &str) {
        let next = self
            .sip
            .client
            .get(key)
            .and_then(|c| Some((c.tx.next_deadline()?, c.key.clone())));
        if let Some((d, key)) = next {
            self.sip_timer(d, TimerOf::Client(key));
        }
    }

    /// Puts a transaction's deadline on the timer heap.
    fn sip_timer(&mut self, at: Instant, of: TimerOf) {
        self.sip.timer_seq += 1;
        let seq = self.sip.timer_seq;
        self.sip.timers.push(at, (seq, of));
    }

    fn sip_send(&mut self, to: SocketAddr, msg: &SipMessage) {
        self.out.push(Output::SipSend {
            to,
            bytes: msg.to_bytes(),
        });
    }

    /// Sends to where a request came from: the datagram's source, or its connection.
    fn sip_reply(&mut self, peer: SipPeer, msg: &SipMessage) {
        self.sip_reply_bytes(peer, msg.to_bytes());
    }

    /// [`Gateway::sip_reply`] for a message already written.
    fn sip_reply_bytes(&mut self, peer: SipPeer, bytes: Vec<u8>) {
        match peer {
            SipPeer::Udp(to) => self.out.push(Output::SipSend { to, bytes }),
            SipPeer::Stream(conn) => {
                match self.sip.streams.get_mut(&conn).and_then(|s| s.tls.as_mut()) {
                    Some(tls) => {
                        use std::io::Write;
                        let _ = tls.writer().write_all(&bytes);
                        let mut out = Vec::new();
                        while tls.wants_write() {
                            if tls.write_tls(&mut out).is_err() {
                                break;
                            }
                        }
                        self.out.push(Output::Transmit { conn, bytes: out });
                    }
                    None => self.out.push(Output::Transmit { conn, bytes }),
                }
            }
        }
    }

    /// A SIP client connected to our SIP port over TCP (`tls` false) or TLS.
    pub fn sip_accept(&mut self, now: Instant, tls: bool) -> super::ConnId {
        self.set_clock(now);
        let conn = self.alloc();
        let tls = if tls {
            self.tls
                .as_ref()
                .and_then(|t| t.server().ok())
                .map(rustls::Connection::from)
        } else {
            None
        };
        // A TLS handshake counts as an unfinished message from the start.
        let partial_since = tls.as_ref().map(|_| now);
        self.sip.streams.insert(
            conn,
            SipStream {
                decoder: crate::sip::StreamDecoder::new(SipLimits::default()),
                tls,
                last_activity: now,
                partial_since,
                scheduled: None,
            },
        );
        self.sip_stream_schedule(conn);
        conn
    }

    /// Puts a SIP stream's deadline on the timer heap if it is earlier than the
    /// one already there.
    fn sip_stream_schedule(&mut self, conn: super::ConnId) {
        let idle = self.config.gateway.stream_inactivity_timeout;
        let Some(s) = self.sip.streams.get_mut(&conn) else {
            return;
        };
        let (d, _) = s.deadline(idle);
        self.sip.stream_timers.schedule(&mut s.scheduled, d, conn);
    }

    /// Every SIP stream's deadline computed afresh (after a reload: the idle bound
    /// may have shortened).
    pub(super) fn sip_reschedule_streams(&mut self) {
        let conns: Vec<super::ConnId> = self.sip.streams.keys().copied().collect();
        for conn in conns {
            if let Some(s) = self.sip.streams.get_mut(&conn) {
                s.scheduled = None;
            }
            self.sip_stream_schedule(conn);
        }
    }

    /// Closes the SIP streams whose deadline has passed; reschedules the ones
    /// whose deadline moved later.
    fn sip_stream_timeouts(&mut self, now: Instant) {
        let idle = self.config.gateway.stream_inactivity_timeout;
        while let Some((at, conn)) = self.sip.stream_timers.pop_due(now) {
            let Some(s) = self.sip.streams.get_mut(&conn) else {
                continue;
            };
            if s.scheduled != Some(at) {
                continue;
            }
            s.scheduled = None;
            let (d, unfinished) = s.deadline(idle);
            if d <= now {
                let why = if unfinished {
                    format!(
                        "a message (or TLS handshake) left unfinished for {} s",
                        SIP_STREAM_PARTIAL_TIMEOUT.as_secs()
                    )
                } else {
                    format!("idle for {} s", idle.as_secs())
                };
                self.sip_stream_failed(conn, &why);
            } else {
                self.sip_stream_schedule(conn);
            }
        }
    }

    /// Bytes on a SIP stream connection.
    pub fn sip_received(&mut self, now: Instant, conn: super::ConnId, bytes: &[u8]) {
        self.set_clock(now);
        let Some(stream) = self.sip.streams.get_mut(&conn) else {
            return;
        };
        stream.last_activity = now;
        let mut plain = Vec::new();
        if let Some(tls) = stream.tls.as_mut() {
            use std::io::Read;
            let mut rest = bytes;
            let mut failed = None;
            while !rest.is_empty() {
                match tls.read_tls(&mut rest) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
                if let Err(e) = tls.process_new_packets() {
                    failed = Some(e.to_string());
                    break;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    plain.extend_from_slice(buf.get(..n).unwrap_or_default());
                }
            }
            let mut out = Vec::new();
            while tls.wants_write() {
                if tls.write_tls(&mut out).is_err() {
                    break;
                }
            }
            if !out.is_empty() {
                self.out.push(Output::Transmit { conn, bytes: out });
            }
            if let Some(e) = failed {
                self.sip_stream_failed(conn, &format!("TLS: {e}"));
                return;
            }
        } else {
            plain.extend_from_slice(bytes);
        }
        let Some(stream) = self.sip.streams.get_mut(&conn) else {
            return;
        };
        stream.decoder.push(&plain);
        let mut completed = false;
        loop {
            let next = match self.sip.streams.get_mut(&conn) {
                Some(s) => s.decoder.next_message(),
                None => return,
            };
            match next {
                Ok(Some(msg)) => {
                    completed = true;
                    match msg.start {
                        StartLine::Response { .. } => self.sip_response(msg, now),
                        StartLine::Request { .. } => {
                            self.sip_request(msg, SipPeer::Stream(conn), now)
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The framing is lost: answer if the request can be answered,
                    // then close (RFC 3261 §18.3).
                    let reply = self
                        .sip
                        .streams
                        .get(&conn)
                        .and_then(|s| malformed_reply(s.decoder.buffered(), &e));
                    let what = match &reply {
                        Some(r) => format!(
                            "SIP stream: {e}; answered {}",
                            r.status().unwrap_or_default()
                        ),
                        None => format!(
                            "SIP stream: {e}; not answered (no request with Via, From, To, Call-ID and CSeq to answer)"
                        ),
                    };
                    self.event(Event::Ignored { conn, what });
                    if let Some(r) = reply {
                        self.sip_reply(SipPeer::Stream(conn), &r);
                    }
                    self.sip_stream_failed(conn, &e.to_string());
                    return;
                }
            }
        }
        let Some(s) = self.sip.streams.get_mut(&conn) else {
            return;
        };
        let unfinished =
            s.decoder.buffered_len() > 0 || s.tls.as_ref().is_some_and(|t| t.is_handshaking());
        s.partial_since = match (unfinished, s.partial_since) {
            (false, _) => None,
            // A message finished in this read: what is left began a new one.
            (true, Some(since)) if !completed => Some(since),
            (true, _) => Some(now),
        };
        self.sip_stream_schedule(conn);
    }

    fn sip_stream_failed(&mut self, conn: super::ConnId, why: &str) {
        self.event(Event::Ignored {
            conn,
            what: format!("SIP connection closed: {why}"),
        });
        self.sip.streams.remove(&conn);
        self.out.push(Output::Close { conn });
    }

    /// A SIP stream connection closed.
    pub fn sip_closed(&mut self, now: Instant, conn: super::ConnId) {
        self.set_clock(now);
        self.sip.streams.remove(&conn);
    }

    /// A UDP datagram arrived on the SIP port.
    pub fn sip_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.set_clock(now);
        let msg = match SipMessage::parse(bytes, &SipLimits::default()) {
            Ok(m) => m,
            Err(e) => {
                self.sip_malformed(from, bytes, &e);
                return;
            }
        };
        match msg.start {
            StartLine::Response { .. } => self.sip_response(msg, now),
            StartLine::Request { .. } => self.sip_request(msg, SipPeer::Udp(from), now),
        }
    }

    /// Answers a malformed request with 400 (or 413/513) and its reason, where
    /// the headers a response needs can be found; anything else is logged and dropped.
    fn sip_malformed(&mut self, from: SocketAddr, bytes: &[u8], e: &SipError) {
        self.event(Event::Ignored {
            conn: super::ConnId(0),
            what: format!("SIP from {from}: {e}"),
        });
        if let Some(r) = malformed_reply(bytes, e) {
            self.sip_send(from, &r);
        }
    }

    fn sip_request(&mut self, msg: SipMessage, from: SipPeer, now: Instant) {
        if msg.method() == Some("ACK") {
            // ACKs for our final responses to INVITE end there (hop by hop).
            return;
        }
        let Some(key) = server_key(&msg, &mut self.sip.key_text, &self.sip.keyed) else {
            let reply = msg.reply(400, "Bad Request (Via without branch)", None);
            self.sip_reply(from, &reply);
            return;
        };
        let full = self.sip.answering >= MAX_SIP_STATE || self.sip.server.len() >= MAX_SIP_RETAINED;
        // One lookup tells a retransmission from a new request and, for a new
        // one, makes its place.
        let msg = match self.sip.server.entry(key.clone()) {
            Entry::Occupied(st) => {
                let again = st.get().tx.on_retransmission();
                let peer = st.get().peer;
                if let Some(bytes) = again {
                    self.sip_reply_bytes(peer, bytes);
                }
                return;
            }
            Entry::Vacant(slot) if !full => {
                self.sip.answering += 1;
                // The transaction answers from the request itself: no copy of it is made.
                let msg = Arc::new(msg);
                slot.insert(Box::new(ServerTx {
                    key: key.clone(),
                    // No retransmissions to absorb on TCP/TLS (RFC 3261 §17.2.2).
                    tx: ServerTransaction::new(
                        matches!(from, SipPeer::Stream(_)),
                        Timers::default(),
                    ),
                    request: Some(Arc::clone(&msg)),
                    peer: from,
                    to_tag: self.rng.hex_word(6),
                }));
                msg
            }
            Entry::Vacant(slot) => {
                // The table is let go before the refusal is sent.
                drop(slot);
                let mut reply = msg.reply(
                    503,
                    "Service Unavailable (too many requests in progress)",
                    None,
                );
                reply.push_header("Retry-After", RETRY_AFTER);
                self.sip_reply(from, &reply);
                return;
            }
        };
        match msg.method().unwrap_or_default() {
            "MESSAGE" => self.sip_message(&key, &msg, now),
            "OPTIONS" => {
                let mut resp = msg.reply(200, "OK", None);
                resp.push_header("Allow", ALLOW);
                resp.push_header("Accept", crate::translate::message::ACCEPTED_TYPES);
                self.sip_respond(&key, resp, now);
            }
            "INVITE" => self.sip_answer(
                &key,
                488,
                "Not Acceptable Here (isthmus carries page-mode MESSAGE; sessions are not supported)",
                now,
            ),
            "CANCEL" => self.sip_answer(&key, 481, "Call/Transaction Does Not Exist", now),
            "SUBSCRIBE" => self.sip_subscribe(&key, &msg, now),
            "NOTIFY" => self.sip_notify(&key, &msg, now),
            _ => {
                let mut resp = msg.reply(405, "Method Not Allowed", None);
                resp.push_header("Allow", ALLOW);
                self.sip_respond(&key, resp, now);
            }
        }
    }

    /// SIP MESSAGE from a SIP user: a `<message/>` toward the XMPP contact.
    fn sip_message(&mut self, key: &ServerKey, msg: &SipMessage, now: Instant) {
        let mut id = String::with_capacity(4 + 12);
        id.push_str("sip-");
        self.rng.push_hex(&mut id, 6);
        let stanza = match sip_to_message_stanza(msg, id) {
            Ok(s) => s,
            Err(r) => {
                self.sip_answer(key, r.code, &r.reason, now);
                return;
            }
        };
        if !self.config.serves(stanza.from.domain()) {
            let reason = format!(
                "Forbidden ({} is not a SIP domain this gateway serves)",
                stanza.from.domain()
            );
            self.sip_answer(key, 403, &reason, now);
            return;
        }
        if let Err(e) =
            self.route_stanza_between(now, super::Outgoing::Message(stanza), Some(key.clone()))
        {
            self.sip_answer(key, 400, &format!("Bad Request ({e})"), now);
        }
    }

    pub(super) fn sip_respond(&mut self, key: &ServerKey, resp: SipMessage, now: Instant) {
        let Some(st) = self.sip.server.get_mut(key) else {
            return;
        };
        let responded = st.respond(&resp, now);
        self.sip_responded(responded);
    }

    /// What follows a response on a server transaction, with the transaction
    /// looked up once by whoever built the response.
    fn sip_responded(&mut self, r: Responded) {
        if r.answered {
            self.sip.answering = self.sip.answering.saturating_sub(1);
        }
        if let Some(bytes) = r.sent {
            self.sip_reply_bytes(r.peer, bytes);
        }
        // Timer J, or (ended at once on TCP/TLS) a sweep at the next wakeup.
        let at = r.deadline.unwrap_or(self.start);
        self.sip_timer(at, TimerOf::Server(r.key));
    }

    /// Our To tag on a server transaction (the dialog's local tag).
    pub(super) fn server_to_tag(&self, key: &ServerKey) -> Option<String> {
        self.sip.server.get(key).map(|s| s.to_tag.to_string())
    }

    /// A response to a server transaction's request, with our To tag.
    pub(super) fn server_reply(&self, key: &ServerKey, code: u16, reason: &str) -> SipMessage {
        match self.sip.server.get(key) {
            Some(st) => st.reply(code, reason),
            None => SipMessage::response(code, reason),
        }
    }

    /// Sends the final response `code` on a server transaction.
    pub(super) fn sip_answer(&mut self, key: &ServerKey, code: u16, reason: &str, now: Instant) {
        let Some(st) = self.sip.server.get_mut(key) else {
            return;
        };
        let responded = st.answer(code, reason, now);
        self.sip_responded(responded);
    }

    /// Refuses a SIP request for want of capacity: 503 with Retry-After, so the
    /// client backs off rather than retransmitting (RFC 3261 §21.5.4).
    pub(super) fn sip_overloaded(&mut self, key: &ServerKey, text: &str, now: Instant) {
        let Some(st) = self.sip.server.get_mut(key) else {
            return;
        };
        let mut resp = st.reply(503, &format!("Service Unavailable ({text})"));
        resp.push_header("Retry-After", RETRY_AFTER);
        let responded = st.respond(&resp, now);
        self.sip_responded(responded);
    }

    /// A stanza for a user of a served domain.
    pub(super) fn deliver_local(&mut self, stanza: Element, now: Instant) {
        self.deliver_local_to(stanza.into(), None, now);
    }

    /// As [`Gateway::deliver_local`], with the stanza's `from` and `to` when the
    /// caller has parsed them already.
    pub(super) fn deliver_local_to(
        &mut self,
        stanza: Stanza,
        addresses: Option<(Jid, Jid)>,
        now: Instant,
    ) {
        if self.config.gateway.sip_next_hop.is_none() {
            self.out.push(Output::Deliver(stanza.into_element()));
            return;
        }
        match stanza.name() {
            "message" => {
                if let Some((from, to)) = addresses.or_else(|| addresses_of(&stanza)) {
                    self.message_to_sip_user(stanza, from, to, now);
                }
            }
            "presence" => {
                if let Some((from, to)) = addresses.or_else(|| addresses_of(&stanza)) {
                    self.xmpp_presence(stanza.into_element(), from, to, now);
                }
            }
            _ => {
                // SIP users answer no iq: RFC 6120 §8.5.3.1's service-unavailable.
                if let Some(reply) = error_reply(
                    &stanza.element(),
                    "service-unavailable",
                    "a SIP user cannot answer this request",
                ) {
                    if stanza.get_attr("type") != Some("result") {
                        let _ = self.route_stanza(now, reply, None);
                    }
                }
            }
        }
    }

    fn message_to_sip_user(&mut self, stanza: Stanza, from: Jid, to: Jid, now: Instant) {
        let is_error = stanza.get_attr("type") == Some("error");
        if !is_error {
            if let Err(refusal) =
                crate::policy::inbound_message(&self.config, &from, self.contact_added(&to, &from))
            {
                if let Some(reply) =
                    error_reply(&stanza.element(), refusal.condition, &refusal.text)
                {
                    let _ = self.route_stanza(now, reply, None);
                }
                return;
            }
        }
        let tag = self.rng.hex_word(6);
        let mut call_id = String::with_capacity(16 + 1 + 39);
        self.rng.push_hex(&mut call_id, 8);
        call_id.push_str(
            &self
                .sip
                .own
                .at(self.config.gateway.sip_address)
                .call_id_host,
        );
        // Our MESSAGE was already answered with 200 when an error comes back: tell
        // the SIP user in words.
        let notice;
        let source = if is_error {
            let tree = stanza.element();
            let condition = crate::translate::error::stanza_error_condition(&tree);
            notice = Stanza::from(
                Element::new(ns::SERVER, "message")
                    .attr("from", &from.to_string())
                    .attr("to", &to.to_string())
                    .child(Element::new(ns::SERVER, "body").text(&format!(
                        "Your message to {} could not be delivered ({condition}).",
                        from.bare()
                    ))),
            );
            &notice
        } else {
            &stanza
        };
        let request = match message_to_sip_between(source, &from, &to, tag.as_str(), &call_id) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                self.event(Event::Ignored {
                    conn: super::ConnId(0),
                    what: format!("stanza for a SIP user: {e}"),
                });
                return;
            }
        };
        let outbound = self.sip_admit();
        let bytes = match &outbound {
            Outbound::Admitted { .. } => request.to_bytes(Some(&self.sip.own.via)),
            _ => Vec::new(),
        };
        // Written before the stanza moves into the transaction (kept for a bounce).
        drop(request);
        let purpose = if is_error {
            Purpose::Notice
        } else {
            Purpose::Message(stanza)
        };
        match outbound {
            Outbound::Admitted {
                next_hop, branch, ..
            } => self.sip_request_send(next_hop, branch, bytes, purpose, now),
            Outbound::Refused(text) => {
                self.purpose_failed(&purpose, 503, "resource-constraint", &text, now)
            }
            Outbound::NoNextHop => {}
        }
    }

    fn sip_response(&mut self, msg: SipMessage, now: Instant) {
        let Some(branch) = msg
            .top_via()
            .and_then(|v| ViaRef::parse(v).ok())
            .and_then(|v| v.branch())
        else {
            return;
        };
        let Some(ct) = self.sip.client.get_mut(branch) else {
            self.event(Event::Ignored {
                conn: super::ConnId(0),
                what: format!("SIP response for no transaction of ours (branch {branch})"),
            });
            return;
        };
        let was_open = open(ct.tx.state);
        let for_us = ct.tx.on_response(&msg, now);
        let answered = was_open && !open(ct.tx.state);
        let next = ct.tx.next_deadline().map(|d| (d, ct.key.clone()));
        let code = msg.status().unwrap_or(0);
        // What the request was for, read in this one lookup. Once it is
        // answered, the stanza kept for a bounce need not wait out Timer K.
        let taken = (answered && matches!(ct.purpose, Purpose::Message(_)))
            .then(|| std::mem::replace(&mut ct.purpose, Purpose::Notice));
        let failed = (for_us && code >= 300).then(|| taken.unwrap_or_else(|| ct.purpose.clone()));
        let subscribed = match &ct.purpose {
            Purpose::Subscribe(call_id) if for_us && (200..300).contains(&code) => {
                Some(call_id.clone())
            }
            _ => None,
        };
        if answered {
            self.sip.in_flight = self.sip.in_flight.saturating_sub(1);
            self.sip_load_changed();
        }
        if let Some((d, key)) = next {
            self.sip_timer(d, TimerOf::Client(key));
        }
        if let Some(purpose) = failed {
            let reason = match &msg.start {
                StartLine::Response { reason, .. } => reason.as_ref(),
                StartLine::Request { .. } => "",
            };
            let text = format!("SIP {code} {reason}");
            self.purpose_failed(&purpose, code, sip_to_condition(code), &text, now);
        } else if let Some(call_id) = subscribed {
            self.subscribe_succeeded(&call_id, &msg, now);
        }
    }

    /// Our request toward a SIP user failed: the XMPP sender hears it as an error
    /// (`code` 0: no answer at all).
    fn sip_failed(&mut self, branch: &str, code: u16, text: &str, now: Instant) {
        let Some(purpose) = self.sip.client.get(branch).map(|ct| ct.purpose.clone()) else {
            return;
        };
        let condition = if code == 0 {
            "remote-server-timeout"
        } else {
            sip_to_condition(code)
        };
        self.purpose_failed(&purpose, code, condition, text, now);
    }

    /// What a failed (or refused) request toward the SIP side means for whoever
    /// it was sent for.
    fn purpose_failed(
        &mut self,
        purpose: &Purpose,
        code: u16,
        condition: &str,
        text: &str,
        now: Instant,
    ) {
        match purpose {
            Purpose::Message(stanza) => {
                if let Some(reply) = error_reply(&stanza.element(), condition, text) {
                    let _ = self.route_stanza(now, reply, None);
                }
            }
            Purpose::Notice => {}
            Purpose::Notify(key) => self.notify_failed(key, code),
            Purpose::Subscribe(call_id) => self.subscribe_failed(call_id, code, now),
        }
    }

    pub(super) fn sip_next_deadline(&self) -> Option<Instant> {
        self.sip
            .timers
            .next()
            .into_iter()
            .chain(self.sip.stream_timers.next())
            .chain(self.presence_next_deadline())
            .min()
    }

    /// Forgets a client transaction that has terminated; true if it had.
    fn sip_client_ended(&mut self, key: &str) -> bool {
        use crate::sip::transaction::State;
        let ended = self
            .sip
            .client
            .get(key)
            .is_some_and(|c| c.tx.state == State::Terminated);
        if ended {
            self.sip.client.remove(key);
            self.sip_load_changed();
        }
        ended
    }

    pub(super) fn sip_timeouts(&mut self, now: Instant) {
        use crate::sip::transaction::State;
        while let Some((_, (_, of))) = self.sip.timers.pop_due(now) {
            let key = match of {
                TimerOf::Client(key) => key,
                TimerOf::Server(key) => {
                    // One lookup: most of these are Timer J ending the transaction.
                    if let Entry::Occupied(mut st) = self.sip.server.entry(key) {
                        st.get_mut().tx.on_timeout(now);
                        if st.get().tx.state == State::Terminated {
                            st.remove();
                        }
                    }
                    continue;
                }
            };
            // One lookup per entry: most are stale (Timer E or F after the answer)
            // or Timer K ending the transaction, and the table is large under load.
            let Entry::Occupied(mut entry) = self.sip.client.entry(key) else {
                continue;
            };
            let c = entry.get_mut();
            if c.tx.next_deadline().is_none_or(|d| d > now) {
                // Stale: the transaction moved on (its new deadline is queued) or ended.
                if c.tx.state == State::Terminated {
                    entry.remove();
                    self.sip_load_changed();
                }
                continue;
            }
            let was_open = open(c.tx.state);
            let actions = c.tx.on_timeout(now);
            let answered = was_open && !open(c.tx.state);
            if answered {
                self.sip.in_flight = self.sip.in_flight.saturating_sub(1);
            }
            let mut timed_out = false;
            for a in actions {
                match a {
                    TxAction::Transmit(bytes) => {
                        if let Some(to) = self.config.gateway.sip_next_hop {
                            self.out.push(Output::SipSend { to, bytes });
                        }
                    }
                    TxAction::Timeout => timed_out = true,
                }
            }
            if !timed_out && entry.get().tx.state == State::Terminated {
                // Timer K: the common end, with nothing to report.
                entry.remove();
                self.sip_load_changed();
                continue;
            }
            let key = entry.get().key.clone();
            if answered {
                self.sip_load_changed();
            }
            if timed_out {
                self.sip_failed(&key, 0, "the SIP side did not answer within 32 s", now);
            }
            if !self.sip_client_ended(&key) {
                self.sip_schedule(&key);
            }
        }
        self.sip_stream_timeouts(now);
        self.presence_timeouts(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut rng = crate::rng::Rng::new(5);
        let mut addrs: Vec<SocketAddr> = vec![
            "0.0.0.0:0".parse().expect("addr"),
            "255.255.255.255:65535".parse().expect("addr"),
            "192.0.2.10:5060".parse().expect("addr"),
            "10.0.0.1:10".parse().expect("addr"),
            "[2001:db8::1]:5061".parse().expect("addr"),
            "[::ffff:192.0.2.1]:5060".parse().expect("addr"),
        ];
        for _ in 0..2000 {
            let n = rng.next_u64();
            let ip = Ipv4Addr::from((n >> 16) as u32);
            addrs.push(SocketAddr::from((ip, n as u16)));
        }
        for a in addrs {
            let mut s = String::new();
            push_socket_addr(&mut s, a);
            assert_eq!(s, a.to_string());
            let mut s = String::new();
            push_ip(&mut s, a.ip());
            assert_eq!(s, a.ip().to_string());
        }
    }

    #[test]
    fn our_address_is_written_afresh_when_it_changes() {
        let mut own = OwnAddress::default();
        for addr in [
            "192.0.2.1:5060",
            "192.0.2.1:5062",
            "[2001:db8::1]:5060",
            "192.0.2.1:5060",
        ] {
            let a: SocketAddr = addr.parse().expect("addr");
            let o = own.at(a);
            // What was appended for the last request is cut off, as sip_admit does.
            o.via.push_str("0123456789abcdef");
            assert_eq!(
                o.via.get(..o.via_prefix),
                Some(&*format!("SIP/2.0/UDP {a};branch=z9hG4bK"))
            );
            assert_eq!(o.call_id_host, format!("@{}", a.ip()));
            let again = own.at(a);
            again.via.truncate(again.via_prefix);
            assert_eq!(again.via, format!("SIP/2.0/UDP {a};branch=z9hG4bK"));
        }
    }

    #[test]
    fn push_hex_draws_as_hex_does() {
        for bytes in [0, 1, 6, 8, 9, 16] {
            let (mut a, mut b) = (crate::rng::Rng::new(9), crate::rng::Rng::new(9));
            let mut s = String::from("x");
            b.push_hex(&mut s, bytes);
            assert_eq!(s, format!("x{}", a.hex(bytes)));
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }
}
