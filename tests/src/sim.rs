//! An in-memory network of gateways: byte pipes, per-node DNS answers and virtual
//! time. Like quinn-proto's test `Pair` and str0m's `progress`, generalised to N
//! nodes: every step drains all outputs, delivers bytes, and when nothing is left to
//! do advances virtual time to the earliest deadline, with a bound that catches
//! livelock.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_core::config::Config;
use isthmus_core::gateway::{ConnId, Event, Gateway, Output, Trace};
use isthmus_core::rng::Rng;
use isthmus_core::s2s::tls::TlsContext;
use isthmus_core::xml::Element;

/// Wall-clock time of the simulation's start: 2026-06-01T00:00:00Z.
pub const START_UNIX: u64 = 1_780_272_000;

/// One end of a pipe: a gateway's connection, or a scripted raw peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    Gw(usize, ConnId),
    Raw(usize),
}

struct Node {
    name: String,
    gw: Gateway,
    addr: SocketAddr,
}

/// A simulated SIP proxy with its users behind it: it records what a gateway
/// sends it and answers requests with `answer` (0: never answers).
#[derive(Clone, Debug)]
pub struct SipPeer {
    pub name: String,
    pub addr: SocketAddr,
    pub received: Vec<isthmus_core::sip::SipMessage>,
    pub answer: u16,
    /// Acting as presence server: each SUBSCRIBE is answered and followed by a
    /// NOTIFY with the PIDF stored here for its Request-URI (closed if none).
    pub presence: std::collections::HashMap<String, String>,
    notify_count: u32,
}

/// What a scripted raw peer saw.
#[derive(Default, Clone, Debug)]
pub struct RawPeer {
    pub received: Vec<u8>,
    pub closed: bool,
}

/// The simulated network.
pub struct Net {
    pub now: Instant,
    start: Instant,
    nodes: Vec<Node>,
    /// Per-node DNS view: (node, domain) → addresses; `None` node = every node.
    dns: HashMap<(Option<usize>, String), Vec<SocketAddr>>,
    /// Addresses that accept TCP and never answer.
    black_holes: HashSet<SocketAddr>,
    /// Pipes: each end to the other end, with a link number for transcripts.
    links: BTreeMap<End, (End, usize)>,
    next_link: usize,
    in_flight: VecDeque<(End, Vec<u8>)>,
    closing: VecDeque<End>,
    pub raw: Vec<RawPeer>,
    /// Readable record of everything written, in order.
    pub transcript: Vec<String>,
    pub events: Vec<(String, Event)>,
    pub delivered: Vec<(String, Element)>,
    /// Persist outputs, in order: (gateway, record).
    pub persisted: Vec<(String, isthmus_core::roster::Persist)>,
    /// Chunking of delivered bytes: `None` delivers each write whole.
    chunking: Option<Rng>,
    last_time_shown: Duration,
    pub sip_peers: Vec<SipPeer>,
    /// SIP datagrams on their way to a gateway: (node, from, bytes).
    sip_in_flight: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    /// Gateway connections that are SIP streams (TCP/TLS) rather than s2s.
    sip_streams: HashSet<(usize, ConnId)>,
    /// Gateway connections told to stop reading (`Output::Reading`), with the
    /// bytes that arrived for them meanwhile, in order.
    held: BTreeMap<End, VecDeque<Vec<u8>>>,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Self {
        let now = Instant::now();
        Net {
            now,
            start: now,
            nodes: Vec::new(),
            dns: HashMap::new(),
            black_holes: HashSet::new(),
            links: BTreeMap::new(),
            next_link: 1,
            in_flight: VecDeque::new(),
            closing: VecDeque::new(),
            raw: Vec::new(),
            transcript: Vec::new(),
            events: Vec::new(),
            delivered: Vec::new(),
            persisted: Vec::new(),
            chunking: None,
            last_time_shown: Duration::ZERO,
            sip_peers: Vec::new(),
            sip_in_flight: VecDeque::new(),
            sip_streams: HashSet::new(),
            held: BTreeMap::new(),
        }
    }

    /// Adds a SIP proxy at `addr` that answers requests with `answer`.
    pub fn add_sip_peer(&mut self, name: &str, addr: SocketAddr, answer: u16) -> usize {
        self.sip_peers.push(SipPeer {
            name: name.to_owned(),
            addr,
            received: Vec::new(),
            answer,
            presence: std::collections::HashMap::new(),
            notify_count: 0,
        });
        self.sip_peers.len() - 1
    }

