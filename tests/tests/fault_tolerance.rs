//! Faults on either side of the gateway, over virtual time: a partner that cannot
//! be reached (black hole, refused connection, every kind of DNS failure) and a SIP
//! next hop that is down or answers with failures. The invariant in every case:
//! each stanza or SIP request the gateway accepted is delivered or answered with
//! the mapped error exactly once, and SIP transactions are answered before the SIP
//! client's Timer F (64·T1 = 32 s). Times are the simulation's clock, so the bounds
//! are exact, not timing-dependent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use isthmus_core::config::{Config, PartnerType};
use isthmus_core::gateway::{Event, Gateway, Output};
use isthmus_core::roster::Sub;
use isthmus_core::sip::{SipLimits, SipMessage, StartLine};
use isthmus_core::xml::{ns, Element};
use isthmus_tests::sim::Net;
use isthmus_tests::sipworld::{
    pidf, requests, sip_message, subscribe, world, xmpp_user_got, World, PROXY,
};

/// Timer F of the SIP client that sent a request (RFC 3261 §17.1.2.2: 64·T1).
const TIMER_F: u64 = 32;

/// Every transcript line with the virtual second at which it was written.
fn timeline(net: &Net) -> Vec<(u64, &str)> {
    let mut t = 0;
    let mut lines = Vec::new();
    for line in &net.transcript {
        match line
            .strip_prefix("-- t = ")
            .and_then(|r| r.strip_suffix(" s"))
        {
            Some(secs) => t = secs.parse().expect("transcript time"),
            None => lines.push((t, line.as_str())),
        }
    }
    lines
}

/// A final answer from isthmus to the proxy: when, for which request, what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    t: u64,
    call_id: String,
    method: String,
    code: u16,
    reason: String,
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(" | ")
        .find_map(|p| p.strip_prefix(name))
        .unwrap_or_default()
}

/// isthmus's SIP responses to the proxy's requests, in the order sent.
fn answers(w: &World) -> Vec<Answer> {
    let mut out = Vec::new();
    for (t, line) in timeline(&w.net) {
        let Some(rest) = line.strip_prefix("isthmus→proxy SIP: ") else {
            continue;
        };
        let Some(code) = rest.get(..3).and_then(|c| c.parse::<u16>().ok()) else {
            continue;
        };
        let start = rest.split(" | ").next().unwrap_or_default();
        out.push(Answer {
            t,
            call_id: field(line, "Call-ID: ").to_owned(),
            method: field(line, "CSeq: ")
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_owned(),
            code,
            reason: start.get(4..).unwrap_or_default().to_owned(),
        });
    }
    // The transcript and what the proxy actually received agree.
    let received = w.net.sip_peers[w.proxy]
        .received
        .iter()
        .filter(|m| matches!(m.start, StartLine::Response { .. }))
        .count();
    assert_eq!(out.len(), received, "{}", w.net.transcript_text());
    out
}

/// What the XMPP user (node "xmpp") received, with the virtual second of each.
fn xmpp_got_at(w: &World) -> Vec<(u64, Element)> {
    let times: Vec<u64> = timeline(&w.net)
        .into_iter()
        .filter(|(_, l)| l.starts_with("xmpp delivers locally: "))
        .map(|(t, _)| t)
        .collect();
    let got = xmpp_user_got(w);
    assert_eq!(times.len(), got.len());
    times.into_iter().zip(got).collect()
}

/// The stanza error condition and type of an error stanza.
fn condition(el: &Element) -> (String, String) {
    let err = el.find(ns::SERVER, "error").expect("an error stanza");
    let cond = err
        .elements()
        .find(|c| c.ns == ns::STANZAS_ERR && c.name != "text")
        .map(|c| c.name.clone())
        .unwrap_or_default();
    (
        cond.to_string(),
        err.get_attr("type").unwrap_or_default().to_owned(),
    )
}

fn bounced(net: &Net, node: &str) -> Vec<(String, &'static str)> {
    net.events
        .iter()
        .filter(|(n, _)| n == node)
        .filter_map(|(_, e)| match e {
            Event::Bounced { to, condition, .. } => Some((to.clone(), *condition)),
            _ => None,
        })
        .collect()
}

fn message(from: &str, to: &str, id: &str, body: &str) -> Element {
    Element::new(ns::SERVER, "message")
        .attr("from", from)
        .attr("to", to)
        .attr("type", "chat")
        .attr("id", id)
        .child(Element::new(ns::SERVER, "body").text(body))
}

