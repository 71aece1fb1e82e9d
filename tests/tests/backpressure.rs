//! Send-queue backpressure: when the host reports a stream's send queue past its
//! high-water mark, stanzas for it wait in the route's bounded queue (their SIP
//! transactions unanswered until they are written); once it drains they go out in
//! order; past the queue's bound SIP clients get 503 with Retry-After.

use isthmus_core::config::PartnerType;
use isthmus_core::gateway::{overloaded_reply, ConnId, Direction, Event};
use isthmus_core::sip::{SipLimits, SipMessage, StartLine};
use isthmus_core::xml::ns;
use isthmus_tests::sipworld::{responses, sip_message, world, xmpp_user_got, World};

/// isthmus's authenticated outbound stream to the partner.
fn outbound_stream(w: &World) -> ConnId {
    w.net
        .events
        .iter()
        .find_map(|(node, e)| match e {
            Event::Authenticated {
                conn,
                direction: Direction::Outbound,
                ..
            } if node == "isthmus" => Some(*conn),
            _ => None,
        })
        .expect("an authenticated outbound stream")
}

fn bodies(w: &World) -> Vec<String> {
    xmpp_user_got(w)
        .iter()
        .filter_map(|m| m.find(ns::SERVER, "body").map(|b| b.text_content()))
        .collect()
}

/// A world whose stream to xmpp.test is up (one message delivered) and then congested.
fn congested_world() -> (World, ConnId) {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &sip_message("sip:romeo@xmpp.test", "m0", "z9hG4bKc0"),
    );
    w.net.settle();
    assert_eq!(bodies(&w), ["m0"], "{}", w.net.transcript_text());
    let conn = outbound_stream(&w);
    let now = w.net.now;
    assert!(w.net.gateway(0).set_congested(now, conn, true));
    (w, conn)
}

#[test]
fn stanzas_wait_while_the_stream_is_congested_and_follow_in_order() {
    let (mut w, conn) = congested_world();
    for i in 1..=3 {
        let m = sip_message(
            "sip:romeo@xmpp.test",
            &format!("m{i}"),
            &format!("z9hG4bKc{i}"),
        );
        w.net.sip_send(w.proxy, 0, &m);
    }
    w.net.settle();
    assert_eq!(bodies(&w), ["m0"], "nothing goes out while congested");
    assert_eq!(
        responses(&w).len(),
        1,
        "no 200 before the stanza is written"
    );

    let now = w.net.now;
    assert!(
        !w.net.gateway(0).set_congested(now, conn, false),
        "three small stanzas drain in one go"
    );
    w.net.settle();
    assert_eq!(bodies(&w), ["m0", "m1", "m2", "m3"]);
    assert_eq!(
        responses(&w),
        vec![(200, "OK".to_owned()); 4],
        "{}",
        w.net.transcript_text()
    );
}

#[test]
fn past_the_queue_bound_sip_clients_get_503_with_retry_after_and_nothing_is_lost() {
    let (mut w, conn) = congested_world();
    // The route holds 1000 waiting stanzas; the 1001st and 1002nd are refused.
    let sent = 1002;
    for i in 1..=sent {
        let m = sip_message(
            "sip:romeo@xmpp.test",
            &format!("m{i}"),
            &format!("z9hG4bKq{i}"),
        );
        w.net.sip_send(w.proxy, 0, &m);
        if i % 100 == 0 {
            w.net.settle();
        }
    }
    w.net.settle();
    let refused: Vec<&SipMessage> = w.net.sip_peers[w.proxy]
        .received
        .iter()
        .filter(|m| matches!(m.start, StartLine::Response { code: 503, .. }))
        .collect();
    assert_eq!(refused.len(), 2);
    for r in &refused {
        assert_eq!(r.header("Retry-After"), Some("5"));
    }
    assert_eq!(responses(&w).len(), 3, "the first 200 and the two 503s");

    // Drains come in bounded batches; each says whether more waits.
    let mut drains = 0;
    loop {
        drains += 1;
        let now = w.net.now;
        let more = w.net.gateway(0).set_congested(now, conn, false);
        w.net.settle();
        if !more {
            break;
        }
        assert!(drains < 100, "the queue never drained");
    }
    assert!(drains > 1, "a thousand stanzas take more than one batch");
    let expected: Vec<String> = (0..=1000).map(|i| format!("m{i}")).collect();
    assert_eq!(
        bodies(&w),
        expected,
        "every waiting stanza, in order, exactly once"
    );
    let ok = responses(&w).iter().filter(|(c, _)| *c == 200).count();
    assert_eq!(ok, 1001);
}

