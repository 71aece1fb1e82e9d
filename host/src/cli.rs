//! The command line, the same in both binaries: `run`, `check`, `partner`,
//! `dns-records`. Each binary passes in its own event loop for `run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use isthmus_core::config::{Config, Partner, PartnerType, SaslMode, TlsMode, Verdict};
use isthmus_core::gateway::Gateway;
use isthmus_core::s2s::identity;
use isthmus_core::s2s::tls::WallClock;

use crate::certs::{cert_files, tls_context};
use crate::driver::{log, Host};
use crate::resolve::Resolver;
use crate::store::Store;

#[derive(Parser, Debug)]
#[command(about = "isthmus: XMPP federation gateway for SIP domains", version)]
struct Cli {
    /// Configuration file (default: $ISTHMUS_CONFIG, else ./isthmus.toml if present,
    /// else embedded development defaults).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Make the running gateway read its configuration again (like SIGHUP).
    Reload,
    /// Check the configuration, the certificate and partner DNS, and explain.
    Check {
        /// Also negotiate a real stream with this partner and report the method,
        /// or exactly why it failed. Dialback needs `dialback_secret` set, so the
        /// running gateway can confirm the key when the partner dials back.
        #[arg(long)]
        probe: Option<String>,
    },
    /// List, add or remove XMPP partners (like *-CsXmppAllowedPartner).
    Partner {
        #[command(subcommand)]
        action: PartnerAction,
    },
    /// DNS: the records to publish for the served domains.
    Dns {
        #[command(subcommand)]
        action: DnsAction,
    },
    /// Certificates: a private key and a CSR naming every served domain.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Subcommand, Debug)]
enum DnsAction {
    /// Print the SRV and address records partners need to find this gateway.
    Records {
        /// The host name partners should connect to.
        #[arg(long, default_value = "xmpp-gw.example.com")]
        target: String,
    },
}

#[derive(Subcommand, Debug)]
enum CertAction {
    /// Write a new private key and a certificate signing request whose SANs are the
    /// served domains (DNS-ID and SRV-ID `_xmpp-server.`), like Lync's certificate wizard.
    Request {
        /// Where to write `<name>.key` and `<name>.csr`.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "isthmus")]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum PartnerAction {
    /// Like Get-CsXmppAllowedPartner.
    List,
    /// Like New-CsXmppAllowedPartner: unset options take Lync's defaults
    /// (public_unverified, tls and sasl required, dialback true, keep-alive on).
    Add {
        domain: String,
        #[command(flatten)]
        settings: PartnerSettings,
    },
    /// Like Set-CsXmppAllowedPartner: only the options given change.
    Set {
        domain: String,
        #[command(flatten)]
        settings: PartnerSettings,
    },
    /// Like Remove-CsXmppAllowedPartner.
    Remove { domain: String },
}

#[derive(clap::Args, Debug)]
struct PartnerSettings {
    #[arg(long, value_enum)]
    partner_type: Option<Type>,
    #[arg(long, value_enum)]
    tls: Option<Mode>,
    #[arg(long, value_enum)]
    sasl: Option<Mode>,
    #[arg(long, action = clap::ArgAction::Set)]
    dialback: Option<bool>,
    #[arg(long, action = clap::ArgAction::Set)]
    enable_keep_alive: Option<bool>,
    #[arg(long, value_delimiter = ',')]
    additional_domains: Option<Vec<String>>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    connection_limit: Option<u32>,
    #[arg(long)]
    proxy_fqdn: Option<String>,
}

impl PartnerSettings {
    fn apply(self, p: &mut Partner) {
        if let Some(t) = self.partner_type {
            p.partner_type = match t {
                Type::Federated => PartnerType::Federated,
                Type::PublicVerified => PartnerType::PublicVerified,
                Type::PublicUnverified => PartnerType::PublicUnverified,
            };
        }
        if let Some(m) = self.tls {
            p.negotiation.tls = match m {
                Mode::Required => TlsMode::Required,
                Mode::Optional => TlsMode::Optional,
                Mode::NotSupported => TlsMode::NotSupported,
            };
        }
        if let Some(m) = self.sasl {
            p.negotiation.sasl = match m {
                Mode::Required => SaslMode::Required,
                Mode::Optional => SaslMode::Optional,
                Mode::NotSupported => SaslMode::NotSupported,
            };
        }
        if let Some(d) = self.dialback {
            p.negotiation.dialback = d;
        }
        if let Some(k) = self.enable_keep_alive {
            p.enable_keep_alive = k;
        }
        if let Some(a) = self.additional_domains {
            p.additional_domains = a.into_iter().filter(|d| !d.trim().is_empty()).collect();
        }
        if let Some(d) = self.description {
            p.description = Some(d);
        }
        if let Some(l) = self.connection_limit {
            p.connection_limit = Some(l);
        }
        if let Some(f) = self.proxy_fqdn {
            p.proxy_fqdn = Some(f);
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Type {
    Federated,
    PublicVerified,
    PublicUnverified,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Required,
    Optional,
    NotSupported,
}

/// Everything `run` needs, built by the shared code.
pub struct Setup {
    pub host: Host,
    pub config: Config,
    /// The file `reload` reads again.
    pub config_path: Option<PathBuf>,
    pub resolver: std::sync::Arc<Resolver>,
    pub started: Instant,
}

/// The embedded defaults: one served domain on loopback, no partners yet.
pub fn default_config() -> Config {
    let mut c = Config::default();
    c.gateway.served_domains = vec!["sip.localhost".into()];
    c.gateway.sip_tls_address = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 5061)));
    c
}

fn config_path(cli: &Cli) -> Option<PathBuf> {
    if let Some(p) = &cli.config {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("ISTHMUS_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("isthmus.toml");
    local.exists().then_some(local)
}

fn load(path: Option<&Path>) -> Result<Config, String> {
    let Some(path) = path else {
        return Ok(default_config());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let loaded = Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for w in &loaded.warnings {
        tracing::warn!("{}: {w}", path.display());
    }
    Ok(loaded.config)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut bytes).is_err() {
        return unix_now() ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

fn setup(config: Config, config_path: Option<PathBuf>) -> Result<Setup, String> {
    std::fs::create_dir_all(&config.gateway.data_dir)
        .map_err(|e| format!("creating data directory {}: {e}", config.gateway.data_dir))?;
    let files = cert_files(&config)?;
    if files.generated {
        log(&format!(
            "made development certificates in {} (partners will not trust them; configure gateway.certificate for production)",
            files.certificate.parent().map_or_else(String::new, |p| p.display().to_string())
        ));
    }
    let started = Instant::now();
    let tls = tls_context(&files, WallClock::new(unix_now()))?;
    let db = Path::new(&config.gateway.data_dir).join("state.sqlite");
    let store = Store::open(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    let records = store.load().map_err(|e| e.to_string())?;
    let mut gateway = Gateway::new(config.clone(), Some(tls), seed(), started, unix_now());
    gateway.restore(records);
    if config.partners.is_empty() {
        log("no XMPP partners configured: federation is off until one is added (isthmus partner add DOMAIN)");
    }
    let resolver = std::sync::Arc::new(Resolver::new(&config, seed()));
    // `reload` finds the running gateway through this file.
    let pidfile = Path::new(&config.gateway.data_dir).join("isthmus.pid");
    std::fs::write(&pidfile, std::process::id().to_string())
        .map_err(|e| format!("{}: {e}", pidfile.display()))?;
    Ok(Setup {
        host: Host::new(gateway, store),
        config,
        config_path,
        resolver,
        started,
    })
}

/// The shared entry point of both binaries.
pub fn main(run: impl FnOnce(Setup) -> Result<(), String>) -> ExitCode {
    let cli = Cli::parse();
    crate::driver::init_logging();
    let path = config_path(&cli);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => load(path.as_deref())
            .and_then(|c| setup(c, path.clone()))
            .and_then(run),
        Command::Reload => load(path.as_deref()).and_then(|c| reload(&c)),
        Command::Check { probe } => load(path.as_deref()).and_then(|c| {
            check(&c);
            match probe {
                Some(domain) => run_probe(&c, &domain),
                None => Ok(()),
            }
        }),
        Command::Partner { action } => partner(path.as_deref(), action),
        Command::Dns {
            action: DnsAction::Records { target },
        } => load(path.as_deref()).map(|c| dns_records(&c, &target)),
        Command::Cert {
            action: CertAction::Request { out, name },
        } => load(path.as_deref()).and_then(|c| cert_request(&c, &out, &name)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &Config) {
    println!(
        "served domains: {}",
        config.gateway.served_domains.join(", ")
    );
    for p in &config.partners {
        let row = p.negotiation;
        let verdict = match row.verdict() {
            Verdict::Valid => "valid".to_owned(),
            Verdict::Warning(rules) => format!(
                "warning: {}",
                rules
                    .iter()
                    .map(|r| r.explain())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Verdict::Invalid(rule) => format!("invalid: {}", rule.explain()),
        };
        let methods: Vec<&str> = row.methods().iter().map(|m| m.as_str()).collect();
        println!(
            "partner {}: {} (Lync row {}), methods {}: {verdict}",
            p.domain,
            row.label(),
            row.row_number(),
            methods.join(", ")
        );
        match Resolver::new(config, seed()).resolve(p.domain.as_str()) {
            Ok(addrs) => println!("  s2s addresses: {addrs:?}"),
            Err(e) => println!("  DNS: {} does not resolve: {e}", p.domain),
        }
    }
    match cert_files(config) {
        Ok(files) => match std::fs::read_to_string(&files.certificate) {
            Ok(pem) => {
                check_certificate(config, &pem);
                check_chain(config, &files);
            }
            Err(e) => println!("certificate {}: {e}", files.certificate.display()),
        },
        Err(e) => println!("certificate: {e}"),
    }
    let resolver = Resolver::new(config, seed());
    for d in &config.gateway.served_domains {
        match resolver.resolve(d) {
            Ok(addrs) if addrs.iter().any(|a| a.port() == config.gateway.s2s_listen.port()) => {
                println!("DNS: partners find {d} at {addrs:?}")
            }
            Ok(addrs) => println!(
                "DNS: partners find {d} at {addrs:?}, but this gateway listens on port {}; publish the records of `isthmus dns records`",
                config.gateway.s2s_listen.port()
            ),
            Err(e) => println!("DNS: partners cannot find {d}: {e}; publish the records of `isthmus dns records`"),
        }
    }
}

/// The certificate as partners will judge it: chain to the configured CAs,
/// validity now, purpose, and the private key matching it.
fn check_chain(config: &Config, files: &crate::certs::CertFiles) {
    let ctx = match tls_context(files, WallClock::new(unix_now())) {
        Ok(c) => c,
        Err(e) => {
            println!("certificate and key cannot be used together: {e}");
            return;
        }
    };
    let chain = std::fs::read_to_string(&files.certificate)
        .ok()
        .and_then(|pem| isthmus_core::s2s::tls::trust_anchors_from_pem(&pem).ok())
        .unwrap_or_default();
    for d in &config.gateway.served_domains {
        match ctx.verify_peer(Some(&chain), d) {
            isthmus_core::s2s::tls::CertCheck::Valid { identity } => {
                println!("certificate for {d}: valid against the configured CAs ({identity})")
            }
            isthmus_core::s2s::tls::CertCheck::Invalid(fault) => {
                println!("certificate for {d}: partners checking it against the configured CAs will refuse it: {}", fault.describe())
            }
        }
    }
}

fn run_probe(config: &Config, domain: &str) -> Result<(), String> {
    let remote =
        isthmus_core::jid::normalize_domain(domain).map_err(|e| format!("{domain}: {e}"))?;
    if config.partner_for(&remote).is_none() {
        return Err(format!(
            "{remote} is not a configured partner; add it first (isthmus partner add {remote})"
        ));
    }
    let local = config
        .gateway
        .served_domains
        .first()
        .ok_or("no served domain")?
        .clone();
    let files = cert_files(config)?;
    let tls = tls_context(&files, WallClock::new(unix_now()))?;
    let gateway = Gateway::new(
        config.clone(),
        Some(tls),
        seed(),
        Instant::now(),
        unix_now(),
    );
    let resolver = Resolver::new(config, seed());
    let verdict = crate::probe::probe(gateway, &resolver, &local, &remote)?;
    println!("probe: {verdict}");
    Ok(())
}

fn check_certificate(config: &Config, pem: &str) {
    use rustls::pki_types::pem::PemObject;
    let Some(Ok(der)) = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next()
    else {
        println!("certificate: no certificate in the file");
        return;
    };
    match identity::presented_ids(&der) {
        Ok(ids) => {
            for d in &config.gateway.served_domains {
                match identity::matches(&ids, d) {
                    Some(m) => println!("certificate covers {d} ({m})"),
                    None => println!(
                        "certificate does NOT cover {d}: it names {}; partners will refuse SASL EXTERNAL",
                        ids.describe().join(", ")
                    ),
                }
            }
        }
        Err(e) => println!("certificate: {e}"),
    }
}

fn reload(config: &Config) -> Result<(), String> {
    let pidfile = Path::new(&config.gateway.data_dir).join("isthmus.pid");
    let pid = std::fs::read_to_string(&pidfile).map_err(|e| {
        format!(
            "{}: {e}; is the gateway running with this configuration?",
            pidfile.display()
        )
    })?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .map_err(|e| format!("running kill: {e}"))?;
    if !status.success() {
        return Err(format!("no gateway with pid {} is running", pid.trim()));
    }
    println!("asked pid {} to reload its configuration", pid.trim());
    Ok(())
}

fn cert_request(config: &Config, out: &Path, name: &str) -> Result<(), String> {
    let (key_pem, csr_pem) = crate::certs::request(&config.gateway.served_domains)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let key_path = out.join(format!("{name}.key"));
    let csr_path = out.join(format!("{name}.csr"));
    if key_path.exists() {
        return Err(format!(
            "{} exists; not overwriting a private key",
            key_path.display()
        ));
    }
    std::fs::write(&key_path, key_pem).map_err(|e| format!("{}: {e}", key_path.display()))?;
    std::fs::write(&csr_path, csr_pem).map_err(|e| format!("{}: {e}", csr_path.display()))?;
    println!(
        "wrote {} and {}: send the CSR to your CA; its SANs are {}",
        key_path.display(),
        csr_path.display(),
        config.gateway.served_domains.join(", ")
    );
    Ok(())
}

fn dns_records(config: &Config, target: &str) {
    for d in &config.gateway.served_domains {
        println!(
            "_xmpp-server._tcp.{d}. 86400 IN SRV 0 5 {} {target}.",
            config.gateway.s2s_listen.port()
        );
    }
    println!("{target}. 86400 IN A <the public address of {target}>");
}

fn partner(path: Option<&Path>, action: PartnerAction) -> Result<(), String> {
    let mut config = load(path)?;
    match action {
        PartnerAction::List => {
            for p in &config.partners {
                println!(
                    "{}\t{:?}\t{}{}",
                    p.domain,
                    p.partner_type,
                    p.negotiation.label(),
                    if p.additional_domains.is_empty() {
                        String::new()
                    } else {
                        format!("\talso {}", p.additional_domains.join(", "))
                    }
                );
            }
            return Ok(());
        }
        PartnerAction::Add { domain, settings } => {
            let mut p = Partner::new(domain.trim());
            settings.apply(&mut p);
            if config.partners.iter().any(|q| q.domain == p.domain) {
                return Err(format!(
                    "{} is already a partner; change it with `partner set`",
                    p.domain
                ));
            }
            config.partners.push(p);
        }
        PartnerAction::Set { domain, settings } => {
            let Some(p) = config
                .partners
                .iter_mut()
                .find(|q| q.domain == domain.trim())
            else {
                return Err(format!(
                    "{domain} is not a configured partner; add it with `partner add`"
                ));
            };
            settings.apply(p);
        }
        PartnerAction::Remove { domain } => {
            let before = config.partners.len();
            config.partners.retain(|p| p.domain != domain.trim());
            if config.partners.len() == before {
                return Err(format!("{domain} is not a configured partner"));
            }
        }
    }
    // Validate exactly as `run` would before writing anything.
    let text = config.to_toml();
    let loaded = Config::from_toml(&text).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let target = path.map_or_else(|| PathBuf::from("isthmus.toml"), Path::to_path_buf);
    std::fs::write(&target, text).map_err(|e| format!("writing {}: {e}", target.display()))?;
    println!("wrote {}", target.display());
    Ok(())
}