fn presence(from: &str, to: &str, ty: Option<&str>) -> Element {
    let p = Element::new(ns::SERVER, "presence")
        .attr("from", from)
        .attr("to", to);
    match ty {
        Some(t) => p.attr("type", t),
        None => p,
    }
}

fn call(branch: &str) -> String {
    format!("call-{branch}")
}

// ---- a partner that cannot be reached -------------------------------------------

#[test]
fn messages_queued_for_a_black_hole_are_each_answered_once_before_timer_f() {
    let mut w = world(PartnerType::Federated, 200);
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    w.net.add_black_hole(hole);
    w.net.set_dns(0, "xmpp.test", vec![hole]);
    // Three MESSAGEs in a row at t = 0, then a SUBSCRIBE (whose presence
    // subscription isthmus queues for the same stream) and two more at t = 5.
    for b in ["z9hG4bKh0", "z9hG4bKh1", "z9hG4bKh2"] {
        w.net
            .sip_send(w.proxy, 0, &sip_message("sip:romeo@xmpp.test", b, b));
    }
    w.net.settle();
    assert!(
        answers(&w).is_empty(),
        "nothing is answered before the stream is up"
    );
    // No timer falls due before t = 5, so the clock may jump there.
    w.net.now += Duration::from_secs(5);
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-h",
            "z9hG4bKhs",
            600,
            1,
        ),
    );
    for b in ["z9hG4bKh3", "z9hG4bKh4"] {
        w.net
            .sip_send(w.proxy, 0, &sip_message("sip:romeo@xmpp.test", b, b));
    }
    w.net.run();
    let t = w.net.transcript_text();
    let messages: Vec<Answer> = answers(&w)
        .into_iter()
        .filter(|a| a.method == "MESSAGE")
        .collect();
    let order: Vec<&str> = messages.iter().map(|a| a.call_id.as_str()).collect();
    assert_eq!(
        order,
        ["h0", "h1", "h2", "h3", "h4"].map(|h| format!("call-z9hG4bK{h}")),
        "each MESSAGE answered exactly once, in arrival order: {t}"
    );
    for (a, sent) in messages.iter().zip([0, 0, 0, 5, 5]) {
        assert_eq!(a.code, 408, "remote-server-timeout: {a:?}");
        assert!(a.reason.contains("xmpp.test"), "{a:?}");
        assert_eq!(a.t, sent + 30, "{a:?}");
        assert!(a.t < sent + TIMER_F, "before the client's Timer F: {a:?}");
    }
    // The presence subscription waited for the stream-establishment timeout
    // (60 s from the first attempt) and came back as one error, which ends the
    // SIP watcher's dialog.
    assert_eq!(
        notify_states(&w, "sub-h").last(),
        Some(&(60, "terminated;reason=probation;retry-after=60".to_owned())),
        "{t}"
    );
    nothing_dropped(&w);
    assert_eq!(
        bounced(&w.net, "isthmus").len(),
        6,
        "five MESSAGEs and one presence: {t}"
    );
    assert!(xmpp_user_got(&w).is_empty());
}

#[test]
fn a_refused_connection_answers_every_queued_stanza_at_once() {
    let mut w = world(PartnerType::Federated, 200);
    let closed: SocketAddr = ([127, 0, 0, 99], 5269).into();
    w.net.set_dns(0, "xmpp.test", vec![closed]);
    for b in ["z9hG4bKr0", "z9hG4bKr1", "z9hG4bKr2"] {
        w.net
            .sip_send(w.proxy, 0, &sip_message("sip:romeo@xmpp.test", b, b));
    }
    w.net.send_stanza(
        0,
        presence("alice@sip.test", "romeo@xmpp.test", Some("probe")),
    );
    w.net.run();
    let t = w.net.transcript_text();
    let a = answers(&w);
    assert_eq!(
        a.iter().map(|a| a.call_id.clone()).collect::<Vec<_>>(),
        ["r0", "r1", "r2"].map(|r| call(&format!("z9hG4bK{r}"))),
        "{t}"
    );
    // Resolved, but no stream at the address: remote-server-timeout (RFC 6120
    // §8.3.3.17), answered as soon as the last address has failed.
    for a in &a {
        assert_eq!((a.t, a.code), (0, 408), "{a:?}");
        assert!(a.reason.contains("connection refused"), "{a:?}");
    }
    // The probe (alice has no watcher dialog) comes back as an error too, handled
    // on the SIP side rather than dropped as a local delivery.
    let b = bounced(&w.net, "isthmus");
    assert_eq!(b.len(), 4, "{t}");
    assert!(
        b.iter().all(|(_, c)| *c == "remote-server-timeout"),
        "{b:?}"
    );
    nothing_dropped(&w);
}

