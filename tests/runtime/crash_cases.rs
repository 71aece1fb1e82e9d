// The gateway killed with SIGKILL in the middle of traffic keeps the subscription
// state it acknowledged. Everything is on loopback: the test plays the XMPP partner
// xmpp.test (an inbound s2s stream authenticated by dialback, plus the listener
// isthmus reaches through a DNS override for its verify connections and its own
// outbound stream) and the SIP proxy on UDP (isthmus's next hop, answering every
// request with 200).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_core::roster::Sub;
use isthmus_core::s2s::dialback;
use isthmus_core::sip::{SipLimits, SipMessage, StartLine};
use isthmus_host::store::Store;

/// The partner's dialback secret: it checks the keys isthmus's verify
/// connections bring, and makes the key for the test's own inbound stream.
const PARTNER_SECRET: &str = "xmpp.test crash secret";

include!("ports.rs");

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (with a generous deadline) until `done` holds.
fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn attr<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}='");
    let start = text.find(&key)? + key.len();
    let end = text[start..].find('\'')?;
    Some(&text[start..start + end])
}

fn read_until(s: &mut TcpStream, needle: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// xmpp.test's server side: answers isthmus's dialback verifications (the keys
/// are the partner's own) and accepts isthmus's outbound stream, whose key it
/// takes on trust; the stanzas on it are read and left alone.
fn partner_listener(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = stream;
            let header = read_until(&mut s, "version='1.0'>");
            let to = attr(&header, "from").unwrap_or("sip.test").to_owned();
            if s.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='xmpp.test' to='{to}' id='partner' version='1.0'><stream:features/>").as_bytes()).is_err() {
                return;
            }
            let _ = s.set_read_timeout(None);
            let mut pending = String::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                loop {
                    if let Some(start) = pending.find("<db:verify") {
                        let Some(end) = pending[start..].find("</db:verify>") else {
                            break;
                        };
                        let el = pending[start..start + end].to_owned();
                        pending.drain(..start + end + "</db:verify>".len());
                        let (from, id) = (
                            attr(&el, "from").unwrap_or(""),
                            attr(&el, "id").unwrap_or(""),
                        );
                        let key = el.rsplit('>').next().unwrap_or("");
                        let ok = dialback::verify(PARTNER_SECRET, from, "xmpp.test", id, key);
                        let answer = format!(
                            "<db:verify from='xmpp.test' to='{from}' id='{id}' type='{}'/>",
                            if ok { "valid" } else { "invalid" }
                        );
                        let _ = s.write_all(answer.as_bytes());
                    } else if let Some(start) = pending.find("<db:result") {
                        let Some(end) = pending[start..].find("</db:result>") else {
                            break;
                        };
                        pending.drain(..start + end + "</db:result>".len());
                        let _ = s
                            .write_all(b"<db:result from='xmpp.test' to='sip.test' type='valid'/>");
                    } else {
                        // Keep a possibly cut-off tag for the next read.
                        let keep = pending.rfind('<').unwrap_or(pending.len());
                        pending.drain(..keep);
                        break;
                    }
                }
            }
        });
    }
}

