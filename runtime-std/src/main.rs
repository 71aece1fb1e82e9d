//! `isthmus-std`: the gateway on blocking sockets. One thread owns the core and
//! applies its outputs; listener, reader, connect and resolve threads only move
//! bytes and report back through one channel. Every decision is the core's.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use isthmus_core::gateway::ConnId;
use isthmus_host::cli::{self, Setup};
use isthmus_host::driver::{log, Io};
use isthmus_host::resolve::Resolver;
use isthmus_host::signals::{self, Signal};

/// What the I/O threads report to the core thread.
enum Input {
    Accepted(TcpStream),
    Connected(ConnId, TcpStream),
    ConnectFailed(ConnId, String),
    Received(ConnId, Vec<u8>),
    Closed(ConnId),
    Resolved(u64, Result<Vec<SocketAddr>, String>),
    Datagram(SocketAddr, Vec<u8>),
    SipAccepted(TcpStream, bool),
    SipReceived(ConnId, Vec<u8>),
    SipClosed(ConnId),
    Signal(Signal),
}

struct StdIo {
    tx: Sender<Input>,
    streams: HashMap<ConnId, TcpStream>,
    sip: UdpSocket,
    resolver: std::sync::Arc<Resolver>,
}

fn spawn_reader(tx: Sender<Input>, conn: ConnId, mut stream: TcpStream, sip: bool) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(if sip {
                        Input::SipClosed(conn)
                    } else {
                        Input::Closed(conn)
                    });
                    return;
                }
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    let input = if sip {
                        Input::SipReceived(conn, bytes)
                    } else {
                        Input::Received(conn, bytes)
                    };
                    if tx.send(input).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

fn spawn_listener(tx: Sender<Input>, listener: TcpListener, tls: bool) {
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if tx.send(Input::SipAccepted(stream, tls)).is_err() {
                return;
            }
        }
    });
}

impl StdIo {
    fn adopt(&mut self, conn: ConnId, stream: TcpStream) {
        self.adopt_as(conn, stream, false);
    }

    fn adopt_as(&mut self, conn: ConnId, stream: TcpStream, sip: bool) {
        // Small stanzas go out at once (DESIGN.md).
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        match stream.try_clone() {
            Ok(reader) => {
                spawn_reader(self.tx.clone(), conn, reader, sip);
                self.streams.insert(conn, stream);
            }
            Err(e) => {
                log(&format!("{conn}: cannot use the connection: {e}"));
                let _ = self.tx.send(Input::Closed(conn));
            }
        }
    }
}

impl Io for StdIo {
    fn transmit(&mut self, conn: ConnId, bytes: &[u8]) {
        if let Some(s) = self.streams.get_mut(&conn) {
            if let Err(e) = s.write_all(bytes) {
                log(&format!("{conn}: write failed: {e}"));
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr) {
        let tx = self.tx.clone();
        thread::spawn(
            move || match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(s) => {
                    let _ = tx.send(Input::Connected(conn, s));
                }
                Err(e) => {
                    let _ = tx.send(Input::ConnectFailed(conn, format!("{addr}: {e}")));
                }
            },
        );
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(s) = self.streams.remove(&conn) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn resolve(&mut self, query: u64, domain: String) {
        let tx = self.tx.clone();
        let resolver = self.resolver.clone();
        thread::spawn(move || {
            let _ = tx.send(Input::Resolved(query, resolver.resolve(&domain)));
        });
    }

    fn sip_send(&mut self, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.sip.send_to(bytes, to) {
            log(&format!("SIP to {to}: {e}"));
        }
    }
}

fn run(setup: Setup) -> Result<(), String> {
    let Setup {
        mut host,
        config,
        resolver,
        config_path,
        ..
    } = setup;
    let (tx, rx) = channel();
    {
        let tx = tx.clone();
        signals::watch(move |sig| {
            let _ = tx.send(Input::Signal(sig));
        })?;
    }
    let listen = config.gateway.s2s_listen;
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("s2s listener on {listen}: {e}"))?;
    let sip_addr = config.gateway.sip_address;
    let sip = UdpSocket::bind(sip_addr).map_err(|e| format!("SIP on udp {sip_addr}: {e}"))?;
    let sip_reader = sip.try_clone().map_err(|e| e.to_string())?;
    let sip_tcp = TcpListener::bind(sip_addr).map_err(|e| format!("SIP on tcp {sip_addr}: {e}"))?;
    spawn_listener(tx.clone(), sip_tcp, false);
    if let Some(tls_addr) = config.gateway.sip_tls_address {
        let l = TcpListener::bind(tls_addr).map_err(|e| format!("SIP on tls {tls_addr}: {e}"))?;
        spawn_listener(tx.clone(), l, true);
    }
    log(&format!(
        "serving {} — XMPP s2s on {listen}, SIP on udp and tcp {sip_addr}",
        config.gateway.served_domains.join(", ")
    ));
    {
        let tx = tx.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if tx.send(Input::Accepted(stream)).is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match sip_reader.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if tx.send(Input::Datagram(from, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) => log(&format!("SIP receive: {e}")),
                }
            }
        });
    }
    // The thread budget follows the connection limit: beyond it, new TCP
    // connections are dropped before a reader thread is spent on them.
    let max_streams = config.gateway.connection_limit as usize + 16;
    let mut io = StdIo {
        tx,
        streams: HashMap::new(),
        sip,
        resolver,
    };
    loop {
        host.drain(&mut io);
        let now = Instant::now();
        let wait = host
            .gateway
            .poll_timeout()
            .map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(now)
            });
        let input = match rx.recv_timeout(wait) {
            Ok(i) => i,
            Err(RecvTimeoutError::Timeout) => {
                host.gateway.handle_timeout(Instant::now());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        let now = Instant::now();
        match input {
            Input::Accepted(stream) => {
                if io.streams.len() >= max_streams {
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                let conn = host.gateway.accept(now);
                io.adopt(conn, stream);
            }
            Input::Connected(conn, stream) => {
                io.adopt(conn, stream);
                host.gateway.connected(now, conn);
            }
            Input::ConnectFailed(conn, why) => host.gateway.connect_failed(now, conn, &why),
            Input::Received(conn, bytes) => host.gateway.received(now, conn, &bytes),
            Input::Closed(conn) => {
                io.streams.remove(&conn);
                host.gateway.peer_closed(now, conn);
            }
            Input::Resolved(q, result) => host.gateway.resolved(now, q, result),
            Input::Datagram(from, bytes) => host.gateway.sip_datagram(now, from, &bytes),
            Input::SipAccepted(stream, tls) => {
                if io.streams.len() >= max_streams {
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                let conn = host.gateway.sip_accept(now, tls);
                io.adopt_as(conn, stream, true);
            }
            Input::SipReceived(conn, bytes) => host.gateway.sip_received(now, conn, &bytes),
            Input::SipClosed(conn) => {
                io.streams.remove(&conn);
                host.gateway.sip_closed(now, conn);
            }
            Input::Signal(Signal::Reload) => host.reload(config_path.as_deref()),
            Input::Signal(Signal::Stop) => {
                log("stopping: closing every stream and answering what waits");
                host.gateway.shutdown(now);
                host.drain(&mut io);
                return Ok(());
            }
        }
        if host.gateway.poll_timeout().is_some_and(|t| t <= now) {
            host.gateway.handle_timeout(now);
        }
    }
}

fn main() -> ExitCode {
    cli::main(run)
}