#[test]
fn a_refused_address_falls_through_to_the_next_one_and_keeps_the_order() {
    let mut w = world(PartnerType::Federated, 200);
    let closed: SocketAddr = ([127, 0, 0, 99], 5269).into();
    let partner = w.net.addr(1);
    w.net.set_dns(0, "xmpp.test", vec![closed, partner]);
    for i in 0..4 {
        let b = format!("z9hG4bKf{i}");
        w.net.sip_send(
            w.proxy,
            0,
            &sip_message("sip:romeo@xmpp.test", &format!("n{i}"), &b),
        );
    }
    w.net.run();
    let bodies: Vec<String> = xmpp_user_got(&w)
        .iter()
        .filter_map(|m| m.find(ns::SERVER, "body").map(|b| b.text_content()))
        .collect();
    assert_eq!(bodies, ["n0", "n1", "n2", "n3"]);
    let a = answers(&w);
    assert_eq!(a.len(), 4);
    assert!(a.iter().all(|a| a.code == 200), "{a:?}");
    assert!(bounced(&w.net, "isthmus").is_empty());
}

// ---- DNS failures: one gateway and a scripted resolver ----------------------------

/// How the host's resolver answers a lookup, as it reports to the core.
#[derive(Clone)]
enum Dns {
    /// The resolver's verdict, `after` the query went out.
    Answer {
        result: Result<Vec<SocketAddr>, String>,
        after: Duration,
    },
    /// The lookup never comes back (a wedged resolver).
    Never,
}

/// isthmus alone, with the proxy played by the test and DNS answered by a script.
struct Lone {
    gw: Gateway,
    start: Instant,
    now: Instant,
    dns: Dns,
    pending: VecDeque<(Instant, u64, Result<Vec<SocketAddr>, String>)>,
    lookups: usize,
    /// SIP responses to the proxy: (t, Call-ID, code, reason).
    answers: Vec<(Duration, String, u16, String)>,
    /// Stanzas returned to local senders: (t, stanza).
    returned: Vec<(Duration, Element)>,
    bounces: usize,
    /// Connection attempts never complete (no SYN-ACK, no error); else refused.
    connect_hangs: bool,
}

impl Lone {
    fn new(dns: Dns) -> Lone {
        let mut config = Config::default();
        config.gateway.served_domains = vec!["sip.test".into()];
        config.gateway.dialback_secret = Some("gw secret".into());
        // No SIP next hop: MESSAGEs are answered where they came from, and a
        // stanza handed in with `stanza` comes back as a local delivery the test
        // sees (with a next hop it goes to the SIP side; see the presence tests).
        let mut p = isthmus_core::config::Partner::new("xmpp.test");
        p.negotiation = isthmus_tests::sipworld::row();
        p.partner_type = PartnerType::Federated;
        config.partners.push(p);
        let now = Instant::now();
        Lone {
            gw: Gateway::new(config, None, 7, now, isthmus_tests::sim::START_UNIX),
            start: now,
            now,
            dns,
            pending: VecDeque::new(),
            lookups: 0,
            answers: Vec::new(),
            returned: Vec::new(),
            bounces: 0,
            connect_hangs: false,
        }
    }

