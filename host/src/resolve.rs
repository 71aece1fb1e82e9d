//! Finding a partner's s2s addresses: the configuration's overrides, else DNS
//! (`_xmpp-server._tcp` SRV in RFC 2782 order, each target's A/AAAA; no SRV:
//! the domain's own addresses on 5269; SRV target "." : no service). Messages
//! are built and read by `isthmus_core::dns`; this module only moves them over
//! UDP, and TCP when an answer comes back truncated. Answers are cached by TTL.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use isthmus_core::config::Config;
use isthmus_core::dns::{self, SrvAnswer, DEFAULT_PORT};
use isthmus_core::rng::Rng;

const TIMEOUT: Duration = Duration::from_secs(3);

pub struct Resolver {
    servers: Vec<SocketAddr>,
    overrides: std::collections::BTreeMap<String, Vec<SocketAddr>>,
    cache: Mutex<HashMap<String, (Instant, Vec<SocketAddr>)>>,
    rng: Mutex<Rng>,
}

/// `nameserver` lines of a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Resolver {
    pub fn new(config: &Config, seed: u64) -> Resolver {
        let servers = if config.gateway.dns_servers.is_empty() {
            nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        } else {
            config.gateway.dns_servers.clone()
        };
        Resolver {
            servers,
            overrides: config.gateway.dns_overrides.clone(),
            cache: Mutex::new(HashMap::new()),
            rng: Mutex::new(Rng::new(seed)),
        }
    }

    fn next_id(&self) -> u16 {
        self.rng.lock().map_or(0, |mut r| r.next_u64() as u16)
    }

    pub fn resolve(&self, domain: &str) -> Result<Vec<SocketAddr>, String> {
        if let Some(a) = self.overrides.get(domain) {
            return Ok(a.clone());
        }
        if let Ok(cache) = self.cache.lock() {
            if let Some((until, addrs)) = cache.get(domain) {
                if *until > Instant::now() {
                    return Ok(addrs.clone());
                }
            }
        }
        if self.servers.is_empty() {
            return Err(
                "no DNS server (none in /etc/resolv.conf and none in gateway.dns_servers)".into(),
            );
        }
        let (addrs, ttl) = self.lookup(domain)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                domain.to_owned(),
                (
                    Instant::now() + Duration::from_secs(u64::from(ttl.min(86_400))),
                    addrs.clone(),
                ),
            );
        }
        Ok(addrs)
    }

    fn lookup(&self, domain: &str) -> Result<(Vec<SocketAddr>, u32), String> {
        let id = self.next_id();
        let q = dns::srv_query(id, domain).map_err(|e| e.to_string())?;
        let reply = self.exchange(&q, |b| dns::parse_srv(b, id).map(|a| a.truncated))?;
        let srv = dns::parse_srv(&reply, id).map_err(|e| e.to_string())?.value;
        match srv {
            SrvAnswer::NoService => Err(format!(
                "{domain} says it offers no XMPP s2s service (SRV target \".\")"
            )),
            SrvAnswer::Records { records, ttl } => {
                let ordered = match self.rng.lock() {
                    Ok(mut r) => dns::order(records, &mut r),
                    Err(_) => records,
                };
                let mut out = Vec::new();
                let mut min_ttl = ttl;
                for r in ordered {
                    if let Ok(ip) = r.target.parse::<IpAddr>() {
                        out.push(SocketAddr::new(ip, r.port));
                        continue;
                    }
                    let (ips, t) = self.addresses(&r.target)?;
                    min_ttl = min_ttl.min(t);
                    out.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, r.port)));
                }
                if out.is_empty() {
                    return Err(format!("the SRV targets of {domain} have no addresses"));
                }
                Ok((out, min_ttl))
            }
            SrvAnswer::None => {
                let (ips, t) = self.addresses(domain)?;
                if ips.is_empty() {
                    return Err(format!("{domain} has no SRV record and no address"));
                }
                Ok((
                    ips.into_iter()
                        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
                        .collect(),
                    t,
                ))
            }
        }
    }

    fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, u32), String> {
        let mut all = Vec::new();
        let mut ttl = u32::MAX;
        let mut errors = Vec::new();
        for v6 in [false, true] {
            let id = self.next_id();
            let q = dns::addr_query(id, host, v6).map_err(|e| e.to_string())?;
            // One family failing (some servers refuse AAAA) leaves the other.
            let reply = match self.exchange(&q, |b| dns::parse_addrs(b, id).map(|a| a.truncated)) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match dns::parse_addrs(&reply, id) {
                Ok(a) => {
                    let (ips, t) = a.value;
                    if !ips.is_empty() {
                        ttl = ttl.min(t);
                    }
                    all.extend(ips);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if all.is_empty() && errors.len() == 2 {
            return Err(errors.join("; "));
        }
        Ok((all, if ttl == u32::MAX { 60 } else { ttl }))
    }

    /// Asks each server in turn over UDP; a truncated answer is asked again over TCP.
    fn exchange(
        &self,
        query: &[u8],
        is_truncated: impl Fn(&[u8]) -> Result<bool, dns::DnsError>,
    ) -> Result<Vec<u8>, String> {
        let mut last = String::from("no DNS server answered");
        for server in &self.servers {
            match udp_exchange(*server, query) {
                Ok(reply) => match is_truncated(&reply) {
                    Ok(false) => return Ok(reply),
                    Ok(true) => match tcp_exchange(*server, query) {
                        Ok(r) => return Ok(r),
                        Err(e) => last = format!("{server} (TCP): {e}"),
                    },
                    Err(e) => last = format!("{server}: {e}"),
                },
                Err(e) => last = format!("{server}: {e}"),
            }
        }
        Err(last)
    }
}

fn udp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .map_err(|_| std::io::Error::other("bind address"))?;
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.connect(server)?;
    sock.send(query)?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&server, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query too long"))?;
    s.write_all(&len.to_be_bytes())?;
    s.write_all(query)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_come_first_and_need_no_server() {
        let mut c = Config::default();
        c.gateway.dns_overrides.insert(
            "xmpp.test".into(),
            vec!["127.0.0.1:15269".parse().expect("addr")],
        );
        c.gateway.dns_servers = vec!["127.0.0.1:9".parse().expect("addr")];
        let r = Resolver::new(&c, 1);
        assert_eq!(
            r.resolve("xmpp.test"),
            Ok(vec!["127.0.0.1:15269".parse().expect("addr")])
        );
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nnameserver 192.0.2.53\nsearch example.org\nnameserver ::1\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
    }
}
