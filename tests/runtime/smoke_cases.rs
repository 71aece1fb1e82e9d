// The binary as an admin runs it: it starts on a configuration, answers XMPP on
// its s2s port and SIP on its UDP port, and its `partner` command edits the file.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};


fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("isthmus-smoke-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

include!("ports.rs");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, s2s: u16, sip: u16) -> Running {
    start_with(dir, s2s, sip, "")
}

fn start_with(dir: &Path, s2s: u16, sip: u16, extra: &str) -> Running {
    let config = dir.join("isthmus.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nserved_domains = [\"sip.test\"]\ns2s_listen = \"127.0.0.1:{s2s}\"\nsip_address = \"127.0.0.1:{sip}\"\ndata_dir = \"{}\"\n{extra}\n[[partner]]\ndomain = \"xmpp.test\"\ntls = \"optional\"\nsasl = \"not_supported\"\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    let child = Command::new(BIN)
        .args(["--config", config.to_str().expect("utf-8 path"), "run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway");
    let mut running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", s2s)).is_err() {
        if let Ok(Some(status)) = running.0.try_wait() {
            panic!("{BIN} exited ({status}) before it listened on {s2s}");
        }
        assert!(Instant::now() < deadline, "{BIN} did not listen on {s2s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn answers_xmpp_and_sip() {
    let dir = temp_dir("answers");
    let (s2s, sip) = (free_port(), free_port());
    let _gw = start(&dir, s2s, sip);

    // A partner's stream gets features; a stranger's gets a policy-violation.
    let mut partner = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
    partner
        .write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='xmpp.test' to='sip.test' version='1.0'>")
        .expect("write");
    let answer = read_until(&mut partner, "</stream:features>");
    assert!(
        answer.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
        "{answer}"
    );
    let mut stranger = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
    stranger
        .write_all(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' from='evil.test' to='sip.test' version='1.0'>")
        .expect("write");
    let refused = read_until(&mut stranger, "</stream:stream>");
    assert!(refused.contains("<policy-violation"), "{refused}");

    // SIP OPTIONS over UDP.
    let ua = UdpSocket::bind("127.0.0.1:0").expect("udp");
    ua.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let port = ua.local_addr().expect("addr").port();
    let options = format!(
        "OPTIONS sip:sip.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKsmoke\r\nFrom: <sip:alice@sip.test>;tag=1\r\nTo: <sip:sip.test>\r\nCall-ID: smoke\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    ua.send_to(options.as_bytes(), ("127.0.0.1", sip))
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = ua.recv_from(&mut buf).expect("SIP answer");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("SIP/2.0 200 OK"), "{text}");
    assert!(
        text.contains("Allow: MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn partner_command_edits_and_validates_the_file() {
    let dir = temp_dir("partner");
    let config = dir.join("isthmus.toml");
    std::fs::write(&config, "[gateway]\nserved_domains = [\"sip.test\"]\n").expect("config");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run isthmus-std")
    };
    let add = run(&[
        "partner",
        "add",
        "gmail.com",
        "--tls",
        "not-supported",
        "--sasl",
        "not-supported",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let list = run(&["partner", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains("gmail.com")
            && listed.contains("tls=not_supported sasl=not_supported dialback=true"),
        "{listed}"
    );
    // A row that allows no method is refused and the file is left alone.
    let bad = run(&[
        "partner",
        "add",
        "bad.example",
        "--tls",
        "not-supported",
        "--dialback",
        "false",
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("bad.example") && err.contains("fix:"), "{err}");
    assert!(!std::fs::read_to_string(&config)
        .expect("file")
        .contains("bad.example"));
    // Set changes only what it is given.
    let set = run(&["partner", "set", "gmail.com", "--partner-type", "federated", "--enable-keep-alive", "false"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let text = std::fs::read_to_string(&config).expect("file");
    assert!(text.contains("partner_type = \"federated\"") && text.contains("enable_keep_alive = false"), "{text}");
    assert!(text.contains("tls = \"not_supported\""), "the row stays: {text}");
    let twice = run(&["partner", "add", "gmail.com"]);
    assert!(!twice.status.success(), "add does not overwrite an existing partner");
    let removed = run(&["partner", "remove", "gmail.com"]);
    assert!(removed.status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cert_request_and_dns_records() {
    let dir = temp_dir("cert");
    let config = dir.join("isthmus.toml");
    std::fs::write(&config, "[gateway]\nserved_domains = [\"sip.test\", \"corp.test\"]\n").expect("config");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["cert", "request", "--out"])
        .arg(dir.join("csr"))
        .output()
        .expect("cert request");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csr = std::fs::read_to_string(dir.join("csr/isthmus.csr")).expect("csr");
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    assert!(std::fs::read_to_string(dir.join("csr/isthmus.key")).expect("key").contains("PRIVATE KEY"));
    let again = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["cert", "request", "--out"])
        .arg(dir.join("csr"))
        .output()
        .expect("cert request");
    assert!(!again.status.success(), "an existing key is never overwritten");
    let dns = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["dns", "records", "--target", "gw.sip.test"])
        .output()
        .expect("dns records");
    let text = String::from_utf8_lossy(&dns.stdout);
    assert!(text.contains("_xmpp-server._tcp.sip.test. 86400 IN SRV 0 5 5269 gw.sip.test."), "{text}");
    assert!(text.contains("_xmpp-server._tcp.corp.test."), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn header_from(from: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='sip.test' version='1.0'>"
    )
}

#[test]
fn sigterm_closes_streams_with_system_shutdown_and_exits() {
    let dir = temp_dir("sigterm");
    let (s2s, sip) = (free_port(), free_port());
    let mut gw = start(&dir, s2s, sip);
    let mut partner = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
    partner.write_all(header_from("xmpp.test").as_bytes()).expect("write");
    read_until(&mut partner, "</stream:features>");
    let pid = gw.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(killed.success());
    let closing = read_until(&mut partner, "</stream:stream>");
    assert!(closing.contains("<system-shutdown"), "{closing}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = gw.0.try_wait().expect("wait") {
            assert!(status.success(), "a graceful stop exits 0: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "isthmus did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_adds_a_partner_without_a_restart() {
    let dir = temp_dir("reload");
    let (s2s, sip) = (free_port(), free_port());
    let _gw = start(&dir, s2s, sip);
    let config = dir.join("isthmus.toml");
    let mut newcomer = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
    newcomer.write_all(header_from("new.test").as_bytes()).expect("write");
    assert!(read_until(&mut newcomer, "</stream:stream>").contains("<policy-violation"));
    // Established streams stay: keep one open across the reload.
    let mut partner = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
    partner.write_all(header_from("xmpp.test").as_bytes()).expect("write");
    read_until(&mut partner, "</stream:features>");
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[[partner]]\ndomain = \"new.test\"\ntls = \"optional\"\nsasl = \"not_supported\"\n");
    std::fs::write(&config, text).expect("config");
    let reload = Command::new(BIN).arg("--config").arg(&config).arg("reload").output().expect("reload");
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(("127.0.0.1", s2s)).expect("connect");
        again.write_all(header_from("new.test").as_bytes()).expect("write");
        let answer = read_until(&mut again, "</stream:");
        if answer.contains("<stream:features>") {
            break;
        }
        assert!(Instant::now() < deadline, "the reload did not take effect: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The stream opened before the reload is still there.
    partner.write_all(b" ").expect("the old stream is still open");
    let _ = std::fs::remove_dir_all(&dir);
}

fn options(port: u16, transport: &str) -> String {
    format!(
        "OPTIONS sip:sip.test SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:{port};branch=z9hG4bK{transport}\r\nFrom: <sip:alice@sip.test>;tag=1\r\nTo: <sip:sip.test>\r\nCall-ID: {transport}-smoke\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn sip_over_tcp_and_tls() {
    let dir = temp_dir("siptcp");
    let (s2s, sip, sips) = (free_port(), free_port(), free_port());
    let _gw = start_with(&dir, s2s, sip, &format!("sip_tls_address = \"127.0.0.1:{sips}\""));
    // TCP: two requests in one write, framed by Content-Length.
    let mut tcp = TcpStream::connect(("127.0.0.1", sip)).expect("SIP over TCP");
    let both = format!("{}{}", options(1, "TCP"), options(2, "TCP").replace("TCP-smoke", "TCP-smoke-2"));
    tcp.write_all(both.as_bytes()).expect("write");
    let answers = read_until(&mut tcp, "TCP-smoke-2");
    assert_eq!(answers.matches("SIP/2.0 200 OK").count(), 2, "{answers}");
    // TLS, with the development certificate made on first start.
    wait_port(sips);
    let ca = std::fs::read_to_string(dir.join("data/dev-certs/ca.pem")).expect("dev CA");
    let mut roots = rustls::RootCertStore::empty();
    for c in isthmus_core::s2s::tls::trust_anchors_from_pem(&ca).expect("ca") {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "sip.test".try_into().expect("name")).expect("tls");
    let sock = TcpStream::connect(("127.0.0.1", sips)).expect("SIP over TLS");
    sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(options(3, "TLS").as_bytes()).expect("write over TLS");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("SIP/2.0 200 OK"), "{text}");
    // A broken stream is answered with 400 and why (RFC 3261 §18.3), then closed,
    // not guessed at: the answer is written before the close.
    let mut bad = TcpStream::connect(("127.0.0.1", sip)).expect("SIP over TCP");
    bad.write_all(b"OPTIONS sip:sip.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKx\r\nFrom: <sip:a@sip.test>;tag=1\r\nTo: <sip:sip.test>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n").expect("write");
    bad.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut answer = Vec::new();
    let closed = bad.read_to_end(&mut answer).is_ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("SIP/2.0 400 Bad Request") && answer.contains("Content-Length is required"), "{answer}");
    assert!(closed, "no Content-Length on a stream: the connection is closed after the answer");
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