#[test]
fn an_overloaded_host_refuses_sip_requests_statelessly() {
    let m = sip_message("sip:romeo@xmpp.test", "busy", "z9hG4bKo1");
    let bytes = overloaded_reply(&m.to_bytes()).expect("a request gets an answer");
    let reply = SipMessage::parse(&bytes, &SipLimits::default()).expect("a SIP response");
    assert!(matches!(reply.start, StartLine::Response { code: 503, .. }));
    assert_eq!(reply.header("Retry-After"), Some("5"));
    assert_eq!(reply.header("Call-ID"), m.header("Call-ID"));
    assert_eq!(
        overloaded_reply(&m.to_bytes()),
        Some(bytes),
        "a retransmission gets the same answer"
    );
    let ok = m.reply(200, "OK", Some("t"));
    assert_eq!(overloaded_reply(&ok.to_bytes()), None, "responses get none");
    assert_eq!(overloaded_reply(b"not SIP at all"), None);
}

/// Answered requests stay for Timer J only to absorb retransmissions: they do not
/// count against the cap on requests in progress.
#[test]
fn answered_sip_requests_do_not_count_against_the_cap_on_requests_in_progress() {
    let mut w = world(PartnerType::Federated, 200);
    let sent = 10_500;
    for i in 0..sent {
        let m = sip_message(
            "sip:romeo@xmpp.test",
            &format!("n{i}"),
            &format!("z9hG4bKn{i}"),
        );
        w.net.sip_send(w.proxy, 0, &m);
        if i == 0 {
            w.net.settle();
        } else if i % 250 == 0 {
            // Well inside Timer J: every answered transaction is still kept.
            w.net.run_for(std::time::Duration::ZERO);
        }
    }
    w.net.run_for(std::time::Duration::ZERO);
    let codes: Vec<u16> = responses(&w).iter().map(|(c, _)| *c).collect();
    assert_eq!(codes.len(), sent, "each request answered once");
    assert!(codes.iter().all(|c| *c == 200), "no 503 within Timer J");
    assert_eq!(xmpp_user_got(&w).len(), sent);
}

/// A next hop that answers nothing gets at most 10 000 requests in flight; what
/// would come after is returned to its XMPP sender at once with resource-constraint,
/// and the rest time out at Timer F: each stanza answered once, none lost.
#[test]
fn a_next_hop_that_never_answers_gets_a_bounded_number_of_requests() {
    use isthmus_core::xml::Element;
    let mut w = world(PartnerType::Federated, 0);
    let sent = 10_050;
    for i in 0..sent {
        let m = Element::new(ns::SERVER, "message")
            .attr("from", "romeo@xmpp.test/r")
            .attr("to", "alice@sip.test")
            .attr("id", &format!("x{i}"))
            .child(Element::new(ns::SERVER, "body").text("hello"));
        w.net.send_stanza(1, m);
        if i == 0 {
            // The streams come up; after that no time passes while the rest go in.
            w.net.settle();
        } else if i % 250 == 0 {
            w.net.run_for(std::time::Duration::ZERO);
        }
    }
    w.net.run_for(std::time::Duration::ZERO);
    let errors = |w: &World, condition: &str| {
        xmpp_user_got(w)
            .iter()
            .filter(|m| m.get_attr("type") == Some("error"))
            .filter(|m| {
                m.find(ns::SERVER, "error")
                    .and_then(|e| e.find(ns::STANZAS_ERR, condition))
                    .is_some()
            })
            .count()
    };
    let got = xmpp_user_got(&w);
    assert_eq!(
        errors(&w, "resource-constraint"),
        50,
        "refused at once; got {} stanzas, first error {:?}",
        got.len(),
        got.iter()
            .find(|m| m.get_attr("type") == Some("error"))
            .map(|m| m.to_xml(ns::SERVER))
    );
    let requests = w.net.sip_peers[w.proxy]
        .received
        .iter()
        .filter(|m| m.method() == Some("MESSAGE"))
        .map(|m| m.header("Via").unwrap_or_default().to_owned())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(
        requests, 10_000,
        "at most 10 000 transactions toward the next hop"
    );
    w.net.run_for(std::time::Duration::from_secs(40));
    assert_eq!(errors(&w, "remote-server-timeout"), 10_000);
    assert_eq!(xmpp_user_got(&w).len(), sent, "every stanza answered once");
}
