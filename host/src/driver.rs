//! Applying the core's outputs, the same way in both runtimes: persist first (the
//! core orders outputs so that nothing depends on a change before it is durable),
//! then hand transmits, connects, closes, DNS lookups and SIP datagrams to the
//! runtime's I/O, and log events.

use std::net::SocketAddr;

use isthmus_core::gateway::{ConnId, Event, Gateway, Output};
use isthmus_core::xml::ns;

use crate::store::Store;

/// The line both runtimes log once they listen: what is served and every listener.
pub fn serving_line(
    g: &isthmus_core::config::GatewaySettings,
    s2s: SocketAddr,
    sip: SocketAddr,
) -> String {
    let tls = g
        .sip_tls_address
        .map(|a| format!(" and tls {a}"))
        .unwrap_or_default();
    format!(
        "serving {} — XMPP s2s on {s2s}, SIP on udp and tcp {sip}{tls}",
        g.served_domains.join(", ")
    )
}

/// What a runtime does for the driver. Every call must return quickly; blocking
/// work (connecting, resolving) happens on the runtime's own threads or tasks,
/// which report back as core inputs.
pub trait Io {
    /// The runtime's TCP stream type.
    type Stream;
    /// Starts reading `stream` as connection `conn` (`sip`: a SIP stream, not s2s).
    fn adopt(&mut self, conn: ConnId, stream: Self::Stream, sip: bool);
    /// The connection closed under us: stop writing to it.
    fn forget(&mut self, conn: ConnId);
    /// Connections open now, for the thread/task budget.
    fn open_streams(&self) -> usize;
    /// Turns away a connection past the budget.
    fn refuse(&mut self, stream: Self::Stream);
    /// Queues bytes for the connection's writer; returns the bytes queued and not
    /// yet written (0 for a connection the runtime no longer has).
    fn transmit(&mut self, conn: ConnId, bytes: Vec<u8>) -> usize;
    /// Asks for `Input::Drained(conn)` once the connection's queue falls below
    /// [`SEND_LOW_WATER`]; false when it already has (no report will come).
    fn watch_drain(&mut self, conn: ConnId) -> bool;
    /// What `conn`'s reader shares with the core about input: the core reports
    /// the bytes it processed (`Intake::processed`) and asks to stop or resume
    /// reading (`Output::Reading`, `Intake::set_reading`).
    fn intake(&self, conn: ConnId) -> Option<&crate::intake::Intake>;
    fn connect(&mut self, conn: ConnId, addr: SocketAddr);
    fn close(&mut self, conn: ConnId);
    fn resolve(&mut self, query: u64, domain: String);
    fn sip_send(&mut self, to: SocketAddr, bytes: &[u8]);
}

/// What the runtime's I/O reports to the core's loop.
pub enum Input<S> {
    Accepted(S),
    Connected(ConnId, S),
    ConnectFailed(ConnId, String),
    Received(ConnId, Vec<u8>),
    Closed(ConnId),
    Resolved(u64, Result<Vec<SocketAddr>, String>),
    Datagram(SocketAddr, Vec<u8>),
    SipAccepted(S, bool),
    SipReceived(ConnId, Vec<u8>),
    SipClosed(ConnId),
    /// A connection's send queue fell below the low-water mark (after `watch_drain`).
    Drained(ConnId),
    Signal(crate::signals::Signal),
    /// A timer may be due.
    Tick,
}

impl<S> Input<S> {
    /// The peer closed connection `conn` (a SIP stream when `sip`), or it failed.
    pub fn closed(conn: ConnId, sip: bool) -> Self {
        if sip {
            Input::SipClosed(conn)
        } else {
            Input::Closed(conn)
        }
    }
}

/// Past this many unwritten bytes on a stream the core holds its stanzas back.
pub const SEND_HIGH_WATER: usize = 256 * 1024;
/// Below this many the core may send again.
pub const SEND_LOW_WATER: usize = 64 * 1024;
/// A peer that lets this much pile up is not reading: the connection is closed.
pub const SEND_QUEUE_LIMIT: usize = 2 * 1024 * 1024;
/// Inputs a runtime buffers for the core. When full, stream readers wait (TCP
/// pushes back on the peer) and SIP requests over UDP are refused with 503.
pub const INPUT_QUEUE: usize = 4096;

