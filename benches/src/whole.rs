//! The whole gateway on its hot path: a `Gateway` with authenticated streams (set up
//! over the simulation network), then driven directly, one message at a time,
//! with its outputs drained as a host would. Each message includes what follows
//! from it: the SIP MESSAGE's 200 fed back (XMPP → SIP), or the 200 sent and the
//! stanza written (SIP → XMPP), and the transaction timers that end it. Virtual
//! time advances 5 ms per message so that transactions end as they would at 200
//! messages per second per gateway, well inside the caps.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_core::config::{Config, Negotiation, Partner, PartnerType, SaslMode, TlsMode};
use isthmus_core::gateway::{ConnId, Direction, Event, Output};
use isthmus_tests::scenario::message;
use isthmus_tests::sim::Net;

const PROXY: ([u8; 4], u16) = ([127, 0, 0, 50], 5070);
const STEP: Duration = Duration::from_millis(5);

/// A gateway serving sip.example, its stream with xmpp.example up.
pub struct WholeGateway {
    net: Net,
    conn: ConnId,
    now: Instant,
    proxy: SocketAddr,
    branch: u64,
    /// The SIP MESSAGE template around its branch, so each request is two copies
    /// and a number.
    sip_template: (Vec<u8>, Vec<u8>),
    /// The SIP peer's reused buffer for its 200s and requests.
    peer: Vec<u8>,
    /// Outputs a loop that does its work does not produce: a second SIP request
    /// for one stanza (a retransmission: the 200 did not match), a bounce, a
    /// failed stream, input ignored.
    pub unexpected: u64,
}

fn row() -> Negotiation {
    // Plaintext, as the tokenization baseline is: TLS record cost is measured by
    // the handshake benches and the load tool.
    Negotiation {
        tls: TlsMode::NotSupported,
        sasl: SaslMode::NotSupported,
        dialback: true,
    }
}

fn configs() -> (Config, Config) {
    let mut gw = Config::default();
    gw.gateway.served_domains = vec!["sip.example".into()];
    gw.gateway.dialback_secret = Some("gw secret".into());
    gw.gateway.sip_next_hop = Some(SocketAddr::from(PROXY));
    let mut p = Partner::new("xmpp.example");
    p.negotiation = row();
    p.partner_type = PartnerType::Federated;
    gw.partners.push(p);
    let mut xmpp = Config::default();
    xmpp.gateway.served_domains = vec!["xmpp.example".into()];
    xmpp.gateway.dialback_secret = Some("xmpp secret".into());
    let mut p = Partner::new("sip.example");
    p.negotiation = row();
    xmpp.partners.push(p);
    (gw, xmpp)
}

