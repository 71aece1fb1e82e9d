//! `check --probe DOMAIN`: negotiate a real s2s stream with a partner and report
//! the method it ended with, or exactly why it failed. A small blocking loop of
//! its own (one outbound stream), so it runs the same from either binary.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use isthmus_core::gateway::{ConnId, Direction, Event, Gateway, Output};

use crate::resolve::Resolver;

/// Negotiates from `local` to `remote`; returns the verdict line.
pub fn probe(
    mut gateway: Gateway,
    resolver: &Resolver,
    local: &str,
    remote: &str,
) -> Result<String, String> {
    let start = Instant::now();
    gateway.probe(start, local, remote);
    let mut stream: Option<(ConnId, TcpStream)> = None;
    let mut buf = vec![0u8; 16 * 1024];
    while start.elapsed() < Duration::from_secs(70) {
        while let Some(out) = gateway.poll_output() {
            let now = Instant::now();
            match out {
                Output::Resolve { query, domain } => {
                    gateway.resolved(now, query, resolver.resolve(&domain))
                }
                Output::Connect { conn, addr, .. } => {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                            stream = Some((conn, s));
                            gateway.connected(now, conn);
                        }
                        Err(e) => gateway.connect_failed(now, conn, &format!("{addr}: {e}")),
                    }
                }
                Output::Transmit { conn, bytes } => {
                    if let Some((c, s)) = stream.as_mut() {
                        if *c == conn {
                            s.write_all(&bytes)
                                .map_err(|e| format!("writing to {remote}: {e}"))?;
                        }
                    }
                }
                Output::Event(Event::Authenticated {
                    direction: Direction::Outbound,
                    method,
                    certificate,
                    ..
                }) => {
                    return Ok(format!(
                        "{local} -> {remote}: authenticated by {method}{}",
                        certificate
                            .map(|c| format!(" (their certificate: {c})"))
                            .unwrap_or_default()
                    ));
                }
                Output::Event(Event::Failed {
                    by,
                    condition,
                    text,
                    ..
                }) => {
                    let who = match by {
                        isthmus_core::gateway::By::Us => "we closed it",
                        isthmus_core::gateway::By::Peer => "they closed it",
                    };
                    return Err(format!(
                        "{local} -> {remote}: failed, {who} with <{condition}/>: {text}"
                    ));
                }
                _ => {}
            }
        }
        let now = Instant::now();
        if let Some((conn, s)) = stream.as_mut() {
            match s.read(&mut buf) {
                Ok(0) => gateway.peer_closed(now, *conn),
                Ok(n) => gateway.received(now, *conn, buf.get(..n).unwrap_or_default()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("reading from {remote}: {e}")),
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        if gateway.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            gateway.handle_timeout(Instant::now());
        }
    }
    Err(format!("{local} -> {remote}: no verdict within 70 s"))
}