    fn t(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    fn drain(&mut self) {
        while let Some(out) = self.gw.poll_output() {
            match out {
                Output::Resolve { query, .. } => {
                    self.lookups += 1;
                    if let Dns::Answer { result, after } = &self.dns {
                        self.pending
                            .push_back((self.now + *after, query, result.clone()));
                    }
                }
                Output::Connect { conn, .. } if !self.connect_hangs => {
                    self.gw.connect_failed(self.now, conn, "connection refused");
                }
                Output::SipSend { bytes, .. } => {
                    let m = SipMessage::parse(&bytes, &SipLimits::default()).expect("SIP");
                    if let StartLine::Response { code, reason } = &m.start {
                        let call_id = m.call_id().unwrap_or_default().to_owned();
                        self.answers
                            .push((self.t(), call_id, *code, reason.to_string()));
                    }
                }
                Output::Deliver(el) => self.returned.push((self.t(), el)),
                Output::Event(Event::Bounced { .. }) => self.bounces += 1,
                _ => {}
            }
        }
    }

    fn sip(&mut self, msg: &SipMessage) {
        self.gw
            .sip_datagram(self.now, SocketAddr::from(PROXY), &msg.to_bytes());
        self.drain();
    }

    fn stanza(&mut self, el: Element) {
        self.gw.send_stanza(self.now, el).expect("routable");
        self.drain();
    }

    /// Runs timers and DNS answers until `limit` from now.
    fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        for _ in 0..10_000 {
            self.drain();
            let dns = self.pending.front().map(|p| p.0);
            let next = self.gw.poll_timeout().into_iter().chain(dns).min();
            let Some(next) = next.filter(|n| *n <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            if self.pending.front().is_some_and(|p| p.0 <= self.now) {
                let (_, query, result) = self.pending.pop_front().expect("due answer");
                self.gw.resolved(self.now, query, result);
            } else {
                self.gw.handle_timeout(self.now);
            }
        }
        panic!("no progress (livelock?)");
    }
}

#[test]
fn every_kind_of_dns_failure_answers_each_queued_stanza_once() {
    let servfail = "127.0.0.53:53: DNS server error: ServFail".to_owned();
    // The host resolver gives up on a silent server after 3 s; three servers, 9 s.
    let timed_out = "127.0.0.53:53: Resource temporarily unavailable (os error 11)".to_owned();
    let failed =
        |result: Result<Vec<SocketAddr>, String>, after: Duration| Dns::Answer { result, after };
    // (case, resolver, SIP code, condition, when d0..d3 are answered, when the
    // presence comes back, lookups made)
    let cases = [
        (
            "NXDOMAIN",
            failed(
                Err("xmpp.test has no SRV record and no address".into()),
                Duration::ZERO,
            ),
            404,
            "remote-server-not-found",
            [0, 0, 0, 2],
            0,
            2,
        ),
        (
            "no records",
            failed(Ok(vec![]), Duration::from_millis(20)),
            404,
            "remote-server-not-found",
            [0, 0, 0, 2],
            0,
            2,
        ),
        (
            "SERVFAIL",
            failed(Err(servfail), Duration::from_millis(20)),
            404,
            "remote-server-not-found",
            [0, 0, 0, 2],
            0,
            2,
        ),
        (
            "resolver timeout",
            failed(Err(timed_out), Duration::from_secs(9)),
            404,
            "remote-server-not-found",
            [9, 9, 9, 9],
            9,
            1,
        ),
        // A lookup that never returns runs into the gateway's own timers: the SIP
        // transactions are answered 30 s after each arrived, the rest at the
        // stream-establishment timeout (60 s), as for any stream that never came up.
        (
            "no answer at all",
            Dns::Never,
            408,
            "remote-server-timeout",
            [30, 30, 30, 32],
            60,
            1,
        ),
    ];
    for (name, dns, code, cond, times, returned_at, lookups) in cases {
        let mut g = Lone::new(dns);
        for b in ["z9hG4bKd0", "z9hG4bKd1", "z9hG4bKd2"] {
            g.sip(&sip_message("sip:romeo@xmpp.test", "hello?", b));
        }
        g.stanza(presence(
            "alice@sip.test",
            "romeo@xmpp.test",
            Some("subscribe"),
        ));
        g.run_for(Duration::from_secs(2));
        // One more 2 s later: it joins a lookup still out, or makes its own.
        g.sip(&sip_message(
            "sip:romeo@xmpp.test",
            "still there?",
            "z9hG4bKd3",
        ));
        g.run_for(Duration::from_secs(120));
        let calls: Vec<&str> = g.answers.iter().map(|a| a.1.as_str()).collect();
        assert_eq!(
            calls,
            ["d0", "d1", "d2", "d3"].map(|d| call(&format!("z9hG4bK{d}"))),
            "{name}: each MESSAGE answered exactly once, in order"
        );
        for ((t, _, c, reason), (expected, sent)) in
            g.answers.iter().zip(times.iter().zip([0, 0, 0, 2]))
        {
            assert_eq!(*c, code, "{name}: {reason}");
            assert!(reason.contains("xmpp.test"), "{name}: {reason}");
            assert_eq!(t.as_secs(), *expected, "{name}: {reason}");
            assert!(t.as_secs() < sent + TIMER_F, "{name}: before Timer F");
        }
        assert_eq!(g.returned.len(), 1, "{name}: the presence came back once");
        let (t, el) = &g.returned[0];
        assert_eq!(el.get_attr("type"), Some("error"));
        assert_eq!(condition(el).0, cond, "{name}");
        assert_eq!(t.as_secs(), returned_at, "{name}");
        assert_eq!(g.bounces, 5, "{name}");
        assert_eq!(
            g.lookups, lookups,
            "{name}: one lookup for all that waits on it"
        );
    }
}

#[test]
fn a_connection_that_never_completes_is_answered_like_a_black_hole() {
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    let mut g = Lone::new(Dns::Answer {
        result: Ok(vec![hole]),
        after: Duration::ZERO,
    });
    g.connect_hangs = true;
    for b in ["z9hG4bKc0", "z9hG4bKc1"] {
        g.sip(&sip_message("sip:romeo@xmpp.test", "anyone?", b));
    }
    g.stanza(presence(
        "alice@sip.test",
        "romeo@xmpp.test",
        Some("subscribe"),
    ));
    g.run_for(Duration::from_secs(120));
    let a: Vec<(u64, &str, u16)> = g
        .answers
        .iter()
        .map(|(t, c, code, _)| (t.as_secs(), c.as_str(), *code))
        .collect();
    assert_eq!(
        a,
        [(30, "call-z9hG4bKc0", 408), (30, "call-z9hG4bKc1", 408)],
        "remote-server-timeout, before Timer F"
    );
    assert_eq!(g.returned.len(), 1);
    assert_eq!(
        g.returned[0].0,
        Duration::from_secs(60),
        "stream-establishment timeout"
    );
    assert_eq!(condition(&g.returned[0].1).0, "remote-server-timeout");
    assert_eq!(g.bounces, 3);
}

// ---- the SIP next hop down (XMPP → SIP) -------------------------------------------

#[test]
fn messages_to_a_silent_sip_next_hop_bounce_once_at_timer_f() {
    for nobody_there in [false, true] {
        let mut w = world(PartnerType::Federated, 0);
        if nobody_there {
            // Nothing listens at the next hop: over UDP the gateway hears nothing
            // (an ICMP port-unreachable is not an answer), so it is the same timeout.
            w.net.sip_peers[w.proxy].addr = ([127, 0, 0, 51], 5070).into();
        }
        for i in 1..=3 {
            w.net.send_stanza(
                1,
                message(
                    "romeo@xmpp.test/balcony",
                    "alice@sip.test",
                    &format!("r{i}"),
                    "are you there?",
                ),
            );
        }
        w.net.run();
        let t = w.net.transcript_text();
        let got = xmpp_got_at(&w);
        let ids: Vec<&str> = got
            .iter()
            .map(|(_, e)| e.get_attr("id").unwrap_or_default())
            .collect();
        assert_eq!(ids, ["r1", "r2", "r3"], "one error each, in order: {t}");
        for (at, e) in &got {
            assert_eq!(e.get_attr("type"), Some("error"));
            assert_eq!(e.get_attr("from"), Some("alice@sip.test"));
            assert_eq!(
                condition(e),
                ("remote-server-timeout".to_owned(), "wait".to_owned())
            );
            assert_eq!(*at, TIMER_F, "after the client transaction's Timer F: {t}");
        }
        if !nobody_there {
            // Timer E retransmitted each request; the sender still hears once.
            let m = requests(&w, "MESSAGE");
            assert!(m.len() > 3, "{}", m.len());
            assert!(t.contains("the SIP side did not answer within 32 s"), "{t}");
            // A 200 after Timer F belongs to no transaction and changes nothing.
            let late = m[0].reply(200, "OK", Some("late"));
            w.net.sip_send(w.proxy, 0, &late);
            w.net.run();
            assert_eq!(xmpp_user_got(&w).len(), 3);
            assert!(w.net.events.iter().any(|(n, e)| n == "isthmus"
                && matches!(e, Event::Ignored { what, .. } if what.contains("no transaction"))));
        }
    }
}

#[test]
fn sip_failure_responses_come_back_as_the_mapped_xmpp_error() {
    // RFC 7247 §6.2 as docs/sip-xmpp-mapping.md lists it.
    let rows = [
        (503, "service-unavailable", "cancel"),
        (408, "remote-server-timeout", "wait"),
        (480, "recipient-unavailable", "wait"),
        (404, "item-not-found", "cancel"),
        (486, "recipient-unavailable", "wait"),
        (500, "internal-server-error", "cancel"),
        (502, "remote-server-not-found", "cancel"),
        (504, "remote-server-timeout", "wait"),
        (403, "forbidden", "auth"),
        (603, "service-unavailable", "cancel"),
    ];
    for (code, cond, ty) in rows {
        let mut w = world(PartnerType::Federated, code);
        for i in 1..=2 {
            w.net.send_stanza(
                1,
                message(
                    "romeo@xmpp.test/balcony",
                    "alice@sip.test",
                    &format!("e{i}"),
                    "hi",
                ),
            );
        }
        w.net.run();
        let got = xmpp_got_at(&w);
        let ids: Vec<&str> = got
            .iter()
            .map(|(_, e)| e.get_attr("id").unwrap_or_default())
            .collect();
        assert_eq!(ids, ["e1", "e2"], "{code}: {}", w.net.transcript_text());
        for (at, e) in &got {
            assert_eq!(condition(e), (cond.to_owned(), ty.to_owned()), "{code}");
            assert_eq!(*at, 0, "{code}: a final response is relayed at once");
            let text = e
                .find(ns::SERVER, "error")
                .and_then(|x| x.find(ns::STANZAS_ERR, "text"))
                .map(|x| x.text_content())
                .unwrap_or_default();
            assert!(text.contains(&format!("SIP {code}")), "{code}: {text}");
        }
        // Final responses end the client transactions: no retransmissions.
        assert_eq!(requests(&w, "MESSAGE").len(), 2, "{code}");
    }
}

#[test]
fn a_subscription_toward_a_sip_side_that_is_down_is_kept_and_retried() {
    let mut w = world(PartnerType::Federated, 0);
    w.net.send_stanza(
        1,
        presence("romeo@xmpp.test", "alice@sip.test", Some("subscribe")),
    );
    w.net.run();
    let t = w.net.transcript_text();
    // Approved (federated) and durable whatever the SIP side does.
    assert_eq!(
        w.net
            .gateway(0)
            .roster_item("alice@sip.test", "romeo@xmpp.test")
            .watched_by,
        Sub::Active
    );
    let seen: Vec<(u64, Option<String>)> = xmpp_got_at(&w)
        .into_iter()
        .map(|(t, e)| (t, e.get_attr("type").map(str::to_owned)))
        .collect();
    assert_eq!(
        seen,
        [
            (0, Some("subscribed".into())),
            (TIMER_F, Some("unavailable".into()))
        ],
        "approved at once; offline once the SUBSCRIBE timed out: {t}"
    );
    assert!(
        requests(&w, "SUBSCRIBE").len() > 1,
        "retransmitted over UDP"
    );
    // The SIP side comes back; the gateway tries again on its own.
    w.net.sip_peers[w.proxy].answer = 200;
    w.net.sip_peers[w.proxy].presence.insert(
        "sip:alice@sip.test".into(),
        pidf("sip:alice@sip.test", true, None),
    );
    w.net.run_for(Duration::from_secs(400));
    let t = w.net.transcript_text();
    let after: Vec<(u64, Option<String>)> = xmpp_got_at(&w)
        .into_iter()
        .skip(2)
        .map(|(t, e)| (t, e.get_attr("type").map(str::to_owned)))
        .collect();
    assert_eq!(after.len(), 1, "{t}");
    assert_eq!(after[0].1, None, "alice is available: {t}");
    assert!(
        (TIMER_F + 300..TIMER_F + 302).contains(&after[0].0),
        "retried 300 s after the failure: {t}"
    );
    let subscribed = xmpp_user_got(&w)
        .iter()
        .filter(|e| e.get_attr("type") == Some("subscribed"))
        .count();
    assert_eq!(subscribed, 1, "the approval is not repeated");
}

#[test]
fn a_subscription_refused_by_the_sip_side_is_retried_after_the_pause() {
    let mut w = world(PartnerType::Federated, 503);
    w.net.send_stanza(
        1,
        presence("romeo@xmpp.test", "alice@sip.test", Some("subscribe")),
    );
    w.net.run();
    let seen: Vec<Option<String>> = xmpp_user_got(&w)
        .iter()
        .map(|e| e.get_attr("type").map(str::to_owned))
        .collect();
    assert_eq!(
        seen,
        [Some("subscribed".into()), Some("unavailable".into())]
    );
    assert_eq!(
        requests(&w, "SUBSCRIBE").len(),
        1,
        "503 is final: no retransmission"
    );
    w.net.run_for(Duration::from_secs(310));
    assert_eq!(requests(&w, "SUBSCRIBE").len(), 2, "one retry after 300 s");
    assert_eq!(
        w.net
            .gateway(0)
            .roster_item("alice@sip.test", "romeo@xmpp.test")
            .watched_by,
        Sub::Active
    );
}

#[test]
fn a_notify_lost_to_a_silent_sip_side_ends_the_dialog_but_not_the_contact() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-n",
            "z9hG4bKn1",
            600,
            1,
        ),
    );
    w.net.run();
    w.net.send_stanza(
        1,
        presence("romeo@xmpp.test", "alice@sip.test", Some("subscribed")),
    );
    w.net.run();
    assert_eq!(
        w.net
            .gateway(0)
            .roster_item("alice@sip.test", "romeo@xmpp.test")
            .watch,
        Sub::Active
    );
    let notifies_before = requests(&w, "NOTIFY").len();
    // The SIP side goes silent; romeo comes online.
    w.net.sip_peers[w.proxy].answer = 0;
    w.net.send_stanza(
        1,
        presence("romeo@xmpp.test/balcony", "alice@sip.test", None),
    );
    w.net.run();
    let lost: Vec<&SipMessage> = requests(&w, "NOTIFY")
        .into_iter()
        .skip(notifies_before)
        .collect();
    assert!(lost.len() > 1, "retransmitted until Timer F");
    assert!(
        lost.iter().all(|n| n.call_id() == Some("sub-n")),
        "the same NOTIFY each time"
    );
    // The contact stays added: alice's client subscribes again when the SIP
    // side is back, and sees romeo online at once, without a new request to romeo.
    w.net.sip_peers[w.proxy].answer = 200;
    let to_romeo_before = w.net.delivered.iter().filter(|(n, _)| n == "xmpp").count();
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-n2",
            "z9hG4bKn2",
            600,
            1,
        ),
    );
    w.net.run();
    let fresh: Vec<&SipMessage> = requests(&w, "NOTIFY")
        .into_iter()
        .filter(|n| n.call_id() == Some("sub-n2"))
        .collect();
    assert_eq!(fresh.len(), 1, "{}", w.net.transcript_text());
    assert!(fresh[0]
        .header("Subscription-State")
        .is_some_and(|s| s.starts_with("active")));
    assert!(String::from_utf8_lossy(fresh[0].body()).contains("<basic>open</basic>"));
    let to_romeo_after = w.net.delivered.iter().filter(|(n, _)| n == "xmpp").count();
    assert_eq!(
        to_romeo_before, to_romeo_after,
        "no new subscription request"
    );
    let sub = answers(&w)
        .into_iter()
        .filter(|a| a.call_id == "sub-n2")
        .collect::<Vec<_>>();
    assert_eq!(sub.len(), 1);
    assert_eq!(sub[0].code, 200);
}