/// The headers a 200 echoes (Via, From, To, Call-ID, CSeq), in one pass over the
/// request's lines: the SIP peer's part, kept cheap (bytes, one `memchr` per line,
/// no allocation) so that it does not weigh on the gateway's figures.
fn echoed(msg: &[u8]) -> [&[u8]; 5] {
    let mut out: [&[u8]; 5] = [b""; 5];
    let mut rest = msg;
    let mut first = true;
    while let Some(end) = memchr::memchr(b'\n', rest) {
        let (line, next) = rest.split_at(end);
        rest = next.get(1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if std::mem::take(&mut first) {
            continue;
        }
        if line.is_empty() {
            break;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let slot = match name {
            b"Via" => 0,
            b"From" => 1,
            b"To" => 2,
            b"Call-ID" => 3,
            b"CSeq" => 4,
            _ => continue,
        };
        if let Some(v) = out.get_mut(slot) {
            if v.is_empty() {
                *v = value.get(1..).unwrap_or_default().trim_ascii();
            }
        }
    }
    out
}

fn unexpected(out: &Output) -> bool {
    matches!(
        out,
        Output::Event(Event::Bounced { .. } | Event::Failed { .. } | Event::Ignored { .. })
    )
}

impl WholeGateway {
    fn new(direction: Direction) -> Self {
        let (gw, xmpp) = configs();
        let mut net = Net::new();
        net.add_gateway("isthmus", gw, None, 11);
        net.add_gateway("xmpp", xmpp, None, 12);
        net.add_sip_peer("proxy", SocketAddr::from(PROXY), 200);
        match direction {
            Direction::Inbound => net.send_stanza(
                1,
                message("romeo@xmpp.example/balcony", "juliet@sip.example", "up"),
            ),
            Direction::Outbound => {
                net.send_stanza(0, message("juliet@sip.example", "romeo@xmpp.example", "up"))
            }
        }
        net.run();
        let conn = net
            .events
            .iter()
            .find_map(|(node, e)| match e {
                Event::Authenticated {
                    conn, direction: d, ..
                } if node == "isthmus" && *d == direction => Some(*conn),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no stream: {}", net.transcript_text()));
        let now = net.now;
        let template = crate::sip_message_bytes();
        let marker: &[u8] = b"z9hG4bK776asdhds";
        let at = template
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap_or_else(|| panic!("the SIP template has no branch {marker:?}"));
        let sip_template = (
            template[..at + b"z9hG4bK".len()].to_vec(),
            template[at + marker.len()..].to_vec(),
        );
        WholeGateway {
            net,
            conn,
            now,
            proxy: SocketAddr::from(PROXY),
            branch: 0,
            sip_template,
            peer: Vec::with_capacity(1024),
            unexpected: 0,
        }
    }

    /// For `inbound`: the partner's stream into the gateway is authenticated.
    pub fn xmpp_to_sip() -> Self {
        Self::new(Direction::Inbound)
    }

    /// For `outbound`: the gateway's stream to the partner is authenticated.
    pub fn sip_to_xmpp() -> Self {
        Self::new(Direction::Outbound)
    }

    fn tick(&mut self) {
        self.now += STEP;
        let gw = self.net.gateway(0);
        if gw.poll_timeout().is_some_and(|t| t <= self.now) {
            gw.handle_timeout(self.now);
        }
    }

    /// One s2s `<message>` in; returns the SIP MESSAGE the gateway sent, after
    /// feeding its 200 back.
    pub fn inbound(&mut self, stanza: &[u8]) -> Option<Vec<u8>> {
        self.tick();
        let (now, conn, proxy) = (self.now, self.conn, self.proxy);
        let gw = self.net.gateway(0);
        gw.received(now, conn, stanza);
        let mut sent = None;
        while let Some(out) = gw.poll_output() {
            match out {
                Output::SipSend { bytes, .. } => {
                    self.unexpected += u64::from(sent.is_some());
                    sent = Some(bytes);
                }
                out => self.unexpected += u64::from(unexpected(&out)),
            }
        }
        let request = sent?;
        let echo = echoed(&request);
        if echo.iter().any(|v| v.is_empty()) {
            return None;
        }
        let [via, from, to, call_id, cseq] = echo;
        let ok = &mut self.peer;
        ok.clear();
        for part in [
            b"SIP/2.0 200 OK\r\nVia: ".as_slice(),
            via,
            b"\r\nFrom: ",
            from,
            b"\r\nTo: ",
            to,
            b";tag=ua\r\nCall-ID: ",
            call_id,
            b"\r\nCSeq: ",
            cseq,
            b"\r\nContent-Length: 0\r\n\r\n",
        ] {
            ok.extend_from_slice(part);
        }
        gw.sip_datagram(now, proxy, ok);
        while let Some(out) = gw.poll_output() {
            self.unexpected += u64::from(unexpected(&out) || matches!(out, Output::SipSend { .. }));
        }
        Some(request)
    }

    /// One SIP MESSAGE in (a fresh transaction each time); returns the bytes
    /// written on the s2s stream and whether the 200 was sent.
    pub fn outbound(&mut self) -> (Vec<u8>, bool) {
        self.tick();
        self.branch += 1;
        let bytes = &mut self.peer;
        bytes.clear();
        bytes.extend_from_slice(&self.sip_template.0);
        // Writing into a Vec cannot fail.
        let _ = write!(bytes, "{}", self.branch);
        bytes.extend_from_slice(&self.sip_template.1);
        let (now, proxy, conn) = (self.now, self.proxy, self.conn);
        let gw = self.net.gateway(0);
        gw.sip_datagram(now, proxy, bytes);
        let mut written = Vec::new();
        let mut ok = false;
        while let Some(out) = gw.poll_output() {
            match out {
                Output::Transmit { conn: c, bytes } if c == conn => written.extend(bytes),
                Output::SipSend { bytes, .. } => ok |= bytes.starts_with(b"SIP/2.0 200"),
                out => self.unexpected += u64::from(unexpected(&out)),
            }
        }
        (written, ok)
    }
}
