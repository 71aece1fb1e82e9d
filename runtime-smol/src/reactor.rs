//! What the tasks wait on: one epoll set in which every socket is registered once,
//! edge-triggered, for reading and writing, and the tasks' timers, kept in order
//! and turned into the wait's timeout. A wake-up costs one `epoll_wait` and the
//! reads and writes it leads to: nothing is re-armed after an event and no timer
//! descriptor is set before a wait.
//!
//! A task tries its read or write first and waits only after the socket said it
//! would block; every event after that (edge-triggered: each arrival of data,
//! each freeing of send space after a full buffer) moves the socket's count for
//! that direction on and wakes the waiting task, so an edge between the failed
//! try and the wait is not missed.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use rustix::event::{epoll, eventfd, EventfdFlags, Timespec};

/// The key of the notifier, which another thread writes to end a wait.
const NOTIFY: u64 = 0;

/// Polls of the executor in a row, each woken during the one before, after
/// which the reactor looks for events (without waiting) before the next.
const BUSY_POLLS: u32 = 16;

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

#[derive(Default)]
struct Readiness {
    /// Events seen for this direction.
    count: u64,
    waiter: Option<Waker>,
}

#[derive(Default)]
struct Slot {
    read: Readiness,
    write: Readiness,
}

impl Slot {
    fn side(&mut self, dir: Direction) -> &mut Readiness {
        match dir {
            Direction::Read => &mut self.read,
            Direction::Write => &mut self.write,
        }
    }
}

#[derive(Default)]
struct Inner {
    slots: HashMap<u64, Slot>,
    next_key: u64,
    timers: BTreeMap<(Instant, u64), Waker>,
    next_timer: u64,
}

/// Wakes the thread that runs the reactor from another thread (a finished
/// blocking job, a signal): only while it sleeps in the wait is the notifier written.
struct Notifier {
    fd: OwnedFd,
    sleeping: AtomicBool,
    woken: AtomicBool,
}

impl Wake for Notifier {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        if self.sleeping.load(SeqCst) {
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }
}

pub struct Reactor {
    epoll: OwnedFd,
    notifier: Arc<Notifier>,
    inner: RefCell<Inner>,
}

