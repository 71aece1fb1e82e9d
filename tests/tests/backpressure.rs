//! Send-queue backpressure: when the host reports a stream's send queue past its
//! high-water mark, stanzas for it wait in the route's bounded queue (their SIP
//! transactions unanswered until they are written); once it drains they go out in
//! order; past the queue's bound SIP clients get 503 with Retry-After.

use isthmus_core::config::PartnerType;
use isthmus_core::gateway::{
    overloaded_reply, Admission, ConnId, Direction, Event, ADMISSION_MEMORY,
};
use isthmus_core::sip::{SipLimits, SipMessage, StartLine};
use isthmus_core::xml::{ns, Element};
use isthmus_tests::sipworld::{requests, responses, sip_message, world, xmpp_user_got, World};

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
    // What a response repeats of the request, as it was (RFC 3261 §8.2.6.2).
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        assert_eq!(reply.header(name), m.header(name), "{name}");
    }
    let to = reply.header("To").expect("To");
    let tag = to
        .strip_prefix(m.header("To").expect("To"))
        .and_then(|t| t.strip_prefix(";tag="))
        .expect("the request's To with a tag added");
    assert_eq!(tag.len(), 8, "{to}");
}

/// The stateless refusal reads the head in place: compact header names, several
/// Via lines and folded lines are repeated as they came; a To that has a tag keeps
/// it; a request that lacks one of the five headers a response repeats, or an ACK,
/// gets nothing.
#[test]
fn a_stateless_refusal_repeats_the_request_headers_as_they_came() {
    let request = "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\n\
        v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKc0\r\n\
        Max-Forwards: 70\r\n\
        f: <sip:juliet@sip.test>;tag=a1\r\n\
        t: <sip:romeo@xmpp.test>\r\n\
        Subject: folded\r\n \tover two lines\r\n\
        i: call-7\r\n\
        CSeq: 1\r\n MESSAGE\r\n\
        c: text/plain\r\n\
        l: 2\r\n\r\nhi";
    let bytes = overloaded_reply(request.as_bytes()).expect("a request gets an answer");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    let tag = format!(
        ";tag={}",
        text.split(";tag=")
            .nth(2)
            .and_then(|t| t.get(..8))
            .expect("a To tag")
    );
    assert_eq!(
        text,
        format!(
            "SIP/2.0 503 Service Unavailable (the gateway is overloaded)\r\n\
            v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKc0\r\n\
            f: <sip:juliet@sip.test>;tag=a1\r\n\
            t: <sip:romeo@xmpp.test>{tag}\r\n\
            i: call-7\r\n\
            CSeq: 1\r\n MESSAGE\r\n\
            Retry-After: 5\r\n\
            Content-Length: 0\r\n\r\n"
        )
    );
    let reply = SipMessage::parse(&bytes, &SipLimits::default()).expect("a SIP response");
    assert_eq!(reply.header("CSeq"), Some("1 MESSAGE"));
    let tagged = request.replace(
        "t: <sip:romeo@xmpp.test>",
        "t: <sip:romeo@xmpp.test>;tag=x9",
    );
    let again =
        String::from_utf8(overloaded_reply(tagged.as_bytes()).expect("an answer")).expect("utf-8");
    assert!(
        again.contains("\r\nt: <sip:romeo@xmpp.test>;tag=x9\r\n"),
        "{again}"
    );
    let without_call_id = request.replace("i: call-7\r\n", "");
    assert_eq!(overloaded_reply(without_call_id.as_bytes()), None);
    let ack = request.replacen("MESSAGE sip", "ACK sip", 1);
    assert_eq!(
        overloaded_reply(ack.as_bytes()),
        None,
        "an ACK has no answer"
    );
    assert_eq!(
        overloaded_reply(b"MESSAGE sip:x SIP/2.0\r\nno colon\r\n\r\n"),
        None
    );
}

