//! The whole gateway on its hot path: a `Gateway` with authenticated streams (set up
//! over the simulation network), then driven directly, one message at a time,
//! with its outputs drained as a host would. Each message includes what follows
//! from it: the SIP MESSAGE's 200 fed back (XMPP → SIP), or the 200 sent and the
//! stanza written (SIP → XMPP), and the transaction timers that end it. Virtual
//! time advances 5 ms per message so that transactions end as they would at 200
//! messages per second per gateway, well inside the caps.

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
    sip_template: String,
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
/// request's lines: the SIP peer's part, kept cheap so that it does not weigh on
/// the gateway's figures.
fn echoed(msg: &str) -> [&str; 5] {
    let mut out = [""; 5];
    for line in msg.split('\n').skip(1) {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match name {
            "Via" => 0,
            "From" => 1,
            "To" => 2,
            "Call-ID" => 3,
            "CSeq" => 4,
            _ => continue,
        };
        if let Some(v) = out.get_mut(slot) {
            if v.is_empty() {
                *v = value.trim();
            }
        }
    }
    out
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
        let sip_template = String::from_utf8(crate::sip_message_bytes()).unwrap_or_default();
        WholeGateway {
            net,
            conn,
            now,
            proxy: SocketAddr::from(PROXY),
            branch: 0,
            sip_template,
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
            if let Output::SipSend { bytes, .. } = out {
                sent = Some(bytes);
            }
        }
        let request = sent?;
        let text = std::str::from_utf8(&request).ok()?;
        let [via, from, to, call_id, cseq] = echoed(text);
        if [via, from, to, call_id, cseq].iter().any(|v| v.is_empty()) {
            return None;
        }
        let ok = format!(
            "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to};tag=ua\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n"
        );
        gw.sip_datagram(now, proxy, ok.as_bytes());
        while gw.poll_output().is_some() {}
        Some(request)
    }

    /// One SIP MESSAGE in (a fresh transaction each time); returns the bytes
    /// written on the s2s stream and whether the 200 was sent.
    pub fn outbound(&mut self) -> (Vec<u8>, bool) {
        self.tick();
        self.branch += 1;
        let bytes =
            self.sip_template
                .replacen("z9hG4bK776asdhds", &format!("z9hG4bK{}", self.branch), 1);
        let (now, proxy, conn) = (self.now, self.proxy, self.conn);
        let gw = self.net.gateway(0);
        gw.sip_datagram(now, proxy, bytes.as_bytes());
        let mut written = Vec::new();
        let mut ok = false;
        while let Some(out) = gw.poll_output() {
            match out {
                Output::Transmit { conn: c, bytes } if c == conn => written.extend(bytes),
                Output::SipSend { bytes, .. } => ok |= bytes.starts_with(b"SIP/2.0 200"),
                _ => {}
            }
        }
        (written, ok)
    }
}
