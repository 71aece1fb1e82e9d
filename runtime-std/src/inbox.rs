//! Who takes the core's inputs in. Every thread with an input puts it on one
//! bounded channel; the thread whose input finds nothing waiting there takes the
//! core's lock and handles what the channel holds itself. At a low rate an input
//! then costs no wake-up of a second thread, which is most of what a blocking
//! runtime spends per message.
//!
//! One thread takes in at a time: the one that counted the inputs up from zero,
//! until it counts them back down to zero. After a batch it hands what is left
//! to the core's thread, so that under load the readers are back at their
//! sockets (the SIP reader refuses with `503` while the channel is full) and the
//! core's thread takes in, as it would alone. The core's thread also fires the
//! timers.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{Receiver, SendError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, Thread};
use std::time::Instant;

use isthmus_host::driver::log;

/// Inputs a thread other than the core's handles in a row before it hands the
/// rest to the core's thread.
const BATCH: usize = 64;

/// What the inputs go to.
pub(crate) trait Core: Send + 'static {
    type Input: Send + 'static;
    /// Handles an input, or fires the timers that are due (`None`); false once
    /// the gateway has stopped.
    fn handle(&mut self, input: Option<Self::Input>) -> bool;
    /// When the timers are next due (`None`: none is set).
    fn wake_at(&self) -> Option<Instant>;
}

/// The core, and what its inputs are taken from.
struct Place<C: Core> {
    core: C,
    rx: Receiver<C::Input>,
    /// What the core's thread sleeps until (`None`: no timer), for a thread that
    /// moves the next wake-up earlier to wake it.
    armed: Option<Instant>,
    stopped: bool,
}

impl<C: Core> Place<C> {
    fn handle(&mut self, input: Option<C::Input>, thread: &Thread) {
        // Stopping: the process is about to exit, nothing more is taken in.
        if self.stopped {
            return;
        }
        if !self.core.handle(input) {
            self.stopped = true;
            thread.unpark();
        }
    }
}

struct Shared<C: Core> {
    /// `None` until the core is in place; inputs that come before wait for it.
    place: Mutex<Option<Place<C>>>,
    /// Inputs sent and not yet taken off the channel (some are counted only
    /// just after they are sent).
    pending: AtomicUsize,
    /// The core's thread is to take in what is pending.
    handed: AtomicBool,
    /// The core's thread.
    thread: Thread,
}

impl<C: Core> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, Option<Place<C>>> {
        match self.place.lock() {
            Ok(core) => core,
            Err(_) => {
                // A panic while handling an input left the core half-changed:
                // stop, as a panic on the core's thread would; the store has what
                // was acknowledged.
                log("FATAL: the core failed while handling an input; stopping");
                std::process::exit(70);
            }
        }
    }

    /// Takes inputs off the channel until the count of those pending is back at
    /// zero (true) or `limit` have been handled (false).
    fn take_in(&self, place: &mut Place<C>, limit: Option<usize>) -> bool {
        let mut taken = 0;
        while limit.is_none_or(|l| taken < l) {
            // Another thread took them in first.
            if self.pending.load(SeqCst) == 0 {
                return true;
            }
            // Counted inputs are on the channel already: it is not empty.
            let Ok(input) = place.rx.try_recv() else {
                return true;
            };
            place.handle(Some(input), &self.thread);
            taken += 1;
            // Stopped: the core's thread returns, and the process exits.
            if self.pending.fetch_sub(1, SeqCst) == 1 || place.stopped {
                return true;
            }
        }
        false
    }

    /// Takes in as the thread that counted the pending inputs up from zero.
    fn take_in_here(&self) {
        let mut guard = self.lock();
        let Some(place) = guard.as_mut() else {
            // Before the core is in place: its thread takes these in first.
            self.handed.store(true, SeqCst);
            self.thread.unpark();
            return;
        };
        let done = self.take_in(place, Some(BATCH));
        let armed = place.armed;
        let earlier = place
            .core
            .wake_at()
            .is_some_and(|at| armed.is_none_or(|armed| at < armed));
        drop(guard);
        if !done {
            self.handed.store(true, SeqCst);
        }
        if !done || earlier {
            self.thread.unpark();
        }
    }
}

/// What a thread sends the core's inputs through.
pub(crate) struct Inbox<C: Core> {
    tx: SyncSender<C::Input>,
    shared: Arc<Shared<C>>,
}

