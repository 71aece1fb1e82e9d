//! `isthmus-std`: the gateway on blocking sockets. Listener, reader, writer,
//! connect and resolve threads move bytes and report through one bounded
//! channel; the core is behind one lock, taken in turn by the thread that
//! brings an input when none waits, or by the core's own thread ([`inbox`]).
//! Every decision is the core's, every input is dispatched by the shared host layer.
#![forbid(unsafe_code)]

mod inbox;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{channel, Receiver, Sender, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use isthmus_core::gateway::{Admission, ConnId};
use isthmus_host::cli::{self, Setup};
use isthmus_host::driver::{log, Host, Input, Io, INPUT_QUEUE};
use isthmus_host::intake::{Intake, Listener};
use isthmus_host::resolve::Resolver;
use isthmus_host::sendq::{self, Backlog};
use isthmus_host::signals;

type In = Input<TcpStream>;
type Inbox = inbox::Inbox<StdCore>;

/// The host and what it drives, behind the inbox's lock.
struct StdCore {
    host: Host,
    io: StdIo,
    config_path: Option<PathBuf>,
}

impl inbox::Core for StdCore {
    type Input = In;

    fn handle(&mut self, input: Option<In>) -> bool {
        let input = input.unwrap_or(Input::Tick);
        self.host
            .handle(input, &mut self.io, self.config_path.as_deref())
    }

    fn wake_at(&self) -> Option<std::time::Instant> {
        self.host.wake_at()
    }
}

struct Stream {
    /// The core's own handle, for writing at once while the writer is idle.
    direct: TcpStream,
    queue: Sender<Vec<u8>>,
    backlog: Arc<Backlog>,
    intake: Arc<Intake>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A reader told to wait goes on to see the socket shut.
        self.intake.close();
    }
}

struct StdIo {
    tx: Inbox,
    /// Per connection: the queue its writer thread drains (dropping it lets the
    /// writer finish what is queued and shut the socket), and what its reader
    /// shares with the core.
    streams: HashMap<ConnId, Stream>,
    sip: UdpSocket,
    resolver: Arc<Resolver>,
}

fn spawn_reader(tx: Inbox, conn: ConnId, mut stream: TcpStream, sip: bool, intake: Arc<Intake>) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            while let Some(wait) = intake.wait() {
                wait.wait();
            }
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Input::closed(conn, sip));
                    return;
                }
                Ok(n) => {
                    intake.handed(n);
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

/// Writes what the core transmits without ever blocking the core: a peer
/// that reads slowly holds up only its own writer, and the host judges what is
/// queued (`backlog`) to hold stanzas back or close a peer that never reads.
fn spawn_writer(
    tx: Inbox,
    conn: ConnId,
    mut stream: TcpStream,
    queue: Receiver<Vec<u8>>,
    backlog: Arc<Backlog>,
) {
    thread::spawn(move || {
        let mut batch = Vec::new();
        while let Ok(first) = queue.recv() {
            let out = sendq::gather(&mut batch, &first, || queue.try_recv().ok());
            let written = out.len();
            if let Err(e) = stream.write_all(out) {
                log(&format!("{conn}: write failed: {e}"));
                // The reader sees the shutdown and reports the close.
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
            if backlog.written(written) && tx.send(Input::Drained(conn)).is_err() {
                return;
            }
        }
        // The core closed or forgot the connection; what it queued is written.
        let _ = stream.shutdown(Shutdown::Both);
    });
}

fn spawn_listener(tx: Inbox, listener: TcpListener, sip: Option<bool>) {
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let input = match sip {
                Some(tls) => Input::SipAccepted(stream, tls),
                None => Input::Accepted(stream),
            };
            if tx.send(input).is_err() {
                return;
            }
        }
    });
}

impl Io for StdIo {
    type Stream = TcpStream;

    fn adopt(&mut self, conn: ConnId, stream: TcpStream, sip: bool) {
        // Small stanzas go out at once (DESIGN.md).
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        match stream
            .try_clone()
            .and_then(|r| Ok((r, stream.try_clone()?)))
        {
            Ok((reader, direct)) => {
                let intake = Arc::new(Intake::default());
                spawn_reader(self.tx.clone(), conn, reader, sip, intake.clone());
                let (queue, writes) = channel();
                let backlog = Arc::new(Backlog::default());
                spawn_writer(self.tx.clone(), conn, stream, writes, backlog.clone());
                self.streams.insert(
                    conn,
                    Stream {
                        direct,
                        queue,
                        backlog,
                        intake,
                    },
                );
            }
            Err(e) => {
                log(&format!("{conn}: cannot use the connection: {e}"));
                let closed = Input::closed(conn, sip);
                // Not from this thread: it holds the core, which a full channel waits on.
                let tx = self.tx.clone();
                thread::spawn(move || tx.send(closed));
            }
        }
    }

