//! Scripted raw XMPP peers on the simulation network: stream headers, reading the
//! stream error a gateway sent, and a raw peer that has authenticated by dialback.

use crate::scenario::{pair_net, PairSetup, Pki, A, B};
use crate::sim::Net;
use isthmus_core::config::{Negotiation, SaslMode, TlsMode};

/// Dialback over plain TCP only: the row that lets a raw peer authenticate.
pub const TCP_DIALBACK: Negotiation = Negotiation {
    tls: TlsMode::NotSupported,
    sasl: SaslMode::NotSupported,
    dialback: true,
};

/// An s2s stream header from `from` to `to`, declaring dialback.
pub fn header(from: &str, to: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
         xmlns:db='jabber:server:dialback' from='{from}' to='{to}' version='1.0'>"
    )
}

/// The condition of the stream error the gateway sent to raw peer `raw`.
pub fn condition_sent(net: &Net, raw: usize) -> Option<String> {
    let text = net.raw_received(raw);
    let start = text.find("<stream:error><")? + "<stream:error><".len();
    let end = text[start..].find([' ', '/', '>'])?;
    Some(text[start..start + end].to_owned())
}

/// The `<text/>` of the stream error the gateway sent to raw peer `raw`.
pub fn error_text_sent(net: &Net, raw: usize) -> Option<String> {
    let text = net.raw_received(raw);
    let error = &text[text.find("<stream:error>")?..];
    let open = error.find("<text")?;
    let start = open + error[open..].find('>')? + 1;
    let end = start + error[start..].find("</text>")?;
    Some(error[start..end].to_owned())
}

/// A (node 0) and B (node 1) serve a.test and b.test with dialback over TCP; a raw
/// peer that knows a.test's dialback secret (so it is a.test's server as far as anyone
/// can tell) authenticates to B, with A as the authoritative server. Returns the net
/// and the raw peer.
pub fn authenticated_raw_peer() -> (Net, usize) {
    let pki = Pki::new();
    let mut net = pair_net(&pki, TCP_DIALBACK, TCP_DIALBACK, &PairSetup::default());
    let raw = net.raw_connect(1);
    net.raw_send(raw, &header(A, B));
    net.settle();
    let seen = net.raw_received(raw);
    let id_at = seen.find("id='").expect("stream id") + 4;
    let id = &seen[id_at..id_at + seen[id_at..].find('\'').expect("quote")];
    let key = isthmus_core::s2s::dialback::key("secret of a.test", B, A, id);
    net.raw_send(
        raw,
        &format!("<db:result from='{A}' to='{B}'>{key}</db:result>"),
    );
    net.settle();
    assert!(
        net.raw_received(raw).contains("type='valid'"),
        "{}",
        net.transcript_text()
    );
    (net, raw)
}
