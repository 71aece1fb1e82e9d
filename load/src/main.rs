//! `isthmus-load`: drives a gateway (either binary) over loopback in both
//! directions and reports throughput, latency, the gateway's CPU time per delivered
//! message and its memory. Every message carries an id; the tool checks that each
//! arrives exactly once, or was refused with an answer the sender saw.
//!
//! Mode `self`: the tool plays N partner servers (dialback over TCP, answering the
//! gateway's verify connections) and M SIP peers plus the SIP next hop.
//! Mode `prosody`: a real Prosody with N VirtualHosts on the XMPP side, TLS + SASL
//! EXTERNAL between Prosody and the gateway, the tool's c2s clients sending and
//! receiving there.

mod ledger;
mod pace;
mod procstat;
mod setup;
mod sip;
mod sippy;
mod xmpp;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use isthmus_core::xml::ns;

use ledger::{Dir, Ledger, Summary};
use pace::Pacer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The tool plays the partner servers and the SIP side itself.
    #[value(name = "self")]
    SelfContained,
    /// A real Prosody plays the partner servers (needs --gateway).
    Prosody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Direction {
    Both,
    /// XMPP → SIP only.
    ToSip,
    /// SIP → XMPP only.
    ToXmpp,
}

/// Drives an isthmus gateway over loopback and reports throughput, p50/p99
/// latency, the gateway's CPU time per delivered message and its RSS.
#[derive(Parser, Debug)]
#[command(name = "isthmus-load", version)]
struct Args {
    #[arg(long, value_enum, default_value = "self")]
    mode: Mode,
    /// Gateway binary to start with a generated configuration (target/release/isthmus-std
    /// or isthmus-smol); stopped at the end. Without it (mode self only), attach to a
    /// running gateway with --pid, --gateway-s2s and --gateway-sip.
    #[arg(long)]
    gateway: Option<PathBuf>,
    /// Attach: the running gateway's process id (for /proc figures).
    #[arg(long)]
    pid: Option<u32>,
    /// Attach: the gateway's s2s_listen.
    #[arg(long)]
    gateway_s2s: Option<SocketAddr>,
    /// Attach: the gateway's sip_address.
    #[arg(long)]
    gateway_sip: Option<SocketAddr>,
    /// Attach: where the tool's partner servers listen (the gateway's dns_overrides).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Attach: the tool's SIP next hop (the gateway's sip_next_hop).
    #[arg(long, default_value = "127.0.0.1:0")]
    next_hop: SocketAddr,
    /// Print the gateway configuration attach mode needs (for --listen, --next-hop,
    /// --gateway-s2s, --gateway-sip and --streams) and exit.
    #[arg(long)]
    print_config: bool,
    /// Partner domains load0.test …: one s2s stream each way per domain.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// SIP peers (UDP user agents) sending toward partner users.
    #[arg(long, default_value_t = 4)]
    sip_peers: usize,
    #[arg(long, value_enum, default_value = "both")]
    direction: Direction,
    /// Offered messages per second, all senders together (half each way with
    /// --direction both); 0 for as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of offered load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many messages in all (before --duration runs out).
    #[arg(long)]
    count: Option<u64>,
    /// Most SIP transactions in flight per peer.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Seconds each partner stream (mode self) stops reading after its first stanza:
    /// the gateway's send queues back up, and SIP senders past its bounds get 503
    /// with Retry-After (or 408 for what waited past 30 s).
    #[arg(long, default_value_t = 0.0)]
    partner_stall: f64,
    /// Seconds to wait after the load for the last deliveries and answers.
    #[arg(long, default_value_t = 40.0)]
    drain: f64,
    /// Let SIPp (`sipp`, Debian package sip-tester) play the SIP peers with this scenario
    /// (see load/sipp/message.xml); its bodies `load S[call_number] …` are checked like the tool's.
    #[arg(long)]
    sipp: Option<PathBuf>,
    /// Work directory (configs, logs, Prosody data); default a fresh one in /tmp, removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const EXIT_ERROR: i32 = 1;

/// The tool's SIP sockets get a large receive buffer, as the gateway's does, so
/// that a burst of answers is not dropped on the tool's side and misread as the
/// gateway's slowness (the kernel caps it at net.core.rmem_max).
fn roomy(sock: &UdpSocket) {
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(sock, 4 * 1024 * 1024);
}
const EXIT_CHECK_FAILED: i32 = 3;

fn main() {
    let args = Args::parse();
    xmpp::PARTNER_STALL_MS.store(
        (args.partner_stall.max(0.0) * 1000.0) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    match run(&args) {
        Ok(clean) => std::process::exit(if clean { 0 } else { EXIT_CHECK_FAILED }),
        Err(e) => {
            eprintln!("isthmus-load: {e}");
            std::process::exit(EXIT_ERROR);
        }
    }
}

fn domains(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("load{i}.test")).collect()
}

/// Returns whether the run was clean (no loss, no duplicates).
fn run(args: &Args) -> Result<bool, String> {
    if args.streams == 0 || (args.sip_peers == 0 && args.direction != Direction::ToSip) {
        return Err("--streams and --sip-peers must be at least 1".into());
    }
    let domains = domains(args.streams);
    let next_hop_sock = UdpSocket::bind(args.next_hop)
        .map_err(|e| format!("bind next hop {}: {e}", args.next_hop))?;
    roomy(&next_hop_sock);
    let next_hop = next_hop_sock.local_addr().map_err(|e| e.to_string())?;
    let listener =
        TcpListener::bind(args.listen).map_err(|e| format!("bind {}: {e}", args.listen))?;
    let listen = listener.local_addr().map_err(|e| e.to_string())?;
    if args.print_config {
        let cfg = setup::self_config(
            &domains,
            args.gateway_s2s.map_or(5269, |a| a.port()),
            args.gateway_sip.map_or(5060, |a| a.port()),
            next_hop,
            listen,
            &PathBuf::from("isthmus-data"),
        );
        print!("{cfg}");
        return Ok(true);
    }
    let dir = setup::work_dir(args.dir.as_ref())?;
    let mut world = match (&args.gateway, args.mode) {
        (Some(gw), Mode::SelfContained) => setup::start_self(gw, &dir, &domains, next_hop, listen)?,
        (Some(gw), Mode::Prosody) => {
            drop(listener);
            return run_world(
                args,
                setup::start_prosody(gw, &dir, &domains, next_hop)?,
                None,
                next_hop_sock,
            )
            .inspect(|_| cleanup(args, &dir));
        }
        (None, Mode::Prosody) => return Err("--mode prosody needs --gateway BINARY".into()),
        (None, Mode::SelfContained) => {
            let (Some(pid), Some(s2s), Some(sip)) = (args.pid, args.gateway_s2s, args.gateway_sip)
            else {
                return Err("give --gateway BINARY, or --pid, --gateway-s2s and --gateway-sip of a running gateway configured as --print-config shows".into());
            };
            setup::World {
                procs: setup::Procs::default(),
                dir: dir.clone(),
                gateway_pid: pid,
                gateway_s2s: s2s,
                gateway_sip: sip,
                c2s: None,
            }
        }
    };
    world.procs.check_alive(&dir)?;
    let r = run_world(args, world, Some(listener), next_hop_sock);
    if r.is_ok() {
        cleanup(args, &dir);
    }
    r
}

fn cleanup(args: &Args, dir: &std::path::Path) {
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One XMPP-side sender: a partner stream (mode self) or a Prosody client.
struct XmppSender {
    tcp: TcpStream,
    /// `from` attribute (partner streams stamp it; Prosody clients leave it to Prosody).
    from: Option<String>,
}

impl XmppSender {
    fn stanza(&self, id: u64, k: u64, out: &mut String) {
        let from = self
            .from
            .as_ref()
            .map(|f| format!(" from='{f}'"))
            .unwrap_or_default();
        out.push_str(&format!(
            "<message{from} to='alice{}@sip.test' type='chat' id='L{id}'><body>{}</body></message>",
            k % 16,
            ledger::body(id)
        ));
    }
}

fn run_world(
    args: &Args,
    mut world: setup::World,
    listener: Option<TcpListener>,
    next_hop_sock: UdpSocket,
) -> Result<bool, String> {
    let domains = domains(args.streams);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pid = world.gateway_pid;
    let before_streams = procstat::read(pid)?;
    {
        let (ledger, stop) = (ledger.clone(), stop.clone());
        std::thread::spawn(move || sip::next_hop(next_hop_sock, ledger, stop));
    }
    let errors: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let note = {
        let errors = errors.clone();
        move |e: String| {
            if !xmpp::STOPPING.load(Ordering::Relaxed) {
                errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
            }
        }
    };
    let mut senders = Vec::new();
    if let Some(listener) = listener {
        // Partner servers: verify connections and the gateway's outbound streams.
        let (l, gateway, n) = (ledger.clone(), world.gateway_s2s, note.clone());
        std::thread::spawn(move || {
            let (ledger, note) = (l, n);
            let seq = AtomicU64::new(0);
            for tcp in listener.incoming().flatten() {
                let (ledger, note) = (ledger.clone(), note.clone());
                let n = seq.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    if let Err(e) = xmpp::serve_accepted(tcp, gateway, setup::SECRET, &ledger, n) {
                        note(e);
                    }
                });
            }
        });
        for d in &domains {
            let conn = xmpp::inbound_stream(world.gateway_s2s, d, "sip.test", setup::SECRET)?;
            let tcp = conn.tcp.try_clone().map_err(|e| e.to_string())?;
            tcp.set_read_timeout(None).map_err(|e| e.to_string())?;
            let (ledger, note) = (ledger.clone(), note.clone());
            std::thread::spawn(move || {
                if let Err(e) = xmpp::receive_stanzas(conn, &ledger, ns::SERVER) {
                    note(e);
                }
            });
            senders.push(XmppSender {
                tcp,
                from: Some(format!("load@{d}/r")),
            });
        }
    } else {
        let c2s = world.c2s.ok_or("no c2s port")?;
        for d in &domains {
            let conn = xmpp::c2s_login(c2s, "load", d, setup::PASSWORD)?;
            let tcp = conn.tcp.try_clone().map_err(|e| e.to_string())?;
            tcp.set_read_timeout(None).map_err(|e| e.to_string())?;
            let (ledger, note) = (ledger.clone(), note.clone());
            std::thread::spawn(move || {
                if let Err(e) = xmpp::receive_stanzas(conn, &ledger, ns::CLIENT) {
                    note(e);
                }
            });
            senders.push(XmppSender { tcp, from: None });
        }
    }

