//! The top-level sans-IO state machine: it owns every s2s connection, the outbound
//! routes with their stanza queues, dialback's verify connections and the timers.
//!
//! Contract (DESIGN.md): feed inputs (`accept`, `connected`, `received`, `resolved`,
//! `send_stanza`, `handle_timeout`, ...) with the current `Instant`; after each input,
//! drain `poll_output` until it returns `None`; sleep until `poll_timeout`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::{Config, Method, Negotiation, Partner, TlsMode};
use crate::jid::{normalize_domain, Jid};
use crate::rng::Rng;
use crate::s2s::dialback;
use crate::s2s::sasl;
pub use crate::s2s::stream::ConnId;
use crate::s2s::stream::{Conn, IngestError, Kind, PendingDialback, Phase, VerifyRequest};
use crate::s2s::tls::{CertCheck, TlsContext};
use crate::translate::message::MessageStanza;
use crate::xml::{ns, Element, Stanza, StanzaEvent, StreamHeader, StreamHeaderOut};

/// Most stanzas a route holds while its stream is being negotiated.
const MAX_QUEUED: usize = 1000;

/// Most plaintext bytes of waiting stanzas one drain of a congested stream writes.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// A SIP MESSAGE is answered within this time: before the SIP client's Timer F
/// (64·T1 = 32 s) runs out, even when the partner's stream is still not up.
const SIP_ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

mod deadlines;
mod output;
mod presence;
mod sip;

pub(crate) use output::Outq;
pub use output::{Output, Trace};
pub use sip::{overloaded_reply, Admission, ADMISSION_MEMORY, RETRY_AFTER};

/// Which way a stream runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// Who ended a negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// We closed the stream (the condition is the one we sent, or a local failure).
    Us,
    /// The peer sent this stream error, dialback answer or close.
    Peer,
}

/// Something worth logging or counting. The host logs these; tests assert on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Authenticated {
        conn: ConnId,
        direction: Direction,
        local: String,
        remote: String,
        method: Method,
        /// What the peer's certificate check said, when TLS was used.
        certificate: Option<String>,
    },
    /// A stream failed before or after authentication.
    Failed {
        conn: ConnId,
        kind: &'static str,
        local: String,
        remote: String,
        by: By,
        condition: String,
        text: String,
    },
    /// A stanza could not be delivered and was returned to its sender.
    Bounced {
        from: String,
        to: String,
        condition: &'static str,
    },
    /// Input that was not acted upon, such as an unsolicited dialback answer.
    Ignored {
        conn: ConnId,
        what: String,
    },
    Closed {
        conn: ConnId,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Authenticated {
                conn,
                direction,
                local,
                remote,
                method,
                certificate,
            } => {
                let arrow = match direction {
                    Direction::Outbound => "->",
                    Direction::Inbound => "<-",
                };
                write!(
                    f,
                    "{conn} {local} {arrow} {remote} authenticated by {method}"
                )?;
                if let Some(c) = certificate {
                    write!(f, " (peer certificate: {c})")?;
                }
                Ok(())
            }
            Event::Failed {
                conn,
                kind,
                local,
                remote,
                by,
                condition,
                text,
            } => {
                let who = match by {
                    By::Us => "we closed it with",
                    By::Peer => "the peer sent",
                };
                write!(
                    f,
                    "{conn} {kind} stream {local} / {remote} failed: {who} {condition}: {text}"
                )
            }
            Event::Bounced {
                from,
                to,
                condition,
            } => {
                write!(f, "stanza from {from} to {to} returned with {condition}")
            }
            Event::Ignored { conn, what } => write!(f, "{conn} ignored: {what}"),
            Event::Closed { conn } => write!(f, "{conn} closed"),
        }
    }
}

/// Why a stanza handed to `send_stanza` was refused at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// The stanza has no usable `from` or `to`.
    Addressing(String),
    /// `from` is not a domain this gateway serves.
    NotServed(String),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::Addressing(t) => write!(f, "stanza addressing: {t}"),
            RouteError::NotServed(d) => write!(f, "{d} is not a served domain"),
        }
    }
}

struct Route {
    conn: Option<ConnId>,
    queue: VecDeque<Queued>,
}

/// A route's (local, remote) domains: owned in the table, borrowed to look a
/// route up, so that finding one copies neither domain.
trait RouteKey {
    fn domains(&self) -> (&str, &str);
}

impl RouteKey for (String, String) {
    fn domains(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

impl RouteKey for (&str, &str) {
    fn domains(&self) -> (&str, &str) {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn RouteKey + 'a> for (String, String) {
    fn borrow(&self) -> &(dyn RouteKey + 'a) {
        self
    }
}

// As `(String, String)` hashes and compares, which `Borrow` requires.
impl std::hash::Hash for dyn RouteKey + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.domains().hash(h);
    }
}

impl PartialEq for dyn RouteKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.domains() == other.domains()
    }
}

impl Eq for dyn RouteKey + '_ {}

/// A stanza on its way to a partner: as read or built, with its parsed
/// addresses, or translated from SIP and not yet built, so that it can be
/// written straight onto a stream that is ready for it.
enum Outgoing<'a> {
    Element { stanza: Element, from: Jid, to: Jid },
    Message(MessageStanza<'a>),
}

impl Outgoing<'_> {
    fn addresses(&self) -> (&Jid, &Jid) {
        match self {
            Outgoing::Element { from, to, .. } => (from, to),
            Outgoing::Message(m) => (&m.from, &m.to),
        }
    }

    /// The stanza as an element, with its addresses.
    fn into_parts(self) -> (Element, Jid, Jid) {
        match self {
            Outgoing::Element { stanza, from, to } => (stanza, from, to),
            Outgoing::Message(m) => {
                let (from, to) = (m.from.clone(), m.to.clone());
                (m.into_element(), from, to)
            }
        }
    }
}

/// A stanza waiting for its route's stream to be authenticated.
struct Queued {
    stanza: Element,
    /// The SIP server transaction to answer once the stanza is written (or refused).
    sip: Option<sip::ServerKey>,
    /// SIP-originated stanzas must be answered before the SIP client's Timer F.
    deadline: Option<Instant>,
}

/// The gateway's federation engine.
pub struct Gateway {
    config: Config,
    tls: Option<TlsContext>,
    rng: Rng,
    secret: String,
    // Boxed: a connection is taken out and put back for every input it gets, and
    // a move (and the map's node shifting) should not copy its reader and TLS state.
    conns: BTreeMap<ConnId, Box<Conn>>,
    /// Connection deadlines, earliest first; see `put`.
    timers: deadlines::Deadlines<ConnId>,
    routes: HashMap<(String, String), Route>,
    /// Resolve query id → connection waiting for it.
    queries: HashMap<u64, ConnId>,
    next_id: u64,
    out: Outq,
    start: Instant,
    start_unix: u64,
    sip: sip::SipState,
    presence: presence::PresenceState,
    roster: crate::roster::Roster,
    intake: Intake,
}

/// Whether the gateway takes stanzas from partners in: not while the SIP side has
/// too many requests unanswered (see [`Output::Reading`]).
#[derive(Default)]
struct Intake {
    saturated: bool,
    /// Authenticated inbound streams told to stop reading.
    paused: std::collections::HashSet<ConnId>,
}

impl Gateway {
    /// `unix_secs` is the wall-clock time at `now`, for certificate validity; later
    /// wall-clock times are derived from the injected `Instant`s.
    pub fn new(
        config: Config,
        tls: Option<TlsContext>,
        seed: u64,
        now: Instant,
        unix_secs: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let secret = match &config.gateway.dialback_secret {
            Some(s) => s.clone(),
            None => rng.hex(32),
        };
        let gw = Gateway {
            config,
            tls,
            rng,
            secret,
            conns: BTreeMap::new(),
            timers: deadlines::Deadlines::default(),
            routes: HashMap::new(),
            queries: HashMap::new(),
            next_id: 1,
            out: Outq::default(),
            start: now,
            start_unix: unix_secs,
            sip: sip::SipState::default(),
            presence: presence::PresenceState::default(),
            roster: crate::roster::Roster::default(),
            intake: Intake::default(),
        };
        gw.set_clock(now);
        gw
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Loads the durable subscription state a host read back from its store.
    pub fn restore(&mut self, records: impl IntoIterator<Item = crate::roster::Persist>) {
        self.roster = crate::roster::Roster::restore(records);
    }

    /// The durable state of one (SIP user, XMPP contact) pair, by bare JIDs.
    pub fn roster_item(&self, local: &str, remote: &str) -> crate::roster::Item {
        self.roster.get(local, remote)
    }

    /// Graceful shutdown: every stream is closed with `<system-shutdown/>`, and every
    /// stanza still waiting is answered (bounced, or its SIP transaction refused)
    /// rather than lost. Drain the outputs afterwards, then stop.
    pub fn shutdown(&mut self, now: Instant) {
        self.set_clock(now);
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(mut c) = self.conns.remove(&id) else {
                continue;
            };
            if c.phase != Phase::Resolving && c.phase != Phase::Connecting {
                // A stream error needs our header first; a peer that never sent
                // its own just sees the connection close.
                if c.header_sent {
                    c.send_stream_error(
                        "system-shutdown",
                        "the gateway is shutting down",
                        &mut self.out,
                        now,
                    );
                }
                self.out.push(Output::Close { conn: id });
            }
            c.phase = Phase::Closed;
            self.finish_with(
                c,
                Some(("service-unavailable", "the gateway is shutting down".into())),
                now,
            );
        }
        let keys: Vec<(String, String)> = self.routes.keys().cloned().collect();
        for (local, remote) in keys {
            self.bounce_route(
                &local,
                &remote,
                "service-unavailable",
                "the gateway is shutting down",
                now,
            );
        }
        self.routes.clear();
    }

