//! `isthmus-smol`: the gateway on smol. One task owns the core; accept, read,
//! write, connect and resolve tasks only move bytes and report back through one
//! channel, all on one thread (a local executor driven by the reactor), so that
//! no message costs a wakeup of another thread. Every decision is the core's, every input is dispatched by the shared
//! host layer.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use isthmus_core::gateway::{Admission, ConnId};
use isthmus_host::cli::{self, Setup};
use isthmus_host::driver::{log, Input, Io, INPUT_QUEUE};
use isthmus_host::intake::Intake;
use isthmus_host::resolve::Resolver;
use isthmus_host::sendq::{self, Backlog};
use isthmus_host::signals;
use smol::channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use smol::future::FutureExt;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::{TcpListener, TcpStream};
use smol::{Async, Timer};

type In = Input<TcpStream>;

/// A connection's writer task (its queue, the stream to shut down, what it
/// holds) and what its reader task shares with the core's.
struct Writer {
    queue: Sender<Vec<u8>>,
    stream: TcpStream,
    backlog: Arc<Backlog>,
    intake: Arc<Intake>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A reader told to wait goes on to see the socket shut.
        self.intake.close();
    }
}

struct SmolIo {
    tx: Sender<In>,
    /// Per connection: the queue its writer task drains, and the stream to shut down.
    writers: HashMap<ConnId, Writer>,
    sip: Arc<Async<std::net::UdpSocket>>,
    /// Datagrams the socket would not take at once, for the task that waits
    /// for it to be writable; while any wait, later ones queue behind them.
    sip_out: Sender<(SocketAddr, Vec<u8>)>,
    sip_queued: Rc<Cell<usize>>,
    resolver: Arc<Resolver>,
}

impl Io for SmolIo {
    type Stream = TcpStream;

    fn adopt(&mut self, conn: ConnId, stream: TcpStream, sip: bool) {
        // Small stanzas go out at once (DESIGN.md).
        let _ = stream.set_nodelay(true);
        let (wtx, wrx) = unbounded::<Vec<u8>>();
        let mut writer = stream.clone();
        let drained = self.tx.clone();
        let backlog = Arc::new(Backlog::default());
        let queued = backlog.clone();
        // The host judges what is queued here (`backlog`) to hold stanzas back
        // from a slow reader or close a peer that never reads.
        spawn(async move {
            let mut batch = Vec::new();
            while let Ok(first) = wrx.recv().await {
                let out = sendq::gather(&mut batch, &first, || wrx.try_recv().ok());
                let written = out.len();
                if writer.write_all(out).await.is_err() {
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
                if queued.written(written) && drained.send(Input::Drained(conn)).await.is_err() {
                    return;
                }
            }
        });
        let mut reader = stream.clone();
        let tx = self.tx.clone();
        let intake = Arc::new(Intake::default());
        let handed = intake.clone();
        spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                while let Some(wait) = handed.wait() {
                    wait.await;
                }
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let closed = if sip {
                            Input::SipClosed(conn)
                        } else {
                            Input::Closed(conn)
                        };
                        let _ = tx.send(closed).await;
                        return;
                    }
                    Ok(n) => {
                        handed.handed(n);
                        let bytes = buf[..n].to_vec();
                        let input = if sip {
                            Input::SipReceived(conn, bytes)
                        } else {
                            Input::Received(conn, bytes)
                        };
                        if tx.send(input).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        self.writers.insert(
            conn,
            Writer {
                queue: wtx,
                stream,
                backlog,
                intake,
            },
        );
    }

    fn forget(&mut self, conn: ConnId) {
        self.writers.remove(&conn);
    }

    fn open_streams(&self) -> usize {
        self.writers.len()
    }

    fn refuse(&mut self, stream: TcpStream) {
        let _ = stream.shutdown(Shutdown::Both);
    }

    fn transmit(&mut self, conn: ConnId, bytes: Vec<u8>) -> usize {
        let Some(w) = self.writers.get(&conn) else {
            return 0;
        };
        // Only what the socket will not take at once goes to the writer task.
        let Some(bytes) = sendq::send_now(&w.stream, &w.backlog, bytes) else {
            return 0;
        };
        let pending = w.backlog.queued(bytes.len());
        let _ = w.queue.try_send(bytes);
        pending
    }

    fn watch_drain(&mut self, conn: ConnId) -> bool {
        self.writers.get(&conn).is_some_and(|w| w.backlog.watch())
    }

    fn intake(&self, conn: ConnId) -> Option<&Intake> {
        self.writers.get(&conn).map(|w| &*w.intake)
    }

    fn connect(&mut self, conn: ConnId, addr: SocketAddr) {
        let tx = self.tx.clone();
        spawn(async move {
            let attempt = TcpStream::connect(addr).or(async {
                Timer::after(Duration::from_secs(10)).await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out",
                ))
            });
            let input = match attempt.await {
                Ok(s) => Input::Connected(conn, s),
                Err(e) => Input::ConnectFailed(conn, format!("{addr}: {e}")),
            };
            let _ = tx.send(input).await;
        });
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(w) = self.writers.remove(&conn) {
            // Let the writer flush what is queued, then shut the socket.
            w.queue.close();
            let stream = w.stream.clone();
            spawn(async move {
                Timer::after(Duration::from_millis(50)).await;
                let _ = stream.shutdown(Shutdown::Both);
            });
        }
    }

    fn resolve(&mut self, query: u64, domain: String) {
        let tx = self.tx.clone();
        let resolver = self.resolver.clone();
        spawn(async move {
            let result = smol::unblock(move || resolver.resolve(&domain)).await;
            let _ = tx.send(Input::Resolved(query, result)).await;
        });
    }

    fn sip_send(&mut self, to: SocketAddr, bytes: &[u8]) {
        if self.sip_queued.get() == 0 {
            // The common case: the socket takes it now, with no copy and no
            // task switch.
            match self.sip.get_ref().send_to(bytes, to) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log(&format!("SIP to {to}: {e}"));
                    return;
                }
            }
        }
        self.sip_queued.set(self.sip_queued.get() + 1);
        let _ = self.sip_out.try_send((to, bytes.to_vec()));
    }
}

