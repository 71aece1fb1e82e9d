// Federation with a real Prosody (Debian's package), all on loopback: a throwaway
// CA, dnsmasq answering the test domains' SRV records for Prosody, Prosody with
// its own config, ports and data, isthmus finding Prosody through that DNS server,
// a SIP user agent played by this test on UDP, and an XMPP client session on
// Prosody's c2s port. Skipped (with a message) when Prosody is not installed;
// `.ci/run` installs it.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isthmus_core::xml::{ns, Element, Limits, StreamEvent, StreamReader};
use isthmus_tests::pki::{CertSpec, TestCa};


fn have(cmd: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    // CI installs the peers; there a missing one is a failure, not a skip.
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{cmd} is not installed, and CI must run this test"
    );
    found
}

include!("ports.rs");

/// A datagram for the UA; a signal (a child of a neighbouring test exiting)
/// interrupting the wait is not an answer, so the wait goes on.
fn ua_recv(ua: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, std::net::SocketAddr)> {
    loop {
        match ua.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// `read`, with interrupted waits resumed (see `ua_recv`).
fn read_on(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    // Generous: Prosody starts slowly when the machine is busy.
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct World {
    dir: PathBuf,
    ca: TestCa,
    c2s: u16,
    sip: u16,
    ua: UdpSocket,
    _procs: Vec<Proc>,
}

impl World {
    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// `check --probe xmpp.test`: (succeeded, everything it printed).
    fn probe(&self) -> (bool, String) {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(self.dir.join("isthmus.toml"))
            .args(["check", "--probe", "xmpp.test"])
            .output()
            .expect("check --probe");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// Starts dnsmasq, Prosody (serving xmpp.test) and isthmus-std (serving sip.test,
/// partner xmpp.test with `row`), with Prosody's `secure` deciding between
/// certificate authentication and dialback.
fn world(name: &str, row: &str, prosody_extra: &str) -> World {
    let dir = std::env::temp_dir().join(format!("isthmus-prosody-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("prosody-data")).expect("dir");
    let ca = TestCa::new_ecdsa("isthmus interop CA");
    let write = |f: &str, text: &str| std::fs::write(dir.join(f), text).expect("write");
    let xmpp = ca.issue(&CertSpec::for_domain("xmpp.test"));
    let sip = ca.issue(&CertSpec::for_domain("sip.test"));
    write("ca.pem", &ca.cert_pem);
    write("xmpp.crt", &xmpp.cert_pem);
    write("xmpp.key", &xmpp.key_pem);
    write("sip.crt", &sip.cert_pem);
    write("sip.key", &sip.key_pem);
    let (dns, prosody_s2s, c2s, isthmus_s2s, sip_port) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let dnsmasq = Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            &format!("--port={dns}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--address=/test/127.0.0.1",
            &format!("--srv-host=_xmpp-server._tcp.sip.test,isthmus-host.test,{isthmus_s2s}"),
            &format!("--srv-host=_xmpp-server._tcp.xmpp.test,prosody-host.test,{prosody_s2s}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq");
    let d = dir.display();
    write(
        "prosody.cfg.lua",
        &format!(
            r#"
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/prosody-data"
log = {{ debug = "{d}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {prosody_s2s} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
authentication = "internal_plain"
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix" }}
unbound = {{ resolvconf = false; hoststxt = false; forward = "127.0.0.1@{dns}"; options = {{ ["local-zone:"] = "test. transparent" }} }}
ssl = {{ certificate = "{d}/xmpp.crt"; key = "{d}/xmpp.key"; cafile = "{d}/ca.pem" }}
s2s_timeout = 10
{prosody_extra}
VirtualHost "xmpp.test"
"#
        ),
    );
    let cfg = dir.join("prosody.cfg.lua");
    let reg = Command::new("prosodyctl")
        .args([
            "--config",
            cfg.to_str().expect("path"),
            "register",
            "romeo",
            "xmpp.test",
            "pw",
        ])
        .output()
        .expect("prosodyctl register");
    assert!(
        reg.status.success(),
        "prosodyctl register: {}",
        String::from_utf8_lossy(&reg.stderr)
    );
    let prosody = Command::new("prosody")
        .args(["-F", "--config", cfg.to_str().expect("path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prosody");
    let ua = UdpSocket::bind("127.0.0.1:0").expect("ua");
    ua.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let ua_port = ua.local_addr().expect("addr").port();
    write(
        "isthmus.toml",
        &format!(
            r#"[gateway]
served_domains = ["sip.test"]
s2s_listen = "127.0.0.1:{isthmus_s2s}"
sip_address = "127.0.0.1:{sip_port}"
sip_next_hop = "127.0.0.1:{ua_port}"
certificate = "{d}/sip.crt"
private_key = "{d}/sip.key"
ca_certificates = "{d}/ca.pem"
data_dir = "{d}/isthmus-data"
dialback_secret = "interop"
# isthmus finds Prosody the way it finds any partner: SRV, then the target's A.
dns_servers = ["127.0.0.1:{dns}"]

[[partner]]
domain = "xmpp.test"
partner_type = "federated"
{row}
"#
        ),
    );
    let log = std::fs::File::create(dir.join("isthmus.log")).expect("log");
    let isthmus = Command::new(BIN)
        .args([
            "--config",
            dir.join("isthmus.toml").to_str().expect("path"),
            "run",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("isthmus-std");
    let procs = vec![Proc(dnsmasq), Proc(prosody), Proc(isthmus)];
    wait_port(c2s, "prosody c2s");
    wait_port(prosody_s2s, "prosody s2s");
    wait_port(isthmus_s2s, "isthmus");
    World {
        dir,
        ca,
        c2s,
        sip: sip_port,
        ua,
        _procs: procs,
    }
}

/// A minimal XMPP client session: STARTTLS, SASL PLAIN, bind.
struct Client {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    reader: StreamReader,
}

impl Client {
    fn login(w: &World, user: &str) -> Client {
        let mut tcp = TcpStream::connect(("127.0.0.1", w.c2s)).expect("c2s");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let header = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='xmpp.test' version='1.0'>";
        tcp.write_all(header.as_bytes()).expect("header");
        let mut reader = StreamReader::new(Limits::default());
        let next = |tcp: &mut TcpStream, reader: &mut StreamReader| loop {
            if let Some(ev) = reader.next_event().expect("xml") {
                return ev;
            }
            let mut buf = [0u8; 4096];
            let n = read_on(tcp, &mut buf).expect("read");
            assert!(n > 0, "c2s closed");
            reader.push(&buf[..n]);
        };
        let _ = next(&mut tcp, &mut reader);
        let _features = next(&mut tcp, &mut reader);
        tcp.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            .expect("starttls");
        let _proceed = next(&mut tcp, &mut reader);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(w.ca.cert_der.clone()).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let conn =
            rustls::ClientConnection::new(Arc::new(config), "xmpp.test".try_into().expect("name"))
                .expect("tls");
        let mut client = Client {
            tls: rustls::StreamOwned::new(conn, tcp),
            reader: StreamReader::new(Limits::default()),
        };
        client.send(header);
        client.wait(|e| e.name == "features");
        let auth = isthmus_core::s2s::sasl::base64_encode(format!("\0{user}\0pw").as_bytes());
        client.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>"
        ));
        client.wait(|e| e.name == "success");
        client.reader.restart();
        client.send(header);
        client.wait(|e| e.name == "features");
        client.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>test</resource></bind></iq>");
        client.wait(|e| e.name == "iq");
        client.send("<presence/>");
        client
    }

    fn send(&mut self, text: &str) {
        self.tls.write_all(text.as_bytes()).expect("send");
        self.tls.flush().expect("flush");
    }

    /// Reads elements until one satisfies `want`.
    fn wait(&mut self, want: impl Fn(&Element) -> bool) -> Element {
        loop {
            match self.reader.next_event().expect("xml") {
                Some(StreamEvent::Element(e)) if want(&e) => return e,
                Some(StreamEvent::End) => panic!("the server closed the client stream"),
                Some(_) => continue,
                None => {}
            }
            let mut buf = [0u8; 4096];
            let n = read_on(&mut self.tls, &mut buf).expect("read from prosody");
            assert!(n > 0, "c2s closed");
            self.reader.push(&buf[..n]);
        }
    }
}

/// Waits for a SIP request at the UA; answers it with 200.
fn ua_receive(w: &World, method: &str) -> String {
    let mut buf = [0u8; 65536];
    loop {
        let (n, from) =
            ua_recv(&w.ua, &mut buf).expect("a SIP request from isthmus");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with(method) {
            continue;
        }
        let msg = isthmus_core::sip::SipMessage::parse(&buf[..n], &Default::default())
            .expect("SIP from isthmus");
        let ok = msg.reply(200, "OK", Some("ua"));
        w.ua.send_to(&ok.to_bytes(), from).expect("200");
        return text;
    }
}

fn ua_message(w: &World, to: &str, body: &str) {
    let port = w.ua.local_addr().expect("addr").port();
    let text = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sip.test>;tag=ua1\r\nTo: <{to}>\r\nCall-ID: interop-{}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        body.len(),
        body.len()
    );
    w.ua.send_to(text.as_bytes(), ("127.0.0.1", w.sip))
        .expect("MESSAGE");
}

fn ua_response(w: &World) -> String {
    let mut buf = [0u8; 65536];
    loop {
        let (n, _) =
            ua_recv(&w.ua, &mut buf).expect("a SIP response from isthmus");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0") {
            return text;
        }
    }
}

fn messages_both_ways(w: &World) {
    let mut romeo = Client::login(w, "romeo");
    // Prosody user → SIP user agent.
    romeo.send("<message to='alice@sip.test' type='chat' id='p1'><body>Grüße aus Prosody ☕ &amp; more</body></message>");
    let got = ua_receive(w, "MESSAGE");
    assert!(got.contains("Grüße aus Prosody ☕ & more"), "{got}");
    assert!(got.contains("From: <sip:romeo@xmpp.test;gr=test>"), "{got}");
    // SIP user agent → Prosody user.
    ua_message(w, "sip:romeo@xmpp.test", "Antwort von SIP 🙂");
    let answer = ua_response(w);
    assert!(
        answer.starts_with("SIP/2.0 200"),
        "{answer}\n{}",
        w.log("isthmus.log")
    );
    let msg = romeo.wait(|e| e.name == "message");
    assert_eq!(
        msg.find(ns::CLIENT, "body")
            .map(|b| b.text_content())
            .as_deref(),
        Some("Antwort von SIP 🙂")
    );
    assert_eq!(msg.get_attr("from"), Some("alice@sip.test"));
}

#[test]
fn prosody_tls_and_sasl_external_both_ways() {
    if !have("prosody") || !have("dnsmasq") {
        eprintln!("SKIPPED: prosody and dnsmasq are not installed (.ci/run installs them)");
        return;
    }
    let w = world(
        "external",
        "tls = \"required\"\nsasl = \"required\"\ndialback = false",
        "s2s_secure_auth = true",
    );
    messages_both_ways(&w);
    let probe = w.probe();
    assert!(probe.0, "{}", probe.1);
    assert!(
        probe.1.contains("sip.test -> xmpp.test: authenticated by sasl-external-over-tls"),
        "{}",
        probe.1
    );
    let log = w.log("isthmus.log");
    assert!(
        log.contains("sip.test <- xmpp.test authenticated by sasl-external-over-tls"),
        "{log}"
    );
    assert!(
        log.contains("sip.test -> xmpp.test authenticated by sasl-external-over-tls"),
        "{log}"
    );
}

#[test]
fn prosody_dialback_over_tls_both_ways() {
    if !have("prosody") || !have("dnsmasq") {
        eprintln!("SKIPPED: prosody and dnsmasq are not installed (.ci/run installs them)");
        return;
    }
    let w = world(
        "dialback-tls",
        "tls = \"required\"\nsasl = \"not_supported\"\ndialback = true",
        "s2s_secure_auth = false",
    );
    messages_both_ways(&w);
    let log = w.log("isthmus.log");
    assert!(
        log.contains("sip.test <- xmpp.test authenticated by dialback-over-tls"),
        "{log}"
    );
    assert!(
        log.contains("sip.test -> xmpp.test authenticated by dialback-over-tls"),
        "{log}"
    );
}

#[test]
fn prosody_dialback_over_plain_tcp() {
    if !have("prosody") || !have("dnsmasq") {
        eprintln!("SKIPPED: prosody and dnsmasq are not installed (.ci/run installs them)");
        return;
    }
    let plain =
        "s2s_secure_auth = false\ns2s_require_encryption = false\ns2s_allow_encryption = false";
    let w = world(
        "dialback-tcp",
        "tls = \"not_supported\"\nsasl = \"not_supported\"\ndialback = true",
        plain,
    );
    messages_both_ways(&w);
    let log = w.log("isthmus.log");
    assert!(
        log.contains("sip.test <- xmpp.test authenticated by dialback-over-tcp"),
        "{log}"
    );
    assert!(
        log.contains("sip.test -> xmpp.test authenticated by dialback-over-tcp"),
        "{log}"
    );
}

#[test]
fn required_tls_against_a_plaintext_prosody_fails_with_a_reason() {
    if !have("prosody") || !have("dnsmasq") {
        eprintln!("SKIPPED: prosody and dnsmasq are not installed (.ci/run installs them)");
        return;
    }
    let plain =
        "s2s_secure_auth = false\ns2s_require_encryption = false\ns2s_allow_encryption = false";
    let w = world(
        "mismatch",
        "tls = \"required\"\nsasl = \"required\"\ndialback = false",
        plain,
    );
    let probe = w.probe();
    assert!(!probe.0, "the probe reports the failure: {}", probe.1);
    assert!(probe.1.contains("does not offer STARTTLS"), "{}", probe.1);
    ua_message(&w, "sip:romeo@xmpp.test", "anyone there?");
    let answer = ua_response(&w);
    assert!(answer.starts_with("SIP/2.0 404"), "{answer}");
    assert!(
        answer.contains("does not offer STARTTLS"),
        "the SIP user hears why: {answer}"
    );
    let log = w.log("isthmus.log");
    assert!(
        log.contains("xmpp.test does not offer STARTTLS, and our settings for it say tls=required sasl=required dialback=false"),
        "{log}"
    );
}

/// The next SIP message at the UA, as parsed; requests are answered with 200.
fn ua_next(w: &World) -> (isthmus_core::sip::SipMessage, std::net::SocketAddr) {
    let mut buf = [0u8; 65536];
    let (n, from) = ua_recv(&w.ua, &mut buf).expect("SIP from isthmus");
    let msg = isthmus_core::sip::SipMessage::parse(&buf[..n], &Default::default()).expect("SIP from isthmus");
    if msg.method().is_some() {
        let mut ok = msg.reply(200, "OK", Some("ua"));
        if msg.method() == Some("SUBSCRIBE") {
            ok.push_header("Expires", "600");
        }
        w.ua.send_to(&ok.to_bytes(), from).expect("200");
    }
    (msg, from)
}

fn presence_both_ways(w: &World) {
    let mut romeo = Client::login(w, "romeo");
    let port = w.ua.local_addr().expect("addr").port();

    // Prosody user → SIP user: romeo asks for alice's presence.
    romeo.send("<presence type='subscribe' to='alice@sip.test'/>");
    let (subscribe, from) = loop {
        let (m, from) = ua_next(w);
        if m.method() == Some("SUBSCRIBE") {
            break (m, from);
        }
    };
    assert_eq!(subscribe.header("Event"), Some("presence"));
    // The SIP presence server (played here) tells isthmus alice is in, with a note.
    let body = "<?xml version='1.0' encoding='UTF-8'?><presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:alice@sip.test'><tuple id='t'><status><basic>open</basic></status><note>Im Büro ☕</note></tuple></presence>";
    let notify = format!(
        "NOTIFY sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKn1\r\nMax-Forwards: 70\r\nFrom: {};tag=ua\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 NOTIFY\r\nEvent: presence\r\nSubscription-State: active;expires=600\r\nContent-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
        from,
        subscribe.header("To").unwrap_or_default(),
        subscribe.header("From").unwrap_or_default(),
        subscribe.call_id().unwrap_or_default(),
        body.len()
    );
    w.ua.send_to(notify.as_bytes(), from).expect("NOTIFY");
    // (Prosody records the approval in romeo's roster; the presence that follows
    // is what romeo's client shows.)
    let seen = romeo.wait(|e| e.name == "presence" && e.get_attr("from") == Some("alice@sip.test") && e.get_attr("type").is_none());
    assert_eq!(
        seen.find(ns::CLIENT, "status").map(|s| s.text_content()).as_deref(),
        Some("Im Büro ☕"),
        "a federated partner sees the note"
    );

    // SIP user → Prosody user: alice's client subscribes to romeo.
    let sub = format!(
        "SUBSCRIBE sip:romeo@xmpp.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKs1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sip.test>;tag=w1\r\nTo: <sip:romeo@xmpp.test>\r\nCall-ID: watch-romeo\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:alice@127.0.0.1:{port}>\r\nEvent: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    );
    w.ua.send_to(sub.as_bytes(), ("127.0.0.1", w.sip)).expect("SUBSCRIBE");
    let asked = romeo.wait(|e| e.name == "presence" && e.get_attr("type") == Some("subscribe"));
    assert_eq!(asked.get_attr("from"), Some("alice@sip.test"));
    romeo.send("<presence type='subscribed' to='alice@sip.test'/>");
    romeo.send("<presence><status>Wherefore?</status></presence>");
    let mut states = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (m, _) = ua_next(w);
        if m.method() == Some("NOTIFY") && m.call_id() == Some("watch-romeo") {
            let state = m.header("Subscription-State").unwrap_or_default().to_owned();
            let open = String::from_utf8_lossy(m.body()).contains("<basic>open</basic>");
            states.push(state.clone());
            // First romeo's presence as it was, then his new status.
            if state.starts_with("active") && open && String::from_utf8_lossy(m.body()).contains("Wherefore?") {
                assert!(states.first().is_some_and(|s| s.starts_with("pending")), "{states:?}");
                return;
            }
        }
    }
    panic!("no active NOTIFY with romeo's presence; states seen: {states:?}\n{}", w.log("isthmus.log"));
}

#[test]
fn prosody_presence_subscriptions_both_ways() {
    if !have("prosody") || !have("dnsmasq") {
        eprintln!("SKIPPED: prosody and dnsmasq are not installed (.ci/run installs them)");
        return;
    }
    let w = world("presence", "tls = \"required\"\nsasl = \"required\"\ndialback = false", "s2s_secure_auth = true");
    presence_both_ways(&w);
}
