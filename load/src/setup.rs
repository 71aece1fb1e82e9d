//! `--gateway`: the tool writes the configuration files, starts what the mode needs
//! on free loopback ports (the gateway; for the Prosody mode also dnsmasq and
//! Prosody), and stops them when it ends.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_tests::pki::{CertSpec, TestCa};

/// The password of every Prosody account the tool registers.
pub const PASSWORD: &str = "load";
/// The dialback secret of the tool's partner domains (mode 1) and the gateway's.
pub const SECRET: &str = "isthmus-load";

/// Children, stopped in reverse order when dropped (also on errors).
#[derive(Default)]
pub struct Procs(Vec<(String, Child)>);

impl Procs {
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }

    /// An error naming the first child that has already exited, with its log.
    pub fn check_alive(&mut self, dir: &Path) -> Result<(), String> {
        for (name, child) in &mut self.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{name} exited ({status}); its log: {}",
                    dir.join(format!("{name}.log")).display()
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.0.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn write(dir: &Path, file: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(file), text)
        .map_err(|e| format!("write {}: {e}", dir.join(file).display()))
}

fn spawn(procs: &mut Procs, dir: &Path, name: &str, cmd: &mut Command) -> Result<(), String> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .map_err(|e| format!("create {name}.log: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("{name}.log: {e}"))?;
    let child = cmd
        .stdout(log)
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
    procs.0.push((name.to_owned(), child));
    Ok(())
}

fn wait_port(procs: &mut Procs, dir: &Path, port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        procs.check_alive(dir)?;
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not listen on 127.0.0.1:{port} within 30 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn work_dir(keep: Option<&PathBuf>) -> Result<PathBuf, String> {
    let dir = match keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("isthmus-load-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Where the pieces listen once started.
pub struct World {
    pub procs: Procs,
    pub dir: PathBuf,
    pub gateway_pid: u32,
    pub gateway_s2s: SocketAddr,
    pub gateway_sip: SocketAddr,
    /// Prosody's c2s port (Prosody mode).
    pub c2s: Option<SocketAddr>,
}

/// The gateway configuration for mode 1: partner domains served by the tool on
/// `listen` (static `dns_overrides`, no DNS), dialback over TCP.
pub fn self_config(
    domains: &[String],
    s2s: u16,
    sip: u16,
    next_hop: SocketAddr,
    listen: SocketAddr,
    data_dir: &Path,
) -> String {
    let mut c = format!(
        "[gateway]\nserved_domains = [\"sip.test\"]\ns2s_listen = \"127.0.0.1:{s2s}\"\nsip_address = \"127.0.0.1:{sip}\"\nsip_next_hop = \"{next_hop}\"\ndata_dir = \"{}\"\ndialback_secret = \"{SECRET}-gateway\"\n# Never asked: every partner has an override.\ndns_servers = [\"127.0.0.1:9\"]\n\n[gateway.dns_overrides]\n",
        data_dir.display()
    );
    for d in domains {
        c.push_str(&format!("\"{d}\" = [\"{listen}\"]\n"));
    }
    for d in domains {
        c.push_str(&format!(
            "\n[[partner]]\ndomain = \"{d}\"\npartner_type = \"federated\"\ntls = \"not_supported\"\nsasl = \"not_supported\"\ndialback = true\n"
        ));
    }
    c
}

pub fn start_self(
    gateway: &Path,
    dir: &Path,
    domains: &[String],
    next_hop: SocketAddr,
    listen: SocketAddr,
) -> Result<World, String> {
    let (s2s, sip) = (free_port()?, free_port()?);
    let config = self_config(
        domains,
        s2s,
        sip,
        next_hop,
        listen,
        &dir.join("isthmus-data"),
    );
    write(dir, "isthmus.toml", &config)?;
    let mut procs = Procs::default();
    start_gateway(&mut procs, gateway, dir)?;
    wait_port(&mut procs, dir, s2s, "the gateway")?;
    Ok(World {
        gateway_pid: procs.pid("gateway").unwrap_or_default(),
        procs,
        dir: dir.to_owned(),
        gateway_s2s: SocketAddr::from(([127, 0, 0, 1], s2s)),
        gateway_sip: SocketAddr::from(([127, 0, 0, 1], sip)),
        c2s: None,
    })
}

fn start_gateway(procs: &mut Procs, gateway: &Path, dir: &Path) -> Result<(), String> {
    let config = dir.join("isthmus.toml");
    spawn(
        procs,
        dir,
        "gateway",
        Command::new(gateway)
            .arg("--config")
            .arg(&config)
            .arg("run"),
    )
}

/// Mode 2: a throwaway CA, dnsmasq serving the SRV records, Prosody with one
/// VirtualHost per partner domain (one account `load` each, plaintext c2s on
/// loopback), and the gateway federating with it over TLS + SASL EXTERNAL.
pub fn start_prosody(
    gateway: &Path,
    dir: &Path,
    domains: &[String],
    next_hop: SocketAddr,
) -> Result<World, String> {
    for tool in ["prosody", "prosodyctl", "dnsmasq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} is not installed (apt-get install --no-install-recommends prosody lua-unbound dnsmasq-base)"
            ));
        }
    }
    std::fs::create_dir_all(dir.join("prosody-data"))
        .map_err(|e| format!("create prosody-data: {e}"))?;
    let ca = TestCa::new_ecdsa("isthmus-load CA");
    let xmpp = ca.issue(&CertSpec {
        dns: domains.to_vec(),
        ..CertSpec::for_domain("load.test")
    });
    let sip = ca.issue(&CertSpec::for_domain("sip.test"));
    write(dir, "ca.pem", &ca.cert_pem)?;
    write(dir, "xmpp.crt", &xmpp.cert_pem)?;
    write(dir, "xmpp.key", &xmpp.key_pem)?;
    write(dir, "sip.crt", &sip.cert_pem)?;
    write(dir, "sip.key", &sip.key_pem)?;
    let (dns, prosody_s2s, c2s, s2s, sip_port) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let mut procs = Procs::default();
    let mut dnsmasq = Command::new("dnsmasq");
    dnsmasq.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        &format!("--port={dns}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--address=/test/127.0.0.1",
        &format!("--srv-host=_xmpp-server._tcp.sip.test,gateway-host.test,{s2s}"),
    ]);
    for d in domains {
        dnsmasq.arg(format!(
            "--srv-host=_xmpp-server._tcp.{d},prosody-host.test,{prosody_s2s}"
        ));
    }
    spawn(&mut procs, dir, "dnsmasq", &mut dnsmasq)?;
    let d = dir.display();
    let mut cfg = format!(
        r#"run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/prosody-data"
-- info, not debug: Prosody's debug log costs it more CPU than the messages.
log = {{ info = "{d}/prosody-info.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {prosody_s2s} }}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
authentication = "internal_plain"
-- The load clients log in without TLS on loopback; s2s keeps TLS + SASL EXTERNAL.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_secure_auth = true
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "posix" }}
unbound = {{ resolvconf = false; hoststxt = false; forward = "127.0.0.1@{dns}"; options = {{ ["local-zone:"] = "test. transparent" }} }}
ssl = {{ certificate = "{d}/xmpp.crt"; key = "{d}/xmpp.key"; cafile = "{d}/ca.pem" }}
s2s_timeout = 10
"#
    );
    for dom in domains {
        cfg.push_str(&format!("VirtualHost \"{dom}\"\n"));
    }
    write(dir, "prosody.cfg.lua", &cfg)?;
    let cfg_path = dir.join("prosody.cfg.lua");
    for dom in domains {
        let out = Command::new("prosodyctl")
            .arg("--config")
            .arg(&cfg_path)
            .args(["register", "load", dom, PASSWORD])
            .output()
            .map_err(|e| format!("prosodyctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "prosodyctl register load {dom}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    spawn(
        &mut procs,
        dir,
        "prosody",
        Command::new("prosody")
            .arg("-F")
            .arg("--config")
            .arg(&cfg_path),
    )?;
    let mut gw = format!(
        "[gateway]\nserved_domains = [\"sip.test\"]\ns2s_listen = \"127.0.0.1:{s2s}\"\nsip_address = \"127.0.0.1:{sip_port}\"\nsip_next_hop = \"{next_hop}\"\ncertificate = \"{d}/sip.crt\"\nprivate_key = \"{d}/sip.key\"\nca_certificates = \"{d}/ca.pem\"\ndata_dir = \"{d}/isthmus-data\"\ndns_servers = [\"127.0.0.1:{dns}\"]\n"
    );
    for dom in domains {
        gw.push_str(&format!(
            "\n[[partner]]\ndomain = \"{dom}\"\npartner_type = \"federated\"\ntls = \"required\"\nsasl = \"required\"\ndialback = false\n"
        ));
    }
    write(dir, "isthmus.toml", &gw)?;
    start_gateway(&mut procs, gateway, dir)?;
    wait_port(&mut procs, dir, c2s, "prosody c2s")?;
    wait_port(&mut procs, dir, prosody_s2s, "prosody s2s")?;
    wait_port(&mut procs, dir, s2s, "the gateway")?;
    Ok(World {
        gateway_pid: procs.pid("gateway").unwrap_or_default(),
        procs,
        dir: dir.to_owned(),
        gateway_s2s: SocketAddr::from(([127, 0, 0, 1], s2s)),
        gateway_sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
        c2s: Some(SocketAddr::from(([127, 0, 0, 1], c2s))),
    })
}