fn accept_loop(tx: Sender<In>, listener: TcpListener, sip: Option<bool>) {
    spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let input = match sip {
                Some(tls) => Input::SipAccepted(stream, tls),
                None => Input::Accepted(stream),
            };
            if tx.send(input).await.is_err() {
                return;
            }
        }
    });
}

async fn run_async(setup: Setup) -> Result<(), String> {
    let Setup {
        mut host,
        config,
        resolver,
        config_path,
        ..
    } = setup;
    let (tx, rx): (Sender<In>, Receiver<In>) = bounded(INPUT_QUEUE);
    {
        let tx = tx.clone();
        signals::watch(move |sig| {
            let _ = tx.send_blocking(Input::Signal(sig));
        })?;
    }
    let g = &config.gateway;
    let listen = g.s2s_listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("s2s listener on {listen}: {e}"))?;
    accept_loop(tx.clone(), listener, None);
    let sip_addr = g.sip_address;
    let sip = Async::<std::net::UdpSocket>::bind(sip_addr)
        .map(Arc::new)
        .map_err(|e| format!("SIP on udp {sip_addr}: {e}"))?;
    isthmus_host::driver::widen_receive_buffer(&sip);
    let sip_tcp = TcpListener::bind(sip_addr)
        .await
        .map_err(|e| format!("SIP on tcp {sip_addr}: {e}"))?;
    accept_loop(tx.clone(), sip_tcp, Some(false));
    if let Some(tls_addr) = g.sip_tls_address {
        let l = TcpListener::bind(tls_addr)
            .await
            .map_err(|e| format!("SIP on tls {tls_addr}: {e}"))?;
        accept_loop(tx.clone(), l, Some(true));
    }
    {
        let tx = tx.clone();
        let sip = sip.clone();
        spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut admission = Admission::default();
            loop {
                match sip.recv_from(&mut buf).await {
                    Ok((n, from)) => match tx.try_send(Input::Datagram(from, buf[..n].to_vec())) {
                        Ok(()) => admission.admitted(&buf[..n]),
                        // The core is behind: refuse new requests at once rather
                        // than let them wait into the client's retransmissions.
                        Err(TrySendError::Full(input)) => match admission.refusal(&buf[..n]) {
                            Some(reply) => {
                                let _ = sip.send_to(&reply, from).await;
                            }
                            None => {
                                if tx.send(input).await.is_err() {
                                    return;
                                }
                            }
                        },
                        Err(TrySendError::Closed(_)) => return,
                    },
                    Err(e) => log(&format!("SIP receive: {e}")),
                }
            }
        });
    }
    let (sip_out, sip_rx) = unbounded::<(SocketAddr, Vec<u8>)>();
    let sip_queued = Rc::new(Cell::new(0usize));
    {
        let sip = sip.clone();
        let queued = sip_queued.clone();
        spawn(async move {
            while let Ok((to, bytes)) = sip_rx.recv().await {
                if let Err(e) = sip.send_to(&bytes, to).await {
                    log(&format!("SIP to {to}: {e}"));
                }
                queued.set(queued.get().saturating_sub(1));
            }
        });
    }
    log(&format!(
        "serving {} — XMPP s2s on {listen}, SIP on udp and tcp {sip_addr}",
        g.served_domains.join(", ")
    ));
    let mut io = SmolIo {
        tx,
        writers: HashMap::new(),
        sip,
        sip_out,
        sip_queued,
        resolver,
    };
    host.drain(&mut io);
    // One timer, moved only when the core's next wake-up moves: most inputs
    // leave it where it is, and the reactor's timer set is not touched.
    let mut timer = Timer::never();
    let mut armed = None;
    loop {
        let at = host.wake_at();
        if at != armed {
            match at {
                Some(t) => timer.set_at(t),
                None => timer = Timer::never(),
            }
            armed = at;
        }
        let input = rx
            .recv()
            .or(async {
                (&mut timer).await;
                Ok(Input::Tick)
            })
            .await
            .map_err(|_| "the input channel closed".to_owned())?;
        if matches!(input, Input::Tick) {
            // Fired: it is set again for the next wake-up.
            armed = None;
        }
        if !host.handle(input, &mut io, config_path.as_deref()) {
            // Let the writer tasks put the closing bytes on the wire.
            Timer::after(Duration::from_millis(300)).await;
            return Ok(());
        }
    }
}

thread_local! {
    /// Every task runs on the thread that owns the core: a read, the core's
    /// decision and the write happen without waking another thread, and the
    /// thread sleeps only in the reactor's epoll wait.
    static EXECUTOR: smol::LocalExecutor<'static> = const { smol::LocalExecutor::new() };
}

fn spawn(task: impl std::future::Future<Output = ()> + 'static) {
    EXECUTOR.with(|ex| ex.spawn(task).detach());
}

fn main() -> ExitCode {
    cli::main(|setup| EXECUTOR.with(|ex| smol::block_on(ex.run(run_async(setup)))))
}