// ---- presence requests made for a SIP user that come back as errors --------------

/// The Subscription-State of each NOTIFY isthmus sent in dialog `call_id`, with
/// the second it went out.
fn notify_states(w: &World, call_id: &str) -> Vec<(u64, String)> {
    let times = timeline(&w.net)
        .into_iter()
        .filter(|(_, l)| l.starts_with("isthmus→proxy SIP: NOTIFY"))
        .filter(|(_, l)| field(l, "Call-ID: ") == call_id)
        .map(|(t, _)| t);
    let states = requests(w, "NOTIFY")
        .into_iter()
        .filter(|n| n.call_id() == Some(call_id))
        .map(|n| {
            n.header("Subscription-State")
                .unwrap_or_default()
                .to_owned()
        });
    times.zip(states).collect()
}

fn watch(w: &mut World) -> Sub {
    w.net
        .gateway(0)
        .roster_item("alice@sip.test", "romeo@xmpp.test")
        .watch
}

fn alice_subscribes(w: &mut World, call_id: &str) {
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            call_id,
            &format!("z9hG4bK{call_id}"),
            600,
            1,
        ),
    );
}

/// Nothing for a SIP user ended as a local delivery (the host would drop it).
fn nothing_dropped(w: &World) {
    let t = w.net.transcript_text();
    assert!(
        !w.net.delivered.iter().any(|(n, _)| n == "isthmus"),
        "every stanza for a SIP user goes to the SIP side: {t}"
    );
}

