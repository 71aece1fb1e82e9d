//! Two-sided scenarios: a SIP proxy with its users ⇄ isthmus (node 0, serving
//! sip.test) ⇄ an XMPP partner server (node 1, a second gateway serving xmpp.test
//! whose local deliveries stand for its users).

use std::net::SocketAddr;

use isthmus_core::config::{Config, Negotiation, Partner, PartnerType, SaslMode, TlsMode};
use isthmus_core::sip::{SipLimits, SipMessage};
use isthmus_core::xml::Element;

use crate::scenario::{Cert, Pki};
use crate::sim::Net;

pub const PROXY: ([u8; 4], u16) = ([127, 0, 0, 50], 5070);

pub fn row() -> Negotiation {
    Negotiation {
        tls: TlsMode::Required,
        sasl: SaslMode::Optional,
        dialback: true,
    }
}

pub struct World {
    pub net: Net,
    pub proxy: usize,
}

/// isthmus (node 0) and the XMPP partner (node 1); the proxy answers with `answer`.
pub fn world(partner_type: PartnerType, answer: u16) -> World {
    let pki = Pki::new();
    let mut gw = Config::default();
    gw.gateway.served_domains = vec!["sip.test".into()];
    gw.gateway.dialback_secret = Some("gw secret".into());
    gw.gateway.sip_next_hop = Some(SocketAddr::from(PROXY));
    let mut p = Partner::new("xmpp.test");
    p.negotiation = row();
    p.partner_type = partner_type;
    gw.partners.push(p);
    let mut xmpp = Config::default();
    xmpp.gateway.served_domains = vec!["xmpp.test".into()];
    xmpp.gateway.dialback_secret = Some("xmpp secret".into());
    let mut p = Partner::new("sip.test");
    p.negotiation = row();
    xmpp.partners.push(p);
    let mut net = Net::new();
    net.add_gateway(
        "isthmus",
        gw,
        Some(pki.context("sip.test", &Cert::Good)),
        11,
    );
    net.add_gateway(
        "xmpp",
        xmpp,
        Some(pki.context("xmpp.test", &Cert::Good)),
        12,
    );
    let proxy = net.add_sip_peer("proxy", SocketAddr::from(PROXY), answer);
    World { net, proxy }
}

pub fn sip_message(to: &str, body: &str, branch: &str) -> SipMessage {
    let text = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.50:5070;branch={branch}\r\nVia: SIP/2.0/UDP 127.0.0.1:44424;branch=z9hG4bKua\r\n\
         Max-Forwards: 69\r\nFrom: <sip:alice@sip.test>;tag=a1\r\nTo: <{to}>\r\nCall-ID: call-{branch}\r\nCSeq: 1 MESSAGE\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    SipMessage::parse(text.as_bytes(), &SipLimits::default()).expect("test MESSAGE")
}

pub fn responses(w: &World) -> Vec<(u16, String)> {
    w.net.sip_peers[w.proxy]
        .received
        .iter()
        .filter_map(|m| match &m.start {
            isthmus_core::sip::StartLine::Response { code, reason } => {
                Some((*code, reason.to_string()))
            }
            _ => None,
        })
        .collect()
}

pub fn xmpp_user_got(w: &World) -> Vec<Element> {
    w.net
        .delivered
        .iter()
        .filter(|(n, _)| n == "xmpp")
        .map(|(_, e)| e.clone())
        .collect()
}

/// A SIP client's SUBSCRIBE (Event: presence) from `user` to `to`, relayed by the proxy.
pub fn subscribe(
    user: &str,
    to: &str,
    call_id: &str,
    branch: &str,
    expires: u32,
    cseq: u32,
) -> SipMessage {
    let contact_user = user.split('@').next().unwrap_or(user);
    let text = format!(
        "SUBSCRIBE {to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.50:5070;branch={branch}\r\nMax-Forwards: 69\r\n\
         From: <sip:{user}>;tag=w-{call_id}\r\nTo: <{to}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n\
         Contact: <sip:{contact_user}@127.0.0.1:44424>\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nExpires: {expires}\r\n\
         Content-Length: 0\r\n\r\n"
    );
    SipMessage::parse(text.as_bytes(), &SipLimits::default()).expect("test SUBSCRIBE")
}

/// A PIDF document as a SIP presence server would send it.
pub fn pidf(entity: &str, open: bool, note: Option<&str>) -> String {
    let note = note
        .map(|n| format!("<note>{n}</note>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{entity}\">\n <tuple id=\"t1\"><status><basic>{}</basic></status>{note}</tuple>\n</presence>\n",
        if open { "open" } else { "closed" }
    )
}

/// The SIP requests the proxy received with this method.
pub fn requests<'a>(w: &'a World, method: &str) -> Vec<&'a SipMessage> {
    w.net.sip_peers[w.proxy]
        .received
        .iter()
        .filter(|m| m.method() == Some(method))
        .collect()
}

/// What the XMPP user received, as XML.
pub fn xmpp_xml(w: &World) -> Vec<String> {
    xmpp_user_got(w)
        .iter()
        .map(|e| e.to_xml("jabber:server"))
        .collect()
}
