//! End to end over the simulation network: a SIP proxy with its users ⇄ isthmus
//! (serving sip.test) ⇄ an XMPP partner server (a second gateway serving xmpp.test,
//! whose local deliveries stand for its users).

use std::net::SocketAddr;
use std::time::Duration;

use isthmus_core::config::PartnerType;
use isthmus_core::jid::Jid;
use isthmus_core::sip::{SipLimits, SipMessage};
use isthmus_core::xml::{ns, Element};
use isthmus_tests::scenario::snapshots_in;
use isthmus_tests::sipworld::{responses, sip_message, world, xmpp_user_got};

#[test]
fn sip_message_reaches_the_xmpp_user_and_200_follows_the_write() {
    let _g = snapshots_in("sip_flows");
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:romeo@xmpp.test", "Grüße 🙂 & <ok>", "z9hG4bK1"),
    );
    w.net.run();
    let got = xmpp_user_got(&w);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0]
            .find(ns::SERVER, "body")
            .map(|b| b.text_content())
            .as_deref(),
        Some("Grüße 🙂 & <ok>")
    );
    assert_eq!(got[0].get_attr("from"), Some("alice@sip.test"));
    assert_eq!(responses(&w), [(200, "OK".to_owned())]);
    let t = w.net.transcript_text();
    let written = t
        .find("<message from='alice@sip.test'")
        .expect("stanza written");
    let answered = t.find("isthmus→proxy SIP: 200 OK").expect("200 sent");
    assert!(
        written < answered,
        "200 only once the stanza is on the authenticated stream"
    );
    insta::assert_snapshot!("sip_to_xmpp_message", t);
}

#[test]
fn a_retransmitted_message_is_answered_again_and_sent_once() {
    let mut w = world(PartnerType::Federated, 200);
    let m = sip_message("sip:romeo@xmpp.test", "once", "z9hG4bK2");
    w.net.sip_send(w.proxy, 0, &m);
    w.net.settle();
    // Timer E's first retransmission, 500 ms later, well inside Timer J.
    w.net.sip_send(w.proxy, 0, &m);
    w.net.run();
    assert_eq!(xmpp_user_got(&w).len(), 1);
    assert_eq!(responses(&w).len(), 2);
    // The retransmission gets the response that was sent, To tag and all
    // (RFC 3261 §17.2.2), not a new one.
    let received = &w.net.sip_peers[w.proxy].received;
    assert_eq!(received.len(), 2);
    assert_eq!(received[0], received[1]);
    assert!(received[0]
        .header("To")
        .is_some_and(|to| to.contains(";tag=")));
}

#[test]
fn xmpp_message_reaches_the_sip_user() {
    let _g = snapshots_in("sip_flows");
    let mut w = world(PartnerType::Federated, 200);
    let st = Element::new(ns::SERVER, "message")
        .attr("from", "romeo@xmpp.test/balcony")
        .attr("to", "alice@sip.test")
        .attr("type", "chat")
        .attr("id", "r1")
        .child(Element::new(ns::SERVER, "body").text("Wherefore art thou?"));
    w.net.send_stanza(1, st);
    w.net.run();
    let received = &w.net.sip_peers[w.proxy].received;
    assert_eq!(received.len(), 1);
    let m = &received[0];
    assert_eq!(m.method(), Some("MESSAGE"));
    assert_eq!(
        m.header("From")
            .map(|f| f.starts_with("<sip:romeo@xmpp.test;gr=balcony>")),
        Some(true)
    );
    assert_eq!(m.body(), b"Wherefore art thou?");
    assert!(xmpp_user_got(&w).is_empty(), "no error comes back");
    insta::assert_snapshot!("xmpp_to_sip_message", w.net.transcript_text());
}