#[test]
fn a_subscribe_that_finds_no_stream_ends_the_sip_dialog_in_probation_and_is_asked_again() {
    let mut w = world(PartnerType::Federated, 200);
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    w.net.add_black_hole(hole);
    w.net.set_dns(0, "xmpp.test", vec![hole]);
    alice_subscribes(&mut w, "sub-p");
    w.net.run();
    let t = w.net.transcript_text();
    // The presence subscribe waited for the stream-establishment timeout (60 s)
    // and its remote-server-timeout (type wait) ended the watcher's dialog with a
    // time to come back (RFC 6665 §4.2.2).
    assert_eq!(
        notify_states(&w, "sub-p"),
        [
            (0, "pending;expires=600".to_owned()),
            (60, "terminated;reason=probation;retry-after=60".to_owned())
        ],
        "{t}"
    );
    nothing_dropped(&w);
    // romeo never saw the request, so it is not pending any more, and the
    // durable record says so before the NOTIFY goes out.
    assert_eq!(watch(&mut w), Sub::None);
    let forgotten = t
        .find("isthmus persists alice@sip.test / romeo@xmpp.test: watch=none")
        .expect("persisted");
    let terminated = t.rfind("isthmus→proxy SIP: NOTIFY").expect("NOTIFY");
    assert!(forgotten < terminated, "{t}");
    assert!(xmpp_user_got(&w).is_empty());

    // The partner is reachable again; alice's client comes back after retry-after
    // with a new dialog, and romeo is asked this time.
    w.net.set_dns(0, "xmpp.test", vec![w.net.addr(1)]);
    w.net.wait(Duration::from_secs(60));
    alice_subscribes(&mut w, "sub-p2");
    w.net.run();
    let t = w.net.transcript_text();
    assert_eq!(
        notify_states(&w, "sub-p2")
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        ["pending;expires=600"],
        "{t}"
    );
    assert_eq!(watch(&mut w), Sub::Pending);
    let asked: Vec<String> = xmpp_user_got(&w)
        .iter()
        .filter_map(|e| e.get_attr("type").map(str::to_owned))
        .collect();
    assert_eq!(asked, ["subscribe"], "{t}");
}

