//! SIPp as an independent SIP load source: the tool starts it with a scenario that
//! sends MESSAGE toward the partner users (an injection file lists the domains),
//! expects its messages in the ledger, and reads SIPp's own counts at the end.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ledger::{Dir, Ledger, SIPP_BASE};

pub struct Sipp {
    child: Child,
    screen: std::path::PathBuf,
}

#[allow(clippy::too_many_arguments)]
pub fn start(
    scenario: &Path,
    dir: &Path,
    domains: &[String],
    gateway: SocketAddr,
    rate: f64,
    count: u64,
    start: Instant,
    ledger: &Ledger,
) -> Result<Sipp, String> {
    let mut csv = String::from("SEQUENTIAL\n");
    for d in domains {
        csv.push_str(&format!("{d};\n"));
    }
    let inf = dir.join("sipp-domains.csv");
    std::fs::write(&inf, csv).map_err(|e| format!("write {}: {e}", inf.display()))?;
    // SIPp paces calls itself: call n is expected at start + (n-1)/rate.
    let rate = if rate > 0.0 { rate } else { 100_000.0 };
    for n in 1..=count {
        let at = start + Duration::from_secs_f64((n - 1) as f64 / rate);
        ledger.expect(SIPP_BASE + n, Dir::ToXmpp, at);
    }
    let port = crate::setup::free_port()?;
    let screen = dir.join("sipp-screen.log");
    let log = std::fs::File::create(dir.join("sipp.log")).map_err(|e| format!("sipp.log: {e}"))?;
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(scenario)
        .arg("-inf")
        .arg(&inf)
        .args(["-t", "u1", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", &count.to_string(), "-r", &format!("{rate:.0}")])
        .args(["-l", "100000", "-nostdin", "-trace_screen", "-screen_file"])
        .arg(&screen)
        .arg(gateway.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start sipp (Debian package sip-tester): {e}"))?;
    Ok(Sipp { child, screen })
}

/// Waits for SIPp to end (or stops it at `give_up`); SIPp's counters, one line,
/// and how many of its messages it saw refused with 503.
pub fn finish(mut s: Sipp, give_up: Instant, dir: &Path) -> Result<(String, u64), String> {
    loop {
        match s.child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < give_up => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = s.child.kill();
                let _ = s.child.wait();
                break;
            }
        }
    }
    let screen = std::fs::read_to_string(&s.screen).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut refused = 0;
    // Screens repeat: the last of each counter is the final one.
    for key in ["Successful call", "Failed call"] {
        if let Some(line) = screen.lines().rev().find(|l| l.contains(key)) {
            let total = line.rsplit('|').next().unwrap_or("").trim();
            out.push(format!("{} {total}", key.to_lowercase()));
        }
    }
    // The scenario screen: messages, retransmissions, timeouts, unexpected messages.
    for arrow in ["MESSAGE ---------->", "503 <----------", "200 <----------"] {
        if let Some(line) = screen.lines().rev().find(|l| l.contains(arrow)) {
            let counts: Vec<&str> = line
                .split_whitespace()
                .skip(2)
                .filter(|w| w.parse::<u64>().is_ok())
                .collect();
            if arrow.starts_with("503") {
                refused = counts.first().and_then(|c| c.parse().ok()).unwrap_or(0);
            }
            let names = ["messages", "retrans", "timeout", "unexpected"];
            let text: Vec<String> = names
                .iter()
                .zip(&counts)
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            out.push(format!(
                "{}: {}",
                arrow.split_whitespace().next().unwrap_or(""),
                text.join(" ")
            ));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "SIPp left no statistics; see {} and {}",
            s.screen.display(),
            dir.join("sipp.log").display()
        ));
    }
    Ok((out.join("; "), refused))
}
