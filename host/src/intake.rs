//! What a connection's reader (a thread or a task) and the core share
//! about input: the bytes handed to the core and not yet processed, and whether
//! the core asked for reading to stop (`Output::Reading`). A reader waits while
//! either holds, so one connection cannot fill the input queue, and a partner
//! the gateway has stopped taking stanzas from is held back by TCP.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use event_listener::Event;
pub use event_listener::{EventListener, Listener};

/// Bytes of one connection handed to the core and not yet processed, past which
/// its reader waits: a few reads' worth.
pub const INPUT_CREDIT: usize = 64 * 1024;

#[derive(Default, Debug)]
pub struct Intake {
    pending: AtomicUsize,
    paused: AtomicBool,
    closed: AtomicBool,
    event: Event,
}

impl Intake {
    /// For the reader, before each read: `None` when it may read now, otherwise
    /// what to wait on before asking again.
    pub fn wait(&self) -> Option<EventListener> {
        if self.open() {
            return None;
        }
        let listener = self.event.listen();
        // Asked again once listening, so a change in between is not missed.
        if self.open() {
            None
        } else {
            Some(listener)
        }
    }

    fn open(&self) -> bool {
        self.closed.load(SeqCst)
            || (!self.paused.load(SeqCst) && self.pending.load(SeqCst) < INPUT_CREDIT)
    }

    /// The reader handed `n` bytes to the core.
    pub fn handed(&self, n: usize) {
        self.pending.fetch_add(n, SeqCst);
    }

    /// The core processed `n` bytes the reader handed over.
    pub fn processed(&self, n: usize) {
        let before = self.pending.fetch_sub(n, SeqCst);
        if before >= INPUT_CREDIT && before.saturating_sub(n) < INPUT_CREDIT {
            self.event.notify(usize::MAX);
        }
    }

    /// The core asked to stop (`false`) or resume reading.
    pub fn set_reading(&self, on: bool) {
        self.paused.store(!on, SeqCst);
        if on {
            self.event.notify(usize::MAX);
        }
    }

    /// The connection is gone: a waiting reader goes on, reads the end of the
    /// stream and finishes.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        self.event.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_waits_past_its_credit_and_while_paused() {
        let i = Intake::default();
        assert!(i.wait().is_none());
        i.handed(INPUT_CREDIT);
        let listener = i.wait().expect("past the credit: wait");
        i.processed(1);
        // Notified: the wait ends at once.
        listener.wait();
        assert!(i.wait().is_none());
        i.set_reading(false);
        let listener = i.wait().expect("paused: wait");
        i.set_reading(true);
        listener.wait();
        assert!(i.wait().is_none());
        i.set_reading(false);
        i.close();
        assert!(i.wait().is_none(), "closed: read on to the end");
    }
}