    fn forget(&mut self, conn: ConnId) {
        self.streams.remove(&conn);
    }

    fn open_streams(&self) -> usize {
        self.streams.len()
    }

    fn refuse(&mut self, stream: TcpStream) {
        let _ = stream.shutdown(Shutdown::Both);
    }

    fn transmit(&mut self, conn: ConnId, bytes: Vec<u8>) -> usize {
        let Some(s) = self.streams.get(&conn) else {
            return 0;
        };
        // Only what the socket will not take at once wakes the writer.
        let Some(bytes) = sendq::send_now(&s.direct, &s.backlog, bytes) else {
            return 0;
        };
        let pending = s.backlog.queued(bytes.len());
        // A writer that gave up has shut the socket; its reader reports that.
        let _ = s.queue.send(bytes);
        pending
    }

    fn watch_drain(&mut self, conn: ConnId) -> bool {
        self.streams.get(&conn).is_some_and(|s| s.backlog.watch())
    }

    fn intake(&self, conn: ConnId) -> Option<&Intake> {
        self.streams.get(&conn).map(|s| &*s.intake)
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr) {
        let tx = self.tx.clone();
        thread::spawn(move || {
            let input = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(s) => Input::Connected(conn, s),
                Err(e) => Input::ConnectFailed(conn, format!("{addr}: {e}")),
            };
            let _ = tx.send(input);
        });
    }

    fn close(&mut self, conn: ConnId) {
        // The writer flushes what is queued, then shuts the socket.
        self.streams.remove(&conn);
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
    let (tx, rx) = inbox::inbox(INPUT_QUEUE);
    {
        let tx = tx.clone();
        signals::watch(move |sig| {
            let _ = tx.send(Input::Signal(sig));
        })?;
    }
    let g = &config.gateway;
    let listen = g.s2s_listen;
    let listener =
        TcpListener::bind(listen).map_err(|e| format!("s2s listener on {listen}: {e}"))?;
    spawn_listener(tx.clone(), listener, None);
    let sip_addr = g.sip_address;
    let sip = UdpSocket::bind(sip_addr).map_err(|e| format!("SIP on udp {sip_addr}: {e}"))?;
    isthmus_host::driver::widen_receive_buffer(&sip);
    let sip_tcp = TcpListener::bind(sip_addr).map_err(|e| format!("SIP on tcp {sip_addr}: {e}"))?;
    spawn_listener(tx.clone(), sip_tcp, Some(false));
    if let Some(tls_addr) = g.sip_tls_address {
        let l = TcpListener::bind(tls_addr).map_err(|e| format!("SIP on tls {tls_addr}: {e}"))?;
        spawn_listener(tx.clone(), l, Some(true));
    }
    let sip_reader = sip.try_clone().map_err(|e| e.to_string())?;
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut admission = Admission::default();
            loop {
                match sip_reader.recv_from(&mut buf) {
                    Ok((n, from)) => match tx.try_send(Input::Datagram(from, buf[..n].to_vec())) {
                        Ok(()) => admission.admitted(&buf[..n]),
                        // The core is behind: refuse new requests at once rather
                        // than let them wait into the client's retransmissions.
                        Err(TrySendError::Full(input)) => match admission.refusal(&buf[..n]) {
                            Some(reply) => {
                                let _ = sip_reader.send_to(&reply, from);
                            }
                            None => {
                                if tx.send(input).is_err() {
                                    return;
                                }
                            }
                        },
                        Err(TrySendError::Disconnected(_)) => return,
                    },
                    Err(e) => log(&format!("SIP receive: {e}")),
                }
            }
        });
    }
    log(&isthmus_host::driver::serving_line(g, listen, sip_addr));
    let inbox = tx.clone();
    let mut io = StdIo {
        tx,
        streams: HashMap::new(),
        sip,
        resolver,
    };
    host.drain(&mut io);
    let core = StdCore {
        host,
        io,
        config_path,
    };
    inbox::run(&inbox, core, rx);
    Ok(())
}

fn main() -> ExitCode {
    cli::main(run)
}