/// Receive buffer asked for on the SIP UDP socket: a burst of requests waits in
/// the kernel (about 4000 small datagrams) rather than being dropped before the
/// gateway can read them, answer them, or refuse them with 503.
pub const SIP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

/// Widens the SIP socket's receive buffer (the kernel caps it at
/// net.core.rmem_max); logs what it got.
pub fn widen_receive_buffer(socket: &impl std::os::fd::AsFd) {
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(socket, SIP_RECEIVE_BUFFER);
    match rustix::net::sockopt::socket_recv_buffer_size(socket) {
        Ok(got) if got < SIP_RECEIVE_BUFFER => log(&format!(
            "SIP receive buffer {got} bytes (asked for {SIP_RECEIVE_BUFFER}; raise net.core.rmem_max for more headroom in bursts)"
        )),
        Ok(_) => {}
        Err(e) => log(&format!("SIP receive buffer: {e}")),
    }
}

/// A connection the runtime writes for.
struct Backlog {
    /// The core holds stanzas for this stream until told it drained.
    congested: bool,
    sip: bool,
}

/// The gateway with its durable store.
pub struct Host {
    pub gateway: Gateway,
    store: Store,
    log_bodies: bool,
    backlog: std::collections::HashMap<ConnId, Backlog>,
    /// Congested streams whose drain let out a batch: once it is handed to the
    /// runtime, either a drain report is awaited or the next batch goes.
    recheck: Vec<ConnId>,
    /// Where the wake-up grid starts (see [`Host::wake_at`]).
    epoch: std::time::Instant,
}

/// Timer wake-ups fall on this grid: the core's deadlines (SIP Timers E, J and K,
/// stream deadlines) are one per message at distinct instants, and waking for each
/// would cost more than the work it does. No timer involved needs finer precision
/// (RFC 3261's shortest is T1, 500 ms).
pub const WAKE_GRID: std::time::Duration = std::time::Duration::from_millis(10);

/// `due` rounded up to the next point of the [`WAKE_GRID`] that starts at `epoch`.
fn on_grid(epoch: std::time::Instant, due: std::time::Instant) -> std::time::Instant {
    let since = due.saturating_duration_since(epoch).as_nanos();
    let grid = WAKE_GRID.as_nanos();
    let rounded = since.div_ceil(grid).saturating_mul(grid);
    let later = u64::try_from(rounded.saturating_sub(since)).unwrap_or(0);
    due + std::time::Duration::from_nanos(later)
}

impl Host {
    pub fn new(gateway: Gateway, store: Store) -> Self {
        let log_bodies = gateway.config().gateway.log_message_bodies;
        Host {
            gateway,
            store,
            log_bodies,
            backlog: std::collections::HashMap::new(),
            recheck: Vec::new(),
            epoch: std::time::Instant::now(),
        }
    }

