//! What the gateway asks its host to do, and the queue that keeps it in order.

use std::collections::VecDeque;

use super::ConnId;
use crate::xml::Element;

/// What was written on a connection, for transcripts and debugging. Only emitted
/// when tracing is switched on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trace {
    /// XML written (in plaintext or into TLS).
    Xml(String),
    /// TLS record bytes written.
    Tls(usize),
}

/// What the gateway asks its host to do. Drained in order with `poll_output`.
#[derive(Clone, Debug)]
pub enum Output {
    Transmit {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// Open a TCP connection to `addr` for `domain`; answer with `connected` or `connect_failed`.
    Connect {
        conn: ConnId,
        domain: String,
        addr: std::net::SocketAddr,
    },
    /// Find the s2s addresses of `domain` (SRV, then A/AAAA on 5269); answer with `resolved`.
    Resolve {
        query: u64,
        domain: String,
    },
    /// Close the connection once the transmits before this one are written.
    Close {
        conn: ConnId,
    },
    /// A stanza for a local user: received from a partner, or a bounce of ours.
    /// Only without a SIP next hop: with one, every stanza for a SIP user (a
    /// bounce of a stanza sent on its behalf included) goes to the SIP side.
    Deliver(Element),
    /// Make this change durable before applying the outputs after it.
    Persist(crate::roster::Persist),
    /// Send a SIP message as one UDP datagram.
    SipSend {
        to: std::net::SocketAddr,
        bytes: Vec<u8>,
    },
    /// Stop (`on: false`) or resume reading the connection: while the SIP side is
    /// saturated the gateway stops taking stanzas from partners rather than accept
    /// what it could only refuse; TCP then holds the partner back. A connection
    /// stays paused until a `Reading { on: true }` for it.
    Reading {
        conn: ConnId,
        on: bool,
    },
    Event(super::Event),
    Trace {
        conn: ConnId,
        trace: Trace,
    },
}

/// The output queue shared by all connections.
#[derive(Debug, Default)]
pub struct Outq {
    pub queue: VecDeque<Output>,
    pub trace: bool,
    /// A stanza's text on its way into a TLS stream, kept between stanzas: the
    /// stream copies it, so one buffer serves every write.
    pub(crate) text: String,
}

impl Outq {
    pub fn push(&mut self, out: Output) {
        self.queue.push_back(out);
    }
}
