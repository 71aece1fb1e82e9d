//! Applying the core's outputs, the same way in both runtimes: persist first (the
//! core orders outputs so that nothing depends on a change before it is durable),
//! then hand transmits, connects, closes, DNS lookups and SIP datagrams to the
//! runtime's I/O, and log events.

use std::net::SocketAddr;

use isthmus_core::gateway::{ConnId, Event, Gateway, Output};
use isthmus_core::xml::ns;

use crate::store::Store;

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
    fn transmit(&mut self, conn: ConnId, bytes: &[u8]);
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
    Signal(crate::signals::Signal),
    /// A timer may be due.
    Tick,
}

/// The gateway with its durable store.
pub struct Host {
    pub gateway: Gateway,
    store: Store,
    log_bodies: bool,
}

impl Host {
    pub fn new(gateway: Gateway, store: Store) -> Self {
        let log_bodies = gateway.config().gateway.log_message_bodies;
        Host {
            gateway,
            store,
            log_bodies,
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
                io.adopt(conn, stream, false);
            }
            Input::SipAccepted(stream, tls) => {
                let conn = gw.sip_accept(now, tls);
                io.adopt(conn, stream, true);
            }
            Input::Connected(conn, stream) => {
                io.adopt(conn, stream, false);
                gw.connected(now, conn);
            }
            Input::ConnectFailed(conn, why) => gw.connect_failed(now, conn, &why),
            Input::Received(conn, bytes) => gw.received(now, conn, &bytes),
            Input::Closed(conn) => {
                io.forget(conn);
                gw.peer_closed(now, conn);
            }
            Input::SipReceived(conn, bytes) => gw.sip_received(now, conn, &bytes),
            Input::SipClosed(conn) => {
                io.forget(conn);
                gw.sip_closed(now, conn);
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
        true
    }

    /// How long the runtime may wait for input before a timer is due.
    pub fn wait(&self) -> std::time::Duration {
        let now = std::time::Instant::now();
        self.gateway
            .poll_timeout()
            .map_or(std::time::Duration::from_secs(3600), |t| {
                t.saturating_duration_since(now)
            })
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
                Output::Transmit { conn, bytes } => io.transmit(conn, &bytes),
                Output::Connect { conn, addr, .. } => io.connect(conn, addr),
                Output::Close { conn } => io.close(conn),
                Output::Resolve { query, domain } => io.resolve(query, domain),
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
    fn bodies_are_redacted() {
        assert_eq!(
            redact("<message><body>secret</body><thread>t</thread></message>"),
            "<message><body>[redacted]</body><thread>t</thread></message>"
        );
        assert_eq!(redact("<presence/>"), "<presence/>");
    }
}
