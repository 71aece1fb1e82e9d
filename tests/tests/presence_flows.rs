//! Presence end to end: SIP users watching XMPP contacts (isthmus as notifier) and
//! XMPP contacts watching SIP users (isthmus as subscriber), for each partner type,
//! with status-note visibility, durable state, and log-off.

use isthmus_core::config::PartnerType;
use isthmus_core::roster::{Item, Sub};
use isthmus_core::xml::{ns, Element};
use isthmus_tests::scenario::snapshots_in;
use isthmus_tests::sipworld::{
    pidf, requests, responses, sip_message, subscribe, world, xmpp_xml, World,
};

fn presence(from: &str, to: &str, ty: Option<&str>, status: Option<&str>) -> Element {
    let mut p = Element::new(ns::SERVER, "presence")
        .attr("from", from)
        .attr("to", to);
    if let Some(t) = ty {
        p.set_attr("type", t);
    }
    if let Some(s) = status {
        p = p.child(Element::new(ns::SERVER, "status").text(s));
    }
    p
}

fn item(w: &mut World) -> Item {
    w.net
        .gateway(0)
        .roster_item("alice@sip.test", "romeo@xmpp.test")
}

fn notify_states(w: &World) -> Vec<String> {
    requests(w, "NOTIFY")
        .iter()
        .map(|n| {
            n.header("Subscription-State")
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn sip_user_watches_an_xmpp_contact() {
    let _g = snapshots_in("presence");
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-1",
            "z9hG4bKs1",
            600,
            1,
        ),
    );
    w.net.run();
    assert_eq!(responses(&w)[0].0, 200);
    assert_eq!(notify_states(&w), ["pending"]);
    assert!(
        xmpp_xml(&w).iter().any(|x| x.contains("type='subscribe'")),
        "romeo is asked"
    );
    assert_eq!(item(&mut w).watch, Sub::Pending);
    // Romeo approves and is online with a status.
    w.net.send_stanza(
        1,
        presence(
            "romeo@xmpp.test",
            "alice@sip.test",
            Some("subscribed"),
            None,
        ),
    );
    w.net.send_stanza(
        1,
        presence(
            "romeo@xmpp.test/balcony",
            "alice@sip.test",
            None,
            Some("Wherefore?"),
        ),
    );
    w.net.run();
    assert_eq!(item(&mut w).watch, Sub::Active);
    let states = notify_states(&w);
    assert_eq!(
        states.last().map(String::as_str),
        Some("active"),
        "{states:?}"
    );
    let last = requests(&w, "NOTIFY")
        .last()
        .map(|n| String::from_utf8_lossy(n.body()).into_owned())
        .unwrap_or_default();
    assert!(
        last.contains("<basic>open</basic>") && last.contains("Wherefore?"),
        "{last}"
    );
    // The persist output came before the presence subscribe went out.
    let t = w.net.transcript_text();
    let persisted = t
        .find("isthmus persists alice@sip.test / romeo@xmpp.test: watch=pending")
        .expect("persisted");
    let asked = t.find("type='subscribe'").expect("asked");
    assert!(persisted < asked);
    insta::assert_snapshot!("sip_watches_xmpp", t);
}

#[test]
fn sip_users_may_watch_contacts_of_every_partner_type() {
    for ty in [
        PartnerType::Federated,
        PartnerType::PublicVerified,
        PartnerType::PublicUnverified,
    ] {
        let mut w = world(ty, 200);
        w.net.sip_send(
            w.proxy,
            0,
            &subscribe(
                "alice@sip.test",
                "sip:romeo@xmpp.test",
                "sub-t",
                "z9hG4bKt",
                600,
                1,
            ),
        );
        w.net.run();
        w.net.send_stanza(
            1,
            presence(
                "romeo@xmpp.test",
                "alice@sip.test",
                Some("subscribed"),
                None,
            ),
        );
        w.net.send_stanza(
            1,
            presence("romeo@xmpp.test/r", "alice@sip.test", None, Some("hi")),
        );
        w.net.run();
        assert_eq!(
            notify_states(&w).last().map(String::as_str),
            Some("active"),
            "{ty:?}"
        );
        let body = requests(&w, "NOTIFY")
            .last()
            .map(|n| String::from_utf8_lossy(n.body()).into_owned())
            .unwrap_or_default();
        assert!(
            body.contains("<note>hi</note>"),
            "the SIP user sees the contact's status whatever the type: {body}"
        );
    }
}

#[test]
fn an_unknown_subscription_dialog_gets_481() {
    let mut w = world(PartnerType::Federated, 200);
    let mut refresh = subscribe(
        "alice@sip.test",
        "sip:romeo@xmpp.test",
        "gone",
        "z9hG4bKg",
        600,
        2,
    );
    refresh.set_header("To", "<sip:romeo@xmpp.test>;tag=nosuchtag");
    w.net.sip_send(w.proxy, 0, &refresh);
    w.net.run();
    assert_eq!(responses(&w)[0].0, 481);
}

#[test]
fn sip_log_off_is_not_an_xmpp_unsubscribe() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-2",
            "z9hG4bKs2",
            600,
            1,
        ),
    );
    w.net.run();
    w.net.send_stanza(
        1,
        presence(
            "romeo@xmpp.test",
            "alice@sip.test",
            Some("subscribed"),
            None,
        ),
    );
    w.net.run();
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-2",
            "z9hG4bKs3",
            0,
            2,
        ),
    );
    w.net.run();
    let last = requests(&w, "NOTIFY")
        .last()
        .and_then(|n| n.header("Subscription-State"))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(last, "terminated;reason=timeout");
    assert!(
        !xmpp_xml(&w)
            .iter()
            .any(|x| x.contains("type='unsubscribe'")),
        "no permanent unsubscribe"
    );
    assert_eq!(
        item(&mut w).watch,
        Sub::Active,
        "the contact stays on alice's list"
    );
}