    /// The SIP peer sends `msg` to gateway `node`.
    pub fn sip_send(&mut self, peer: usize, node: usize, msg: &isthmus_core::sip::SipMessage) {
        let (name, addr) = (self.sip_peers[peer].name.clone(), self.sip_peers[peer].addr);
        let to = self.nodes[node].name.clone();
        self.note(format!("{name}→{to} SIP: {}", sip_summary(msg)));
        self.sip_in_flight.push_back((node, addr, msg.to_bytes()));
    }

    /// The SIP peer sends raw bytes (malformed messages, say) to gateway `node`.
    pub fn sip_send_raw(&mut self, peer: usize, node: usize, bytes: &[u8]) {
        let (name, addr) = (self.sip_peers[peer].name.clone(), self.sip_peers[peer].addr);
        let to = self.nodes[node].name.clone();
        self.note(format!(
            "{name}→{to} SIP bytes: {}",
            String::from_utf8_lossy(bytes).replace("\r\n", " ⏎ ")
        ));
        self.sip_in_flight.push_back((node, addr, bytes.to_vec()));
    }

    /// Deliver bytes in random chunks (1..=max bytes) drawn from `seed`.
    pub fn set_chunking(&mut self, seed: u64) {
        self.chunking = Some(Rng::new(seed));
    }

    /// Adds a gateway listening at 127.0.0.(n+1):5269 whose served domains resolve
    /// there for every node.
    pub fn add_gateway(
        &mut self,
        name: &str,
        config: Config,
        tls: Option<TlsContext>,
        seed: u64,
    ) -> usize {
        let idx = self.nodes.len();
        let addr: SocketAddr = ([127, 0, 0, u8::try_from(idx + 1).unwrap_or(250)], 5269).into();
        for d in &config.gateway.served_domains {
            self.dns.insert((None, d.clone()), vec![addr]);
        }
        let mut gw = Gateway::new(config, tls, seed, self.now, START_UNIX);
        gw.set_trace(true);
        self.nodes.push(Node {
            name: name.to_owned(),
            gw,
            addr,
        });
        idx
    }

    pub fn gateway(&mut self, node: usize) -> &mut Gateway {
        &mut self.nodes[node].gw
    }

    pub fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    /// What `node` gets when it resolves `domain` (overrides the shared answer).
    pub fn set_dns(&mut self, node: usize, domain: &str, addrs: Vec<SocketAddr>) {
        self.dns.insert((Some(node), domain.to_owned()), addrs);
    }

    pub fn add_black_hole(&mut self, addr: SocketAddr) {
        self.black_holes.insert(addr);
    }

    /// Opens a raw TCP connection to a gateway; returns the raw peer's index.
    pub fn raw_connect(&mut self, node: usize) -> usize {
        let r = self.raw.len();
        self.raw.push(RawPeer::default());
        let conn = self.nodes[node].gw.accept(self.now);
        self.link(End::Raw(r), End::Gw(node, conn));
        r
    }

    /// Opens a raw SIP-over-TCP connection to a gateway's SIP port; returns the raw
    /// peer's index (write with `raw_send`, read with `raw_received`).
    pub fn sip_connect(&mut self, node: usize) -> usize {
        let r = self.raw.len();
        self.raw.push(RawPeer::default());
        let conn = self.nodes[node].gw.sip_accept(self.now, false);
        self.sip_streams.insert((node, conn));
        self.link(End::Raw(r), End::Gw(node, conn));
        r
    }

    /// Writes bytes from a raw peer.
    pub fn raw_send(&mut self, raw: usize, text: &str) {
        if let Some((to, link)) = self.links.get(&End::Raw(raw)).copied() {
            let who = self.name_of(End::Raw(raw));
            let peer = self.name_of(to);
            self.note(format!("{who}→{peer} #{link}: {text}"));
            self.in_flight.push_back((to, text.as_bytes().to_vec()));
        }
    }

    /// Writes raw bytes (TLS records, say) from a raw peer; the transcript shows their size.
    pub fn raw_send_bytes(&mut self, raw: usize, bytes: &[u8]) {
        if let Some((to, link)) = self.links.get(&End::Raw(raw)).copied() {
            let who = self.name_of(End::Raw(raw));
            let peer = self.name_of(to);
            self.note(format!("{who}→{peer} #{link}: [{} bytes]", bytes.len()));
            self.in_flight.push_back((to, bytes.to_vec()));
        }
    }

    pub fn raw_received(&self, raw: usize) -> String {
        String::from_utf8_lossy(&self.raw[raw].received).into_owned()
    }