#[test]
fn a_subscribe_to_a_domain_without_records_ends_the_sip_dialog_with_noresource() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.set_dns(0, "xmpp.test", vec![]);
    alice_subscribes(&mut w, "sub-x");
    w.net.run();
    let t = w.net.transcript_text();
    assert_eq!(
        notify_states(&w, "sub-x"),
        [
            (0, "pending;expires=600".to_owned()),
            (0, "terminated;reason=noresource".to_owned())
        ],
        "remote-server-not-found (cancel): the client should not retry: {t}"
    );
    assert_eq!(watch(&mut w), Sub::None);
    assert_eq!(
        bounced(&w.net, "isthmus"),
        [("romeo@xmpp.test".to_owned(), "remote-server-not-found")]
    );
    nothing_dropped(&w);
}

#[test]
fn a_probe_that_finds_no_stream_ends_the_sip_dialog_but_keeps_the_approved_contact() {
    let mut w = world(PartnerType::Federated, 200);
    let approved = isthmus_core::roster::Item {
        watch: Sub::Active,
        watched_by: Sub::None,
    };
    w.net.gateway(0).restore([isthmus_core::roster::Persist {
        local: "alice@sip.test".into(),
        remote: "romeo@xmpp.test".into(),
        item: approved,
    }]);
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    w.net.add_black_hole(hole);
    w.net.set_dns(0, "xmpp.test", vec![hole]);
    alice_subscribes(&mut w, "sub-a");
    w.net.run();
    let t = w.net.transcript_text();
    assert_eq!(
        notify_states(&w, "sub-a"),
        [
            (0, "active;expires=600".to_owned()),
            (60, "terminated;reason=probation;retry-after=60".to_owned())
        ],
        "{t}"
    );
    assert_eq!(
        bounced(&w.net, "isthmus"),
        [("romeo@xmpp.test".to_owned(), "remote-server-timeout")]
    );
    // An unreachable partner does not revoke romeo's approval.
    assert_eq!(watch(&mut w), Sub::Active);
    assert!(!t.contains("isthmus persists"), "{t}");
    nothing_dropped(&w);
}

#[test]
fn a_presence_error_from_the_contact_ends_the_sip_dialog_and_is_not_answered() {
    let mut w = world(PartnerType::Federated, 200);
    alice_subscribes(&mut w, "sub-f");
    w.net.run();
    assert_eq!(watch(&mut w), Sub::Pending);
    let refusal = presence("romeo@xmpp.test", "alice@sip.test", Some("error")).child(
        Element::new(ns::SERVER, "error")
            .attr("type", "auth")
            .child(Element::new(ns::STANZAS_ERR, "forbidden")),
    );
    w.net.send_stanza(1, refusal);
    w.net.run();
    let t = w.net.transcript_text();
    assert_eq!(
        notify_states(&w, "sub-f")
            .into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>(),
        ["pending;expires=600", "terminated;reason=rejected"],
        "{t}"
    );
    assert_eq!(watch(&mut w), Sub::None);
    // An error is never answered: romeo's side got the subscribe and nothing since.
    let got: Vec<String> = xmpp_user_got(&w)
        .iter()
        .filter_map(|e| e.get_attr("type").map(str::to_owned))
        .collect();
    assert_eq!(got, ["subscribe"], "{t}");
    assert!(bounced(&w.net, "isthmus").is_empty(), "{t}");
}