#[test]
fn xmpp_unsubscribed_ends_the_sip_watch() {
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-3",
            "z9hG4bKs4",
            600,
            1,
        ),
    );
    w.net.run();
    w.net.send_stanza(
        1,
        presence(
            "romeo@xmpp.test",
            "alice@sip.test",
            Some("unsubscribed"),
            None,
        ),
    );
    w.net.run();
    let last = requests(&w, "NOTIFY")
        .last()
        .and_then(|n| n.header("Subscription-State"))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(last, "terminated;reason=rejected");
    assert_eq!(item(&mut w).watch, Sub::None);
}

/// Romeo asks to see alice's presence; alice is online with a note.
fn xmpp_contact_subscribes(partner_type: PartnerType) -> World {
    let mut w = world(partner_type, 200);
    w.net.sip_peers[w.proxy].presence.insert(
        "sip:alice@sip.test".into(),
        pidf("sip:alice@sip.test", true, Some("Im Büro ☕")),
    );
    w.net.send_stanza(
        1,
        presence("romeo@xmpp.test", "alice@sip.test", Some("subscribe"), None),
    );
    w.net.run();
    w
}

#[test]
fn xmpp_contact_watches_a_sip_user_per_partner_type() {
    let _g = snapshots_in("presence");
    for (ty, name, approved, sees_note) in [
        (PartnerType::Federated, "federated", true, true),
        (PartnerType::PublicVerified, "public_verified", true, false),
        (
            PartnerType::PublicUnverified,
            "public_unverified",
            false,
            false,
        ),
    ] {
        let mut w = xmpp_contact_subscribes(ty);
        let got = xmpp_xml(&w);
        assert_eq!(
            got.iter().any(|x| x.contains("type='subscribed'")),
            approved,
            "{name}: {got:?}"
        );
        let available = got
            .iter()
            .find(|x| x.starts_with("<presence from='alice@sip.test'") && !x.contains("type="));
        assert_eq!(available.is_some(), approved, "{name}: {got:?}");
        assert_eq!(
            available.is_some_and(|x| x.contains("<status>Im Büro ☕</status>")),
            sees_note,
            "{name}: {got:?}"
        );
        assert_eq!(
            requests(&w, "SUBSCRIBE").len(),
            usize::from(approved),
            "{name}"
        );
        let expected = if approved { Sub::Active } else { Sub::Pending };
        assert_eq!(item(&mut w).watched_by, expected, "{name}");
        insta::assert_snapshot!(format!("xmpp_watches_sip_{name}"), w.net.transcript_text());
    }
}