/// The SIP proxy: every request gets 200; everything received is kept.
struct Proxy {
    sock: UdpSocket,
    port: u16,
    got: Arc<Mutex<Vec<SipMessage>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start() -> Proxy {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("proxy socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, g, st) = (sock.try_clone().expect("clone"), got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, from)) = rx.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(msg) = SipMessage::parse(&buf[..n], &SipLimits::default()) else {
                    continue;
                };
                if msg.method().is_some() {
                    let _ = rx.send_to(&msg.reply(200, "OK", Some("proxy")).to_bytes(), from);
                }
                g.lock().expect("lock").push(msg);
            }
        });
        Proxy {
            sock,
            port,
            got,
            stop,
        }
    }

    fn subscribe(&self, sip: u16, user: &str, call_id: &str) {
        let text = format!(
            "SUBSCRIBE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p};branch=z9hG4bK{call_id}\r\nMax-Forwards: 69\r\n\
             From: <sip:{user}>;tag=w-{call_id}\r\nTo: <sip:romeo@xmpp.test>\r\nCall-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n\
             Contact: <sip:watcher@127.0.0.1:{p}>\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nExpires: 3600\r\n\
             Content-Length: 0\r\n\r\n",
            p = self.port
        );
        self.sock
            .send_to(text.as_bytes(), ("127.0.0.1", sip))
            .expect("send SUBSCRIBE");
    }

    /// The final response code isthmus gave the SUBSCRIBE with this Call-ID.
    fn answered(&self, call_id: &str) -> Option<u16> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .find_map(|m| match &m.start {
                StartLine::Response { code, .. }
                    if m.call_id() == Some(call_id) && *code >= 200 =>
                {
                    Some(*code)
                }
                _ => None,
            })
    }

    /// The NOTIFYs of one dialog: (Subscription-State, body).
    fn notifies(&self, call_id: &str) -> Vec<(String, String)> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.method() == Some("NOTIFY") && m.call_id() == Some(call_id))
            .map(|m| {
                (
                    m.header("Subscription-State")
                        .unwrap_or_default()
                        .to_owned(),
                    String::from_utf8_lossy(m.body()).into_owned(),
                )
            })
            .collect()
    }

    fn messages(&self) -> Vec<String> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.method() == Some("MESSAGE"))
            .map(|m| String::from_utf8_lossy(m.body()).into_owned())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    s2s: u16,
    sip: u16,
}