#[test]
fn sip_480_becomes_recipient_unavailable() {
    let _g = snapshots_in("sip_flows");
    let mut w = world(PartnerType::Federated, 480);
    let st = Element::new(ns::SERVER, "message")
        .attr("from", "romeo@xmpp.test/balcony")
        .attr("to", "alice@sip.test")
        .attr("id", "r2")
        .child(Element::new(ns::SERVER, "body").text("Are you there?"));
    w.net.send_stanza(1, st);
    w.net.run();
    let got = xmpp_user_got(&w);
    assert_eq!(got.len(), 1, "{}", w.net.transcript_text());
    let xml = got[0].to_xml(ns::SERVER);
    assert!(
        xml.contains("type='error'")
            && xml.contains("<recipient-unavailable")
            && xml.contains("id='r2'"),
        "{xml}"
    );
    assert!(xml.contains("type='wait'"), "{xml}");
    insta::assert_snapshot!("sip_480_to_xmpp_error", w.net.transcript_text());
}

#[test]
fn unreachable_partner_is_answered_before_timer_f() {
    let _g = snapshots_in("sip_flows");
    let mut w = world(PartnerType::Federated, 200);
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    w.net.add_black_hole(hole);
    w.net.set_dns(0, "xmpp.test", vec![hole]);
    let start = w.net.now;
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:romeo@xmpp.test", "hello?", "z9hG4bK3"),
    );
    w.net.run();
    let r = responses(&w);
    assert_eq!(r.len(), 1, "{}", w.net.transcript_text());
    assert_eq!(r[0].0, 408);
    assert!(r[0].1.contains("xmpp.test"), "{}", r[0].1);
    // The answer came at 30 s, before the client's Timer F (32 s).
    let t = w.net.transcript_text();
    assert!(t.contains("-- t = 30 s"), "{t}");
    assert!(w.net.now.duration_since(start) < Duration::from_secs(62));
    insta::assert_snapshot!("unreachable_partner", t);
}

#[test]
fn unknown_partner_domain_and_dns_failure() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:eve@elsewhere.test", "hi", "z9hG4bK4"),
    );
    w.net.run();
    let r = responses(&w);
    assert_eq!(r[0].0, 403);
    assert!(
        r[0].1
            .contains("elsewhere.test is not a configured XMPP partner"),
        "{}",
        r[0].1
    );

    let mut w = world(PartnerType::Federated, 200);
    w.net.set_dns(0, "xmpp.test", vec![]);
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:romeo@xmpp.test", "hi", "z9hG4bK5"),
    );
    w.net.run();
    let r = responses(&w);
    assert_eq!(r[0].0, 404, "remote-server-not-found");
}

#[test]
fn public_unverified_partners_need_the_sip_user_to_add_them() {
    let st = || {
        Element::new(ns::SERVER, "message")
            .attr("from", "stranger@xmpp.test")
            .attr("to", "alice@sip.test")
            .attr("id", "u1")
            .child(Element::new(ns::SERVER, "body").text("hi, remember me?"))
    };
    let mut w = world(PartnerType::PublicUnverified, 200);
    w.net.send_stanza(1, st());
    w.net.run();
    assert!(
        w.net.sip_peers[w.proxy].received.is_empty(),
        "nothing reaches the SIP user"
    );
    let got = xmpp_user_got(&w);
    assert_eq!(got.len(), 1);
    assert!(got[0].to_xml(ns::SERVER).contains("<forbidden"));

    let mut w = world(PartnerType::PublicUnverified, 200);
    let alice = Jid::parse("alice@sip.test").expect("jid");
    let stranger = Jid::parse("stranger@xmpp.test").expect("jid");
    w.net.gateway(0).add_contact(&alice, &stranger);
    w.net.send_stanza(1, st());
    w.net.run();
    assert_eq!(
        w.net.sip_peers[w.proxy].received.len(),
        1,
        "once added, the message goes through"
    );
    assert!(xmpp_user_got(&w).is_empty());
}

