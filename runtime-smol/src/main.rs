//! `isthmus-smol`: the gateway on smol's executor. One task owns the core;
//! accept, read, write and resolve tasks only move bytes and report back through
//! one channel, all on one thread (a local executor driven by the reactor in
//! [`reactor`]), so that no message costs a wakeup of another thread. Every
//! decision is the core's, every input is dispatched by the shared host layer.
#![forbid(unsafe_code)]

mod reactor;

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use futures_lite::future::{self, FutureExt};
use isthmus_core::gateway::{Admission, ConnId};
use isthmus_host::cli::{self, Setup};
use isthmus_host::driver::{log, Input, Io, INPUT_QUEUE};
use isthmus_host::intake::Intake;
use isthmus_host::resolve::Resolver;
use isthmus_host::sendq::{self, Backlog};
use isthmus_host::signals;
use reactor::{block_on, Async, Reactor, Timer};

type In = Input<TcpStream>;
type Stream = Rc<Async<TcpStream>>;

/// A connection's writer task (its queue, the stream to shut down, what it
/// holds) and what its reader task shares with the core's.
struct Writer {
    queue: Sender<Vec<u8>>,
    stream: Stream,
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
    reactor: Rc<Reactor>,
    tx: Sender<In>,
    /// Per connection: the queue its writer task drains, and the stream to shut down.
    writers: HashMap<ConnId, Writer>,
    sip: Rc<Async<UdpSocket>>,
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
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| Async::new(&self.reactor, stream))
        {
            Ok(s) => Rc::new(s),
            Err(e) => {
                log(&format!("{conn}: cannot use the connection: {e}"));
                let closed = Input::closed(conn, sip);
                let tx = self.tx.clone();
                spawn(async move {
                    let _ = tx.send(closed).await;
                });
                return;
            }
        };
        let (wtx, wrx) = unbounded::<Vec<u8>>();
        let writer = stream.clone();
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
                if write_all(&writer, out).await.is_err() {
                    let _ = writer.get_ref().shutdown(Shutdown::Both);
                    return;
                }
                if queued.written(written) && drained.send(Input::Drained(conn)).await.is_err() {
                    return;
                }
            }
        });
        let reader = stream.clone();
        let tx = self.tx.clone();
        let intake = Arc::new(Intake::default());
        let handed = intake.clone();
        spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            // After a read that emptied the socket, the read events seen before
            // it: the next read waits for a later one instead of trying at once.
            let mut emptied = None;
            loop {
                while let Some(wait) = handed.wait() {
                    wait.await;
                }
                if let Some(seen) = emptied.take() {
                    reader.readable_after(seen).await;
                }
                let seen = reader.read_seen();
                let read = reader.get_ref().read(&mut buf);
                match read {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        emptied = Some(seen);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Ok(0) | Err(_) => {
                        let closed = Input::closed(conn, sip);
                        let _ = tx.send(closed).await;
                        return;
                    }
                    Ok(n) => {
                        if n < buf.len() {
                            emptied = Some(seen);
                        }
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
        let Some(bytes) = sendq::send_now(w.stream.get_ref(), &w.backlog, bytes) else {
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
            let attempt = blocking::unblock(move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(10))
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
            let timer = Timer::after(&self.reactor, Duration::from_millis(50));
            spawn(async move {
                timer.await;
                let _ = stream.get_ref().shutdown(Shutdown::Both);
            });
        }
    }

    fn resolve(&mut self, query: u64, domain: String) {
        let tx = self.tx.clone();
        let resolver = self.resolver.clone();
        spawn(async move {
            let result = blocking::unblock(move || resolver.resolve(&domain)).await;
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

/// Writes all of `bytes`, waiting for room whenever the socket is full.
async fn write_all(stream: &Async<TcpStream>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = stream.write_with(|mut s| s.write(bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = bytes.get(n..).unwrap_or_default();
    }
    Ok(())
}

fn accept_loop(
    reactor: &Rc<Reactor>,
    tx: Sender<In>,
    listener: TcpListener,
    sip: Option<bool>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = Async::new(reactor, listener)?;
    let reactor = reactor.clone();
    spawn(async move {
        loop {
            match listener.read_with(|l| l.accept()).await {
                Ok((stream, _)) => {
                    let input = match sip {
                        Some(tls) => Input::SipAccepted(stream, tls),
                        None => Input::Accepted(stream),
                    };
                    if tx.send(input).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Out of descriptors, most likely: wait, then accept again.
                    log(&format!("accept: {e}"));
                    Timer::after(&reactor, Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn run_async(setup: Setup, reactor: Rc<Reactor>) -> Result<(), String> {
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
    TcpListener::bind(listen)
        .and_then(|l| accept_loop(&reactor, tx.clone(), l, None))
        .map_err(|e| format!("s2s listener on {listen}: {e}"))?;
    let sip_addr = g.sip_address;
    let sip = UdpSocket::bind(sip_addr)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            isthmus_host::driver::widen_receive_buffer(&s);
            Async::new(&reactor, s)
        })
        .map(Rc::new)
        .map_err(|e| format!("SIP on udp {sip_addr}: {e}"))?;
    TcpListener::bind(sip_addr)
        .and_then(|l| accept_loop(&reactor, tx.clone(), l, Some(false)))
        .map_err(|e| format!("SIP on tcp {sip_addr}: {e}"))?;
    if let Some(tls_addr) = g.sip_tls_address {
        TcpListener::bind(tls_addr)
            .and_then(|l| accept_loop(&reactor, tx.clone(), l, Some(true)))
            .map_err(|e| format!("SIP on tls {tls_addr}: {e}"))?;
    }
    {
        let tx = tx.clone();
        let sip = sip.clone();
        spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut admission = Admission::default();
            let mut read = 0u32;
            loop {
                // Let the core's task run between reads while datagrams keep coming.
                read = read.wrapping_add(1);
                if read % 64 == 0 {
                    future::yield_now().await;
                }
                match sip.read_with(|s| s.recv_from(&mut buf)).await {
                    Ok((n, from)) => {
                        let datagram = buf.get(..n).unwrap_or_default();
                        match tx.try_send(Input::Datagram(from, datagram.to_vec())) {
                            Ok(()) => admission.admitted(datagram),
                            // The core is behind: refuse new requests at once rather
                            // than let them wait into the client's retransmissions.
                            Err(TrySendError::Full(input)) => match admission.refusal(datagram) {
                                Some(reply) => {
                                    let _ = sip.write_with(|s| s.send_to(&reply, from)).await;
                                }
                                None => {
                                    if tx.send(input).await.is_err() {
                                        return;
                                    }
                                }
                            },
                            Err(TrySendError::Closed(_)) => return,
                        }
                    }
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
                if let Err(e) = sip.write_with(|s| s.send_to(&bytes, to)).await {
                    log(&format!("SIP to {to}: {e}"));
                }
                queued.set(queued.get().saturating_sub(1));
            }
        });
    }
    log(&isthmus_host::driver::serving_line(g, listen, sip_addr));
    let mut io = SmolIo {
        reactor: reactor.clone(),
        tx,
        writers: HashMap::new(),
        sip,
        sip_out,
        sip_queued,
        resolver,
    };
    host.drain(&mut io);
    // One timer, moved only when the core's next wake-up moves: most inputs
    // leave it where it is, and the reactor's timers are not touched.
    let mut timer = Timer::never(&reactor);
    let mut armed = None;
    loop {
        let at = host.wake_at();
        if at != armed {
            match at {
                Some(t) => timer.set_at(t),
                None => timer = Timer::never(&reactor),
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
            Timer::after(&reactor, Duration::from_millis(300)).await;
            return Ok(());
        }
    }
}

thread_local! {
    /// Every task runs on the thread that owns the core: a read, the core's
    /// decision and the write happen without waking another thread, and the
    /// thread sleeps only in the reactor's epoll wait.
    static EXECUTOR: async_executor::LocalExecutor<'static> =
        const { async_executor::LocalExecutor::new() };
}

fn spawn(task: impl std::future::Future<Output = ()> + 'static) {
    EXECUTOR.with(|ex| ex.spawn(task).detach());
}

fn main() -> ExitCode {
    cli::main(|setup| {
        let reactor = Reactor::new().map_err(|e| format!("epoll: {e}"))?;
        EXECUTOR
            .with(|ex| block_on(&reactor, ex.run(run_async(setup, reactor.clone()))))
            .map_err(|e| format!("epoll wait: {e}"))?
    })
}