fn setup(name: &str, proxy: &Proxy, partner_port: u16) -> Setup {
    let dir = std::env::temp_dir().join(format!("isthmus-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (s2s, sip) = (free_port(), free_port());
    let config = dir.join("isthmus.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nserved_domains = [\"sip.test\"]\ns2s_listen = \"127.0.0.1:{s2s}\"\nsip_address = \"127.0.0.1:{sip}\"\n\
             sip_next_hop = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\n[gateway.dns_overrides]\n\"xmpp.test\" = [\"127.0.0.1:{partner_port}\"]\n\n\
             [[partner]]\ndomain = \"xmpp.test\"\ntls = \"not_supported\"\nsasl = \"not_supported\"\n",
            proxy.port,
            dir.join("data").display()
        ),
    )
    .expect("config");
    Setup {
        dir,
        config,
        s2s,
        sip,
    }
}

fn start(s: &Setup, log: &str) -> Gateway {
    let log = std::fs::File::create(s.dir.join(log)).expect("log");
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&s.config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the gateway");
    let gw = Gateway(child);
    wait_until("the gateway to listen", 20, || {
        TcpStream::connect(("127.0.0.1", s.s2s)).is_ok()
    });
    gw
}

/// xmpp.test's stream into isthmus, authenticated by dialback.
fn inbound_stream(s2s: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='xmpp.test' to='sip.test' version='1.0'>").expect("header");
    let header = read_until(&mut s, "</stream:features>");
    let id = attr(&header, "id").expect("stream id").to_owned();
    let key = dialback::key(PARTNER_SECRET, "sip.test", "xmpp.test", &id);
    s.write_all(format!("<db:result from='xmpp.test' to='sip.test'>{key}</db:result>").as_bytes())
        .expect("db:result");
    let answer = read_until(&mut s, "type=");
    assert!(
        answer.contains("type='valid'"),
        "dialback refused: {answer}"
    );
    s
}

fn state_db(s: &Setup) -> PathBuf {
    s.dir.join("data").join("state.sqlite")
}

fn user(i: usize) -> String {
    format!("user{i}@sip.test")
}

fn is_active(notifies: &[(String, String)]) -> bool {
    notifies
        .iter()
        .any(|(state, _)| state.starts_with("active"))
}

fn store_item(db: &Path, local: &str) -> isthmus_core::roster::Item {
    let store = Store::open(db).expect("open the store");
    store.get(local, "romeo@xmpp.test").expect("get")
}

#[test]
fn subscriptions_survive_a_sigkill_in_the_middle_of_traffic() {
    const USERS: usize = 60;
    const KILL_AFTER: usize = 8;
    let proxy = Arc::new(Proxy::start());
    let listener = TcpListener::bind("127.0.0.1:0").expect("partner listener");
    let partner_port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || partner_listener(listener));
    let s = setup("sigkill", &proxy, partner_port);
    let mut gw = start(&s, "first.log");
    let stream = inbound_stream(s.s2s);

    // Traffic: each SIP user adds romeo (SUBSCRIBE), romeo approves over s2s and
    // writes to them, one after the other, until the gateway dies.
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (proxy, stop, sip) = (proxy.clone(), stop.clone(), s.sip);
        let mut stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut approved = 0;
            for i in 0..USERS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let call = format!("sub-{i}");
                proxy.subscribe(sip, &user(i), &call);
                // The 200 comes after the pending state is durable: only then is
                // the approval sure to find it.
                let deadline = Instant::now() + Duration::from_secs(10);
                while proxy.answered(&call).is_none()
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if proxy.answered(&call).is_none() {
                    break;
                }
                let u = user(i);
                let stanzas = format!(
                    "<presence from='romeo@xmpp.test' to='{u}' type='subscribed'/>\
                     <message from='romeo@xmpp.test/balcony' to='{u}' type='chat' id='m{i}'><body>hello {i}</body></message>\
                     <presence from='romeo@xmpp.test/balcony' to='{u}'/>"
                );
                if stream.write_all(stanzas.as_bytes()).is_err() {
                    break;
                }
                approved += 1;
            }
            approved
        })
    };
    wait_until("acknowledged subscriptions", 60, || {
        (0..USERS)
            .filter(|i| is_active(&proxy.notifies(&format!("sub-{i}"))))
            .count()
            >= KILL_AFTER
    });
    // Mid-traffic: the driver is still subscribing and approving.
    gw.0.kill().expect("SIGKILL");
    let _ = gw.0.wait();
    stop.store(true, Ordering::Relaxed);
    drop(stream);
    let approved = driver.join().expect("driver");
    assert!(
        approved < USERS,
        "the gateway must die in the middle of the burst (all {USERS} went through)"
    );

    // Every NOTIFY active went out after the active state was durable, and every
    // 200 to a SUBSCRIBE after the pending state was.
    let acked: BTreeSet<usize> = (0..USERS)
        .filter(|i| is_active(&proxy.notifies(&format!("sub-{i}"))))
        .collect();
    let answered: BTreeSet<usize> = (0..USERS)
        .filter(|i| proxy.answered(&format!("sub-{i}")) == Some(200))
        .collect();
    assert!(acked.len() >= KILL_AFTER);
    {
        let store = Store::open(&state_db(&s)).expect("reopen after the kill");
        assert!(store.integrity_ok().expect("integrity_check"));
    }
    for &i in &answered {
        let item = store_item(&state_db(&s), &user(i));
        if acked.contains(&i) {
            assert_eq!(
                item.watch,
                Sub::Active,
                "{}: acknowledged as active",
                user(i)
            );
        } else {
            assert_ne!(item.watch, Sub::None, "{}: answered 200", user(i));
        }
    }

    // Restarted on the same data directory, the gateway knows who added romeo.
    let _gw = start(&s, "second.log");
    let mut stream = inbound_stream(s.s2s);
    let k = *acked.iter().next().expect("an acknowledged user");
    let again = format!("again-{k}");
    proxy.subscribe(s.sip, &user(k), &again);
    proxy.subscribe(s.sip, "stranger@sip.test", "stranger");
    wait_until("NOTIFYs after the restart", 20, || {
        !proxy.notifies(&again).is_empty() && !proxy.notifies("stranger").is_empty()
    });
    let first = &proxy.notifies(&again)[0];
    assert!(
        first.0.starts_with("active"),
        "romeo stays approved for {}: {first:?}",
        user(k)
    );
    assert!(
        proxy.notifies("stranger")[0].0.starts_with("pending"),
        "a user who never added romeo waits for his approval"
    );
    // romeo's presence and messages reach the restored watcher without a new
    // approval (romeo is a public_unverified partner: only added contacts may).
    let u = user(k);
    stream
        .write_all(
            format!(
                "<presence from='romeo@xmpp.test/balcony' to='{u}'><status>back</status></presence>\
                 <message from='romeo@xmpp.test/balcony' to='{u}' type='chat' id='after'><body>after the restart</body></message>"
            )
            .as_bytes(),
        )
        .expect("write");
    wait_until("romeo's presence as NOTIFY", 20, || {
        proxy.notifies(&again).iter().any(|(state, body)| {
            state.starts_with("active") && body.contains("<basic>open</basic>")
        })
    });
    wait_until("romeo's message as MESSAGE", 20, || {
        proxy.messages().iter().any(|m| m == "after the restart")
    });
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// xmpp.test's server side for the gateway's outbound stream, which stops
/// reading for `stall` after the first stanza and then reads on: the numbers the
/// bodies of the messages it gets start with, in the order they came.
fn stalling_partner(listener: TcpListener, stall: Duration, ids: Arc<Mutex<Vec<usize>>>) {
    for stream in listener.incoming().flatten() {
        let ids = ids.clone();
        std::thread::spawn(move || {
            let mut s = stream;
            let header = read_until(&mut s, "version='1.0'>");
            let to = attr(&header, "from").unwrap_or("sip.test").to_owned();
            if s.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='xmpp.test' to='{to}' id='stall' version='1.0'><stream:features/>").as_bytes()).is_err() {
                return;
            }
            let _ = s.set_read_timeout(None);
            let mut pending = String::new();
            let mut stalled = false;
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                if let Some(start) = pending.find("<db:result") {
                    if let Some(end) = pending[start..].find("</db:result>") {
                        pending.drain(..start + end + "</db:result>".len());
                        let _ = s
                            .write_all(b"<db:result from='xmpp.test' to='sip.test' type='valid'/>");
                    }
                }
                while let Some(start) = pending.find("<message") {
                    let Some(end) = pending[start..].find("</message>") else {
                        break;
                    };
                    let el = pending[start..start + end].to_owned();
                    pending.drain(..start + end + "</message>".len());
                    let number = el
                        .split_once("<body>")
                        .and_then(|(_, b)| b.get(..4))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(usize::MAX);
                    ids.lock().expect("lock").push(number);
                    if !stalled {
                        stalled = true;
                        std::thread::sleep(stall);
                    }
                }
            }
        });
    }
}