#[test]
fn options_invite_and_malformed_requests() {
    let mut w = world(PartnerType::Federated, 200);
    let options = SipMessage::parse(
        b"OPTIONS sip:sip.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.50:5070;branch=z9hG4bKo\r\nFrom: <sip:alice@sip.test>;tag=1\r\nTo: <sip:sip.test>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        &SipLimits::default(),
    )
    .expect("OPTIONS");
    w.net.sip_send(w.proxy, 0, &options);
    let invite = SipMessage::parse(
        b"INVITE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.50:5070;branch=z9hG4bKi\r\nFrom: <sip:alice@sip.test>;tag=1\r\nTo: <sip:romeo@xmpp.test>\r\nCall-ID: i1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        &SipLimits::default(),
    )
    .expect("INVITE");
    w.net.sip_send(w.proxy, 0, &invite);
    w.net.run();
    let r = responses(&w);
    assert_eq!(r[0].0, 200);
    assert_eq!(r[1].0, 488);
    let allow = w.net.sip_peers[w.proxy].received[0]
        .header("Allow")
        .map(str::to_owned);
    assert_eq!(
        allow.as_deref(),
        Some("MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY")
    );
}

#[test]
fn malformed_requests_get_400_with_the_reason() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send_raw(
        w.proxy,
        0,
        b"MESSAGE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.50:5070;branch=z9hG4bKm\r\nFrom: <sip:alice@sip.test>;tag=1\r\nTo: <sip:romeo@xmpp.test>\r\nCall-ID: m1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 9\r\n\r\nab",
    );
    w.net.sip_send_raw(w.proxy, 0, b"\x00\x01 not SIP at all");
    w.net.run();
    let r = responses(&w);
    assert_eq!(r.len(), 1, "garbage without headers cannot be answered");
    assert_eq!(r[0].0, 400);
    assert!(
        r[0].1.contains("Content-Length 9 but only 2 body bytes"),
        "{}",
        r[0].1
    );
    assert!(xmpp_user_got(&w).is_empty());
}

#[test]
fn an_xmpp_error_after_the_200_reaches_the_sip_user_as_a_notice() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:nobody@xmpp.test", "hello?", "z9hG4bK9"),
    );
    w.net.run();
    assert_eq!(
        responses(&w)[0].0,
        200,
        "answered once written to the authenticated stream"
    );
    // The partner's server has no such user and says so, after the fact.
    let err = Element::new(ns::SERVER, "message")
        .attr("from", "nobody@xmpp.test")
        .attr("to", "alice@sip.test")
        .attr("type", "error")
        .child(
            Element::new(ns::SERVER, "error")
                .attr("type", "cancel")
                .child(Element::new(ns::STANZAS_ERR, "service-unavailable")),
        );
    w.net.send_stanza(1, err);
    w.net.run();
    let notices: Vec<String> = w.net.sip_peers[w.proxy]
        .received
        .iter()
        .filter(|m| m.method() == Some("MESSAGE"))
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect();
    assert_eq!(
        notices,
        ["Your message to nobody@xmpp.test could not be delivered (service-unavailable)."]
    );
}

#[test]
fn shutdown_answers_what_is_still_waiting() {
    let mut w = world(PartnerType::Federated, 200);
    let hole: SocketAddr = ([127, 0, 0, 66], 5269).into();
    w.net.add_black_hole(hole);
    w.net.set_dns(0, "xmpp.test", vec![hole]);
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:romeo@xmpp.test", "last words", "z9hG4bKz"),
    );
    w.net.settle();
    assert!(responses(&w).is_empty(), "still waiting for the stream");
    let now = w.net.now;
    w.net.gateway(0).shutdown(now);
    w.net.settle();
    let r = responses(&w);
    assert_eq!(
        r.len(),
        1,
        "nothing accepted is lost: {}",
        w.net.transcript_text()
    );
    assert_eq!(r[0].0, 503);
    assert!(r[0].1.contains("shutting down"), "{}", r[0].1);
    assert!(w.net.transcript_text().contains("<system-shutdown"));
}
