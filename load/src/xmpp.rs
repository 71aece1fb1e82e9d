//! XMPP over plain TCP for the tool: a partner server's streams (dialback, the
//! authoritative side's verify answers) and a client session on Prosody's c2s port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_core::s2s::dialback;
use isthmus_core::xml::{
    escape_attr, ns, Element, Limits, StreamEvent, StreamHeader, StreamReader,
};

use crate::ledger::{self, Ledger};

pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Conn {
    pub tcp: TcpStream,
    reader: StreamReader,
    what: String,
}

impl Conn {
    pub fn connect(addr: SocketAddr, what: &str) -> Result<Conn, String> {
        let tcp = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)
            .map_err(|e| format!("{what}: cannot connect to {addr}: {e}"))?;
        Conn::from_tcp(tcp, what)
    }

    pub fn from_tcp(tcp: TcpStream, what: &str) -> Result<Conn, String> {
        // Small stanzas go out at once, as the gateway's own sockets do.
        tcp.set_nodelay(true)
            .map_err(|e| format!("{what}: TCP_NODELAY: {e}"))?;
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(|e| format!("{what}: read timeout: {e}"))?;
        let limits = Limits {
            max_stanza_bytes: 1 << 20,
            ..Limits::default()
        };
        Ok(Conn {
            tcp,
            reader: StreamReader::new(limits),
            what: what.to_owned(),
        })
    }

    pub fn send(&mut self, text: &str) -> Result<(), String> {
        self.tcp
            .write_all(text.as_bytes())
            .map_err(|e| format!("{}: write: {e}", self.what))
    }

    /// The next stream event; errors on timeout, close or bad XML.
    pub fn next(&mut self) -> Result<StreamEvent, String> {
        let mut buf = [0u8; 16384];
        loop {
            match self.reader.next_event() {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(format!("{}: bad XML from the peer: {e:?}", self.what)),
            }
            match self.tcp.read(&mut buf) {
                Ok(0) => return Err(format!("{}: the peer closed the connection", self.what)),
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e) => return Err(format!("{}: read: {e}", self.what)),
            }
        }
    }

    pub fn header(&mut self) -> Result<StreamHeader, String> {
        match self.next()? {
            StreamEvent::Header(h) => Ok(h),
            other => Err(format!(
                "{}: expected a stream header, got {other:?}",
                self.what
            )),
        }
    }

    pub fn element(&mut self) -> Result<Element, String> {
        match self.next()? {
            StreamEvent::Element(e) => {
                if e.is(ns::STREAM, "error") {
                    return Err(format!(
                        "{}: stream error: {}",
                        self.what,
                        e.to_xml(ns::SERVER)
                    ));
                }
                Ok(e)
            }
            StreamEvent::End => Err(format!("{}: the peer closed the stream", self.what)),
            StreamEvent::Header(_) => Err(format!("{}: unexpected stream header", self.what)),
        }
    }

    pub fn restart(&mut self) {
        self.reader.restart();
    }
}

pub fn s2s_header(from: &str, to: &str, id: Option<&str>) -> String {
    let id = id
        .map(|i| format!(" id='{}'", escape_attr(i)))
        .unwrap_or_default();
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{}' to='{}'{id} version='1.0'>",
        escape_attr(from),
        escape_attr(to)
    )
}

/// An authenticated inbound stream from partner `from` to the gateway's `to`
/// (dialback over TCP: the gateway checks the key on its verify connection to us).
pub fn inbound_stream(
    gateway: SocketAddr,
    from: &str,
    to: &str,
    secret: &str,
) -> Result<Conn, String> {
    let mut c = Conn::connect(gateway, &format!("stream {from} -> {to}"))?;
    c.send(&s2s_header(from, to, None))?;
    let h = c.header()?;
    let id =
        h.id.ok_or_else(|| format!("stream {from} -> {to}: the gateway's header has no id"))?;
    let _features = c.element()?;
    let key = dialback::key(secret, to, from, &id);
    c.send(&format!(
        "<db:result from='{from}' to='{to}'>{key}</db:result>"
    ))?;
    loop {
        let el = c.element()?;
        if el.is(ns::DIALBACK, "result") {
            return match el.get_attr("type") {
                Some("valid") => Ok(c),
                t => Err(format!(
                    "stream {from} -> {to}: dialback refused (type {t:?}): {}",
                    el.to_xml(ns::SERVER)
                )),
            };
        }
    }
}

/// Asks the gateway (authoritative for `originating`) whether `key` is its key for
/// stream `id`: the receiving server's verify connection.
fn verify_with_gateway(
    gateway: SocketAddr,
    receiving: &str,
    originating: &str,
    id: &str,
    key: &str,
) -> Result<bool, String> {
    let mut c = Conn::connect(gateway, &format!("verify {receiving} -> {originating}"))?;
    c.send(&s2s_header(receiving, originating, None))?;
    c.header()?;
    let _features = c.element()?;
    c.send(&format!(
        "<db:verify from='{receiving}' to='{originating}' id='{}'>{key}</db:verify>",
        escape_attr(id)
    ))?;
    loop {
        let el = c.element()?;
        if el.is(ns::DIALBACK, "verify") {
            let _ = c.send("</stream:stream>");
            return Ok(el.get_attr("type") == Some("valid"));
        }
    }
}