/// When the host must refuse at once, a retransmission of a request it already
/// handed to the core is not refused: the core's transaction answers it, and a 503
/// would tell the client that a delivered message failed.
#[test]
fn a_retransmission_of_an_admitted_request_is_never_refused_statelessly() {
    let mut admission = Admission::default();
    let first = sip_message("sip:romeo@xmpp.test", "one", "z9hG4bKa1").to_bytes();
    let other = sip_message("sip:romeo@xmpp.test", "two", "z9hG4bKa2").to_bytes();
    admission.admitted(&first);
    assert_eq!(admission.refusal(&first), None, "the core has it");
    let refused = admission.refusal(&other).expect("a new request is refused");
    assert_eq!(Some(refused), overloaded_reply(&other));
    // The memory is bounded: the oldest requests are forgotten first.
    for i in 0..ADMISSION_MEMORY {
        let m = sip_message("sip:romeo@xmpp.test", "x", &format!("z9hG4bKm{i}"));
        admission.admitted(&m.to_bytes());
    }
    assert!(admission.refusal(&first).is_some(), "forgotten");
    let last = sip_message(
        "sip:romeo@xmpp.test",
        "x",
        &format!("z9hG4bKm{}", ADMISSION_MEMORY - 1),
    );
    assert_eq!(admission.refusal(&last.to_bytes()), None);
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

/// A next hop that answers nothing gets at most 5000 requests in flight, half the
/// bound past which stanzas would be refused: the partner's stream is not read
/// meanwhile, so what waits stays with the partner rather than being taken in to
/// be refused. Each request times out at Timer F (remote-server-timeout); then the
/// stream is read again and the next go. Every stanza is answered once, none lost.
#[test]
fn a_next_hop_that_never_answers_gets_a_bounded_number_of_requests() {
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
    let transactions = |w: &World| {
        w.net.sip_peers[w.proxy]
            .received
            .iter()
            .filter(|m| m.method() == Some("MESSAGE"))
            .map(|m| m.header("Via").unwrap_or_default().to_owned())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    assert_eq!(
        transactions(&w),
        5000,
        "at most 5000 transactions toward the next hop"
    );
    assert!(
        w.net.held_bytes() > 0,
        "the rest waits in the partner's stream"
    );
    assert_eq!(xmpp_user_got(&w).len(), 0, "nothing refused yet");
    for _ in 0..6 {
        w.net.run_for(std::time::Duration::from_secs(40));
    }
    assert_eq!(transactions(&w), sent, "each stanza in its own transaction");
    assert_eq!(errors(&w, "remote-server-timeout"), sent);
    assert_eq!(xmpp_user_got(&w).len(), sent, "every stanza answered once");
    assert_eq!(w.net.held_bytes(), 0);
}

/// A chat message from the partner's user to a SIP user.
fn partner_message(i: usize) -> Element {
    Element::new(ns::SERVER, "message")
        .attr("from", "juliet@xmpp.test/balcony")
        .attr("to", "alice@sip.test")
        .attr("type", "chat")
        .attr("id", &format!("p{i}"))
        .child(Element::new(ns::SERVER, "body").text(&format!("p{i}")))
}

fn sip_bodies(w: &World) -> Vec<String> {
    requests(w, "MESSAGE")
        .iter()
        .map(|m| String::from_utf8_lossy(m.body()).into_owned())
        .collect()
}

/// A SIP next hop that stops answering: once half the bound on requests in
/// progress is waiting, the gateway stops reading the partner's stream instead of
/// accepting stanzas it could only refuse; once the next hop answers again the
/// stream is read again and every stanza reaches the SIP side, once, in order.
#[test]
fn a_saturated_sip_side_stops_reading_partners_until_it_answers_again() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.send_stanza(1, partner_message(0));
    w.net.settle();
    assert_eq!(sip_bodies(&w), ["p0"], "{}", w.net.transcript_text());
    w.net.sip_peers[w.proxy].answer = 0;
    let sent = 6000;
    for i in 1..sent {
        w.net.send_stanza(1, partner_message(i));
        if i % 500 == 0 {
            w.net.settle();
        }
    }
    w.net.settle();
    let waiting = 5000;
    let distinct: std::collections::HashSet<String> = sip_bodies(&w).into_iter().collect();
    assert_eq!(
        distinct.len(),
        1 + waiting,
        "forwarded until half the bound waits"
    );
    assert!(
        w.net.held_bytes() > 0,
        "the rest waits unread in the partner's stream"
    );
    assert!(
        w.net
            .transcript
            .iter()
            .any(|l| l.contains("isthmus stops reading")),
        "the gateway stopped reading"
    );
    let refusals = |w: &World| {
        xmpp_user_got(w)
            .iter()
            .filter(|m| m.get_attr("type") == Some("error"))
            .count()
    };
    assert_eq!(
        refusals(&w),
        0,
        "nothing refused: nothing was taken in to refuse"
    );

    // The next hop answers the retransmissions; reading resumes.
    w.net.sip_peers[w.proxy].answer = 200;
    w.net.wait(std::time::Duration::from_secs(2));
    w.net.settle();
    assert_eq!(w.net.held_bytes(), 0);
    assert!(w.net.transcript.iter().any(|l| l.contains("isthmus reads")));
    let mut seen = std::collections::HashSet::new();
    let got: Vec<String> = sip_bodies(&w)
        .into_iter()
        .filter(|b| seen.insert(b.clone()))
        .collect();
    let expected: Vec<String> = (0..sent).map(|i| format!("p{i}")).collect();
    assert_eq!(got.len(), sent, "every stanza reached the SIP side");
    assert_eq!(got, expected, "in order");
    assert_eq!(refusals(&w), 0);
}

#[test]
fn a_stateless_refusal_copies_no_header_whose_name_the_parser_refuses() {
    // Only blanks may come between a name and its colon: "To\r:" is not a To
    // header, and a refusal that copied it would not parse.
    let limits = SipLimits::default();
    let request = |to: &str| {
        format!(
            "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\n\
            Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKc1\r\n\
            From: <sip:juliet@sip.test>;tag=a1\r\n\
            {to}: <sip:romeo@xmpp.test>\r\n\
            Call-ID: call-8\r\n\
            CSeq: 1 MESSAGE\r\n\
            Content-Length: 0\r\n\r\n"
        )
    };
    assert_eq!(overloaded_reply(request("To\r").as_bytes()), None);
    assert_eq!(overloaded_reply(request("t\u{c}").as_bytes()), None);
    for to in ["To", "To \t", "t"] {
        let bytes = overloaded_reply(request(to).as_bytes()).expect("a request gets an answer");
        let reply = SipMessage::parse(&bytes, &limits).expect("the refusal parses");
        assert_eq!(reply.status(), Some(503), "{to:?}");
    }
}