#[test]
fn a_partner_that_stops_reading_gets_every_accepted_message_once_and_in_order() {
    // About 10 MB toward a reader that takes nothing for four seconds: more than
    // the kernel's buffers hold, so the gateway's own writes back up.
    const MESSAGES: usize = 5000;
    let proxy = Proxy::start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("partner listener");
    let partner_port = listener.local_addr().expect("addr").port();
    let ids = Arc::new(Mutex::new(Vec::new()));
    {
        let ids = ids.clone();
        std::thread::spawn(move || stalling_partner(listener, Duration::from_secs(4), ids));
    }
    let s = setup("stall", &proxy, partner_port);
    let mut config = std::fs::read_to_string(&s.config).expect("config");
    config.push_str("partner_type = \"federated\"\n");
    std::fs::write(&s.config, config).expect("config");
    let _gw = start(&s, "stall.log");
    // A user agent of its own: its answers are taken as they come, so that its
    // socket never waits on the test.
    let ua = UdpSocket::bind("127.0.0.1:0").expect("ua socket");
    let ua_port = ua.local_addr().expect("addr").port();
    ua.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let codes = Arc::new(Mutex::new(vec![Vec::<u16>::new(); MESSAGES]));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (ua, codes, done) = (ua.try_clone().expect("clone"), codes.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !done.load(Ordering::Relaxed) {
                let Ok((n, _)) = ua.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(msg) = SipMessage::parse(&buf[..n], &SipLimits::default()) else {
                    continue;
                };
                let StartLine::Response { code, .. } = msg.start else {
                    continue;
                };
                let i = msg
                    .call_id()
                    .and_then(|c| c.strip_prefix("stall-")?.parse::<usize>().ok());
                if let Some(i) = i {
                    if let Some(answers) = codes.lock().expect("lock").get_mut(i) {
                        answers.push(code);
                    }
                }
            }
        });
    }
    let body = "x".repeat(2000);
    let requests: Vec<String> = (0..MESSAGES)
        .map(|i| {
            format!(
                "MESSAGE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{ua_port};branch=z9hG4bKstall{i}\r\nMax-Forwards: 69\r\n\
                 From: <sip:juliet@sip.test>;tag=s{i}\r\nTo: <sip:romeo@xmpp.test>\r\nCall-ID: stall-{i}\r\nCSeq: 1 MESSAGE\r\n\
                 Content-Type: text/plain\r\nContent-Length: {len}\r\n\r\n{i:04} {body}",
                len = body.len() + 5,
            )
        })
        .collect();
    let send = |which: &[usize]| {
        for (n, i) in which.iter().enumerate() {
            let _ = ua.send_to(requests[*i].as_bytes(), ("127.0.0.1", s.sip));
            // Paced, so that no socket on the way overflows.
            if n % 20 == 19 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    send(&(0..MESSAGES).collect::<Vec<_>>());
    // As a user agent does (Timer E), a request whose final answer did not come
    // is sent again: a burst of answers may overflow the test's socket, and the
    // gateway's transaction answers a retransmission with what it sent.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let unanswered: Vec<usize> = {
            let c = codes.lock().expect("lock");
            (0..MESSAGES)
                .filter(|i| !c[*i].iter().any(|code| *code >= 200))
                .collect()
        };
        if unanswered.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} MESSAGEs never answered, the first stall-{}",
            unanswered.len(),
            unanswered[0]
        );
        send(&unanswered);
    }
    done.store(true, Ordering::Relaxed);
    let codes = codes.lock().expect("lock").clone();
    for (i, c) in codes.iter().enumerate() {
        let finals: BTreeSet<u16> = c.iter().copied().filter(|c| *c >= 200).collect();
        assert_eq!(finals.len(), 1, "stall-{i}: one final answer, got {c:?}");
    }
    let delivered: Vec<usize> = (0..MESSAGES)
        .filter(|i| codes[*i].iter().any(|c| (200..300).contains(c)))
        .collect();
    assert!(!delivered.is_empty(), "no MESSAGE was accepted");
    wait_until("every accepted message at the partner", 30, || {
        ids.lock().expect("lock").len() >= delivered.len()
    });
    // Nothing more comes late.
    std::thread::sleep(Duration::from_millis(300));
    let got = ids.lock().expect("lock").clone();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    let (got_set, accepted): (BTreeSet<usize>, BTreeSet<usize>) =
        (got.iter().copied().collect(), delivered.iter().copied().collect());
    let refused_but_sent: Vec<_> = got_set.difference(&accepted).take(5).collect();
    let accepted_not_sent: Vec<_> = accepted.difference(&got_set).take(5).collect();
    assert!(
        in_order && refused_but_sent.is_empty() && accepted_not_sent.is_empty(),
        "the partner gets exactly the accepted messages, once each, in the order sent: \
         {} got, {} accepted, in order {in_order}, refused but sent {refused_but_sent:?}, \
         accepted but not sent {accepted_not_sent:?}",
        got.len(),
        delivered.len()
    );
    let _ = std::fs::remove_dir_all(&s.dir);
}