    // Warm-up: one message each way per domain, so that every s2s stream is up
    // and authenticated before the clock starts.
    let targets: Vec<String> = domains.iter().map(|d| format!("load@{d}")).collect();
    for (i, s) in senders.iter_mut().enumerate() {
        let mut text = String::new();
        s.stanza(ledger.sent(Dir::ToSip), i as u64, &mut text);
        s.tcp
            .write_all(text.as_bytes())
            .map_err(|e| format!("warm-up write: {e}"))?;
    }
    let warm_peer = sip::Peer {
        index: 999,
        gateway: world.gateway_sip,
        targets: targets.clone(),
        pacer: Pacer::new(
            Instant::now(),
            0.0,
            domains.len() as u64,
            Duration::from_secs(60),
        ),
        window: domains.len(),
        give_up: Instant::now() + Duration::from_secs(30),
    };
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    roomy(&sock);
    sip::run_peer(warm_peer, sock, ledger.clone())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.outstanding() > 0 {
        world.procs.check_alive(&world.dir)?;
        if let Some(e) = errors.lock().unwrap_or_else(|p| p.into_inner()).first() {
            return Err(format!("during the warm-up: {e}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "warm-up: {} of {} messages not delivered within 30 s; see the logs in {}",
                ledger.outstanding(),
                2 * domains.len(),
                world.dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for dir in [Dir::ToSip, Dir::ToXmpp] {
        let s = ledger.summary(dir);
        if s.delivered != s.sent {
            return Err(format!(
                "warm-up failed ({dir:?}): {s:?}; logs in {}",
                world.dir.display()
            ));
        }
    }
    ledger.clear();
    std::thread::sleep(Duration::from_millis(200));
    let loaded = procstat::read(pid)?;
    // The other processes on the same cores: when they saturate, the figures are theirs.
    let tool0 = procstat::read(std::process::id())?;
    let prosody_pid = world.procs.pid("prosody");
    let prosody0 = prosody_pid.map(procstat::read).transpose()?;

    // The load.
    let xmpp_senders = if args.direction == Direction::ToXmpp {
        0
    } else {
        senders.len()
    };
    let sip_senders = if args.direction == Direction::ToSip {
        0
    } else {
        args.sip_peers
    };
    // Half the rate and the count each way when both directions run, whatever N and M.
    let ways = u64::from(xmpp_senders > 0) + u64::from(sip_senders > 0);
    let way_rate = args.rate / ways as f64;
    let way_count = |to_sip: bool| match args.count {
        Some(c) if to_sip => c - (ways - 1) * (c / ways),
        Some(c) => c / ways,
        None => u64::MAX,
    };
    let count_each = |to_sip: bool, senders: usize, i: usize| match args.count {
        Some(_) => {
            let (c, n) = (way_count(to_sip), senders as u64);
            c / n + u64::from((i as u64) < c % n)
        }
        None => u64::MAX,
    };
    let duration = Duration::from_secs_f64(args.duration);
    let start = Instant::now() + Duration::from_millis(10);
    let give_up = start + duration + Duration::from_secs_f64(args.drain);
    let mut threads = Vec::new();
    for (i, s) in senders.into_iter().enumerate().take(xmpp_senders) {
        let ledger = ledger.clone();
        let mut pacer = Pacer::new(
            start,
            way_rate / xmpp_senders as f64,
            count_each(true, xmpp_senders, i),
            duration,
        );
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut s = s;
            let mut text = String::new();
            let mut k = 0u64;
            while !pacer.finished() {
                let now = Instant::now();
                text.clear();
                // Everything due goes out in one write: an open-loop sender catches up.
                while pacer.due(now) && text.len() < 64 * 1024 {
                    s.stanza(ledger.sent(Dir::ToSip), k, &mut text);
                    k += 1;
                }
                if !text.is_empty() {
                    s.tcp
                        .write_all(text.as_bytes())
                        .map_err(|e| format!("XMPP sender {i}: write: {e}"))?;
                } else if let Some(at) = pacer.next_at() {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
            }
            Ok(())
        }));
    }
    let sipp = match &args.sipp {
        Some(scenario) if sip_senders > 0 => {
            let count = way_count(false)
                .min((way_rate * args.duration).ceil() as u64)
                .max(1);
            Some(sippy::start(
                scenario,
                &world.dir,
                &domains,
                world.gateway_sip,
                way_rate,
                count,
                start,
                &ledger,
            )?)
        }
        _ => None,
    };
    let sip_senders = if sipp.is_some() { 0 } else { sip_senders };
    for p in 0..sip_senders {
        let peer = sip::Peer {
            index: p,
            gateway: world.gateway_sip,
            targets: targets
                .iter()
                .cycle()
                .skip(p)
                .take(targets.len())
                .cloned()
                .collect(),
            pacer: Pacer::new(
                start,
                way_rate / sip_senders as f64,
                count_each(false, sip_senders, p),
                duration,
            ),
            window: args.window,
            give_up,
        };
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        roomy(&sock);
        let ledger = ledger.clone();
        threads.push(std::thread::spawn(move || {
            sip::run_peer(peer, sock, ledger)
        }));
    }
    let mut sender_errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => sender_errors.push(e),
            Err(_) => sender_errors.push("a sender thread panicked".into()),
        }
    }
    let sipp_report = match sipp {
        Some(child) => Some(sippy::finish(child, give_up, &world.dir)?),
        None => None,
    };
    let sent_done = Instant::now();
    while ledger.outstanding() > 0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = procstat::read(pid);
    let tool1 = procstat::read(std::process::id())?;
    let prosody1 = prosody_pid.map(procstat::read).transpose()?;
    xmpp::STOPPING.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let after = after?;
    let alive = world.procs.check_alive(&world.dir);