impl Reactor {
    pub fn new() -> io::Result<Rc<Reactor>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &fd,
            epoll::EventData::new_u64(NOTIFY),
            epoll::EventFlags::IN,
        )?;
        Ok(Rc::new(Reactor {
            epoll,
            notifier: Arc::new(Notifier {
                fd,
                sleeping: AtomicBool::new(false),
                woken: AtomicBool::new(false),
            }),
            inner: RefCell::new(Inner {
                next_key: NOTIFY + 1,
                ..Inner::default()
            }),
        }))
    }

    /// Waits for events (not at all when `block` is false) and wakes the tasks
    /// they concern, and those whose timers are due.
    fn turn(&self, events: &mut Vec<epoll::Event>, block: bool) -> io::Result<bool> {
        let timeout = if block {
            self.inner
                .borrow()
                .timers
                .keys()
                .next()
                .map(|(at, _)| at.saturating_duration_since(Instant::now()))
        } else {
            Some(Duration::ZERO)
        };
        self.notifier.sleeping.store(true, SeqCst);
        // Woken from another thread since the last look: do not sleep.
        let timeout = if self.notifier.woken.load(SeqCst) {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let timespec = timeout.map(|t| Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        events.clear();
        let waited = epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            timespec.as_ref(),
        );
        self.notifier.sleeping.store(false, SeqCst);
        match waited {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut wake = Vec::new();
        let mut io = false;
        {
            let mut inner = self.inner.borrow_mut();
            for event in events.iter() {
                let key = event.data.u64();
                let flags = event.flags;
                if key == NOTIFY {
                    let mut buf = [0u8; 8];
                    let _ = rustix::io::read(&self.notifier.fd, &mut buf);
                    continue;
                }
                let Some(slot) = inner.slots.get_mut(&key) else {
                    continue;
                };
                io = true;
                let failed = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP);
                if failed || flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::RDHUP) {
                    slot.read.count += 1;
                    wake.extend(slot.read.waiter.take());
                }
                if failed || flags.contains(epoll::EventFlags::OUT) {
                    slot.write.count += 1;
                    wake.extend(slot.write.waiter.take());
                }
            }
            let now = Instant::now();
            while let Some(entry) = inner.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                wake.push(entry.remove());
            }
        }
        // Outside the borrow: a woken task may be polled by a nested executor.
        for w in wake {
            w.wake();
        }
        Ok(io)
    }

    fn register(&self, fd: impl AsFd) -> io::Result<u64> {
        let mut inner = self.inner.borrow_mut();
        let key = inner.next_key;
        epoll::add(
            &self.epoll,
            fd,
            epoll::EventData::new_u64(key),
            epoll::EventFlags::IN
                | epoll::EventFlags::OUT
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ET,
        )?;
        inner.next_key += 1;
        inner.slots.insert(key, Slot::default());
        Ok(key)
    }

    fn count(&self, key: u64, dir: Direction) -> u64 {
        self.inner
            .borrow_mut()
            .slots
            .get_mut(&key)
            .map_or(0, |s| s.side(dir).count)
    }

    /// Ready once an event for `dir` came after the count was `seen`.
    fn poll_ready(&self, key: u64, dir: Direction, seen: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.borrow_mut();
        let Some(side) = inner.slots.get_mut(&key).map(|s| s.side(dir)) else {
            return Poll::Ready(());
        };
        if side.count != seen {
            return Poll::Ready(());
        }
        match &mut side.waiter {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Runs `future` on this thread with `reactor`, until it finishes.
pub fn block_on<T>(reactor: &Reactor, future: impl Future<Output = T>) -> io::Result<T> {
    let waker = Waker::from(reactor.notifier.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut events = Vec::with_capacity(256);
    // Polls in a row, each woken during the one before, without looking for events.
    let mut busy = 0;
    loop {
        reactor.notifier.woken.store(false, SeqCst);
        if let Poll::Ready(t) = future.as_mut().poll(&mut cx) {
            return Ok(t);
        }
        if reactor.notifier.woken.load(SeqCst) {
            // Woken while polled (one task woke another): poll again, and look
            // for events without waiting only now and then, so that I/O is not
            // starved and a wake-up costs one wait.
            busy += 1;
            if busy < BUSY_POLLS {
                continue;
            }
            busy = 0;
            reactor.turn(&mut events, false)?;
        } else {
            busy = 0;
            reactor.turn(&mut events, true)?;
        }
    }
}

/// A socket registered with the reactor, dropped from its set when dropped.
pub struct Async<T: AsFd> {
    reactor: Rc<Reactor>,
    key: u64,
    io: T,
}

impl<T: AsFd> Async<T> {
    /// `io` must already be non-blocking.
    pub fn new(reactor: &Rc<Reactor>, io: T) -> io::Result<Self> {
        let key = reactor.register(&io)?;
        Ok(Async {
            reactor: reactor.clone(),
            key,
            io,
        })
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Runs `op` until it does not report that it would block, waiting for the
    /// socket between tries.
    async fn io<R>(
        &self,
        dir: Direction,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            let seen = self.reactor.count(self.key, dir);
            match op(&self.io) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| self.reactor.poll_ready(self.key, dir, seen, cx))
                        .await
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return done,
            }
        }
    }

    pub async fn read_with<R>(&self, op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.io(Direction::Read, op).await
    }

    pub async fn write_with<R>(&self, op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.io(Direction::Write, op).await
    }

    /// Waits for an event for reading that comes after `seen` ([`Async::read_seen`]).
    pub async fn readable_after(&self, seen: u64) {
        std::future::poll_fn(|cx| self.reactor.poll_ready(self.key, Direction::Read, seen, cx))
            .await
    }

    /// The count of read events so far, taken before a read that may leave the
    /// socket empty.
    pub fn read_seen(&self) -> u64 {
        self.reactor.count(self.key, Direction::Read)
    }
}

impl<T: AsFd> Drop for Async<T> {
    fn drop(&mut self) {
        let _ = epoll::delete(&self.reactor.epoll, &self.io);
        self.reactor.inner.borrow_mut().slots.remove(&self.key);
    }
}

/// A deadline a task awaits; one that never fires until it is set.
pub struct Timer {
    reactor: Rc<Reactor>,
    at: Option<Instant>,
    /// Where it is entered in the reactor's timers.
    entry: Option<(Instant, u64)>,
}

impl Timer {
    pub fn never(reactor: &Rc<Reactor>) -> Timer {
        Timer {
            reactor: reactor.clone(),
            at: None,
            entry: None,
        }
    }

    pub fn after(reactor: &Rc<Reactor>, d: Duration) -> Timer {
        let mut t = Timer::never(reactor);
        t.set_at(Instant::now() + d);
        t
    }

    pub fn set_at(&mut self, at: Instant) {
        self.clear();
        self.at = Some(at);
    }

    fn clear(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.reactor.inner.borrow_mut().timers.remove(&entry);
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.at else {
            return Poll::Pending;
        };
        if at <= Instant::now() {
            self.clear();
            self.at = None;
            return Poll::Ready(());
        }
        let reactor = self.reactor.clone();
        let mut inner = reactor.inner.borrow_mut();
        let entry = match self.entry {
            Some(entry) => entry,
            None => {
                inner.next_timer += 1;
                let entry = (at, inner.next_timer);
                self.entry = Some(entry);
                entry
            }
        };
        match inner.timers.get_mut(&entry) {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => {
                inner.timers.insert(entry, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_task_waits_for_data_and_for_its_timer() {
        let reactor = Reactor::new().expect("reactor");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        let ours = Async::new(&reactor, ours).expect("register");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            peer.write_all(b"hello").expect("write");
            peer
        });
        let got = block_on(&reactor, async {
            let mut buf = [0u8; 16];
            let n = ours
                .read_with(|mut s| s.read(&mut buf))
                .await
                .expect("read");
            buf[..n].to_vec()
        })
        .expect("run");
        assert_eq!(got, b"hello");
        let started = Instant::now();
        block_on(&reactor, Timer::after(&reactor, Duration::from_millis(30))).expect("run");
        assert!(started.elapsed() >= Duration::from_millis(30));
        drop(writer.join());
    }
}