    /// Re-reads the configuration file; on success the gateway uses the new
    /// partners and settings, and established streams stay up. On error the old
    /// configuration stays in force.
    pub fn reload(&mut self, path: Option<&std::path::Path>) {
        let Some(path) = path else {
            log("reload: running on embedded defaults, no file to read");
            return;
        };
        match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| isthmus_core::config::Config::from_toml(&t).map_err(|e| e.to_string()))
        {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                let partners = loaded.config.partners.len();
                self.log_bodies = loaded.config.gateway.log_message_bodies;
                self.gateway.set_config(loaded.config);
                log(&format!(
                    "reloaded {}: {partners} partner(s)",
                    path.display()
                ));
            }
            Err(e) => log(&format!(
                "reload of {} refused, the running configuration stays: {e}",
                path.display()
            )),
        }
    }

    /// Feeds one input to the core, fires due timers and applies the outputs.
    /// Returns false once the gateway has stopped (SIGTERM): the runtime flushes
    /// and exits.
    pub fn handle<I: Io>(
        &mut self,
        input: Input<I::Stream>,
        io: &mut I,
        config_path: Option<&std::path::Path>,
    ) -> bool {
        let now = std::time::Instant::now();
        // The thread/task budget follows the connection limit.
        let max_streams = self.gateway.config().gateway.connection_limit as usize + 16;
        let gw = &mut self.gateway;
        match input {
            Input::Tick => {}
            Input::Accepted(stream) | Input::SipAccepted(stream, _)
                if io.open_streams() >= max_streams =>
            {
                io.refuse(stream);
            }
            Input::Accepted(stream) => {
                let conn = gw.accept(now);
                self.backlog.insert(conn, Backlog::new(false));
                io.adopt(conn, stream, false);
            }
            Input::SipAccepted(stream, tls) => {
                let conn = gw.sip_accept(now, tls);
                self.backlog.insert(conn, Backlog::new(true));
                io.adopt(conn, stream, true);
            }
            Input::Connected(conn, stream) => {
                self.backlog.insert(conn, Backlog::new(false));
                io.adopt(conn, stream, false);
                gw.connected(now, conn);
            }
            Input::ConnectFailed(conn, why) => gw.connect_failed(now, conn, &why),
            Input::Received(conn, bytes) => {
                gw.received(now, conn, &bytes);
                if let Some(i) = io.intake(conn) {
                    i.processed(bytes.len());
                }
            }
            Input::Closed(conn) => {
                self.backlog.remove(&conn);
                io.forget(conn);
                gw.peer_closed(now, conn);
            }
            Input::SipReceived(conn, bytes) => {
                gw.sip_received(now, conn, &bytes);
                if let Some(i) = io.intake(conn) {
                    i.processed(bytes.len());
                }
            }
            Input::SipClosed(conn) => {
                self.backlog.remove(&conn);
                io.forget(conn);
                gw.sip_closed(now, conn);
            }
            Input::Drained(conn) => {
                if let Some(b) = self.backlog.get_mut(&conn) {
                    if b.congested {
                        b.congested = gw.set_congested(now, conn, false);
                        if b.congested {
                            self.recheck.push(conn);
                        }
                    }
                }
            }
            Input::Resolved(q, result) => gw.resolved(now, q, result),
            Input::Datagram(from, bytes) => gw.sip_datagram(now, from, &bytes),
            Input::Signal(crate::signals::Signal::Reload) => self.reload(config_path),
            Input::Signal(crate::signals::Signal::Stop) => {
                log("stopping: closing every stream and answering what waits");
                self.gateway.shutdown(now);
                self.drain(io);
                return false;
            }
        }
        if self.gateway.poll_timeout().is_some_and(|t| t <= now) {
            self.gateway.handle_timeout(now);
        }
        self.drain(io);
        while let Some(conn) = self.recheck.pop() {
            if io.watch_drain(conn) {
                continue;
            }
            // Written already: the next batch goes now.
            let still = self.gateway.set_congested(now, conn, false);
            if let Some(b) = self.backlog.get_mut(&conn) {
                b.congested = still;
            }
            if still {
                self.recheck.push(conn);
            }
            self.drain(io);
        }
        true
    }

    /// When the runtime should wake for the core's timers: the earliest deadline,
    /// rounded up to [`WAKE_GRID`] so that deadlines close together share one
    /// wake-up. `None`: no timer is set.
    pub fn wake_at(&self) -> Option<std::time::Instant> {
        Some(on_grid(self.epoch, self.gateway.poll_timeout()?))
    }

    /// Drains every pending output into `io`.
    pub fn drain<I: Io>(&mut self, io: &mut I) {
        while let Some(out) = self.gateway.poll_output() {
            match out {
                Output::Persist(p) => {
                    if let Err(e) = self.store.apply(&p) {
                        // Without the store nothing may be acknowledged: stop here.
                        log(&format!(
                            "FATAL: cannot persist subscription state ({e}); stopping"
                        ));
                        std::process::exit(70);
                    }
                }
                Output::Transmit { conn, bytes } => {
                    let pending = io.transmit(conn, bytes);
                    self.account(io, conn, pending);
                }
                Output::Connect { conn, addr, .. } => io.connect(conn, addr),
                Output::Close { conn } => {
                    self.backlog.remove(&conn);
                    io.close(conn);
                }
                Output::Resolve { query, domain } => io.resolve(query, domain),
                Output::Reading { conn, on } => {
                    if on {
                        tracing::debug!("{conn}: reading again");
                    } else {
                        tracing::debug!(
                            "{conn}: not read while the SIP side has too many requests unanswered"
                        );
                    }
                    if let Some(i) = io.intake(conn) {
                        i.set_reading(on);
                    }
                }
                Output::SipSend { to, bytes } => io.sip_send(to, &bytes),
                Output::Event(e) => match &e {
                    Event::Authenticated { .. } => tracing::info!("{e}"),
                    Event::Failed { .. } | Event::Bounced { .. } => tracing::warn!("{e}"),
                    Event::Ignored { .. } | Event::Closed { .. } => tracing::debug!("{e}"),
                },
                Output::Deliver(el) => {
                    let shown = if self.log_bodies {
                        el.to_xml(ns::SERVER)
                    } else {
                        redact(&el.to_xml(ns::SERVER))
                    };
                    log(&format!(
                        "no SIP next hop configured; stanza for a local user dropped: {shown}"
                    ));
                }
                Output::Trace { .. } => {}
            }
        }
    }
}

