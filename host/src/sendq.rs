//! What a connection's writer (a thread or a task) and the core share:
//! the bytes queued and not yet written, and whether the core waits to hear that
//! the queue drained. The writer reports only then, so a stream that keeps up
//! costs no message back per write.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use crate::driver::SEND_LOW_WATER;

#[derive(Default, Debug)]
pub struct Backlog {
    pending: AtomicUsize,
    watch: AtomicBool,
}

impl Backlog {
    /// The core queued `n` bytes; returns what is now pending.
    pub fn queued(&self, n: usize) -> usize {
        self.pending.fetch_add(n, SeqCst) + n
    }

    /// Nothing queued is still waiting for the writer.
    pub fn is_drained(&self) -> bool {
        self.pending.load(SeqCst) == 0
    }

    /// The writer put `n` queued bytes on the wire; true when it is to tell the
    /// core that the queue drained.
    pub fn written(&self, n: usize) -> bool {
        let left = self.pending.fetch_sub(n, SeqCst).saturating_sub(n);
        left <= SEND_LOW_WATER && self.watch.swap(false, SeqCst)
    }

    /// The core wants to hear when the queue drains below the low-water mark.
    /// False when it already has: no report will come, the caller goes on at once.
    pub fn watch(&self) -> bool {
        self.watch.store(true, SeqCst);
        if self.pending.load(SeqCst) > SEND_LOW_WATER {
            return true;
        }
        // Drained already: take the watch back, unless the writer took it first
        // (then its report is on the way).
        !self.watch.swap(false, SeqCst)
    }
}

/// Writes `bytes` at once from the core when the stream's writer has
/// nothing pending (it has put everything it was given on the wire and waits),
/// so that they go out in order without waking it. Returns what the socket
/// would not take without blocking, for the writer, or `None` when all went out.
pub fn send_now(socket: impl AsFd, backlog: &Backlog, mut bytes: Vec<u8>) -> Option<Vec<u8>> {
    if backlog.is_drained() {
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        match rustix::net::send(socket, &bytes, flags) {
            Ok(n) if n == bytes.len() => return None,
            Ok(n) => {
                bytes.drain(..n);
            }
            // Would block, or failed: the writer waits for room or meets the
            // error and shuts the socket.
            Err(_) => {}
        }
    }
    Some(bytes)
}

/// Most bytes a writer gathers into one write.
const BATCH: usize = 64 * 1024;

/// What to write for `first` and whatever else `more` has ready, up to [`BATCH`]:
/// `first` itself when nothing else is (no copy), else everything gathered into
/// `batch`, so that what is queued goes out in one write, with fewer syscalls.
pub fn gather<'a>(
    batch: &'a mut Vec<u8>,
    first: &'a [u8],
    mut more: impl FnMut() -> Option<Vec<u8>>,
) -> &'a [u8] {
    let next = if first.len() < BATCH { more() } else { None };
    let Some(next) = next else {
        return first;
    };
    batch.clear();
    batch.extend_from_slice(first);
    batch.extend_from_slice(&next);
    while batch.len() < BATCH {
        match more() {
            Some(next) => batch.extend_from_slice(&next),
            None => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_reported_once_and_only_when_watched() {
        let b = Backlog::default();
        b.queued(300 * 1024);
        assert!(!b.written(100 * 1024), "not watched: nothing to report");
        assert!(
            b.watch(),
            "still above the low-water mark: a report will come"
        );
        assert!(!b.written(100 * 1024), "above the low-water mark");
        assert!(b.written(100 * 1024), "drained: reported");
        assert!(!b.written(0), "once");
        assert!(!b.watch(), "already drained: no report will come");
        b.queued(10);
        assert!(!b.written(10), "the watch was taken back");
    }

    #[test]
    fn a_lone_write_is_not_copied_and_queued_ones_are_joined() {
        let mut batch = Vec::new();
        let first = b"<message/>".to_vec();
        let out = gather(&mut batch, &first, || None);
        assert!(std::ptr::eq(out, first.as_slice()));
        let mut queued = vec![b"<b/>".to_vec(), b"<a/>".to_vec()];
        let out = gather(&mut batch, &first, || queued.pop());
        assert_eq!(out, b"<message/><a/><b/>");
    }
}
