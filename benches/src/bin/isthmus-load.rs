//! `isthmus-load`: drives a running isthmus (either binary) over loopback. It plays
//! an XMPP partner server `load.test` with N inbound s2s streams (dialback over
//! TCP, answering the gateway's verify connection itself) and the SIP proxy on UDP
//! (answering every MESSAGE with 200), sends M messages per stream, and reports
//! throughput, p50/p99 latency from stanza written to SIP MESSAGE received, the
//! gateway's CPU time per delivered message and its RSS (from /proc).
//!
//! The gateway needs, for domain `sip.test` and partner `load.test`:
//!   dialback_secret unset or anything; sip_next_hop = "127.0.0.1:<--sip-port>";
//!   [gateway.dns_overrides] "load.test" = ["127.0.0.1:<--listen-port>"];
//!   [[partner]] domain = "load.test", tls = "not_supported", sasl = "not_supported".
//!
//! Usage: isthmus-load --pid PID --s2s 127.0.0.1:5269 --listen-port 25269 \
//!        --sip-port 25060 --streams 8 --messages 2000

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isthmus_core::s2s::dialback;

const SECRET: &str = "isthmus-load";

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// (CPU seconds, RSS kB) of a process.
fn proc_stats(pid: &str) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

fn read_until(s: &mut TcpStream, needle: &str) -> String {
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

fn attr<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}='");
    let start = text.find(&key)? + key.len();
    let end = text[start..].find('\'')?;
    Some(&text[start..start + end])
}

/// Answers the gateway's dialback verify connections: the keys are ours.
fn authoritative(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut s = stream;
            let header = read_until(&mut s, ">");
            let to = attr(&header, "from").unwrap_or("sip.test").to_owned();
            let _ = s.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='load.test' to='{to}' id='auth' version='1.0'><stream:features/>").as_bytes());
            let mut pending = String::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                }
                while let Some(start) = pending.find("<db:verify") {
                    let Some(end) = pending[start..].find("</db:verify>") else {
                        break;
                    };
                    let el = pending[start..start + end].to_owned();
                    pending.drain(..start + end + 12);
                    let (from, id) = (
                        attr(&el, "from").unwrap_or(""),
                        attr(&el, "id").unwrap_or(""),
                    );
                    let key = el.rsplit('>').next().unwrap_or("");
                    let ok = dialback::verify(SECRET, from, "load.test", id, key);
                    let answer = format!(
                        "<db:verify from='load.test' to='{from}' id='{id}' type='{}'/>",
                        if ok { "valid" } else { "invalid" }
                    );
                    let _ = s.write_all(answer.as_bytes());
                }
            }
        });
    }
}

fn main() {
    let pid = arg("--pid", "");
    let s2s = arg("--s2s", "127.0.0.1:5269");
    let listen_port = arg("--listen-port", "25269");
    let sip_port = arg("--sip-port", "25060");
    let streams: usize = arg("--streams", "4").parse().unwrap_or(4);
    let messages: usize = arg("--messages", "1000").parse().unwrap_or(1000);
    let listener = TcpListener::bind(format!("127.0.0.1:{listen_port}"))
        .expect("listen for verify connections");
    std::thread::spawn(move || authoritative(listener));
    let ua = UdpSocket::bind(format!("127.0.0.1:{sip_port}")).expect("SIP socket");
    ua.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));

    // Authenticate every stream first.
    let mut conns = Vec::new();
    for _ in 0..streams {
        let mut s = TcpStream::connect(&s2s).expect("connect to the gateway");
        s.set_nodelay(true).expect("nodelay");
        s.write_all(b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='load.test' to='sip.test' version='1.0'>").expect("header");
        let header = read_until(&mut s, "</stream:features>");
        let id = attr(&header, "id").expect("stream id").to_owned();
        let key = dialback::key(SECRET, "sip.test", "load.test", &id);
        s.write_all(
            format!("<db:result from='load.test' to='sip.test'>{key}</db:result>").as_bytes(),
        )
        .expect("db:result");
        let answer = read_until(&mut s, "type=");
        assert!(
            answer.contains("type='valid'"),
            "dialback refused: {answer}"
        );
        conns.push(s);
    }
    let (cpu0, _) = proc_stats(&pid);
    let total = streams * messages;
    let start = Instant::now();
    let mut writers = Vec::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        let sent_at = sent_at.clone();
        writers.push(std::thread::spawn(move || {
            for m in 0..messages {
                let id = format!("s{i}m{m}");
                let stanza = format!("<message from='peer{i}@load.test/r' to='user{}@sip.test' type='chat' id='{id}'><body>load {id}: the quick brown fox jumps over the lazy dog</body></message>", m % 50);
                sent_at.lock().expect("lock").insert(id, Instant::now());
                if s.write_all(stanza.as_bytes()).is_err() {
                    return;
                }
            }
            // Keep the stream open until the run ends.
            std::thread::sleep(Duration::from_secs(30));
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut seen = std::collections::HashSet::new();
    let mut branches = std::collections::HashSet::new();
    let mut duplicates = 0;
    let mut retransmissions = 0;
    let mut buf = vec![0u8; 65536];
    while latencies.len() < total {
        let Ok((n, from)) = ua.recv_from(&mut buf) else {
            break;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("MESSAGE") {
            continue;
        }
        let Ok(msg) = isthmus_core::sip::SipMessage::parse(&buf[..n], &Default::default()) else {
            continue;
        };
        let _ = ua.send_to(&msg.reply(200, "OK", Some("load")).to_bytes(), from);
        // A retransmission carries the same Via branch: the transaction layer's
        // business, not a duplicate delivery.
        let branch = msg.header("Via").unwrap_or_default().to_owned();
        if !branches.insert(branch) {
            retransmissions += 1;
            continue;
        }
        let body = String::from_utf8_lossy(&msg.body);
        let Some(id) = body.strip_prefix("load ").and_then(|b| b.split(':').next()) else {
            continue;
        };
        if !seen.insert(id.to_owned()) {
            duplicates += 1;
            continue;
        }
        if let Some(t) = sent_at.lock().expect("lock").get(id) {
            latencies.push(t.elapsed());
        }
    }
    let elapsed = start.elapsed();
    let (cpu1, rss) = proc_stats(&pid);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let delivered = latencies.len();
    println!(
        "streams {streams}, messages sent {total}, delivered {delivered}, lost {}, duplicates {duplicates}, SIP retransmissions {retransmissions}",
        total - delivered
    );
    println!(
        "throughput {:.0} messages/s over {:.2} s",
        delivered as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!("latency p50 {:?}, p99 {:?}", pct(0.50), pct(0.99));
    if !pid.is_empty() && delivered > 0 {
        println!(
            "gateway CPU {:.1} µs per delivered message; RSS {} kB ({} kB per stream)",
            (cpu1 - cpu0) * 1e6 / delivered as f64,
            rss,
            rss / streams as u64
        );
    }
    std::process::exit(0);
}