impl Backlog {
    fn new(sip: bool) -> Self {
        Backlog {
            congested: false,
            sip,
        }
    }
}

impl Host {
    /// Judges what the runtime holds unwritten for `conn`: past the high-water
    /// mark the core holds its stanzas back; past the limit the peer is not reading
    /// and the connection is closed, so one stalled peer cannot take the gateway's
    /// memory.
    fn account<I: Io>(&mut self, io: &mut I, conn: ConnId, pending: usize) {
        let Some(b) = self.backlog.get_mut(&conn) else {
            return;
        };
        if pending > SEND_QUEUE_LIMIT {
            let now = std::time::Instant::now();
            let sip = b.sip;
            tracing::warn!(
                "{conn}: closed: the peer left {pending} bytes unread (limit {SEND_QUEUE_LIMIT})"
            );
            self.backlog.remove(&conn);
            io.close(conn);
            if sip {
                self.gateway.sip_closed(now, conn);
            } else {
                self.gateway.peer_closed(now, conn);
            }
        } else if !b.sip && !b.congested && pending > SEND_HIGH_WATER && io.watch_drain(conn) {
            b.congested = true;
            self.gateway
                .set_congested(std::time::Instant::now(), conn, true);
        }
    }
}

/// Message bodies are private unless `log_message_bodies` says otherwise (Lync's
/// EnableLoggingAllMessageBodies).
pub fn redact(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<body>") {
        out.push_str(&rest[..start + 6]);
        match rest[start..].find("</body>") {
            Some(end) => {
                out.push_str("[redacted]");
                rest = &rest[start + end..];
            }
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// One line in the log (tracing, INFO).
pub fn log(line: &str) {
    tracing::info!("{line}");
}

/// Logging to standard error; `ISTHMUS_LOG` picks the level (error, warn, info,
/// debug, trace; info by default).
pub fn init_logging() {
    let level = match std::env::var("ISTHMUS_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_line_names_every_listener() {
        let mut g = isthmus_core::config::GatewaySettings {
            served_domains: vec!["sip.example".into()],
            ..Default::default()
        };
        let s2s = SocketAddr::from(([127, 0, 0, 1], 5269));
        let sip = SocketAddr::from(([127, 0, 0, 1], 5060));
        assert_eq!(
            serving_line(&g, s2s, sip),
            "serving sip.example — XMPP s2s on 127.0.0.1:5269, SIP on udp and tcp 127.0.0.1:5060"
        );
        g.sip_tls_address = Some(SocketAddr::from(([127, 0, 0, 1], 5061)));
        assert!(serving_line(&g, s2s, sip)
            .ends_with("udp and tcp 127.0.0.1:5060 and tls 127.0.0.1:5061"));
    }

    #[test]
    fn timer_wake_ups_fall_on_the_grid_never_before_the_deadline() {
        let epoch = std::time::Instant::now();
        let us = |n| epoch + std::time::Duration::from_micros(n);
        // Deadlines within one grid step share a wake-up at its end.
        assert_eq!(on_grid(epoch, us(1)), us(10_000));
        assert_eq!(on_grid(epoch, us(9_999)), us(10_000));
        assert_eq!(on_grid(epoch, us(10_000)), us(10_000));
        assert_eq!(on_grid(epoch, us(10_001)), us(20_000));
        assert_eq!(on_grid(epoch, us(5_000_250)), us(5_010_000));
        // A deadline before the epoch is due already: no later.
        assert_eq!(on_grid(us(10), epoch), epoch);
    }

    /// Records what the driver asks of the runtime; streams are unit values. A
    /// reading peer takes each write at once; otherwise everything stays queued.
    #[derive(Default)]
    struct FakeIo {
        transmitted: std::collections::HashMap<ConnId, usize>,
        closed: Vec<ConnId>,
        reads: bool,
    }

    impl Io for FakeIo {
        type Stream = ();
        fn adopt(&mut self, _: ConnId, _: (), _: bool) {}
        fn forget(&mut self, _: ConnId) {}
        fn open_streams(&self) -> usize {
            0
        }
        fn refuse(&mut self, _: ()) {}
        fn transmit(&mut self, conn: ConnId, bytes: Vec<u8>) -> usize {
            let total = self.transmitted.entry(conn).or_default();
            *total += bytes.len();
            if self.reads {
                bytes.len()
            } else {
                *total
            }
        }
        fn watch_drain(&mut self, _: ConnId) -> bool {
            !self.reads
        }
        fn intake(&self, _: ConnId) -> Option<&crate::intake::Intake> {
            None
        }
        fn connect(&mut self, _: ConnId, _: SocketAddr) {}
        fn close(&mut self, conn: ConnId) {
            self.closed.push(conn);
        }
        fn resolve(&mut self, _: u64, _: String) {}
        fn sip_send(&mut self, _: SocketAddr, _: &[u8]) {}
    }

    fn host(name: &str) -> Host {
        let dir =
            std::env::temp_dir().join(format!("isthmus-driver-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Store::open(&dir.join("state.sqlite")).expect("store");
        let mut config = isthmus_core::config::Config::default();
        config.gateway.served_domains = vec!["sip.test".into()];
        let now = std::time::Instant::now();
        Host::new(Gateway::new(config, None, 1, now, 1_780_272_000), store)
    }

    /// One OPTIONS request on a SIP stream; each gets a response of a few hundred bytes.
    fn options(i: usize) -> Vec<u8> {
        format!(
            "OPTIONS sip:sip.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.9:5070;branch=z9hG4bKopt{i}\r\n\
             From: <sip:a@sip.test>;tag=1\r\nTo: <sip:sip.test>\r\nCall-ID: opt{i}\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn a_peer_that_never_reads_is_closed_at_the_send_queue_limit() {
        let mut h = host("unread");
        let mut io = FakeIo::default();
        h.handle(Input::SipAccepted((), false), &mut io, None);
        let conn = h.backlog.keys().next().copied().expect("the stream");
        let mut i = 0;
        while io.closed.is_empty() {
            h.handle(Input::SipReceived(conn, options(i)), &mut io, None);
            i += 1;
            assert!(i < 100_000, "never closed");
        }
        assert_eq!(io.closed, [conn]);
        let queued = io.transmitted.get(&conn).copied().unwrap_or(0);
        assert!(queued > SEND_QUEUE_LIMIT && queued < SEND_QUEUE_LIMIT + 4096);
    }

    #[test]
    fn a_peer_that_reads_is_never_closed() {
        let mut h = host("reads");
        let mut io = FakeIo {
            reads: true,
            ..FakeIo::default()
        };
        h.handle(Input::SipAccepted((), false), &mut io, None);
        let conn = h.backlog.keys().next().copied().expect("the stream");
        for i in 0..20_000 {
            h.handle(Input::SipReceived(conn, options(i)), &mut io, None);
        }
        assert!(io.closed.is_empty());
        assert!(io.transmitted.get(&conn).copied().unwrap_or(0) > SEND_QUEUE_LIMIT);
    }

    #[test]
    fn bodies_are_redacted() {
        assert_eq!(
            redact("<message><body>secret</body><thread>t</thread></message>"),
            "<message><body>[redacted]</body><thread>t</thread></message>"
        );
        assert_eq!(redact("<presence/>"), "<presence/>");
    }
}