    /// Replaces the configuration; established streams stay up.
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
        // Timeouts may have shortened: every deadline is computed afresh.
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(mut c) = self.conns.remove(&id) {
                c.scheduled = None;
                self.put(c);
            }
        }
        self.sip_reschedule_streams();
    }

    /// Keeps a connection, with its next deadline on the timer heap. A deadline
    /// that moved later (traffic on the stream) leaves the earlier entry in place;
    /// it is found early at its time and rescheduled, so the heap holds about one
    /// entry per connection however busy the streams are.
    fn put(&mut self, mut c: Box<Conn>) {
        if let Some(d) = self.next_deadline(&c) {
            self.timers.schedule(&mut c.scheduled, d, c.id);
        }
        self.conns.insert(c.id, c);
    }

    fn route(&self, local: &str, remote: &str) -> Option<&Route> {
        self.routes.get(&(local, remote) as &dyn RouteKey)
    }

    fn route_mut(&mut self, local: &str, remote: &str) -> Option<&mut Route> {
        self.routes.get_mut(&(local, remote) as &dyn RouteKey)
    }

    /// Emits `Output::Trace` for every write, for transcripts.
    pub fn set_trace(&mut self, on: bool) {
        self.out.trace = on;
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.queue.pop_front()
    }

    /// The earliest deadline of any connection, waiting stanza or SIP transaction.
    /// It may be early (a connection's deadline moved later); never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Waiting stanzas are queued in arrival order, so the first with a
        // deadline has the earliest.
        let queued = self
            .routes
            .values()
            .filter_map(|r| r.queue.iter().find_map(|q| q.deadline));
        self.timers
            .next()
            .into_iter()
            .chain(queued)
            .chain(self.sip_next_deadline())
            .min()
    }

    /// Number of open connections (all kinds).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn set_clock(&self, now: Instant) {
        if let Some(tls) = &self.tls {
            let elapsed = now.saturating_duration_since(self.start).as_secs();
            tls.clock().set(self.start_unix.saturating_add(elapsed));
        }
    }

    fn alloc(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    fn new_stream_id(&mut self) -> String {
        self.rng.hex(8)
    }

    fn event(&mut self, e: Event) {
        self.out.push(Output::Event(e));
    }

    // ---- inputs -------------------------------------------------------------------

    /// A peer connected to our s2s port. Returns the handle for its bytes.
    pub fn accept(&mut self, now: Instant) -> ConnId {
        self.set_clock(now);
        let id = self.alloc();
        let mut c = Conn::boxed(
            id,
            Kind::Inbound,
            Phase::AwaitHeader,
            self.config.gateway.xml_limits,
            now,
        );
        c.establish_deadline = Some(now + self.config.gateway.stream_establishment_timeout);
        self.put(c);
        id
    }

    /// An outbound connection we asked for is established.
    pub fn connected(&mut self, now: Instant, conn: ConnId) {
        self.set_clock(now);
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        if c.phase == Phase::Connecting {
            c.phase = Phase::AwaitHeader;
            c.last_activity = now;
            let header = self.header_out(&c.local, &c.remote, None);
            c.send_header(&header, &mut self.out, now);
        }
        self.put(c);
    }

    /// An outbound connection attempt failed; the next address is tried.
    pub fn connect_failed(&mut self, now: Instant, conn: ConnId, reason: &str) {
        self.set_clock(now);
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(addr) = c.addrs.pop_front() {
            self.out.push(Output::Connect {
                conn,
                domain: c.remote.clone(),
                addr,
            });
            self.put(c);
            return;
        }
        let text = format!("could not connect to {}: {reason}", c.remote);
        self.fail(c, By::Us, "remote-connection-failed", &text, now, false);
    }

    /// The answer to an `Output::Resolve`.
    pub fn resolved(&mut self, now: Instant, query: u64, result: Result<Vec<SocketAddr>, String>) {
        self.set_clock(now);
        let Some(conn) = self.queries.remove(&query) else {
            return;
        };
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                c.addrs = addrs.into();
                c.phase = Phase::Connecting;
                if let Some(addr) = c.addrs.pop_front() {
                    self.out.push(Output::Connect {
                        conn,
                        domain: c.remote.clone(),
                        addr,
                    });
                }
                self.put(c);
            }
            Ok(_) => {
                let text = format!("no s2s address found for {}", c.remote);
                self.fail(c, By::Us, "remote-server-not-found", &text, now, false);
            }
            Err(e) => {
                let text = format!("DNS lookup of {} failed: {e}", c.remote);
                self.fail(c, By::Us, "remote-server-not-found", &text, now, false);
            }
        }
    }

    /// The peer closed the TCP connection (or it broke).
    pub fn peer_closed(&mut self, now: Instant, conn: ConnId) {
        self.set_clock(now);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.intake.paused.remove(&conn);
        if c.phase == Phase::Closed || (c.kind == Kind::Inbound && c.remote.is_empty()) {
            // Closed before saying who it is (a port probe, say): nothing to report.
            self.event(Event::Closed { conn });
            return;
        }
        let negotiated =
            c.phase == Phase::Ready || (c.kind == Kind::Inbound && c.is_authenticated());
        if negotiated {
            self.finish(c, now);
        } else {
            let text = format!("{} closed the connection during negotiation", peer_name(&c));
            self.fail(c, By::Peer, "connection-closed", &text, now, false);
        }
    }

    /// Bytes arrived on a connection.
    pub fn received(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.set_clock(now);
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        if c.phase == Phase::Closed {
            self.put(c);
            return;
        }
        match c.ingest(bytes, &mut self.out) {
            Ok(completed) => {
                if completed {
                    if let Err((cond, text)) = self.tls_completed(&mut c, now) {
                        self.close_with_error(c, &cond, &text, now);
                        return;
                    }
                }
            }
            Err(IngestError::Tls(e)) => {
                let text = format!("TLS with {} failed: {e}", peer_name(&c));
                // No plaintext retry after a failed TLS handshake (no silent downgrade).
                self.fail(c, By::Us, "tls-failed", &text, now, true);
                return;
            }
        }
        self.process(c, now);
        if self.intake.saturated {
            self.pause_reading(conn);
        }
    }

    /// While the SIP side is saturated, an authenticated inbound stream that
    /// delivers stanzas is told to stop reading; its partner waits on TCP.
    fn pause_reading(&mut self, conn: ConnId) {
        let carries_stanzas = self
            .conns
            .get(&conn)
            .is_some_and(|c| c.kind == Kind::Inbound && c.is_authenticated());
        if carries_stanzas && self.intake.paused.insert(conn) {
            self.out.push(Output::Reading { conn, on: false });
        }
    }

    /// The SIP side's load changed (requests waiting for an answer, transactions
    /// kept to absorb retransmissions). Past half the bound at which stanzas for
    /// the SIP side are refused, partners' streams stop being read, so that what
    /// is accepted can be forwarded; they are read again once it falls to a quarter.
    fn sip_load_changed(&mut self) {
        let waiting = self.sip.load();
        if !self.intake.saturated && waiting >= sip::MAX_SIP_STATE / 2 {
            self.intake.saturated = true;
        } else if self.intake.saturated && waiting <= sip::MAX_SIP_STATE / 4 {
            self.intake.saturated = false;
            let mut paused: Vec<ConnId> = self.intake.paused.drain().collect();
            paused.sort_unstable();
            for conn in paused {
                self.out.push(Output::Reading { conn, on: true });
            }
        }
    }

    /// Processes every complete XML event buffered on the connection.
    fn process(&mut self, mut c: Box<Conn>, now: Instant) {
        loop {
            if c.phase == Phase::Closed || c.phase == Phase::TlsHandshake {
                break;
            }
            let event = match c.reader.next_stanza_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    let text = format!("{} sent bad XML: {e}", peer_name(&c));
                    self.close_with_error(c, e.condition(), &text, now);
                    return;
                }
            };
            let result = match event {
                StanzaEvent::Header(h) => self.on_header(&mut c, h, now),
                StanzaEvent::Stanza(el) => self.on_element(&mut c, el, now),
                StanzaEvent::End => {
                    self.on_stream_end(c, now);
                    return;
                }
            };
            match result {
                Ok(Flow::Continue) => {}
                Ok(Flow::Closed) => return,
                Err((cond, text)) => {
                    self.close_with_error(c, &cond, &text, now);
                    return;
                }
            }
        }
        self.put(c);
    }

    /// Opens (or keeps) the outbound stream from `local` to `remote` without a
    /// stanza to carry, for `check --probe`: its events say how it authenticated
    /// or exactly why not.
    pub fn probe(&mut self, now: Instant, local: &str, remote: &str) {
        self.set_clock(now);
        if self.route(local, remote).and_then(|r| r.conn).is_some() {
            return;
        }
        self.routes.insert(
            (local.to_owned(), remote.to_owned()),
            Route {
                conn: None,
                queue: VecDeque::new(),
            },
        );
        self.open_route(local, remote, now);
    }

    /// Hands a stanza from a local user to the federation side.
    pub fn send_stanza(&mut self, now: Instant, stanza: Element) -> Result<(), RouteError> {
        self.set_clock(now);
        self.route_stanza(now, stanza, None)
    }

    /// Routes a stanza from a served domain toward its partner domain. `sip` is the
    /// SIP server transaction that carried it, answered once the stanza is written
    /// to an authenticated stream (200) or refused (a mapped failure).
    fn route_stanza(
        &mut self,
        now: Instant,
        stanza: Element,
        sip: Option<sip::ServerKey>,
    ) -> Result<(), RouteError> {
        let from = stanza
            .get_attr("from")
            .ok_or_else(|| RouteError::Addressing("no 'from'".into()))
            .and_then(|f| {
                Jid::parse(f).map_err(|e| RouteError::Addressing(format!("'from': {e}")))
            })?;
        let to = stanza
            .get_attr("to")
            .ok_or_else(|| RouteError::Addressing("no 'to'".into()))
            .and_then(|t| {
                Jid::parse(t).map_err(|e| RouteError::Addressing(format!("'to': {e}")))
            })?;
        self.route_stanza_between(now, Outgoing::Element { stanza, from, to }, sip)
    }

    /// As [`Gateway::route_stanza`], for a stanza whose `from` and `to` the caller
    /// has already parsed.
    fn route_stanza_between(
        &mut self,
        now: Instant,
        stanza: Outgoing<'_>,
        sip: Option<sip::ServerKey>,
    ) -> Result<(), RouteError> {
        let (from, to) = stanza.addresses();
        if !self.config.serves(from.domain()) {
            return Err(RouteError::NotServed(from.domain().to_owned()));
        }
        let deadline = sip.as_ref().map(|_| now + SIP_ANSWER_WITHIN);
        if self.config.serves(to.domain()) {
            // Both ends are ours: no federation needed.
            let (stanza, from, to) = stanza.into_parts();
            self.deliver_local_to(stanza.into(), Some((from, to)), now);
            self.sip_written(sip, now);
            return Ok(());
        }
        if let Err(refusal) = crate::policy::outbound(&self.config, to) {
            let queued = Queued {
                stanza: stanza.into_parts().0,
                sip,
                deadline,
            };
            self.bounce_queued(queued, refusal.condition, &refusal.text, now);
            return Ok(());
        }
        // One lookup, and no copy, for the common case: the route's stream is up.
        let (conn, waiting) = self
            .route(from.domain(), to.domain())
            .map_or((None, 0), |r| (r.conn, r.queue.len()));
        let ready = conn.filter(|id| {
            self.conns
                .get(id)
                .is_some_and(|c| c.phase == Phase::Ready && !c.congested)
        });
        if let Some(mut c) = ready.and_then(|id| self.conns.remove(&id)) {
            c.last_activity = now;
            match &stanza {
                Outgoing::Element { stanza, .. } => c.send(stanza, &mut self.out, now),
                Outgoing::Message(m) => c.send_written(|text| m.write(text), &mut self.out, now),
            };
            self.put(c);
            self.sip_written(sip, now);
            return Ok(());
        }
        let (stanza, from, to) = stanza.into_parts();
        let queued = Queued {
            stanza,
            sip,
            deadline,
        };
        let (local, remote) = (from.domain(), to.domain());
        if waiting >= MAX_QUEUED {
            let text =
                format!("more than {MAX_QUEUED} stanzas are waiting for the stream to {remote}");
            match queued.sip {
                // Past saturation the SIP client backs off instead of retransmitting.
                Some(key) => self.sip_overloaded(&key, &text, now),
                None => self.bounce_queued(queued, "resource-constraint", &text, now),
            }
            return Ok(());
        }
        let has_conn = conn.is_some_and(|id| self.conns.contains_key(&id));
        let key = (local.to_owned(), remote.to_owned());
        let route = self.routes.entry(key).or_insert_with(|| Route {
            conn: None,
            queue: VecDeque::new(),
        });
        route.queue.push_back(queued);
        if !has_conn {
            self.open_route(local, remote, now);
        }
        Ok(())
    }

    /// The host's send queue for `conn` went past its high-water mark (`true`) or
    /// drained below its low-water mark (`false`). While congested, stanzas for the
    /// stream wait in the route's bounded queue; once it drains they go out in order.
    ///
    /// A drain writes at most [`FLUSH_BYTES`] of waiting stanzas; the result says
    /// whether stanzas still wait (the connection stays congested, and the host
    /// calls again once that much has been written). Connections the gateway does
    /// not know, such as SIP streams, are never congested.
    pub fn set_congested(&mut self, now: Instant, conn: ConnId, congested: bool) -> bool {
        self.set_clock(now);
        let Some(mut c) = self.conns.remove(&conn) else {
            return false;
        };
        c.congested = congested;
        if !congested && c.phase == Phase::Ready {
            let mut written = 0;
            while written < FLUSH_BYTES {
                let next = match self.route_mut(&c.local, &c.remote) {
                    Some(r) if r.conn == Some(conn) => r.queue.pop_front(),
                    _ => None,
                };
                let Some(q) = next else { break };
                c.last_activity = now;
                written += c.send(&q.stanza, &mut self.out, now);
                self.stanza_written(q, now);
            }
            c.congested = self
                .route(&c.local, &c.remote)
                .is_some_and(|r| r.conn == Some(conn) && !r.queue.is_empty());
        }
        let still = c.congested;
        self.put(c);
        still
    }

    /// A stanza reached an authenticated stream (or a local user).
    fn stanza_written(&mut self, q: Queued, now: Instant) {
        self.sip_written(q.sip, now);
    }

    /// A stanza from SIP is on its stream (or delivered locally): its
    /// transaction hears 200.
    fn sip_written(&mut self, sip: Option<sip::ServerKey>, now: Instant) {
        if let Some(key) = sip {
            self.sip_answer(&key, 200, "OK", now);
        }
    }

    /// A stanza cannot be delivered: answer its SIP transaction with the mapped
    /// failure, or return it to its XMPP-side sender.
    fn bounce_queued(&mut self, q: Queued, condition: &'static str, text: &str, now: Instant) {
        match q.sip {
            Some(key) => {
                self.event(Event::Bounced {
                    from: q.stanza.get_attr("from").unwrap_or_default().to_owned(),
                    to: q.stanza.get_attr("to").unwrap_or_default().to_owned(),
                    condition,
                });
                let (code, phrase) = crate::translate::error::condition_to_sip(condition);
                self.sip_answer(&key, code, &format!("{phrase} ({text})"), now);
            }
            None => self.bounce(q.stanza, condition, text, now),
        }
    }

    /// Advances time: fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_clock(now);
        while let Some((_, id)) = self.timers.pop_due(now) {
            let Some(mut c) = self.conns.remove(&id) else {
                continue;
            };
            c.scheduled = None;
            if self.next_deadline(&c).is_some_and(|d| d <= now) {
                self.on_timers(c, now);
            } else {
                self.put(c);
            }
        }
        self.expire_queued(now);
        self.sip_timeouts(now);
    }

    /// SIP-originated stanzas still waiting at their deadline are refused, so the
    /// SIP client hears before its own transaction gives up.
    fn expire_queued(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let due = |q: &Queued| q.deadline.is_some_and(|d| d <= now);
        for ((_, remote), route) in self.routes.iter_mut() {
            // Called on every timeout: a queue with nothing due is left as it is,
            // found from its first deadline, the earliest (as `poll_timeout` reads
            // it), not by walking a queue that may hold `MAX_QUEUED`.
            if route
                .queue
                .iter()
                .find_map(|q| q.deadline)
                .is_none_or(|d| d > now)
            {
                continue;
            }
            let (late, keep): (VecDeque<Queued>, VecDeque<Queued>) =
                std::mem::take(&mut route.queue).into_iter().partition(due);
            route.queue = keep;
            expired.extend(late.into_iter().map(|q| (remote.clone(), q)));
        }
        for (remote, q) in expired {
            let text = format!(
                "no authenticated stream to {remote} within {} s",
                SIP_ANSWER_WITHIN.as_secs()
            );
            self.bounce_queued(q, "remote-server-timeout", &text, now);
        }
    }

    // ---- timers -------------------------------------------------------------------

    fn next_deadline(&self, c: &Conn) -> Option<Instant> {
        if c.phase == Phase::Closed || c.phase == Phase::Resolving || c.phase == Phase::Connecting {
            return c.establish_deadline;
        }
        let g = &self.config.gateway;
        let keep_alive = c.keep_alive.then(|| c.last_tx + g.keep_alive_interval);
        std::iter::once(c.last_activity + g.stream_inactivity_timeout)
            .chain(c.establish_deadline)
            .chain(keep_alive)
            .chain(c.pending.iter().map(|p| p.deadline))
            .min()
    }

    fn on_timers(&mut self, mut c: Box<Conn>, now: Instant) {
        let g = self.config.gateway.clone();
        if c.establish_deadline.is_some_and(|d| d <= now) {
            let text = match c.kind {
                Kind::Verify => format!(
                    "{} did not answer the dialback verification within {} s",
                    peer_name(&c),
                    g.dialback_verify_timeout.as_secs()
                ),
                _ => format!(
                    "stream with {} was not established within {} s (stream_establishment_timeout)",
                    peer_name(&c),
                    g.stream_establishment_timeout.as_secs()
                ),
            };
            if c.kind == Kind::Verify {
                self.fail_verify_requests(&mut c, "remote-server-timeout", &text, now);
            }
            match c.phase {
                Phase::Resolving | Phase::Connecting => {
                    self.fail(c, By::Us, "remote-server-timeout", &text, now, false)
                }
                _ => self.close_with_error(c, "connection-timeout", &text, now),
            }
            return;
        }
        // Dialback keys whose authoritative server did not answer in time.
        let (expired, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut c.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        c.pending = keep;
        for p in expired {
            let text = format!(
                "the authoritative server of {} did not answer within {} s",
                p.from,
                g.dialback_verify_timeout.as_secs()
            );
            let el = dialback::error(
                "result",
                &p.to,
                &p.from,
                None,
                "remote-server-timeout",
                &text,
            );
            c.send(&el, &mut self.out, now);
            // Its verify connection is of no use any more.
            self.drop_verify_requests(c.id, &p.from);
        }
        if c.last_activity + g.stream_inactivity_timeout <= now {
            let text = format!(
                "no traffic with {} for {} s (stream_inactivity_timeout)",
                peer_name(&c),
                g.stream_inactivity_timeout.as_secs()
            );
            self.close_quietly(c, "connection-timeout", &text, now);
            return;
        }
        if c.keep_alive && c.last_tx + g.keep_alive_interval <= now {
            c.send_keep_alive(&mut self.out, now);
        }
        self.put(c);
    }

    // ---- outbound -------------------------------------------------------------------

    fn open_route(&mut self, local: &str, remote: &str, now: Instant) {
        let id = self.open_outbound(Kind::Route, local, remote, now);
        if let Some(r) = self.route_mut(local, remote) {
            r.conn = id;
        }
        if id.is_none() {
            let text = format!(
                "connection limit reached ({} for partner, {} in all)",
                self.partner_limit(remote),
                self.config.gateway.connection_limit
            );
            self.bounce_route(local, remote, "resource-constraint", &text, now);
        }
    }

    fn partner_limit(&self, remote: &str) -> u32 {
        self.config
            .partner_for(remote)
            .and_then(|p| p.connection_limit)
            .unwrap_or(self.config.gateway.partner_connection_limit)
    }

    /// Whether one more connection with `remote` fits the gateway's and the partner's
    /// limits. The connection being handled is outside `conns` while it is handled.
    fn within_limits(&self, remote: &str) -> bool {
        if self.conns.len() >= self.config.gateway.connection_limit as usize {
            return false;
        }
        let Some(partner) = self.config.partner_for(remote) else {
            return true;
        };
        let count = self
            .conns
            .values()
            .filter(|c| partner.covers(&c.remote))
            .count();
        count < self.partner_limit(remote) as usize
    }

    fn open_outbound(
        &mut self,
        kind: Kind,
        local: &str,
        remote: &str,
        now: Instant,
    ) -> Option<ConnId> {
        if !self.within_limits(remote) {
            return None;
        }
        let id = self.alloc();
        let mut c = Conn::boxed(
            id,
            kind.clone(),
            Phase::Resolving,
            self.config.gateway.xml_limits,
            now,
        );
        c.local = local.to_owned();
        c.remote = remote.to_owned();
        let timeout = match kind {
            Kind::Verify => self.config.gateway.dialback_verify_timeout,
            _ => self.config.gateway.stream_establishment_timeout,
        };
        c.establish_deadline = Some(now + timeout);
        let target = self
            .config
            .partner_for(remote)
            .and_then(|p| p.proxy_fqdn.clone())
            .unwrap_or_else(|| remote.to_owned());
        let query = self.next_id;
        self.next_id += 1;
        self.queries.insert(query, id);
        self.put(c);
        self.out.push(Output::Resolve {
            query,
            domain: target,
        });
        Some(id)
    }

    fn header_out(&self, from: &str, to: &str, id: Option<String>) -> StreamHeaderOut {
        StreamHeaderOut {
            from: Some(from.to_owned()),
            to: Some(to.to_owned()),
            id,
            version: true,
            lang: None,
            default_ns: ns::SERVER.to_owned(),
            dialback: true,
        }
    }

    fn row_for(&self, remote: &str) -> Option<Negotiation> {
        self.config.partner_for(remote).map(|p| p.negotiation)
    }

    fn partner(&self, remote: &str) -> Option<&Partner> {
        self.config.partner_for(remote)
    }

    // ---- stream events ------------------------------------------------------------

    fn on_header(
        &mut self,
        c: &mut Conn,
        h: StreamHeader,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        if h.default_ns.as_deref() != Some(ns::SERVER) {
            return Err(err(
                "invalid-namespace",
                format!(
                    "the stream's default namespace must be 'jabber:server', not '{}'",
                    h.default_ns.as_deref().unwrap_or("")
                ),
            ));
        }
        if let Some(v) = h.version.as_deref() {
            let major = v
                .split('.')
                .next()
                .and_then(|m| m.trim().parse::<u32>().ok());
            if major != Some(1) {
                return Err(err(
                    "unsupported-version",
                    format!("stream version '{v}' is not supported; this gateway speaks 1.0"),
                ));
            }
        }
        c.peer_version = h.version.is_some();
        c.peer_dialback = h.dialback_declared;
        match c.kind {
            Kind::Inbound => self.inbound_header(c, h, now),
            Kind::Route | Kind::Verify => {
                if let Some(from) = h.from.as_deref() {
                    if normalize_domain(from).ok().as_deref() != Some(c.remote.as_str()) {
                        return Err(err(
                            "invalid-from",
                            format!(
                                "we opened a stream to {}, but the answer comes from {from}",
                                c.remote
                            ),
                        ));
                    }
                }
                c.stream_id = h.id.filter(|id| !id.is_empty());
                if c.peer_version {
                    c.phase = Phase::AwaitFeatures;
                    Ok(Flow::Continue)
                } else {
                    // A pre-1.0 peer sends no features: only dialback over TCP is possible.
                    self.choose_method(c, &Element::new(ns::STREAM, "features"), now)
                }
            }
        }
    }

    fn on_element(
        &mut self,
        c: &mut Conn,
        el: Stanza,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        if el.is(ns::STREAM, "error") {
            let (cond, text) = stream_error_parts(&el.element());
            return self.on_peer_stream_error(c, &cond, &text, now);
        }
        match c.kind {
            Kind::Inbound => self.inbound_element(c, el, now),
            Kind::Route | Kind::Verify => self.outbound_element(c, el.into_element(), now),
        }
    }

    fn on_peer_stream_error(
        &mut self,
        c: &mut Conn,
        cond: &str,
        text: &str,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        let mut owned = Conn::boxed(
            c.id,
            c.kind.clone(),
            Phase::Closed,
            self.config.gateway.xml_limits,
            now,
        );
        std::mem::swap(c, &mut owned);
        if owned.header_sent {
            owned.send_close(&mut self.out, now);
        }
        let text = if text.is_empty() {
            "(no text)".to_owned()
        } else {
            text.to_owned()
        };
        self.fail(owned, By::Peer, cond, &text, now, true);
        Ok(Flow::Closed)
    }

    fn on_stream_end(&mut self, mut c: Box<Conn>, now: Instant) {
        c.send_close(&mut self.out, now);
        let done = match c.kind {
            Kind::Route => c.phase == Phase::Ready,
            Kind::Inbound => c.is_authenticated() || c.served_verify,
            Kind::Verify => c.requests.is_empty(),
        };
        if done {
            self.out.push(Output::Close { conn: c.id });
            self.finish(c, now);
        } else {
            let text = format!("{} closed the stream during negotiation", peer_name(&c));
            self.fail(c, By::Peer, "stream-closed", &text, now, true);
        }
    }

    // ---- outbound negotiation -------------------------------------------------------

    fn outbound_element(
        &mut self,
        c: &mut Conn,
        el: Element,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        match c.phase {
            Phase::AwaitFeatures if el.is(ns::STREAM, "features") => {
                if c.sasl_done {
                    return self.route_ready(c, Method::SaslExternalOverTls, now);
                }
                self.choose_method(c, &el, now)
            }
            Phase::AwaitProceed if el.is(ns::TLS, "proceed") => {
                let Some(tls) = &self.tls else {
                    return Err(err(
                        "undefined-condition",
                        "TLS is not configured on this gateway".into(),
                    ));
                };
                let conn = tls
                    .client(&c.remote)
                    .map_err(|e| err("undefined-condition", format!("cannot start TLS: {e}")))?;
                self.begin_tls(c, conn.into(), now)
            }
            Phase::AwaitProceed if el.is(ns::TLS, "failure") => Err(err(
                "undefined-condition",
                format!(
                    "{} refused STARTTLS; TLS is never retried in plaintext",
                    c.remote
                ),
            )),
            Phase::AwaitSasl if el.is(ns::SASL, "success") => {
                c.sasl_done = true;
                c.reader.restart();
                c.phase = Phase::AwaitHeader;
                let header = self.header_out(&c.local, &c.remote, None);
                c.send_header(&header, &mut self.out, now);
                Ok(Flow::Continue)
            }
            Phase::AwaitSasl if el.is(ns::SASL, "failure") => {
                let reason = el
                    .elements()
                    .find(|e| e.name != "text")
                    .map_or_else(|| "failure".to_owned(), |e| e.name.to_string());
                let row = self.row_for(&c.remote).unwrap_or_default();
                if row.allows(Method::DialbackOverTls) && c.peer_dialback {
                    return self.start_dialback(c, now);
                }
                Err(err(
                    "policy-violation",
                    format!(
                        "{} refused SASL EXTERNAL ({reason}) and {} does not allow dialback over TLS",
                        c.remote,
                        row.label()
                    ),
                ))
            }
            _ if el.ns == ns::DIALBACK => self.outbound_dialback(c, el, now),
            _ => Err(err(
                "unsupported-stanza-type",
                format!(
                    "unexpected <{}/> from {} while {:?}",
                    el.name, c.remote, c.phase
                ),
            )),
        }
    }

    /// Picks the next step from the peer's features and our row for the partner.
    fn choose_method(
        &mut self,
        c: &mut Conn,
        features: &Element,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        let row = self.row_for(&c.remote).unwrap_or_default();
        let starttls = features.find(ns::TLS, "starttls");
        let peer_requires_tls = starttls.is_some_and(|s| s.find(ns::TLS, "required").is_some());
        let dialback_offered =
            c.peer_dialback || features.find(ns::DIALBACK_FEATURE, "dialback").is_some();
        if c.kind == Kind::Verify {
            // A verify-only stream needs no authentication; it takes TLS when the
            // authoritative server insists, or when our settings for the partner do:
            // a plaintext answer could come from whoever stripped STARTTLS.
            let wanted = peer_requires_tls || row.tls == TlsMode::Required;
            if wanted
                && row.tls != TlsMode::NotSupported
                && self.tls.is_some()
                && !c.tls_active()
                && starttls.is_some()
            {
                return self.send_starttls(c, now);
            }
            if row.tls == TlsMode::Required && !c.tls_active() {
                return Err(err(
                    "policy-violation",
                    format!(
                        "the authoritative server of {} does not offer STARTTLS, and our settings for it say {}; dialback keys are not checked in plaintext",
                        c.remote,
                        row.label()
                    ),
                ));
            }
            for r in c.requests.clone() {
                c.send(
                    &dialback::verify_request(&r.from, &r.to, &r.id, &r.key),
                    &mut self.out,
                    now,
                );
            }
            c.phase = Phase::AwaitVerify;
            return Ok(Flow::Continue);
        }
        if !c.tls_active() {
            if starttls.is_some() && row.tls != TlsMode::NotSupported && self.tls.is_some() {
                return self.send_starttls(c, now);
            }
            if peer_requires_tls {
                return Err(err(
                    "policy-violation",
                    format!(
                        "{} requires TLS, but our settings for it say {}; set tls = optional or required for this partner",
                        c.remote,
                        row.label()
                    ),
                ));
            }
            if row.tls == TlsMode::Required {
                return Err(err(
                    "policy-violation",
                    format!(
                        "{} does not offer STARTTLS, and our settings for it say {}",
                        c.remote,
                        row.label()
                    ),
                ));
            }
            if !row.allows(Method::DialbackOverTcp) || !dialback_offered {
                let mut why = Vec::new();
                if starttls.is_some() {
                    why.push(format!(
                        "{} offers STARTTLS, which {} excludes",
                        c.remote,
                        row.label()
                    ));
                } else {
                    why.push(format!("{} does not offer STARTTLS", c.remote));
                }
                if !row.allows(Method::DialbackOverTcp) {
                    why.push(format!("{} allows no dialback over plain TCP", row.label()));
                } else {
                    why.push(format!(
                        "{} does not offer dialback over plain TCP",
                        c.remote
                    ));
                }
                return Err(err(
                    "policy-violation",
                    format!("no authentication method left: {}", why.join("; ")),
                ));
            }
            return self.start_dialback(c, now);
        }
        // TLS is up.
        let cert_ok = matches!(c.peer_cert, Some(CertCheck::Valid { .. }));
        let external = features.find(ns::SASL, "mechanisms").is_some_and(|m| {
            m.elements()
                .any(|e| e.name == "mechanism" && e.text_content().trim() == "EXTERNAL")
        });
        if external && row.allows(Method::SaslExternalOverTls) && cert_ok {
            c.send(&sasl::auth(&c.local), &mut self.out, now);
            c.phase = Phase::AwaitSasl;
            return Ok(Flow::Continue);
        }
        if row.allows(Method::DialbackOverTls) && dialback_offered {
            return self.start_dialback(c, now);
        }
        let mut why = Vec::new();
        if !row.allows(Method::SaslExternalOverTls) {
            why.push(format!("SASL EXTERNAL is not allowed by {}", row.label()));
        } else if !cert_ok {
            why.push(format!(
                "the certificate of {} is not acceptable: {}",
                c.remote,
                cert_text(c.peer_cert.as_ref())
            ));
        } else if !external {
            why.push(format!(
                "{} does not offer SASL EXTERNAL (its settings for {} exclude it, or it did not accept our certificate)",
                c.remote, c.local
            ));
        }
        if !row.allows(Method::DialbackOverTls) {
            why.push(format!(
                "dialback over TLS is not allowed by {}",
                row.label()
            ));
        } else if !dialback_offered {
            why.push(format!("{} does not offer dialback", c.remote));
        }
        Err(err(
            "policy-violation",
            format!("no authentication method left: {}", why.join("; ")),
        ))
    }

    fn send_starttls(&mut self, c: &mut Conn, now: Instant) -> Result<Flow, (String, String)> {
        c.send(&Element::new(ns::TLS, "starttls"), &mut self.out, now);
        c.phase = Phase::AwaitProceed;
        Ok(Flow::Continue)
    }

    fn start_dialback(&mut self, c: &mut Conn, now: Instant) -> Result<Flow, (String, String)> {
        let Some(id) = c.stream_id.clone() else {
            return Err(err(
                "undefined-condition",
                format!("{} gave no stream id, which dialback needs", c.remote),
            ));
        };
        let key = dialback::key(&self.secret, &c.remote, &c.local, &id);
        c.send(
            &dialback::result_request(&c.local, &c.remote, &key),
            &mut self.out,
            now,
        );
        c.phase = Phase::AwaitDialback;
        Ok(Flow::Continue)
    }

    fn outbound_dialback(
        &mut self,
        c: &mut Conn,
        el: Element,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        let from = el.get_attr("from").unwrap_or_default().to_owned();
        let to = el.get_attr("to").unwrap_or_default().to_owned();
        let ty = el.get_attr("type").unwrap_or_default().to_owned();
        if el.name == "result"
            && c.kind == Kind::Route
            && c.phase == Phase::AwaitDialback
            && from == c.remote
            && to == c.local
        {
            let method = if c.tls_active() {
                Method::DialbackOverTls
            } else {
                Method::DialbackOverTcp
            };
            return match ty.as_str() {
                "valid" => self.route_ready(c, method, now),
                "invalid" => Err(err(
                    "not-authorized",
                    format!("{} answered our dialback key with 'invalid'", c.remote),
                )),
                "error" => {
                    let cond = dialback::error_condition(&el)
                        .unwrap_or_else(|| "undefined-condition".into());
                    Err(err(
                        "remote-connection-failed",
                        format!("{} could not check our dialback key: <{cond}/>", c.remote),
                    ))
                }
                _ => Err(err(
                    "bad-format",
                    format!("dialback result with type '{ty}'"),
                )),
            };
        }
        if el.name == "verify" && c.kind == Kind::Verify && c.phase == Phase::AwaitVerify {
            let id = el.get_attr("id").unwrap_or_default().to_owned();
            let pos = c
                .requests
                .iter()
                .position(|r| r.from == to && r.to == from && r.id == id);
            if let Some(pos) = pos {
                let req = c.requests.remove(pos);
                let answer = match ty.as_str() {
                    "valid" => Some(true),
                    "invalid" => Some(false),
                    _ => None,
                };
                self.verify_answered(&req, answer, dialback::error_condition(&el), now);
                if c.requests.is_empty() {
                    c.send_close(&mut self.out, now);
                    c.phase = Phase::Closed;
                    self.out.push(Output::Close { conn: c.id });
                    self.event(Event::Closed { conn: c.id });
                    return Ok(Flow::Closed);
                }
                return Ok(Flow::Continue);
            }
        }
        // XEP-0220: answers that match no request of ours are dropped, which defeats
        // the unsolicited-dialback attack.
        self.event(Event::Ignored {
            conn: c.id,
            what: format!(
                "unsolicited <db:{}/> from='{from}' to='{to}' type='{ty}'",
                el.name
            ),
        });
        Ok(Flow::Continue)
    }

    fn route_ready(
        &mut self,
        c: &mut Conn,
        method: Method,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        c.phase = Phase::Ready;
        c.method = Some(method);
        c.establish_deadline = None;
        c.last_activity = now;
        c.keep_alive = self.partner(&c.remote).is_some_and(|p| p.enable_keep_alive);
        let certificate = c.tls_active().then(|| cert_text(c.peer_cert.as_ref()));
        self.event(Event::Authenticated {
            conn: c.id,
            direction: Direction::Outbound,
            local: c.local.clone(),
            remote: c.remote.clone(),
            method,
            certificate,
        });
        if let Some(route) = self.route_mut(&c.local, &c.remote) {
            let queue = std::mem::take(&mut route.queue);
            for q in queue {
                c.send(&q.stanza, &mut self.out, now);
                self.stanza_written(q, now);
            }
        }
        Ok(Flow::Continue)
    }

    /// Hands the connection to TLS after `<proceed/>` (either side).
    fn begin_tls(
        &mut self,
        c: &mut Conn,
        tls: rustls::Connection,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        match c.start_tls(tls, &mut self.out) {
            Ok(true) => {
                self.tls_completed(c, now)?;
                Ok(Flow::Continue)
            }
            Ok(false) => Ok(Flow::Continue),
            Err(IngestError::Tls(e)) => Err(err(
                "undefined-condition",
                format!("TLS with {} failed: {e}", c.remote),
            )),
        }
    }

    /// TLS handshake finished: check the peer's certificate, then restart the stream.
    fn tls_completed(&mut self, c: &mut Conn, now: Instant) -> Result<(), (String, String)> {
        let check = match (&self.tls, &c.tls) {
            (Some(ctx), Some(tls)) => {
                let reference = c.remote.clone();
                ctx.verify_peer(tls.peer_certificates(), &reference)
            }
            _ => return Err(err("undefined-condition", "TLS state lost".into())),
        };
        c.peer_cert = Some(check);
        c.phase = Phase::AwaitHeader;
        if c.kind != Kind::Inbound {
            let header = self.header_out(&c.local, &c.remote, None);
            c.send_header(&header, &mut self.out, now);
        }
        Ok(())
    }

    // ---- inbound negotiation -------------------------------------------------------

    fn inbound_header(
        &mut self,
        c: &mut Conn,
        h: StreamHeader,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        let restart = !c.remote.is_empty();
        let to = match h.to.as_deref().map(normalize_domain) {
            Some(Ok(to)) if self.config.serves(&to) => to,
            Some(Ok(to)) => {
                return Err(err(
                    "host-unknown",
                    format!("{to} is not served by this gateway"),
                ))
            }
            Some(Err(e)) => {
                return Err(err(
                    "host-unknown",
                    format!("stream 'to' is not a domain: {e}"),
                ))
            }
            None => return Err(err("host-unknown", "the stream header has no 'to'".into())),
        };
        let from = match h.from.as_deref().map(normalize_domain) {
            Some(Ok(from)) => from,
            Some(Err(e)) => {
                return Err(err(
                    "invalid-from",
                    format!("stream 'from' is not a domain: {e}"),
                ))
            }
            None => {
                c.local = to;
                return Err(err(
                    "policy-violation",
                    "the stream header has no 'from'; partner settings are chosen by the sending domain".into(),
                ));
            }
        };
        if restart && (from != c.remote || to != c.local) {
            return Err(err(
                "invalid-from",
                format!(
                    "the restarted stream names {from} -> {to}, the first one named {} -> {}",
                    c.remote, c.local
                ),
            ));
        }
        c.local = to.clone();
        c.remote = from.clone();
        let Some(row) = self.row_for(&from) else {
            return Err(err(
                "policy-violation",
                format!("{from} is not a configured XMPP partner of {to}; add it as a partner to federate with it"),
            ));
        };
        if !restart && !self.within_limits(&from) {
            // Say which limit, so an admin knows which setting to raise.
            let all = self.config.gateway.connection_limit;
            let text = if self.conns.len() >= all as usize {
                format!("connection limit reached: {all} connections in all (connection_limit)")
            } else {
                format!(
                    "connection limit reached for {from}: {} connections (its connection_limit)",
                    self.partner_limit(&from)
                )
            };
            return Err(err("resource-constraint", text));
        }
        let id = self.new_stream_id();
        c.stream_id = Some(id.clone());
        let mut header = self.header_out(&to, &from, Some(id));
        // xmlns:db on the header advertises dialback (XEP-0220 §2.4).
        header.dialback =
            row.allows(Method::DialbackOverTls) || row.allows(Method::DialbackOverTcp);
        c.send_header(&header, &mut self.out, now);
        c.phase = Phase::Open;
        if !c.peer_version {
            return Ok(Flow::Continue);
        }
        let features = self.inbound_features(c, &row)?;
        c.send(&features, &mut self.out, now);
        Ok(Flow::Continue)
    }

    fn inbound_features(&self, c: &Conn, row: &Negotiation) -> Result<Element, (String, String)> {
        let mut f = Element::new(ns::STREAM, "features");
        if c.sasl_done {
            return Ok(f);
        }
        let dialback_feature = Element::new(ns::DIALBACK_FEATURE, "dialback")
            .child(Element::new(ns::DIALBACK_FEATURE, "errors"));
        if !c.tls_active() {
            let mut offered = false;
            if row.tls != TlsMode::NotSupported && self.tls.is_some() {
                let mut st = Element::new(ns::TLS, "starttls");
                if row.tls == TlsMode::Required {
                    st = st.child(Element::new(ns::TLS, "required"));
                }
                f = f.child(st);
                offered = true;
            }
            if row.allows(Method::DialbackOverTcp) {
                f = f.child(dialback_feature);
                offered = true;
            }
            if !offered {
                return Err(err(
                    "undefined-condition",
                    format!(
                        "{} needs TLS for {}, and no certificate is configured",
                        row.label(),
                        c.remote
                    ),
                ));
            }
            return Ok(f);
        }
        let cert_ok = matches!(c.peer_cert, Some(CertCheck::Valid { .. }));
        let sasl = row.allows(Method::SaslExternalOverTls) && cert_ok;
        let db = row.allows(Method::DialbackOverTls);
        if sasl {
            f = f.child(sasl::mechanisms_external());
        }
        if db {
            f = f.child(dialback_feature);
        }
        if !sasl && !db {
            let why = if row.allows(Method::SaslExternalOverTls) {
                format!(
                    "its certificate is not acceptable: {}",
                    cert_text(c.peer_cert.as_ref())
                )
            } else {
                "SASL EXTERNAL is not allowed".to_owned()
            };
            return Err(err(
                "not-authorized",
                format!(
                    "{} cannot authenticate: {why}; our settings for it ({}) allow no dialback over TLS",
                    c.remote,
                    row.label()
                ),
            ));
        }
        Ok(f)
    }

    fn inbound_element(
        &mut self,
        c: &mut Conn,
        el: Stanza,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        if c.phase != Phase::Open {
            return Err(err(
                "not-authorized",
                format!("<{}/> before the stream header", el.name()),
            ));
        }
        let row = self.row_for(&c.remote).unwrap_or_default();
        if el.is(ns::TLS, "starttls") {
            let offered = !c.tls_active() && row.tls != TlsMode::NotSupported && !c.sasl_done;
            let Some(ctx) = self.tls.as_ref().filter(|_| offered) else {
                c.send(&Element::new(ns::TLS, "failure"), &mut self.out, now);
                c.send_close(&mut self.out, now);
                let text = format!("{} asked for STARTTLS, which was not offered", c.remote);
                let mut owned = std::mem::replace(
                    c,
                    Conn::new(
                        c.id,
                        Kind::Inbound,
                        Phase::Closed,
                        self.config.gateway.xml_limits,
                        now,
                    ),
                );
                owned.phase = Phase::Closed;
                self.fail(Box::new(owned), By::Us, "tls-failure", &text, now, true);
                return Ok(Flow::Closed);
            };
            let server = ctx
                .server()
                .map_err(|e| err("undefined-condition", format!("cannot start TLS: {e}")))?;
            c.send(&Element::new(ns::TLS, "proceed"), &mut self.out, now);
            return self.begin_tls(c, server.into(), now);
        }
        if !c.tls_active() && row.tls == TlsMode::Required && !el.is(ns::DIALBACK, "verify") {
            return Err(err(
                "policy-violation",
                format!(
                    "TLS is required for {} ({}) and was not negotiated",
                    c.remote,
                    row.label()
                ),
            ));
        }
        if el.is(ns::SASL, "auth") {
            return self.inbound_sasl(c, &el.element(), &row, now);
        }
        let (el_ns, el_name) = el.qname();
        if el_ns == ns::DIALBACK {
            return match el_name {
                "result" => self.inbound_db_result(c, &el.element(), &row, now),
                "verify" => self.inbound_db_verify(c, &el.element(), now),
                _ => Err(err("unsupported-stanza-type", format!("<db:{el_name}/>"))),
            };
        }
        if el_ns == ns::SERVER && matches!(el_name, "message" | "presence" | "iq") {
            return self.inbound_stanza(c, el, now);
        }
        Err(err(
            "unsupported-stanza-type",
            format!("<{el_name}/> in namespace '{el_ns}' is not a stanza"),
        ))
    }

    fn inbound_sasl(
        &mut self,
        c: &mut Conn,
        el: &Element,
        row: &Negotiation,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        let cert_ok = matches!(c.peer_cert, Some(CertCheck::Valid { .. }));
        if !c.tls_active()
            || !row.allows(Method::SaslExternalOverTls)
            || c.sasl_done
            || el.get_attr("mechanism") != Some("EXTERNAL")
        {
            c.send(&sasl::failure("invalid-mechanism", ""), &mut self.out, now);
            return Err(err(
                "policy-violation",
                format!(
                    "{} tried SASL {} which was not offered",
                    c.remote,
                    el.get_attr("mechanism").unwrap_or("")
                ),
            ));
        }
        match sasl::authzid(el) {
            Err(sasl::BadAuthzid) => {
                c.send(&sasl::failure("incorrect-encoding", ""), &mut self.out, now);
                return Err(err(
                    "not-authorized",
                    "SASL EXTERNAL authzid is not base64 UTF-8".into(),
                ));
            }
            Ok(Some(a)) if normalize_domain(&a).ok().as_deref() != Some(c.remote.as_str()) => {
                c.send(&sasl::failure("invalid-authzid", ""), &mut self.out, now);
                return Err(err(
                    "not-authorized",
                    format!(
                        "SASL EXTERNAL authzid {a} differs from the stream's 'from' {}",
                        c.remote
                    ),
                ));
            }
            Ok(_) => {}
        }
        if !cert_ok {
            let text = format!(
                "certificate of {} is not acceptable: {}",
                c.remote,
                cert_text(c.peer_cert.as_ref())
            );
            c.send(&sasl::failure("not-authorized", &text), &mut self.out, now);
            if row.allows(Method::DialbackOverTls) {
                return Ok(Flow::Continue);
            }
            return Err(err("not-authorized", text));
        }
        c.send(&sasl::success(), &mut self.out, now);
        c.sasl_done = true;
        c.reader.restart();
        c.phase = Phase::AwaitHeader;
        self.inbound_authenticated(c, Method::SaslExternalOverTls, now);
        Ok(Flow::Continue)
    }

    fn inbound_authenticated(&mut self, c: &mut Conn, method: Method, now: Instant) {
        let first = c.method.is_none();
        c.method = Some(method);
        c.establish_deadline = None;
        c.last_activity = now;
        c.keep_alive = self.partner(&c.remote).is_some_and(|p| p.enable_keep_alive);
        if first {
            let certificate = c.tls_active().then(|| cert_text(c.peer_cert.as_ref()));
            self.event(Event::Authenticated {
                conn: c.id,
                direction: Direction::Inbound,
                local: c.local.clone(),
                remote: c.remote.clone(),
                method,
                certificate,
            });
        }
    }

    fn inbound_db_result(
        &mut self,
        c: &mut Conn,
        el: &Element,
        row: &Negotiation,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        if el.get_attr("type").is_some() {
            // Results with a type only answer our own requests, and inbound streams carry none.
            self.event(Event::Ignored {
                conn: c.id,
                what: format!(
                    "unsolicited <db:result type='{}'/> on an inbound stream",
                    el.get_attr("type").unwrap_or("")
                ),
            });
            return Ok(Flow::Continue);
        }
        if !row.allows_dialback(c.tls_active()) {
            return Err(err(
                "policy-violation",
                format!(
                    "dialback over {} is not allowed for {} ({})",
                    if c.tls_active() { "TLS" } else { "plain TCP" },
                    c.remote,
                    row.label()
                ),
            ));
        }
        let from = el.get_attr("from").map(normalize_domain);
        let to = el.get_attr("to").map(normalize_domain);
        let (Some(Ok(from)), Some(Ok(to))) = (from, to) else {
            return Err(err(
                "improper-addressing",
                "db:result needs valid 'from' and 'to'".into(),
            ));
        };
        if from != c.remote {
            return Err(err(
                "invalid-from",
                format!("db:result from {from} on a stream opened by {}", c.remote),
            ));
        }
        if !self.config.serves(&to) {
            let e = dialback::error(
                "result",
                &to,
                &from,
                None,
                "item-not-found",
                &format!("{to} is not served here"),
            );
            c.send(&e, &mut self.out, now);
            return Ok(Flow::Continue);
        }
        let key = el.text_content();
        let Some(id) = c.stream_id.clone() else {
            return Err(err("undefined-condition", "no stream id".into()));
        };
        let deadline = now + self.config.gateway.dialback_verify_timeout;
        c.pending.push(PendingDialback {
            from: from.clone(),
            to: to.clone(),
            deadline,
        });
        let req = VerifyRequest {
            from: to.clone(),
            to: from.clone(),
            id,
            key: key.trim().to_owned(),
            inbound: c.id,
        };
        match self.open_outbound(Kind::Verify, &to, &from, now) {
            Some(vid) => {
                if let Some(v) = self.conns.get_mut(&vid) {
                    v.requests.push(req);
                }
            }
            None => {
                c.pending.retain(|p| !(p.from == from && p.to == to));
                let e = dialback::error(
                    "result",
                    &to,
                    &from,
                    None,
                    "resource-constraint",
                    "connection limit reached",
                );
                c.send(&e, &mut self.out, now);
            }
        }
        Ok(Flow::Continue)
    }

    /// Authoritative server role: check a key we issued.
    fn inbound_db_verify(
        &mut self,
        c: &mut Conn,
        el: &Element,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        if el.get_attr("type").is_some() {
            self.event(Event::Ignored {
                conn: c.id,
                what: "unsolicited <db:verify/> answer on an inbound stream".into(),
            });
            return Ok(Flow::Continue);
        }
        let from = el.get_attr("from").unwrap_or_default().to_owned();
        let to = el.get_attr("to").unwrap_or_default().to_owned();
        let id = el.get_attr("id").unwrap_or_default().to_owned();
        if !self.config.serves(&to) {
            let e = dialback::error(
                "verify",
                &to,
                &from,
                Some(&id),
                "item-not-found",
                &format!("{to} is not served here"),
            );
            c.send(&e, &mut self.out, now);
            return Ok(Flow::Continue);
        }
        // The receiving server (from) checks a key we (to) sent for its stream id.
        let valid = dialback::verify(&self.secret, &from, &to, &id, &el.text_content());
        c.served_verify = true;
        c.send(
            &dialback::answer("verify", &to, &from, Some(&id), valid),
            &mut self.out,
            now,
        );
        Ok(Flow::Continue)
    }

    fn inbound_stanza(
        &mut self,
        c: &mut Conn,
        el: Stanza,
        now: Instant,
    ) -> Result<Flow, (String, String)> {
        if !c.is_authenticated() {
            return Err(err(
                "not-authorized",
                format!(
                    "<{}/> from {} before the stream was authenticated",
                    el.name(),
                    c.remote
                ),
            ));
        }
        let from = el.get_attr("from").map(Jid::parse);
        let to = el.get_attr("to").map(Jid::parse);
        let (Some(Ok(from)), Some(Ok(to))) = (from, to) else {
            return Err(err(
                "improper-addressing",
                format!("<{}/> needs valid 'from' and 'to'", el.name()),
            ));
        };
        let allowed_from = match c.method {
            Some(Method::SaslExternalOverTls) => from.domain() == c.remote,
            _ => c.verified.iter().any(|(f, _)| f == from.domain()),
        };
        if !allowed_from {
            return Err(err(
                "invalid-from",
                format!("{} is not authenticated on this stream", from.domain()),
            ));
        }
        let allowed_to = match c.method {
            Some(Method::SaslExternalOverTls) => self.config.serves(to.domain()),
            _ => c
                .verified
                .iter()
                .any(|(f, t)| f == from.domain() && t == to.domain()),
        };
        if !allowed_to {
            return Err(err(
                "host-unknown",
                format!("{} is not served on this stream", to.domain()),
            ));
        }
        c.last_activity = now;
        self.deliver_local_to(el, Some((from, to)), now);
        Ok(Flow::Continue)
    }

    /// A verify connection got its answer (or none): tell the waiting inbound stream.
    fn verify_answered(
        &mut self,
        req: &VerifyRequest,
        valid: Option<bool>,
        condition: Option<String>,
        now: Instant,
    ) {
        let Some(mut c) = self.conns.remove(&req.inbound) else {
            return;
        };
        let before = c.pending.len();
        c.pending
            .retain(|p| !(p.from == req.to && p.to == req.from));
        if c.pending.len() == before || c.phase == Phase::Closed {
            self.put(c);
            return;
        }
        match valid {
            Some(true) => {
                c.send(
                    &dialback::answer("result", &req.from, &req.to, None, true),
                    &mut self.out,
                    now,
                );
                c.verified.push((req.to.clone(), req.from.clone()));
                let method = if c.tls_active() {
                    Method::DialbackOverTls
                } else {
                    Method::DialbackOverTcp
                };
                self.inbound_authenticated(&mut c, method, now);
                self.put(c);
            }
            Some(false) => {
                c.send(
                    &dialback::answer("result", &req.from, &req.to, None, false),
                    &mut self.out,
                    now,
                );
                if c.verified.is_empty() {
                    // XEP-0220: with no other verified pair, the stream is closed.
                    c.send_close(&mut self.out, now);
                    let text = format!(
                        "the authoritative server of {} says the dialback key is invalid",
                        req.to
                    );
                    self.fail(c, By::Us, "dialback-invalid", &text, now, true);
                } else {
                    self.put(c);
                }
            }
            None => {
                let cond = condition.unwrap_or_else(|| "remote-server-not-found".into());
                let text = format!(
                    "the authoritative server of {} answered with <{cond}/>",
                    req.to
                );
                let e = dialback::error("result", &req.from, &req.to, None, &cond, &text);
                c.send(&e, &mut self.out, now);
                self.put(c);
            }
        }
    }

    fn fail_verify_requests(&mut self, c: &mut Conn, condition: &str, text: &str, now: Instant) {
        for req in std::mem::take(&mut c.requests) {
            let Some(mut inbound) = self.conns.remove(&req.inbound) else {
                continue;
            };
            let before = inbound.pending.len();
            inbound
                .pending
                .retain(|p| !(p.from == req.to && p.to == req.from));
            if inbound.pending.len() != before && inbound.phase != Phase::Closed {
                let e = dialback::error("result", &req.from, &req.to, None, condition, text);
                inbound.send(&e, &mut self.out, now);
            }
            self.put(inbound);
        }
    }

    fn drop_verify_requests(&mut self, inbound: ConnId, from: &str) {
        let ids: Vec<ConnId> = self
            .conns
            .values()
            .filter(|v| {
                v.kind == Kind::Verify
                    && v.requests
                        .iter()
                        .any(|r| r.inbound == inbound && r.to == from)
            })
            .map(|v| v.id)
            .collect();
        for id in ids {
            if let Some(v) = self.conns.get_mut(&id) {
                v.requests
                    .retain(|r| !(r.inbound == inbound && r.to == from));
            }
        }
    }

    // ---- endings --------------------------------------------------------------------

    /// Sends a stream error (with a header first if we have not sent one), closes.
    fn close_with_error(&mut self, mut c: Box<Conn>, condition: &str, text: &str, now: Instant) {
        if c.phase == Phase::Closed {
            return;
        }
        if !c.header_sent {
            let from = if c.local.is_empty() {
                None
            } else {
                Some(c.local.clone())
            };
            let header = StreamHeaderOut {
                from,
                to: if c.remote.is_empty() {
                    None
                } else {
                    Some(c.remote.clone())
                },
                id: Some(self.new_stream_id()),
                version: true,
                lang: None,
                default_ns: ns::SERVER.to_owned(),
                dialback: true,
            };
            c.send_header(&header, &mut self.out, now);
        }
        c.send_stream_error(condition, text, &mut self.out, now);
        if let Some(tls) = c.tls.as_mut() {
            tls.send_close_notify();
        }
        self.fail(c, By::Us, condition, text, now, true);
    }

    /// Inactivity on an authenticated stream is a normal end, not a failure.
    fn close_quietly(&mut self, mut c: Box<Conn>, condition: &str, text: &str, now: Instant) {
        if !c.is_authenticated() && c.kind != Kind::Verify {
            self.close_with_error(c, condition, text, now);
            return;
        }
        c.send_stream_error(condition, text, &mut self.out, now);
        self.out.push(Output::Close { conn: c.id });
        self.finish(c, now);
    }

    /// A stream ended in failure: log why, bounce what waited for it, close.
    fn fail(
        &mut self,
        mut c: Box<Conn>,
        by: By,
        condition: &str,
        text: &str,
        now: Instant,
        close: bool,
    ) {
        c.phase = Phase::Closed;
        self.event(Event::Failed {
            conn: c.id,
            kind: match c.kind {
                Kind::Route => "outbound",
                Kind::Verify => "dialback verify",
                Kind::Inbound => "inbound",
            },
            local: c.local.clone(),
            remote: c.remote.clone(),
            by,
            condition: condition.to_owned(),
            text: text.to_owned(),
        });
        if close {
            self.out.push(Output::Close { conn: c.id });
        }
        let bounce = if matches!(
            condition,
            "connection-timeout" | "remote-server-timeout" | "remote-connection-failed"
        ) {
            "remote-server-timeout"
        } else {
            "remote-server-not-found"
        };
        let reason = format!("federation with {} failed: {text}", peer_name(&c));
        self.finish_with(c, Some((bounce, reason)), now);
    }

    fn finish(&mut self, c: Box<Conn>, now: Instant) {
        self.finish_with(c, None, now);
    }

    /// Forgets a connection: bounces what waited on it and answers its dialback waits.
    fn finish_with(
        &mut self,
        mut c: Box<Conn>,
        reason: Option<(&'static str, String)>,
        now: Instant,
    ) {
        let id = c.id;
        self.queries.retain(|_, conn| *conn != id);
        match c.kind {
            Kind::Route => {
                if self.route(&c.local, &c.remote).and_then(|r| r.conn) == Some(id) {
                    let (cond, text) = reason.unwrap_or_else(|| bounce_reason(&c));
                    self.bounce_route(&c.local, &c.remote, cond, &text, now);
                    if let Some(r) = self.route_mut(&c.local, &c.remote) {
                        r.conn = None;
                        if r.queue.is_empty() {
                            self.routes
                                .remove(&(&*c.local, &*c.remote) as &dyn RouteKey);
                        }
                    }
                }
            }
            Kind::Verify => {
                if !c.requests.is_empty() {
                    let text = format!("could not reach the authoritative server of {}", c.remote);
                    self.fail_verify_requests(&mut c, "remote-connection-failed", &text, now);
                }
            }
            Kind::Inbound => {}
        }
        self.event(Event::Closed { conn: id });
    }

    fn bounce_route(
        &mut self,
        local: &str,
        remote: &str,
        condition: &'static str,
        text: &str,
        now: Instant,
    ) {
        let queue = match self.route_mut(local, remote) {
            Some(r) => std::mem::take(&mut r.queue),
            None => return,
        };
        for q in queue {
            self.bounce_queued(q, condition, text, now);
        }
    }

    /// Returns a stanza to its local sender as an error (never an error for an
    /// error), through the same local delivery as any stanza for a local user: a
    /// stanza generated for a SIP user is answered on the SIP side.
    fn bounce(&mut self, stanza: Element, condition: &'static str, text: &str, now: Instant) {
        self.event(Event::Bounced {
            from: stanza.get_attr("from").unwrap_or_default().to_owned(),
            to: stanza.get_attr("to").unwrap_or_default().to_owned(),
            condition,
        });
        if let Some(reply) = error_reply(&stanza, condition, text) {
            self.deliver_local(reply, now);
        }
    }
}

/// The error stanza answering `stanza` (RFC 6120 §8.3), or `None` for an error,
/// which is never answered with another.
pub(crate) fn error_reply(stanza: &Element, condition: &str, text: &str) -> Option<Element> {
    if stanza.get_attr("type") == Some("error") {
        return None;
    }
    let mut reply = Element::new(ns::SERVER, &stanza.name)
        .attr("from", stanza.get_attr("to").unwrap_or_default())
        .attr("to", stanza.get_attr("from").unwrap_or_default())
        .attr("type", "error");
    if let Some(id) = stanza.get_attr("id") {
        reply.set_attr("id", id);
    }
    Some(
        reply.child(
            Element::new(ns::SERVER, "error")
                .attr("type", crate::translate::error::error_type(condition))
                .child(Element::new(ns::STANZAS_ERR, condition))
                .child(Element::new(ns::STANZAS_ERR, "text").text(text)),
        ),
    )
}

enum Flow {
    Continue,
    Closed,
}

fn err(condition: &str, text: String) -> (String, String) {
    (condition.to_owned(), text)
}

fn peer_name(c: &Conn) -> String {
    if c.remote.is_empty() {
        "the peer".to_owned()
    } else {
        c.remote.clone()
    }
}

fn cert_text(check: Option<&CertCheck>) -> String {
    match check {
        Some(CertCheck::Valid { identity }) => format!("valid, {identity}"),
        Some(CertCheck::Invalid(fault)) => format!("not verified: {}", fault.describe()),
        None => "none".to_owned(),
    }
}

fn stream_error_parts(el: &Element) -> (String, String) {
    let cond = el
        .elements()
        .find(|e| e.ns == ns::STREAMS_ERR && e.name != "text")
        .map_or_else(|| "undefined-condition".to_owned(), |e| e.name.to_string());
    let text = el
        .find(ns::STREAMS_ERR, "text")
        .map(|t| t.text_content())
        .unwrap_or_default();
    (cond, text)
}

/// The stanza error for stanzas that waited on a stream that failed.
fn bounce_reason(c: &Conn) -> (&'static str, String) {
    match c.phase {
        Phase::Resolving => (
            "remote-server-not-found",
            format!("{} could not be resolved", c.remote),
        ),
        Phase::Connecting => (
            "remote-server-timeout",
            format!("{} could not be reached", c.remote),
        ),
        _ => (
            "remote-server-not-found",
            format!("the stream to {} could not be authenticated", c.remote),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::RouteKey;
    use std::collections::HashMap;

    #[test]
    fn a_route_is_found_by_borrowed_domains() {
        let mut routes = HashMap::new();
        for (l, r) in [("sip.example", "xmpp.example"), ("a", "bc"), ("ab", "c")] {
            routes.insert((l.to_owned(), r.to_owned()), format!("{l}|{r}"));
        }
        for (l, r) in [("sip.example", "xmpp.example"), ("a", "bc"), ("ab", "c")] {
            let found = routes.get(&(l, r) as &dyn RouteKey);
            assert_eq!(found.map(String::as_str), Some(format!("{l}|{r}").as_str()));
        }
        assert!(!routes.contains_key(&("abc", "") as &dyn RouteKey));
        assert!(!routes.contains_key(&("xmpp.example", "sip.example") as &dyn RouteKey));
    }
}
