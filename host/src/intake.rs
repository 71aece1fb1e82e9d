//! What a connection's reader (a thread or a task) and the core's thread share
//! about input: the bytes handed to the core and not yet processed, and whether
//! the core asked for reading to stop (`Output::Reading`). A reader waits while
//! either holds, so one connection cannot fill the input queue, and a partner
//! the gateway has stopped taking stanzas from is held back by TCP.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use event_listener::Event;
pub use event_listener::{EventListener, Listener};
use isthmus_core::gateway::Admission;

use crate::driver::INPUT_QUEUE;

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

/// What the SIP UDP reader decides per datagram, before the core sees it. The
/// reader hands datagrams to the core itself, one at a time; the core is behind
/// when the socket has not once been empty for [`INPUT_QUEUE`] datagrams in a
/// row. New requests are then refused at once with a stateless 503 rather than
/// left to wait into the client's retransmissions; responses, ACKs and
/// retransmissions of requests the core already has still go to it.
#[derive(Default)]
pub struct DatagramIntake {
    admission: Admission,
    run: usize,
}

impl DatagramIntake {
    /// A datagram was read: `None` to hand it to the core, or the reply that
    /// refuses it.
    pub fn read(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
        self.run = self.run.saturating_add(1);
        if self.run > INPUT_QUEUE {
            if let Some(reply) = self.admission.refusal(datagram) {
                return Some(reply);
            }
        }
        self.admission.admitted(datagram);
        None
    }

    /// The socket had nothing more to read: the core has caught up.
    pub fn emptied(&mut self) {
        self.run = 0;
    }
}

/// Reads one datagram from `socket` into `buf`: its length and sender, waiting
/// for one when `wait`; without, `Ok(None)` when none is queued.
pub fn recv_datagram(
    socket: impl std::os::fd::AsFd,
    buf: &mut [u8],
    wait: bool,
) -> std::io::Result<Option<(usize, std::net::SocketAddr)>> {
    use rustix::io::Errno;
    use rustix::net::RecvFlags;
    let flags = if wait {
        RecvFlags::empty()
    } else {
        RecvFlags::DONTWAIT
    };
    loop {
        match rustix::net::recvfrom(&socket, &mut *buf, flags) {
            Ok((n, _, Some(from))) => {
                if let Ok(from) = std::net::SocketAddr::try_from(from) {
                    return Ok(Some((n, from)));
                }
            }
            // No sender to answer: nothing to hand on.
            Ok((_, _, None)) => {}
            Err(Errno::INTR) => {}
            Err(Errno::WOULDBLOCK) if !wait => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_refused_only_while_the_socket_never_empties() {
        let request = |n: usize| {
            format!(
                "MESSAGE sip:a@sip.localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{n}\r\n\
                 From: <sip:b@x>;tag=1\r\nTo: <sip:a@sip.localhost>\r\nCall-ID: {n}\r\nCSeq: 1 MESSAGE\r\n\
                 Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes()
        };
        let mut d = DatagramIntake::default();
        for n in 0..INPUT_QUEUE {
            assert!(d.read(&request(n)).is_none(), "within the run: to the core");
        }
        let reply = d.read(&request(INPUT_QUEUE)).expect("behind: refused");
        assert!(
            reply.starts_with(b"SIP/2.0 503"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert!(
            d.read(&request(0)).is_none(),
            "a retransmission of a request the core has goes to it"
        );
        assert!(
            d.read(b"SIP/2.0 200 OK\r\n\r\n").is_none(),
            "a response goes to the core"
        );
        d.emptied();
        assert!(d.read(&request(INPUT_QUEUE + 1)).is_none(), "caught up");
    }

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