    let to_sip = ledger.summary(Dir::ToSip);
    let to_xmpp = ledger.summary(Dir::ToXmpp);
    let gw = args
        .gateway
        .as_ref()
        .and_then(|g| g.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("pid {pid}"));
    println!(
        "isthmus-load: mode {:?}, gateway {gw}, {} partner domains ({} s2s streams), {} SIP peers, direction {:?}, offered {} for {:.1} s{}",
        args.mode,
        args.streams,
        2 * args.streams,
        sip_senders,
        args.direction,
        if args.rate > 0.0 { format!("{:.0} msg/s", args.rate) } else { "unlimited".into() },
        args.duration,
        args.count.map(|c| format!(" (at most {c} messages)")).unwrap_or_default()
    );
    let line = |name: &str, s: &Summary| {
        if s.sent == 0 {
            return;
        }
        let span = match (s.first_sent, s.last_delivery) {
            (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
            _ => 0.0,
        };
        println!(
            "  {name}: sent {}, delivered {}, lost {}{}, duplicates {}, refused {} (503 with Retry-After {}, 503 without {}, other {}; by code {:?}){}",
            s.sent,
            s.delivered,
            s.lost,
            if s.acknowledged_but_lost > 0 { format!(" ({} of them answered 200)", s.acknowledged_but_lost) } else { String::new() },
            s.duplicates,
            s.refused,
            s.refused_503_retry_after,
            s.refused_503_bare,
            s.refused_other,
            s.codes,
            if s.delivered_but_refused > 0 { format!(", delivered although refused {}", s.delivered_but_refused) } else { String::new() },
        );
        println!(
            "    throughput {:.0} msg/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if span > 0.0 {
                s.delivered as f64 / span
            } else {
                0.0
            },
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3,
        );
    };
    line("XMPP -> SIP", &to_sip);
    line("SIP -> XMPP", &to_xmpp);
    let delivered = to_sip.delivered + to_xmpp.delivered;
    let first = [to_sip.first_sent, to_xmpp.first_sent]
        .into_iter()
        .flatten()
        .min();
    let last = [to_sip.last_delivery, to_xmpp.last_delivery]
        .into_iter()
        .flatten()
        .max();
    if let (Some(a), Some(b)) = (first, last) {
        println!(
            "  total: delivered {delivered} in {:.2} s, {:.0} msg/s (senders done after {:.2} s)",
            (b - a).as_secs_f64(),
            delivered as f64 / (b - a).as_secs_f64().max(1e-9),
            (sent_done - start).as_secs_f64()
        );
    }
    println!(
        "  SIP: gateway retransmissions to the next hop {}, peer retransmissions {}, peer transactions unanswered {}, unattributed messages {}",
        ledger.gateway_retransmissions.load(Ordering::Relaxed),
        ledger.peer_retransmissions.load(Ordering::Relaxed),
        ledger.peer_unanswered.load(Ordering::Relaxed),
        ledger.unknown.load(Ordering::Relaxed),
    );
    if let Some((r, _)) = &sipp_report {
        println!("  SIPp's own counts (its 503s are among \"lost\" above, and not counted as lost in the verdict; latency from its pacing): {r}");
    }
    let cpu = after.cpu - loaded.cpu;
    let streams = (2 * args.streams) as f64;
    // Past saturation most of the work is refusing: per message answered either way
    // is what each one costs, per delivered what the delivered ones cost in all.
    let refused = to_sip.refused + to_xmpp.refused;
    // A message both delivered and refused is one message.
    let answered = (delivered + refused)
        .saturating_sub(to_sip.delivered_but_refused + to_xmpp.delivered_but_refused);
    println!(
        "  gateway CPU {:.2} s (user {:.2} + system {:.2}) = {:.1} µs per delivered message{}{}",
        cpu,
        cpu - (after.system - loaded.system),
        after.system - loaded.system,
        if delivered > 0 {
            cpu * 1e6 / delivered as f64
        } else {
            0.0
        },
        if refused > 0 {
            format!(
                ", {:.1} µs per message delivered or refused ({})",
                cpu * 1e6 / answered.max(1) as f64,
                answered
            )
        } else {
            String::new()
        },
        if cpu < 1.0 {
            " (under 1 s of CPU: 10 ms tick resolution, run longer for a firm figure)"
        } else {
            ""
        }
    );
    println!(
        "  gateway RSS {} kB at the end (VmHWM {} kB, {} threads); {} kB before the streams, {} kB with them: {:.1} kB per s2s stream",
        after.rss_kb,
        after.hwm_kb,
        after.threads,
        before_streams.rss_kb,
        loaded.rss_kb,
        (loaded.rss_kb as f64 - before_streams.rss_kb as f64) / streams,
    );
    let busy = sent_done
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    println!(
        "  load tool CPU {:.2} s ({:.0}% of one core while sending){}",
        tool1.cpu - tool0.cpu,
        100.0 * (tool1.cpu - tool0.cpu) / busy,
        match (prosody0, prosody1) {
            (Some(a), Some(b)) => format!(
                "; Prosody CPU {:.2} s ({:.0}%), RSS {} kB",
                b.cpu - a.cpu,
                100.0 * (b.cpu - a.cpu) / busy,
                b.rss_kb
            ),
            _ => String::new(),
        }
    );
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for e in sender_errors.iter().chain(errors.iter()) {
        println!("  error: {e}");
    }
    if let Err(e) = alive {
        println!("  error: {e}");
    }
    // SIPp's refusals are not in the ledger by id: it counts them itself.
    let sipp_refused = sipp_report.as_ref().map_or(0, |(_, n)| *n);
    let lost = (to_sip.lost + to_xmpp.lost).saturating_sub(sipp_refused);
    let dup = to_sip.duplicates + to_xmpp.duplicates;
    let clean = lost == 0 && dup == 0 && sender_errors.is_empty();
    println!(
        "  verdict: {}",
        if clean {
            "every message delivered once or refused with an answer".to_owned()
        } else {
            format!("FAILED: lost {lost}, duplicates {dup}")
        }
    );
    drop(world);
    Ok(clean)
}