    fn link(&mut self, a: End, b: End) -> usize {
        let n = self.next_link;
        self.next_link += 1;
        self.links.insert(a, (b, n));
        self.links.insert(b, (a, n));
        n
    }

    fn name_of(&self, end: End) -> String {
        match end {
            End::Gw(n, _) => self.nodes[n].name.clone(),
            End::Raw(r) => format!("raw{r}"),
        }
    }

    fn note(&mut self, mut line: String) {
        // Keep snapshots readable when a test sends a huge stanza.
        if line.len() > 600 {
            let total = line.len();
            let mut cut = 300;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(&format!("… ({total} bytes in all)"));
        }
        let t = self.now.duration_since(self.start);
        if t != self.last_time_shown {
            self.last_time_shown = t;
            self.transcript.push(format!("-- t = {} s", t.as_secs()));
        }
        self.transcript.push(line);
    }

    /// Hands a stanza from a local user of `node` to its gateway.
    pub fn send_stanza(&mut self, node: usize, stanza: Element) {
        let now = self.now;
        if let Err(e) = self.nodes[node].gw.send_stanza(now, stanza) {
            self.note(format!(
                "{} refused a local stanza: {e}",
                self.nodes[node].name
            ));
        }
    }

    /// Runs until nothing is in flight and no timer is due before `limit` from now.
    /// Panics on livelock (more steps than `max_steps`).
    pub fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        let max_steps = 100_000;
        for _ in 0..max_steps {
            if self.step() {
                continue;
            }
            let next = self.nodes.iter().filter_map(|n| n.gw.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    if t > self.now {
                        self.now = t;
                    }
                    let now = self.now;
                    for n in &mut self.nodes {
                        if n.gw.poll_timeout().is_some_and(|d| d <= now) {
                            n.gw.handle_timeout(now);
                        }
                    }
                }
                _ => return,
            }
        }
        panic!("simulation did not settle within {max_steps} steps (livelock?)");
    }

    /// Runs for `d` as `run_for` does, then lets the clock reach `d` from now even
    /// when no timer falls due: for peers that act at their own pace.
    pub fn wait(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_for(d);
        if self.now < end {
            self.now = end;
        }
    }

    /// Delivers everything in flight without letting more than a second pass.
    pub fn settle(&mut self) {
        self.run_for(Duration::from_secs(1));
    }

    /// Runs until quiet, firing timers up to 61 s ahead: long enough for the
    /// stream-establishment (60 s) and dialback-verify (30 s) timeouts, short of
    /// keep-alives and inactivity.
    pub fn run(&mut self) {
        self.run_for(Duration::from_secs(61));
    }

    /// One round: drain every node's outputs, deliver bytes in flight. Returns
    /// whether anything happened.
    fn step(&mut self) -> bool {
        let mut busy = false;
        for i in 0..self.nodes.len() {
            while let Some(out) = self.nodes[i].gw.poll_output() {
                busy = true;
                self.apply(i, out);
            }
        }
        if let Some((node, from, bytes)) = self.sip_in_flight.pop_front() {
            busy = true;
            let now = self.now;
            self.nodes[node].gw.sip_datagram(now, from, &bytes);
        } else if let Some((to, bytes)) = self.in_flight.pop_front() {
            busy = true;
            self.deliver(to, bytes);
        } else if let Some(end) = self.closing.pop_front() {
            busy = true;
            self.close_end(end);
        }
        busy
    }

    fn deliver(&mut self, to: End, bytes: Vec<u8>) {
        if let Some(held) = self.held.get_mut(&to) {
            held.push_back(bytes);
            return;
        }
        let now = self.now;
        match to {
            End::Gw(n, conn) => {
                let chunks = match self.chunking.as_mut() {
                    None => vec![bytes],
                    Some(rng) => {
                        let mut v = Vec::new();
                        let mut rest = bytes.as_slice();
                        while !rest.is_empty() {
                            let k = (rng.next_u64() % 64 + 1) as usize;
                            let (a, b) = rest.split_at(k.min(rest.len()));
                            v.push(a.to_vec());
                            rest = b;
                        }
                        v
                    }
                };
                let sip = self.sip_streams.contains(&(n, conn));
                for c in chunks {
                    if sip {
                        self.nodes[n].gw.sip_received(now, conn, &c);
                    } else {
                        self.nodes[n].gw.received(now, conn, &c);
                    }
                }
            }
            End::Raw(r) => self.raw[r].received.extend_from_slice(&bytes),
        }
    }

    fn close_end(&mut self, end: End) {
        // `end` closed its side: the other side sees EOF after the bytes in flight.
        let Some((other, _)) = self.links.remove(&end) else {
            return;
        };
        self.links.remove(&other);
        let now = self.now;
        match other {
            End::Gw(n, conn) if self.sip_streams.remove(&(n, conn)) => {
                self.nodes[n].gw.sip_closed(now, conn)
            }
            End::Gw(n, conn) => self.nodes[n].gw.peer_closed(now, conn),
            End::Raw(r) => self.raw[r].closed = true,
        }
    }

    fn apply(&mut self, node: usize, out: Output) {
        let name = self.nodes[node].name.clone();
        let now = self.now;
        match out {
            Output::Transmit { conn, bytes } => {
                if let Some((to, _)) = self.links.get(&End::Gw(node, conn)).copied() {
                    self.in_flight.push_back((to, bytes));
                }
            }
            Output::Trace { conn, trace } => {
                let (peer, link) = match self.links.get(&End::Gw(node, conn)).copied() {
                    Some((to, link)) => (self.name_of(to), link),
                    None => ("?".to_owned(), 0),
                };
                let body = match trace {
                    Trace::Xml(x) if x.trim().is_empty() => "(whitespace keep-alive)".to_owned(),
                    Trace::Xml(x) => x,
                    Trace::Tls(n) => format!("[TLS {n} bytes]"),
                };
                self.note(format!("{name}→{peer} #{link}: {body}"));
            }
            Output::Connect { conn, domain, addr } => {
                if self.black_holes.contains(&addr) {
                    let r = self.raw.len();
                    self.raw.push(RawPeer::default());
                    let link = self.link(End::Gw(node, conn), End::Raw(r));
                    self.note(format!(
                        "{name} connects to {domain} at {addr} (#{link}, never answers)"
                    ));
                    self.nodes[node].gw.connected(now, conn);
                    return;
                }
                match self.nodes.iter().position(|n| n.addr == addr) {
                    Some(target) => {
                        let accepted = self.nodes[target].gw.accept(now);
                        let link = self.link(End::Gw(node, conn), End::Gw(target, accepted));
                        let tname = self.nodes[target].name.clone();
                        self.note(format!(
                            "{name} connects to {domain} at {addr}: {tname} accepts (#{link})"
                        ));
                        self.nodes[node].gw.connected(now, conn);
                    }
                    None => {
                        self.note(format!("{name} connects to {domain} at {addr}: refused"));
                        self.nodes[node]
                            .gw
                            .connect_failed(now, conn, "connection refused");
                    }
                }
            }
            Output::Resolve { query, domain } => {
                let answer = self
                    .dns
                    .get(&(Some(node), domain.clone()))
                    .or_else(|| self.dns.get(&(None, domain.clone())))
                    .cloned();
                let result = match answer {
                    Some(a) => Ok(a),
                    None => Err("NXDOMAIN".to_owned()),
                };
                self.nodes[node].gw.resolved(now, query, result);
            }
            Output::Close { conn } => {
                let end = End::Gw(node, conn);
                if let Some((_, link)) = self.links.get(&end).copied() {
                    self.note(format!("{name} closes #{link}"));
                    self.closing.push_back(end);
                }
            }
            Output::SipSend { to, bytes } => {
                let Some(p) = self.sip_peers.iter().position(|p| p.addr == to) else {
                    self.note(format!("{name} sends SIP to {to}: nobody there"));
                    return;
                };
                let Ok(msg) = isthmus_core::sip::SipMessage::parse(&bytes, &Default::default())
                else {
                    self.note(format!("{name} sent unparsable SIP to {to}"));
                    return;
                };
                let peer_name = self.sip_peers[p].name.clone();
                self.note(format!("{name}→{peer_name} SIP: {}", sip_summary(&msg)));
                let answer = self.sip_peers[p].answer;
                if msg.method().is_some() && answer != 0 {
                    let reply = msg.reply(
                        answer,
                        isthmus_core::sip::reason_phrase(answer),
                        Some("ua1"),
                    );
                    self.note(format!("{peer_name}→{name} SIP: {}", sip_summary(&reply)));
                    self.sip_in_flight
                        .push_back((node, self.sip_peers[p].addr, reply.to_bytes()));
                }
                if msg.method() == Some("SUBSCRIBE") && answer == 200 {
                    let notify = self.presence_notify(p, &msg);
                    self.note(format!("{peer_name}→{name} SIP: {}", sip_summary(&notify)));
                    self.sip_in_flight
                        .push_back((node, self.sip_peers[p].addr, notify.to_bytes()));
                }
                self.sip_peers[p].received.push(msg);
            }
            Output::Persist(p) => {
                self.note(format!(
                    "{name} persists {} / {}: watch={} watched_by={}",
                    p.local,
                    p.remote,
                    p.item.watch.as_str(),
                    p.item.watched_by.as_str()
                ));
                self.persisted.push((name, p));
            }
            Output::Deliver(el) => {
                self.note(format!(
                    "{name} delivers locally: {}",
                    el.to_xml("jabber:server")
                ));
                self.delivered.push((name, el));
            }
            Output::Event(e) => {
                self.note(format!("{name} event: {e}"));
                self.events.push((name, e));
            }
            Output::Reading { conn, on } => {
                let end = End::Gw(node, conn);
                let link = self.links.get(&end).map_or(0, |(_, l)| *l);
                if on {
                    self.note(format!("{name} reads #{link} again"));
                    // What waited goes first, ahead of anything in flight to it.
                    for bytes in self.held.remove(&end).unwrap_or_default().into_iter().rev() {
                        self.in_flight.push_front((end, bytes));
                    }
                } else {
                    self.note(format!("{name} stops reading #{link}"));
                    self.held.entry(end).or_default();
                }
            }
        }
    }

    /// Bytes waiting for gateway connections that stopped reading.
    pub fn held_bytes(&self) -> usize {
        self.held.values().flatten().map(Vec::len).sum()
    }

    /// The NOTIFY a presence server sends after accepting `subscribe`.
    fn presence_notify(
        &mut self,
        peer: usize,
        subscribe: &isthmus_core::sip::SipMessage,
    ) -> isthmus_core::sip::SipMessage {
        use isthmus_core::sip::{NameAddr, SipMessage, StartLine};
        let p = &mut self.sip_peers[peer];
        p.notify_count += 1;
        let target = subscribe
            .header("Contact")
            .and_then(|c| NameAddr::parse(c).ok())
            .map_or_else(|| "sip:gateway".to_owned(), |c| c.uri.to_string());
        let user = match &subscribe.start {
            StartLine::Request { uri, .. } => uri.clone(),
            StartLine::Response { .. } => String::new(),
        };
        let expires = subscribe
            .header("Expires")
            .unwrap_or("3600")
            .trim()
            .to_owned();
        let state = if expires == "0" {
            "terminated;reason=timeout".to_owned()
        } else {
            format!("active;expires={expires}")
        };
        let body = p.presence.get(&user).cloned().unwrap_or_else(|| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{user}\"><tuple id=\"t\"><status><basic>closed</basic></status></tuple></presence>\n"
            )
        });
        let mut n = SipMessage::request("NOTIFY", &target)
            .with(
                "Via",
                &format!(
                    "SIP/2.0/UDP {};branch=z9hG4bKnotify{}",
                    p.addr, p.notify_count
                ),
            )
            .with(
                "From",
                &format!("{};tag=ua1", subscribe.header("To").unwrap_or_default()),
            )
            .with("To", subscribe.header("From").unwrap_or_default())
            .with("Call-ID", subscribe.call_id().unwrap_or_default())
            .with("CSeq", &format!("{} NOTIFY", p.notify_count))
            .with("Event", "presence")
            .with("Subscription-State", &state)
            .with("Content-Type", "application/pidf+xml");
        n.set_body(body.into_bytes());
        n
    }

    pub fn transcript_text(&self) -> String {
        let mut s = self.transcript.join("\n");
        s.push('\n');
        s
    }
}

/// One line for a SIP message in a transcript: start line, the headers that say
/// who and what, and the body.
pub fn sip_summary(m: &isthmus_core::sip::SipMessage) -> String {
    use isthmus_core::sip::StartLine;
    let start = match &m.start {
        StartLine::Request { method, uri } => format!("{method} {uri}"),
        StartLine::Response { code, reason } => format!("{code} {reason}"),
    };
    let mut parts = vec![start];
    for h in ["From", "To", "Call-ID", "CSeq", "Content-Type", "Subject"] {
        if let Some(v) = m.header(h) {
            parts.push(format!("{h}: {v}"));
        }
    }
    if !m.body().is_empty() {
        let body = String::from_utf8_lossy(m.body());
        let one_line: Vec<&str> = body
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        parts.push(format!("body: {}", one_line.join(" ")));
    }
    parts.join(" | ")
}