#[test]
fn adding_a_public_unverified_contact_approves_it_and_opens_im() {
    let _g = snapshots_in("presence");
    let mut w = xmpp_contact_subscribes(PartnerType::PublicUnverified);
    let im = |body: &str| {
        Element::new(ns::SERVER, "message")
            .attr("from", "romeo@xmpp.test")
            .attr("to", "alice@sip.test")
            .attr("id", body)
            .child(Element::new(ns::SERVER, "body").text(body))
    };
    w.net.send_stanza(1, im("before"));
    w.net.run();
    assert!(
        requests(&w, "MESSAGE").is_empty(),
        "refused before alice adds romeo"
    );
    assert!(xmpp_xml(&w).iter().any(|x| x.contains("<forbidden")));
    // Alice adds romeo: her client subscribes to his presence.
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-4",
            "z9hG4bKs5",
            600,
            1,
        ),
    );
    w.net.run();
    assert_eq!(
        item(&mut w),
        Item {
            watch: Sub::Pending,
            watched_by: Sub::Active
        }
    );
    assert!(
        xmpp_xml(&w).iter().any(|x| x.contains("type='subscribed'")),
        "romeo's request is approved"
    );
    w.net.send_stanza(1, im("after"));
    w.net.run();
    let messages = requests(&w, "MESSAGE");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body(), b"after");
    insta::assert_snapshot!("add_public_unverified_contact", w.net.transcript_text());
}

#[test]
fn state_survives_a_restart_of_the_gateway_core() {
    let mut w = xmpp_contact_subscribes(PartnerType::Federated);
    let records: Vec<_> = w
        .net
        .persisted
        .iter()
        .filter(|(n, _)| n == "isthmus")
        .map(|(_, p)| p.clone())
        .collect();
    assert!(!records.is_empty());
    let before = item(&mut w);
    // A new core restored from what was persisted sees the same state.
    let mut fresh = world(PartnerType::Federated, 200);
    fresh.net.gateway(0).restore(records);
    assert_eq!(item(&mut fresh), before);
    // And the restored approval lets romeo write to alice (public policy aside).
    let _ = sip_message;
}

#[test]
fn subscriptions_refresh_and_expire() {
    use std::time::Duration;
    // Subscriber role: the gateway refreshes its SUBSCRIBE before it runs out.
    let mut w = xmpp_contact_subscribes(PartnerType::Federated);
    assert_eq!(requests(&w, "SUBSCRIBE").len(), 1);
    w.net.run_for(Duration::from_secs(3000));
    let subs = requests(&w, "SUBSCRIBE");
    assert_eq!(subs.len(), 2, "one refresh within the hour");
    assert!(
        subs[1].header("To").is_some_and(|t| t.contains(";tag=ua1")),
        "the refresh is in-dialog"
    );
    assert_eq!(subs[1].cseq().map(|c| c.0), Some(2));

    // Notifier role: a watcher that does not refresh is told its dialog ended.
    let mut w = world(PartnerType::Federated, 200);
    w.net.sip_send(
        w.proxy,
        0,
        &subscribe(
            "alice@sip.test",
            "sip:romeo@xmpp.test",
            "sub-x",
            "z9hG4bKx",
            120,
            1,
        ),
    );
    w.net.run();
    w.net.run_for(Duration::from_secs(120));
    let last = requests(&w, "NOTIFY")
        .last()
        .and_then(|n| n.header("Subscription-State"))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(last, "terminated;reason=timeout");
}
