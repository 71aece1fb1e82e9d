//! One s2s connection: its XML stream, its TLS layer and its negotiation state.
//! The decisions about what to send live in the gateway; this module moves bytes
//! between the wire, rustls and the XML reader, and writes stanzas and errors.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::time::Instant;

use crate::config::{Method, XmlLimits};
use crate::gateway::{Output, Outq, Trace};
use crate::s2s::tls::CertCheck;
use crate::xml::{ns, write_element, write_element_with, Element, StreamHeaderOut, StreamReader};

/// A connection handle, allocated by the gateway for inbound and outbound connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// What a connection is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// We initiate, to carry stanzas from `local` to `remote`.
    Route,
    /// We initiate, only to ask the authoritative server to check dialback keys.
    Verify,
    /// The peer initiated.
    Inbound,
}

/// Where the negotiation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Resolving,
    Connecting,
    AwaitHeader,
    AwaitFeatures,
    AwaitProceed,
    TlsHandshake,
    AwaitSasl,
    AwaitDialback,
    AwaitVerify,
    /// Inbound: header exchanged, features sent, accepting negotiation and stanzas.
    Open,
    /// Route: authenticated, stanzas flow.
    Ready,
    Closed,
}

/// A dialback key this (inbound) stream is waiting to hear about from the
/// authoritative server.
#[derive(Clone, Debug)]
pub struct PendingDialback {
    pub from: String,
    pub to: String,
    pub deadline: Instant,
}

/// A verification request carried by a Verify connection.
#[derive(Clone, Debug)]
pub struct VerifyRequest {
    /// Our domain (the receiving server's).
    pub from: String,
    /// The domain whose authoritative server we ask.
    pub to: String,
    /// The id of the inbound stream the key was offered on.
    pub id: String,
    pub key: String,
    pub inbound: ConnId,
}

pub struct Conn {
    pub id: ConnId,
    pub kind: Kind,
    pub phase: Phase,
    /// Our domain on this stream (known at once for outbound, from the header inbound).
    pub local: String,
    /// The peer's domain.
    pub remote: String,
    pub addrs: VecDeque<std::net::SocketAddr>,
    pub reader: StreamReader,
    pub tls: Option<rustls::Connection>,
    pub tls_handshaking: bool,
    pub header_sent: bool,
    /// Outbound: the id the peer gave; inbound: the id we gave.
    pub stream_id: Option<String>,
    pub peer_version: bool,
    pub peer_dialback: bool,
    pub peer_cert: Option<CertCheck>,
    pub sasl_done: bool,
    pub method: Option<Method>,
    /// Inbound: domain pairs (from, to) authenticated by dialback.
    pub verified: Vec<(String, String)>,
    pub pending: Vec<PendingDialback>,
    /// Verify connection: requests still unanswered.
    pub requests: Vec<VerifyRequest>,
    pub establish_deadline: Option<Instant>,
    pub last_activity: Instant,
    pub last_tx: Instant,
    pub keep_alive: bool,
    /// Our header declared `xmlns:db`, so dialback elements may use the `db:` prefix.
    pub db_declared: bool,
    /// Inbound: the peer used this stream to have dialback keys checked.
    pub served_verify: bool,
    /// The host's send queue for this connection is past its high-water mark:
    /// stanzas wait in the route's bounded queue until it drains.
    pub congested: bool,
    /// The earliest deadline this connection has on the gateway's timer heap.
    pub scheduled: Option<Instant>,
}

/// Why feeding bytes failed.
pub enum IngestError {
    Tls(String),
}

impl Conn {
    pub fn boxed(
        id: ConnId,
        kind: Kind,
        phase: Phase,
        limits: XmlLimits,
        now: Instant,
    ) -> Box<Self> {
        Box::new(Self::new(id, kind, phase, limits, now))
    }

    pub fn new(id: ConnId, kind: Kind, phase: Phase, limits: XmlLimits, now: Instant) -> Self {
        Conn {
            id,
            kind,
            phase,
            local: String::new(),
            remote: String::new(),
            addrs: VecDeque::new(),
            reader: StreamReader::new(limits),
            tls: None,
            tls_handshaking: false,
            header_sent: false,
            stream_id: None,
            peer_version: false,
            peer_dialback: false,
            peer_cert: None,
            sasl_done: false,
            method: None,
            verified: Vec::new(),
            pending: Vec::new(),
            requests: Vec::new(),
            establish_deadline: None,
            last_activity: now,
            last_tx: now,
            keep_alive: false,
            served_verify: false,
            db_declared: false,
            congested: false,
            scheduled: None,
        }
    }

    pub fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    pub fn is_authenticated(&self) -> bool {
        self.method.is_some()
    }

    /// Feeds received bytes through TLS (when active) into the XML reader.
    /// Returns true when this input completed the TLS handshake; the reader has then
    /// been restarted, as the XML stream restarts after STARTTLS.
    pub fn ingest(&mut self, bytes: &[u8], out: &mut Outq) -> Result<bool, IngestError> {
        let Some(tls) = self.tls.as_mut() else {
            self.reader.push(bytes);
            return Ok(false);
        };
        let mut completed = false;
        let mut rest = bytes;
        let mut plain = Vec::new();
        while !rest.is_empty() {
            let n = tls
                .read_tls(&mut rest)
                .map_err(|e| IngestError::Tls(e.to_string()))?;
            let processed = tls.process_new_packets();
            if let Err(e) = processed {
                // Flush the alert rustls prepared so the peer learns why.
                flush_tls(self.id, tls, out);
                return Err(IngestError::Tls(e.to_string()));
            }
            if self.tls_handshaking && !tls.is_handshaking() {
                self.tls_handshaking = false;
                completed = true;
                self.reader.restart();
            }
            read_plaintext(tls, &mut plain);
            if n == 0 {
                break;
            }
        }
        flush_tls(self.id, tls, out);
        self.reader.push(&plain);
        Ok(completed)
    }

