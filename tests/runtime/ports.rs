// Ports for the gateways and peers the runtime tests start.

/// A loopback port free for both TCP and UDP now, picked below the kernel's
/// ephemeral range: a port the OS hands out for `:0` can be handed out again,
/// to the source of any connection a neighbouring test makes, before the
/// gateway binds it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, span) = (10_000u32, 20_000u32);
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = span.min(below.saturating_sub(low)).max(1);
    // Each test binary starts at its own place, so that two running at once
    // rarely try the same ports.
    let seed = std::process::id().wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(low + seed.wrapping_add(n) % span) else {
            continue;
        };
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {low} and {}", low + span);
}