impl<C: Core> Clone for Inbox<C> {
    fn clone(&self) -> Self {
        Inbox {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C: Core> Inbox<C> {
    /// Waits while the channel is full.
    pub(crate) fn send(&self, input: C::Input) -> Result<(), SendError<C::Input>> {
        self.tx.send(input)?;
        self.arrived();
        Ok(())
    }

    /// Refused when the channel is full: the core is behind.
    pub(crate) fn try_send(&self, input: C::Input) -> Result<(), TrySendError<C::Input>> {
        self.tx.try_send(input)?;
        self.arrived();
        Ok(())
    }

    fn arrived(&self) {
        if self.shared.pending.fetch_add(1, SeqCst) == 0 {
            self.shared.take_in_here();
        }
    }
}

/// The inbox of a core not yet in place; call on the thread that runs [`run`].
pub(crate) fn inbox<C: Core>(capacity: usize) -> (Inbox<C>, Receiver<C::Input>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let shared = Arc::new(Shared {
        place: Mutex::new(None),
        pending: AtomicUsize::new(0),
        handed: AtomicBool::new(false),
        thread: thread::current(),
    });
    (Inbox { tx, shared }, rx)
}

/// Puts the core in place and runs its thread: it takes in what is handed to it
/// and fires the timers, until the gateway stops.
pub(crate) fn run<C: Core>(inbox: &Inbox<C>, core: C, rx: Receiver<C::Input>) {
    let shared = &*inbox.shared;
    *shared.lock() = Some(Place {
        core,
        rx,
        armed: None,
        stopped: false,
    });
    // Whatever came before the core was in place.
    shared.handed.store(true, SeqCst);
    loop {
        let wait = {
            let mut guard = shared.lock();
            let Some(place) = guard.as_mut() else {
                return;
            };
            if shared.handed.swap(false, SeqCst) {
                shared.take_in(place, None);
            }
            if place.armed.is_some_and(|at| at <= Instant::now()) {
                place.handle(None, &shared.thread);
            }
            if place.stopped {
                return;
            }
            place.armed = place.core.wake_at();
            place
                .armed
                .map_or(std::time::Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                })
        };
        // Woken early by a hand-over, an earlier timer or the stop.
        thread::park_timeout(wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// What was taken in: sender, sequence number, and the thread it ran on.
    type Taken = Arc<Mutex<Vec<(u32, u32, thread::ThreadId)>>>;

    /// Records what it takes in, and on which thread; stops at `u32::MAX`.
    struct Recorder {
        taken: Taken,
        /// A timer set by input `(1000, 0)`, reported through `fired` when due.
        timer: Option<Instant>,
        fired: mpsc::Sender<()>,
    }

    impl Core for Recorder {
        type Input = (u32, u32);

        fn handle(&mut self, input: Option<(u32, u32)>) -> bool {
            match input {
                Some((u32::MAX, _)) => return false,
                Some((sender, seq)) => {
                    if seq == 0 && sender == 1000 {
                        self.timer = Some(Instant::now() + Duration::from_millis(20));
                    }
                    let me = thread::current().id();
                    self.taken.lock().expect("log").push((sender, seq, me));
                }
                None => {
                    if self.timer.is_some_and(|t| t <= Instant::now()) {
                        self.timer = None;
                        let _ = self.fired.send(());
                    }
                }
            }
            true
        }

        fn wake_at(&self) -> Option<Instant> {
            self.timer
        }
    }

    fn recorder() -> (Recorder, Taken, mpsc::Receiver<()>) {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let (fired, on_fire) = mpsc::channel();
        let core = Recorder {
            taken: taken.clone(),
            timer: None,
            fired,
        };
        (core, taken, on_fire)
    }

    /// Many threads at once, through a channel small enough to fill: each
    /// input is taken in once, each sender's in the order sent, and the core's
    /// thread stops on the stop input.
    #[test]
    fn every_input_is_taken_in_once_in_order() {
        const SENDERS: u32 = 8;
        const EACH: u32 = 20_000;
        let (inbox, rx) = inbox::<Recorder>(16);
        let (core, taken, _) = recorder();
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let inbox = inbox.clone();
                thread::spawn(move || {
                    for seq in 1..=EACH {
                        // Half wait for room, half retry when refused for want of it.
                        let mut input = (s, seq);
                        if s % 2 == 0 {
                            inbox.send(input).expect("send");
                            continue;
                        }
                        while let Err(e) = inbox.try_send(input) {
                            match e {
                                TrySendError::Full(back) => {
                                    input = back;
                                    thread::yield_now();
                                }
                                TrySendError::Disconnected(_) => panic!("disconnected"),
                            }
                        }
                    }
                })
            })
            .collect();
        let stopper = {
            let inbox = inbox.clone();
            thread::spawn(move || {
                for s in senders {
                    s.join().expect("sender");
                }
                inbox.send((u32::MAX, 0)).expect("stop");
            })
        };
        run(&inbox, core, rx);
        stopper.join().expect("stopper");
        let taken = taken.lock().expect("log");
        assert_eq!(taken.len(), (SENDERS * EACH) as usize);
        let mut next = vec![1u32; SENDERS as usize];
        for (s, seq, _) in taken.iter() {
            let n = &mut next[*s as usize];
            assert_eq!(*seq, *n, "sender {s}");
            *n += 1;
        }
    }

    /// Once the core is in place, an input sent while nothing waits is handled
    /// by the thread that sends it, before `send` returns; a timer it sets
    /// wakes the core's thread, which fires it.
    #[test]
    fn a_lone_input_is_handled_by_its_sender_and_its_timer_fires() {
        let (inbox, rx) = inbox::<Recorder>(16);
        let (core, taken, on_fire) = recorder();
        let sender = {
            let inbox = inbox.clone();
            let taken = taken.clone();
            thread::spawn(move || {
                // Until the core is in place, the core's thread takes inputs in.
                let mut seq = 1;
                loop {
                    inbox.send((7, seq)).expect("send");
                    let here = taken.lock().expect("log").last().map(|t| t.2);
                    if here == Some(thread::current().id()) {
                        break;
                    }
                    seq += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                inbox.send((1000, 0)).expect("send");
                let here = taken.lock().expect("log").last().copied();
                assert_eq!(
                    here.map(|t| (t.0, t.2)),
                    Some((1000, thread::current().id()))
                );
                // The core's thread was asleep with no timer: only a wake-up
                // from this thread makes it fire this one.
                on_fire
                    .recv_timeout(Duration::from_secs(20))
                    .expect("the timer fired");
                inbox.send((u32::MAX, 0)).expect("stop");
            })
        };
        run(&inbox, core, rx);
        sender.join().expect("sender");
    }
}