    /// Starts TLS on this connection; bytes already buffered behind the STARTTLS
    /// element belong to the TLS layer.
    pub fn start_tls(
        &mut self,
        conn: rustls::Connection,
        out: &mut Outq,
    ) -> Result<bool, IngestError> {
        let leftover = self.reader.take_unconsumed();
        self.tls = Some(conn);
        self.tls_handshaking = true;
        self.phase = Phase::TlsHandshake;
        if let Some(tls) = self.tls.as_mut() {
            flush_tls(self.id, tls, out);
        }
        if leftover.is_empty() {
            Ok(false)
        } else {
            self.ingest(&leftover, out)
        }
    }

    fn send_raw(&mut self, text: &str, out: &mut Outq, now: Instant) {
        self.send_text(text.to_owned(), out, now);
    }

    /// Writes `text`; on a plain stream its buffer becomes the transmitted bytes.
    fn send_text(&mut self, text: String, out: &mut Outq, now: Instant) {
        self.last_tx = now;
        if out.trace {
            out.push(Output::Trace {
                conn: self.id,
                trace: Trace::Xml(text.clone()),
            });
        }
        match self.tls.as_mut() {
            Some(tls) => {
                // rustls buffers plaintext until the handshake completes; it cannot fail
                // short of a closed connection, which the next read reports.
                let _ = tls.writer().write_all(text.as_bytes());
                flush_tls_sized(self.id, tls, out, text.len());
                if text.capacity() <= KEPT_TEXT {
                    out.text = text;
                }
            }
            None => out.push(Output::Transmit {
                conn: self.id,
                bytes: text.into_bytes(),
            }),
        }
    }

    /// Writes a stanza; returns its length in plaintext bytes.
    pub fn send(&mut self, el: &Element, out: &mut Outq, now: Instant) -> usize {
        let db_declared = self.db_declared;
        self.send_written(
            |text| write_element_with(text, el, ns::SERVER, db_declared),
            out,
            now,
        )
    }

    /// Writes a stanza that `write` appends to the (empty) text it is given, as
    /// [`write_element_with`] would on this stream; returns its length in
    /// plaintext bytes.
    pub fn send_written(
        &mut self,
        write: impl FnOnce(&mut String),
        out: &mut Outq,
        now: Instant,
    ) -> usize {
        // Room for a chat message without growing the buffer on the way.
        let mut text = std::mem::take(&mut out.text);
        text.clear();
        text.reserve(STANZA_BUFFER);
        write(&mut text);
        let len = text.len();
        self.send_text(text, out, now);
        len
    }

    pub fn send_header(&mut self, header: &StreamHeaderOut, out: &mut Outq, now: Instant) {
        self.header_sent = true;
        self.db_declared = header.dialback;
        self.send_raw(&header.to_xml(), out, now);
    }

    pub fn send_keep_alive(&mut self, out: &mut Outq, now: Instant) {
        self.send_raw(" ", out, now);
    }

    /// Writes a stream error and the stream close. The caller closes the connection.
    pub fn send_stream_error(&mut self, condition: &str, text: &str, out: &mut Outq, now: Instant) {
        let mut err =
            Element::new(ns::STREAM, "error").child(Element::new(ns::STREAMS_ERR, condition));
        if !text.is_empty() {
            err = err.child(Element::new(ns::STREAMS_ERR, "text").text(text));
        }
        let mut s = String::new();
        write_element(&mut s, &err, ns::SERVER);
        s.push_str("</stream:stream>");
        self.send_raw(&s, out, now);
    }

    pub fn send_close(&mut self, out: &mut Outq, now: Instant) {
        self.send_raw("</stream:stream>", out, now);
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            flush_tls(self.id, tls, out);
        }
    }
}

fn read_plaintext(tls: &mut rustls::Connection, plain: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match tls.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => plain.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(_) => break,
        }
    }
}

/// What [`Conn::send`] reserves for a stanza's text.
const STANZA_BUFFER: usize = 1024;

/// The largest text buffer kept for the next stanza: one that grew for a big
/// stanza is let go.
const KEPT_TEXT: usize = 16 * 1024;

fn flush_tls(id: ConnId, tls: &mut rustls::Connection, out: &mut Outq) {
    flush_tls_sized(id, tls, out, STANZA_BUFFER);
}

/// [`flush_tls`] after `plain` bytes of plaintext: the record is that and its
/// framing and tag, so the buffer is allocated at its size (a small one comes
/// from the allocator's per-thread cache).
fn flush_tls_sized(id: ConnId, tls: &mut rustls::Connection, out: &mut Outq, plain: usize) {
    let mut bytes = Vec::with_capacity(plain + 64);
    while tls.wants_write() {
        match tls.write_tls(&mut bytes) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if !bytes.is_empty() {
        if out.trace {
            out.push(Output::Trace {
                conn: id,
                trace: Trace::Tls(bytes.len()),
            });
        }
        out.push(Output::Transmit { conn: id, bytes });
    }
}