/// One connection accepted on the tool's s2s port: either the gateway's verify
/// connection (we are authoritative for the partner domains) or the gateway's own
/// outbound stream to a partner domain, whose stanzas are the SIP→XMPP deliveries.
pub fn serve_accepted(
    tcp: TcpStream,
    gateway: SocketAddr,
    secret: &str,
    ledger: &Arc<Ledger>,
    seq: u64,
) -> Result<(), String> {
    let mut c = Conn::from_tcp(tcp, "accepted s2s connection")?;
    let h = c.header()?;
    let (peer, us) = (h.from.unwrap_or_default(), h.to.unwrap_or_default());
    let id = format!("load-{seq}");
    c.send(&s2s_header(&us, &peer, Some(&id)))?;
    c.send("<stream:features><dialback xmlns='urn:xmpp:features:dialback'/></stream:features>")?;
    loop {
        let el = match c.next()? {
            StreamEvent::Element(e) => e,
            // The gateway closes its verify connections once answered.
            StreamEvent::End => return Ok(()),
            StreamEvent::Header(_) => continue,
        };
        if el.is(ns::DIALBACK, "verify") {
            let (from, vid) = (
                el.get_attr("from").unwrap_or(""),
                el.get_attr("id").unwrap_or(""),
            );
            let to = el.get_attr("to").unwrap_or(&us);
            let ok = dialback::verify(secret, from, to, vid, &el.text_content());
            c.send(&format!(
                "<db:verify from='{}' to='{}' id='{}' type='{}'/>",
                escape_attr(to),
                escape_attr(from),
                escape_attr(vid),
                if ok { "valid" } else { "invalid" }
            ))?;
        } else if el.is(ns::DIALBACK, "result") {
            let from = el.get_attr("from").unwrap_or(&peer).to_owned();
            let to = el.get_attr("to").unwrap_or(&us).to_owned();
            let ok = verify_with_gateway(gateway, &to, &from, &id, &el.text_content())?;
            c.send(&format!(
                "<db:result from='{to}' to='{from}' type='{}'/>",
                if ok { "valid" } else { "invalid" }
            ))?;
            if !ok {
                return Err(format!(
                    "the gateway's dialback key for {from} -> {to} is not valid"
                ));
            }
            c.tcp
                .set_read_timeout(None)
                .map_err(|e| format!("read timeout: {e}"))?;
            return receive_stanzas(c, ledger, ns::SERVER);
        }
    }
}

/// Reads stanzas until the stream ends: message bodies are deliveries, error
/// stanzas are refusals of the messages the tool sent.
pub fn receive_stanzas(mut c: Conn, ledger: &Ledger, content_ns: &str) -> Result<(), String> {
    // A stalled partner (`--partner-stall`) stops reading after its first stanza.
    let mut stall = match PARTNER_STALL_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    loop {
        let el = match c.next() {
            Ok(StreamEvent::Element(e)) => e,
            Ok(StreamEvent::End) => return Ok(()),
            Ok(StreamEvent::Header(_)) => continue,
            Err(e) if STOPPING.load(Ordering::Relaxed) => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        record_stanza(&el, ledger, content_ns);
        if let Some(pause) = stall.take() {
            std::thread::sleep(pause);
        }
    }
}

/// How long each partner stream stops reading after its first stanza (0: never),
/// so that the gateway's send queues back up and its refusals can be seen.
pub static PARTNER_STALL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub fn record_stanza(el: &Element, ledger: &Ledger, content_ns: &str) {
    if el.name != "message" {
        return;
    }
    if el.get_attr("type") == Some("error") {
        if let Some(id) = el.get_attr("id").and_then(ledger::parse_id) {
            ledger.answered(id, 0, false);
            return;
        }
    }
    let body = el.find(content_ns, "body").map(|b| b.text_content());
    match body.as_deref().and_then(ledger::parse_body) {
        Some(id) => ledger.delivered(id),
        None => {
            ledger.unknown.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Set when the run is over: read errors after it are the teardown.
pub static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A client session on Prosody's c2s port, plaintext (loopback only): SASL PLAIN,
/// bind, initial presence.
pub fn c2s_login(
    addr: SocketAddr,
    user: &str,
    domain: &str,
    password: &str,
) -> Result<Conn, String> {
    let mut c = Conn::connect(addr, &format!("c2s {user}@{domain}"))?;
    let header = format!("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>");
    c.send(&header)?;
    c.header()?;
    let _features = c.element()?;
    let auth = isthmus_core::s2s::sasl::base64_encode(format!("\0{user}\0{password}").as_bytes());
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"
    ))?;
    let answer = c.element()?;
    if answer.name != "success" {
        return Err(format!(
            "c2s {user}@{domain}: login refused: {}",
            answer.to_xml(ns::CLIENT)
        ));
    }
    c.restart();
    c.send(&header)?;
    c.header()?;
    let _features = c.element()?;
    c.send("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>load</resource></bind></iq>")?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let el = c.element()?;
        if el.name == "iq" && el.get_attr("id") == Some("bind") {
            if el.get_attr("type") != Some("result") {
                return Err(format!(
                    "c2s {user}@{domain}: bind failed: {}",
                    el.to_xml(ns::CLIENT)
                ));
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("c2s {user}@{domain}: no answer to bind"));
        }
    }
    c.send("<presence/>")?;
    Ok(c)
}
