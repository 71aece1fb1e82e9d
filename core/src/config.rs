//! Gateway configuration: the gateway-wide settings (Set-CsXmppGatewayConfiguration),
//! the allowed partners (New-CsXmppAllowedPartner), and the negotiation verdicts.
//!
//! The file is TOML; `docs/configuration.md` lists every key with its default.
//! Unknown keys are refused with their line, invalid negotiation rows are refused
//! with the partner, the rule and the fix, and doubtful rows load with a warning.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::jid::normalize_domain;

/// `tls` setting of a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    Required,
    Optional,
    NotSupported,
}

/// `sasl` setting of a partner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaslMode {
    Required,
    Optional,
    NotSupported,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Required => "required",
            TlsMode::Optional => "optional",
            TlsMode::NotSupported => "not_supported",
        }
    }
}

impl SaslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMode::Required => "required",
            SaslMode::Optional => "optional",
            SaslMode::NotSupported => "not_supported",
        }
    }
}

/// Partner type: how far the partner's users are trusted (DESIGN.md, policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PartnerType {
    Federated,
    PublicVerified,
    #[default]
    PublicUnverified,
}

/// An authentication method an s2s stream can end up with, in preference order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    SaslExternalOverTls,
    DialbackOverTls,
    DialbackOverTcp,
}

impl Method {
    pub const ALL: [Method; 3] = [
        Method::SaslExternalOverTls,
        Method::DialbackOverTls,
        Method::DialbackOverTcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::SaslExternalOverTls => "sasl-external-over-tls",
            Method::DialbackOverTls => "dialback-over-tls",
            Method::DialbackOverTcp => "dialback-over-tcp",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the negotiation matrix: a partner's `tls`, `sasl` and `dialback`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Negotiation {
    pub tls: TlsMode,
    pub sasl: SaslMode,
    pub dialback: bool,
}

/// Why a row is refused or warned about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// No method is possible: neither SASL EXTERNAL over TLS nor dialback.
    NoMethod,
    /// SASL is enabled but TLS is not required, so SASL may never get its TLS.
    SaslNeedsTls,
    /// tls = required and sasl = required: dialback is never used.
    DialbackNeverUsed,
}

/// The load-time verdict on a negotiation row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Warning(Vec<Rule>),
    Invalid(Rule),
}

impl Default for Negotiation {
    /// Lync's defaults: tls required, sasl required, dialback true.
    fn default() -> Self {
        Negotiation {
            tls: TlsMode::Required,
            sasl: SaslMode::Required,
            dialback: true,
        }
    }
}

impl Negotiation {
    /// The 18 rows in the order of Lync's complete matrix (row 1 first).
    pub fn all_rows() -> Vec<Negotiation> {
        let mut rows = Vec::with_capacity(18);
        for sasl in [
            SaslMode::Required,
            SaslMode::Optional,
            SaslMode::NotSupported,
        ] {
            for tls in [TlsMode::Required, TlsMode::Optional, TlsMode::NotSupported] {
                for dialback in [true, false] {
                    rows.push(Negotiation {
                        tls,
                        sasl,
                        dialback,
                    });
                }
            }
        }
        rows
    }

    /// This row's number in Lync's matrix (1–18).
    pub fn row_number(&self) -> usize {
        Self::all_rows()
            .iter()
            .position(|r| r == self)
            .map_or(0, |i| i + 1)
    }

    /// Whether this row allows `method` (DESIGN.md, negotiation semantics).
    pub fn allows(&self, method: Method) -> bool {
        match method {
            Method::SaslExternalOverTls => {
                self.sasl != SaslMode::NotSupported && self.tls != TlsMode::NotSupported
            }
            Method::DialbackOverTls => {
                self.dialback
                    && self.tls != TlsMode::NotSupported
                    && !(self.tls == TlsMode::Required && self.sasl == SaslMode::Required)
            }
            Method::DialbackOverTcp => self.dialback && self.tls != TlsMode::Required,
        }
    }

    /// The methods this row allows, most preferred first.
    pub fn methods(&self) -> Vec<Method> {
        Method::ALL
            .into_iter()
            .filter(|m| self.allows(*m))
            .collect()
    }

    /// Whether dialback may run on a stream in the given TLS state.
    pub fn allows_dialback(&self, tls_active: bool) -> bool {
        if tls_active {
            self.allows(Method::DialbackOverTls)
        } else {
            self.allows(Method::DialbackOverTcp)
        }
    }

    pub fn verdict(&self) -> Verdict {
        if self.methods().is_empty() {
            return Verdict::Invalid(Rule::NoMethod);
        }
        let mut warnings = Vec::new();
        if self.sasl != SaslMode::NotSupported && self.tls != TlsMode::Required {
            warnings.push(Rule::SaslNeedsTls);
        }
        if self.tls == TlsMode::Required && self.sasl == SaslMode::Required && self.dialback {
            warnings.push(Rule::DialbackNeverUsed);
        }
        if warnings.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Warning(warnings)
        }
    }

    /// `tls=… sasl=… dialback=…`, as written in the configuration.
    pub fn label(&self) -> String {
        format!(
            "tls={} sasl={} dialback={}",
            self.tls.as_str(),
            self.sasl.as_str(),
            self.dialback
        )
    }
}

impl Rule {
    /// What the rule says, for logs, `check` and the matrix document.
    pub fn explain(&self) -> &'static str {
        match self {
            Rule::NoMethod => {
                "no authentication method is possible: SASL EXTERNAL needs sasl != not_supported \
                 and tls != not_supported, and dialback is off"
            }
            Rule::SaslNeedsTls => {
                "SASL EXTERNAL needs TLS, and TLS is not required: if the partner does not \
                 negotiate TLS, SASL cannot be used and negotiation may fail"
            }
            Rule::DialbackNeverUsed => {
                "with tls = required and sasl = required, dialback is never used: \
                 a partner that cannot do SASL EXTERNAL is refused"
            }
        }
    }

    /// How an admin fixes the row.
    pub fn fix(&self) -> &'static str {
        match self {
            Rule::NoMethod => {
                "set dialback = true, or set both tls and sasl to required or optional"
            }
            Rule::SaslNeedsTls => "set tls = required, or sasl = not_supported",
            Rule::DialbackNeverUsed => {
                "set dialback = false to say so, or sasl = optional to let dialback over TLS \
                 serve partners without usable certificates"
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Rule::NoMethod => "no-method",
            Rule::SaslNeedsTls => "sasl-needs-tls",
            Rule::DialbackNeverUsed => "dialback-never-used",
        }
    }
}

/// Resource limits of the XML reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XmlLimits {
    pub max_stanza_bytes: usize,
    pub max_depth: usize,
    pub max_attributes: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_stanza_bytes: 256 * 1024,
            max_depth: 32,
            max_attributes: 64,
        }
    }
}

/// Gateway-wide settings (Set-CsXmppGatewayConfiguration and ours).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewaySettings {
    /// The SIP domains this gateway is the XMPP server for.
    pub served_domains: Vec<String>,
    pub connection_limit: u32,
    pub partner_connection_limit: u32,
    /// XEP-0185 secret; random per start when absent.
    pub dialback_secret: Option<String>,
    pub stream_establishment_timeout: Duration,
    pub stream_inactivity_timeout: Duration,
    pub keep_alive_interval: Duration,
    pub subscription_refresh_interval: Duration,
    /// How long a receiving server waits for the authoritative server's db:verify answer.
    pub dialback_verify_timeout: Duration,
    pub log_message_bodies: bool,
    pub xml_limits: XmlLimits,
    /// Where this gateway receives SIP (its Via sent-by and Contact).
    pub sip_address: std::net::SocketAddr,
    /// The SIP proxy that requests toward SIP users go through (UDP).
    pub sip_next_hop: Option<std::net::SocketAddr>,
    /// Where partners connect for s2s.
    pub s2s_listen: std::net::SocketAddr,
    /// SIP over TLS (5061 in production); off when absent. SIP over TCP shares
    /// `sip_address` with UDP.
    pub sip_tls_address: Option<std::net::SocketAddr>,
    /// Fixed s2s addresses for domains (tests, private networks), used before DNS.
    pub dns_overrides: std::collections::BTreeMap<String, Vec<std::net::SocketAddr>>,
    /// DNS servers to ask; `/etc/resolv.conf`'s when empty.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// PEM files: our certificate chain, its key, and the CAs we trust for partners.
    /// Without them, `run` makes development certificates in the data directory.
    pub certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    /// Where the state database (and development certificates) live.
    pub data_dir: String,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            served_domains: Vec::new(),
            connection_limit: 1000,
            partner_connection_limit: 20,
            dialback_secret: None,
            stream_establishment_timeout: Duration::from_secs(60),
            stream_inactivity_timeout: Duration::from_secs(600),
            keep_alive_interval: Duration::from_secs(300),
            subscription_refresh_interval: Duration::from_secs(8 * 3600),
            dialback_verify_timeout: Duration::from_secs(30),
            log_message_bodies: false,
            xml_limits: XmlLimits::default(),
            sip_address: std::net::SocketAddr::from(([127, 0, 0, 1], 5060)),
            sip_next_hop: None,
            s2s_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 5269)),
            sip_tls_address: None,
            dns_overrides: std::collections::BTreeMap::new(),
            dns_servers: Vec::new(),
            certificate: None,
            private_key: None,
            ca_certificates: None,
            data_dir: "isthmus-data".to_owned(),
        }
    }
}

/// One allowed XMPP partner (New-CsXmppAllowedPartner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partner {
    /// Primary domain, normalised (lower-case A-labels).
    pub domain: String,
    pub additional_domains: Vec<String>,
    pub description: Option<String>,
    pub partner_type: PartnerType,
    pub negotiation: Negotiation,
    pub enable_keep_alive: bool,
    /// Per-partner connection limit; the gateway's `partner_connection_limit` when absent.
    pub connection_limit: Option<u32>,
    /// Where to connect instead of discovering the partner through DNS SRV.
    pub proxy_fqdn: Option<String>,
}

impl Partner {
    /// A partner with Lync's defaults.
    pub fn new(domain: &str) -> Self {
        Partner {
            domain: domain.to_owned(),
            additional_domains: Vec::new(),
            description: None,
            partner_type: PartnerType::default(),
            negotiation: Negotiation::default(),
            enable_keep_alive: true,
            connection_limit: None,
            proxy_fqdn: None,
        }
    }

    pub fn covers(&self, domain: &str) -> bool {
        self.domain == domain || self.additional_domains.iter().any(|d| d == domain)
    }
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub gateway: GatewaySettings,
    pub partners: Vec<Partner>,
}

impl Config {
    pub fn serves(&self, domain: &str) -> bool {
        self.gateway.served_domains.iter().any(|d| d == domain)
    }

    /// The partner entry that lists `domain` as its primary or an additional domain.
    pub fn partner_for(&self, domain: &str) -> Option<&Partner> {
        self.partners.iter().find(|p| p.covers(domain))
    }
}

// ---- loading -------------------------------------------------------------------------

/// A loaded configuration and the warnings an admin should read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

/// A negotiation row that loads but deserves attention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub partner: String,
    pub line: usize,
    pub row: usize,
    pub rule: Rule,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// TOML syntax, a missing key, or a value of the wrong type.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    UnknownKey {
        key: String,
        line: usize,
        column: usize,
        allowed: String,
    },
    InvalidValue {
        key: String,
        line: usize,
        message: String,
    },
    InvalidRow {
        partner: String,
        line: usize,
        row: usize,
        label: String,
        rule: Rule,
    },
    DuplicateDomain {
        domain: String,
        line: usize,
        first: String,
        second: String,
    },
    ServedDomainIsPartner {
        domain: String,
        line: usize,
        partner: String,
    },
    BadDomain {
        domain: String,
        line: usize,
        reason: String,
    },
    NoServedDomain,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Syntax { line, column, message } => write!(f, "line {line}:{column}: {message}"),
            ConfigError::UnknownKey { key, line, column, allowed } => {
                write!(f, "line {line}:{column}: unknown key '{key}'; the keys allowed here are {allowed}")
            }
            ConfigError::InvalidValue { key, line, message } => write!(f, "line {line}: {key}: {message}"),
            ConfigError::InvalidRow { partner, line, row, label, rule } => write!(
                f,
                "partner {partner} (line {line}): {label} (Lync matrix row {row}) is not a valid configuration: {}; fix: {}",
                rule.explain(),
                rule.fix()
            ),
            ConfigError::DuplicateDomain { domain, line, first, second } => write!(
                f,
                "line {line}: domain {domain} is listed by partner {first} and again by partner {second}; \
                 a domain may belong to one partner only: remove one of the entries"
            ),
            ConfigError::ServedDomainIsPartner { domain, line, partner } => write!(
                f,
                "line {line}: {domain} is one of gateway.served_domains and is also listed by partner {partner}; \
                 a domain cannot be served here and federated with: remove it from one of them"
            ),
            ConfigError::BadDomain { domain, line, reason } => {
                write!(f, "line {line}: '{domain}' is not a valid domain: {reason}")
            }
            ConfigError::NoServedDomain => f.write_str(
                "gateway.served_domains is empty: list the SIP domain(s) this gateway is the XMPP server for",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    partner: Vec<RawPartner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    served_domains: Vec<Spanned<String>>,
    connection_limit: Option<Spanned<u32>>,
    partner_connection_limit: Option<Spanned<u32>>,
    dialback_secret: Option<String>,
    stream_establishment_timeout: Option<Spanned<u64>>,
    stream_inactivity_timeout: Option<Spanned<u64>>,
    keep_alive_interval: Option<Spanned<u64>>,
    subscription_refresh_interval: Option<Spanned<u64>>,
    dialback_verify_timeout: Option<Spanned<u64>>,
    log_message_bodies: Option<bool>,
    xml_limits: Option<RawLimits>,
    sip_address: Option<Spanned<String>>,
    sip_next_hop: Option<Spanned<String>>,
    s2s_listen: Option<Spanned<String>>,
    sip_tls_address: Option<Spanned<String>>,
    #[serde(default)]
    dns_overrides: std::collections::BTreeMap<String, Vec<Spanned<String>>>,
    #[serde(default)]
    dns_servers: Vec<Spanned<String>>,
    certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    data_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_stanza_bytes: Option<Spanned<u64>>,
    max_depth: Option<Spanned<u64>>,
    max_attributes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartner {
    domain: Spanned<String>,
    #[serde(default)]
    additional_domains: Vec<Spanned<String>>,
    description: Option<String>,
    partner_type: Option<PartnerType>,
    tls: Option<TlsMode>,
    sasl: Option<SaslMode>,
    dialback: Option<bool>,
    enable_keep_alive: Option<bool>,
    connection_limit: Option<Spanned<u32>>,
    proxy_fqdn: Option<Spanned<String>>,
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn positive<T: Copy + PartialOrd + Default + fmt::Display>(
    text: &str,
    key: &str,
    value: &Option<Spanned<T>>,
) -> Result<Option<T>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if *v.get_ref() > T::default() => Ok(Some(*v.get_ref())),
        Some(v) => Err(ConfigError::InvalidValue {
            key: key.to_owned(),
            line: line_col(text, v.span().start).0,
            message: format!("must be greater than 0, not {}", v.get_ref()),
        }),
    }
}

fn socket_addr(
    text: &str,
    key: &str,
    raw: &Spanned<String>,
) -> Result<std::net::SocketAddr, ConfigError> {
    raw.get_ref()
        .trim()
        .parse()
        .map_err(|_| ConfigError::InvalidValue {
            key: key.to_owned(),
            line: line_col(text, raw.span().start).0,
            message: format!(
                "'{}' is not an IP address with port, such as 127.0.0.1:5060",
                raw.get_ref()
            ),
        })
}

fn domain(text: &str, raw: &Spanned<String>) -> Result<(String, usize), ConfigError> {
    let line = line_col(text, raw.span().start).0;
    normalize_domain(raw.get_ref().trim())
        .map(|d| (d, line))
        .map_err(|e| ConfigError::BadDomain {
            domain: raw.get_ref().clone(),
            line,
            reason: e.to_string(),
        })
}

impl Config {
    /// Parses and validates a configuration file.
    pub fn from_toml(text: &str) -> Result<Loaded, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let g = raw.gateway;
        let d = GatewaySettings::default();
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        let mut served = Vec::new();
        for s in &g.served_domains {
            served.push(domain(text, s)?);
        }
        if served.is_empty() {
            return Err(ConfigError::NoServedDomain);
        }
        let limits = g.xml_limits.as_ref();
        let limit = |key: &str,
                     v: Option<&Option<Spanned<u64>>>,
                     default: usize|
         -> Result<usize, ConfigError> {
            match v {
                Some(v) => Ok(positive(text, key, v)?
                    .map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX))),
                None => Ok(default),
            }
        };
        let gateway = GatewaySettings {
            served_domains: served.iter().map(|(d, _)| d.clone()).collect(),
            connection_limit: positive(text, "connection_limit", &g.connection_limit)?
                .unwrap_or(d.connection_limit),
            partner_connection_limit: positive(
                text,
                "partner_connection_limit",
                &g.partner_connection_limit,
            )?
            .unwrap_or(d.partner_connection_limit),
            dialback_secret: g.dialback_secret.filter(|s| !s.is_empty()),
            stream_establishment_timeout: secs(
                positive(
                    text,
                    "stream_establishment_timeout",
                    &g.stream_establishment_timeout,
                )?,
                d.stream_establishment_timeout,
            ),
            stream_inactivity_timeout: secs(
                positive(
                    text,
                    "stream_inactivity_timeout",
                    &g.stream_inactivity_timeout,
                )?,
                d.stream_inactivity_timeout,
            ),
            keep_alive_interval: secs(
                positive(text, "keep_alive_interval", &g.keep_alive_interval)?,
                d.keep_alive_interval,
            ),
            subscription_refresh_interval: secs(
                positive(
                    text,
                    "subscription_refresh_interval",
                    &g.subscription_refresh_interval,
                )?,
                d.subscription_refresh_interval,
            ),
            dialback_verify_timeout: secs(
                positive(text, "dialback_verify_timeout", &g.dialback_verify_timeout)?,
                d.dialback_verify_timeout,
            ),
            log_message_bodies: g.log_message_bodies.unwrap_or(false),
            sip_address: match &g.sip_address {
                Some(a) => socket_addr(text, "sip_address", a)?,
                None => d.sip_address,
            },
            sip_next_hop: match &g.sip_next_hop {
                Some(a) => Some(socket_addr(text, "sip_next_hop", a)?),
                None => None,
            },
            s2s_listen: match &g.s2s_listen {
                Some(a) => socket_addr(text, "s2s_listen", a)?,
                None => d.s2s_listen,
            },
            sip_tls_address: match &g.sip_tls_address {
                Some(a) => Some(socket_addr(text, "sip_tls_address", a)?),
                None => None,
            },
            dns_overrides: {
                let mut m = std::collections::BTreeMap::new();
                for (domain, addrs) in &g.dns_overrides {
                    let name = normalize_domain(domain).map_err(|e| ConfigError::BadDomain {
                        domain: domain.clone(),
                        line: addrs
                            .first()
                            .map_or(0, |a| line_col(text, a.span().start).0),
                        reason: e.to_string(),
                    })?;
                    let mut list = Vec::new();
                    for a in addrs {
                        list.push(socket_addr(text, "dns_overrides", a)?);
                    }
                    m.insert(name, list);
                }
                m
            },
            dns_servers: g
                .dns_servers
                .iter()
                .map(|a| socket_addr(text, "dns_servers", a))
                .collect::<Result<_, _>>()?,
            certificate: g.certificate.clone(),
            private_key: g.private_key.clone(),
            ca_certificates: g.ca_certificates.clone(),
            data_dir: g.data_dir.clone().unwrap_or(d.data_dir),
            xml_limits: XmlLimits {
                max_stanza_bytes: limit(
                    "max_stanza_bytes",
                    limits.map(|l| &l.max_stanza_bytes),
                    d.xml_limits.max_stanza_bytes,
                )?,
                max_depth: limit(
                    "max_depth",
                    limits.map(|l| &l.max_depth),
                    d.xml_limits.max_depth,
                )?,
                max_attributes: limit(
                    "max_attributes",
                    limits.map(|l| &l.max_attributes),
                    d.xml_limits.max_attributes,
                )?,
            },
        };
        let mut partners = Vec::new();
        let mut warnings = Vec::new();
        // Every domain claimed so far: domain -> (owning partner).
        let mut claimed: Vec<(String, String)> = Vec::new();
        for rp in &raw.partner {
            let (primary, line) = domain(text, &rp.domain)?;
            let mut p = Partner::new(&primary);
            for a in &rp.additional_domains {
                p.additional_domains.push(domain(text, a)?.0);
            }
            for dom in std::iter::once(&primary).chain(p.additional_domains.iter()) {
                if let Some((_, owner)) = claimed.iter().find(|(c, _)| c == dom) {
                    return Err(ConfigError::DuplicateDomain {
                        domain: dom.clone(),
                        line,
                        first: owner.clone(),
                        second: primary.clone(),
                    });
                }
                if served.iter().any(|(s, _)| s == dom) {
                    return Err(ConfigError::ServedDomainIsPartner {
                        domain: dom.clone(),
                        line,
                        partner: primary.clone(),
                    });
                }
                claimed.push((dom.clone(), primary.clone()));
            }
            p.description = rp.description.clone();
            p.partner_type = rp.partner_type.unwrap_or_default();
            let defaults = Negotiation::default();
            p.negotiation = Negotiation {
                tls: rp.tls.unwrap_or(defaults.tls),
                sasl: rp.sasl.unwrap_or(defaults.sasl),
                dialback: rp.dialback.unwrap_or(defaults.dialback),
            };
            p.enable_keep_alive = rp.enable_keep_alive.unwrap_or(true);
            p.connection_limit = positive(text, "connection_limit", &rp.connection_limit)?;
            p.proxy_fqdn = match &rp.proxy_fqdn {
                Some(f) => Some(domain(text, f)?.0),
                None => None,
            };
            let row = p.negotiation;
            match row.verdict() {
                Verdict::Invalid(rule) => {
                    return Err(ConfigError::InvalidRow {
                        partner: primary,
                        line,
                        row: row.row_number(),
                        label: row.label(),
                        rule,
                    });
                }
                Verdict::Warning(rules) => {
                    for rule in rules {
                        warnings.push(ConfigWarning {
                            partner: primary.clone(),
                            line,
                            row: row.row_number(),
                            rule,
                            message: format!(
                                "partner {primary} (line {line}): {} (Lync matrix row {}): {}; to silence: {}",
                                row.label(),
                                row.row_number(),
                                rule.explain(),
                                rule.fix()
                            ),
                        });
                    }
                }
                Verdict::Valid => {}
            }
            partners.push(p);
        }
        Ok(Loaded {
            config: Config { gateway, partners },
            warnings,
        })
    }

    /// Writes the configuration back as TOML that `from_toml` reads to the same value.
    pub fn to_toml(&self) -> String {
        let g = &self.gateway;
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut out = String::from("[gateway]\n");
        out.push_str(&format!("served_domains = {}\n", list(&g.served_domains)));
        out.push_str(&format!("connection_limit = {}\n", g.connection_limit));
        out.push_str(&format!(
            "partner_connection_limit = {}\n",
            g.partner_connection_limit
        ));
        if let Some(s) = &g.dialback_secret {
            out.push_str(&format!("dialback_secret = {}\n", quote(s)));
        }
        for (k, v) in [
            (
                "stream_establishment_timeout",
                g.stream_establishment_timeout,
            ),
            ("stream_inactivity_timeout", g.stream_inactivity_timeout),
            ("keep_alive_interval", g.keep_alive_interval),
            (
                "subscription_refresh_interval",
                g.subscription_refresh_interval,
            ),
            ("dialback_verify_timeout", g.dialback_verify_timeout),
        ] {
            out.push_str(&format!("{k} = {}\n", v.as_secs()));
        }
        out.push_str(&format!("log_message_bodies = {}\n", g.log_message_bodies));
        out.push_str(&format!("sip_address = \"{}\"\n", g.sip_address));
        if let Some(n) = g.sip_next_hop {
            out.push_str(&format!("sip_next_hop = \"{n}\"\n"));
        }
        out.push_str(&format!("s2s_listen = \"{}\"\n", g.s2s_listen));
        if let Some(a) = g.sip_tls_address {
            out.push_str(&format!("sip_tls_address = \"{a}\"\n"));
        }
        if !g.dns_servers.is_empty() {
            let servers: Vec<String> = g.dns_servers.iter().map(|a| a.to_string()).collect();
            out.push_str(&format!("dns_servers = {}\n", list(&servers)));
        }
        for (k, v) in [
            ("certificate", &g.certificate),
            ("private_key", &g.private_key),
            ("ca_certificates", &g.ca_certificates),
        ] {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {}\n", quote(v)));
            }
        }
        out.push_str(&format!("data_dir = {}\n", quote(&g.data_dir)));
        if !g.dns_overrides.is_empty() {
            out.push_str("\n[gateway.dns_overrides]\n");
            for (d, addrs) in &g.dns_overrides {
                let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
                out.push_str(&format!("{} = {}\n", quote(d), list(&addrs)));
            }
        }
        out.push_str("\n[gateway.xml_limits]\n");
        out.push_str(&format!(
            "max_stanza_bytes = {}\n",
            g.xml_limits.max_stanza_bytes
        ));
        out.push_str(&format!("max_depth = {}\n", g.xml_limits.max_depth));
        out.push_str(&format!(
            "max_attributes = {}\n",
            g.xml_limits.max_attributes
        ));
        for p in &self.partners {
            out.push_str("\n[[partner]]\n");
            out.push_str(&format!("domain = {}\n", quote(&p.domain)));
            if !p.additional_domains.is_empty() {
                out.push_str(&format!(
                    "additional_domains = {}\n",
                    list(&p.additional_domains)
                ));
            }
            if let Some(d) = &p.description {
                out.push_str(&format!("description = {}\n", quote(d)));
            }
            let ty = match p.partner_type {
                PartnerType::Federated => "federated",
                PartnerType::PublicVerified => "public_verified",
                PartnerType::PublicUnverified => "public_unverified",
            };
            out.push_str(&format!("partner_type = \"{ty}\"\n"));
            out.push_str(&format!("tls = \"{}\"\n", p.negotiation.tls.as_str()));
            out.push_str(&format!("sasl = \"{}\"\n", p.negotiation.sasl.as_str()));
            out.push_str(&format!("dialback = {}\n", p.negotiation.dialback));
            out.push_str(&format!("enable_keep_alive = {}\n", p.enable_keep_alive));
            if let Some(l) = p.connection_limit {
                out.push_str(&format!("connection_limit = {l}\n"));
            }
            if let Some(f) = &p.proxy_fqdn {
                out.push_str(&format!("proxy_fqdn = {}\n", quote(f)));
            }
        }
        out
    }
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
    let message = e.message().trim().to_owned();
    // serde's wording: "unknown field `x`, expected one of `a`, `b`".
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or_default().to_owned();
        let allowed = rest
            .split_once("expected ")
            .map(|(_, a)| a.trim_start_matches("one of ").to_owned())
            .unwrap_or_default();
        return ConfigError::UnknownKey {
            key,
            line,
            column,
            allowed,
        };
    }
    ConfigError::Syntax {
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[gateway]
served_domains = ["SIP.Example.com."]
connection_limit = 500
partner_connection_limit = 5
dialback_secret = "s3cret"
stream_establishment_timeout = 30
stream_inactivity_timeout = 900
keep_alive_interval = 120
subscription_refresh_interval = 3600
dialback_verify_timeout = 10
log_message_bodies = true
sip_address = "127.0.0.1:5062"
sip_next_hop = "127.0.0.1:5070"
s2s_listen = "127.0.0.1:15269"
dns_servers = ["127.0.0.1:5353"]
data_dir = "/var/lib/isthmus"

[gateway.dns_overrides]
"xmpp.example.org" = ["127.0.0.1:25269"]

[gateway.xml_limits]
max_stanza_bytes = 65536
max_depth = 16
max_attributes = 32

[[partner]]
domain = "xmpp.example.org"
additional_domains = ["chat.example.org"]
description = "Example partner"
partner_type = "federated"
tls = "required"
sasl = "optional"
dialback = true
enable_keep_alive = false
connection_limit = 3
proxy_fqdn = "gw.example.org"

[[partner]]
domain = "gmail.com"
tls = "not_supported"
sasl = "not_supported"
"#;

    #[test]
    fn every_key_and_defaults() {
        let loaded = Config::from_toml(FULL).expect("loads");
        let c = &loaded.config;
        assert_eq!(c.gateway.served_domains, ["sip.example.com"]);
        assert_eq!(c.gateway.connection_limit, 500);
        assert_eq!(c.gateway.partner_connection_limit, 5);
        assert_eq!(c.gateway.dialback_secret.as_deref(), Some("s3cret"));
        assert_eq!(
            c.gateway.stream_establishment_timeout,
            Duration::from_secs(30)
        );
        assert_eq!(
            c.gateway.stream_inactivity_timeout,
            Duration::from_secs(900)
        );
        assert_eq!(c.gateway.keep_alive_interval, Duration::from_secs(120));
        assert_eq!(
            c.gateway.subscription_refresh_interval,
            Duration::from_secs(3600)
        );
        assert_eq!(c.gateway.dialback_verify_timeout, Duration::from_secs(10));
        assert!(c.gateway.log_message_bodies);
        assert_eq!(c.gateway.sip_next_hop, Some(([127, 0, 0, 1], 5070).into()));
        assert_eq!(c.gateway.s2s_listen, ([127, 0, 0, 1], 15269).into());
        assert_eq!(
            c.gateway.dns_overrides.get("xmpp.example.org"),
            Some(&vec![([127, 0, 0, 1], 25269).into()])
        );
        assert_eq!(c.gateway.data_dir, "/var/lib/isthmus");
        assert_eq!(c.gateway.xml_limits.max_stanza_bytes, 65536);
        let p = &c.partners[0];
        assert_eq!(p.additional_domains, ["chat.example.org"]);
        assert_eq!(p.partner_type, PartnerType::Federated);
        assert_eq!(p.negotiation.row_number(), 7);
        assert!(!p.enable_keep_alive);
        assert_eq!(p.connection_limit, Some(3));
        assert_eq!(p.proxy_fqdn.as_deref(), Some("gw.example.org"));
        let g = &c.partners[1];
        assert_eq!(g.partner_type, PartnerType::PublicUnverified);
        assert_eq!(g.negotiation.row_number(), 17);
        assert!(g.enable_keep_alive);
        assert!(loaded.warnings.is_empty());

        let minimal = Config::from_toml(
            "[gateway]\nserved_domains = [\"a.example\"]\n[[partner]]\ndomain = \"b.example\"\n",
        )
        .expect("loads");
        assert_eq!(
            minimal.config.gateway,
            GatewaySettings {
                served_domains: vec!["a.example".into()],
                ..GatewaySettings::default()
            }
        );
        assert_eq!(minimal.config.partners[0], Partner::new("b.example"));
        // Lync's defaults land on row 1: dialback is never used.
        assert_eq!(minimal.warnings.len(), 1);
        assert_eq!(minimal.warnings[0].rule, Rule::DialbackNeverUsed);
    }

    #[test]
    fn round_trip() {
        let loaded = Config::from_toml(FULL).expect("loads");
        let again = Config::from_toml(&loaded.config.to_toml()).expect("re-loads");
        assert_eq!(again.config, loaded.config);
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let text = "[gateway]\nserved_domains = [\"a.example\"]\nconection_limit = 3\n";
        match Config::from_toml(text) {
            Err(ConfigError::UnknownKey {
                key, line, allowed, ..
            }) => {
                assert_eq!((key.as_str(), line), ("conection_limit", 3));
                assert!(allowed.contains("connection_limit"), "{allowed}");
            }
            other => panic!("{other:?}"),
        }
        let text = "[gateway]\nserved_domains = [\"a.example\"]\n\n[[partner]]\ndomain = \"b.example\"\ntsl = \"required\"\n";
        assert!(matches!(
            Config::from_toml(text),
            Err(ConfigError::UnknownKey { line: 6, .. })
        ));
        let text =
            "[gateway]\nserved_domains = [\"a.example\"]\n[gateway.xml_limits]\nmax_stanza = 1\n";
        assert!(matches!(
            Config::from_toml(text),
            Err(ConfigError::UnknownKey { line: 4, .. })
        ));
        let text = "[gateway]\nserved_domains = [\"a.example\"]\n[[partner]]\ndomain = \"b.example\"\ntls = \"maybe\"\n";
        match Config::from_toml(text) {
            Err(e @ ConfigError::Syntax { line: 5, .. }) => {
                assert!(e.to_string().contains("maybe"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals() {
        let base = "[gateway]\nserved_domains = [\"a.example\"]\n";
        let dup = format!("{base}[[partner]]\ndomain = \"b.example\"\n[[partner]]\ndomain = \"c.example\"\nadditional_domains = [\"B.example\"]\n");
        assert!(
            matches!(Config::from_toml(&dup), Err(ConfigError::DuplicateDomain { ref domain, .. }) if domain == "b.example")
        );
        let twice = format!(
            "{base}[[partner]]\ndomain = \"b.example\"\nadditional_domains = [\"b.example\"]\n"
        );
        assert!(matches!(
            Config::from_toml(&twice),
            Err(ConfigError::DuplicateDomain { .. })
        ));
        let served = format!("{base}[[partner]]\ndomain = \"a.example\"\n");
        assert!(matches!(
            Config::from_toml(&served),
            Err(ConfigError::ServedDomainIsPartner { .. })
        ));
        let zero = "[gateway]\nserved_domains = [\"a.example\"]\nkeep_alive_interval = 0\n";
        assert!(matches!(
            Config::from_toml(zero),
            Err(ConfigError::InvalidValue { line: 3, .. })
        ));
        assert_eq!(
            Config::from_toml("[gateway]\nserved_domains = []\n"),
            Err(ConfigError::NoServedDomain)
        );
        let bad = "[gateway]\nserved_domains = [\"bad domain\"]\n";
        assert!(matches!(
            Config::from_toml(bad),
            Err(ConfigError::BadDomain { line: 2, .. })
        ));
        let idn = "[gateway]\nserved_domains = [\"münchen.example\"]\n";
        assert_eq!(
            Config::from_toml(idn).map(|l| l.config.gateway.served_domains),
            Ok(vec!["xn--mnchen-3ya.example".to_owned()])
        );
    }

    #[test]
    fn eighteen_rows() {
        let invalid = [6, 12, 14, 16, 18];
        let warned = [1, 3, 4, 5, 9, 10, 11];
        for row in Negotiation::all_rows() {
            let text = format!(
                "[gateway]\nserved_domains = [\"a.example\"]\n[[partner]]\ndomain = \"b.example\"\ntls = \"{}\"\nsasl = \"{}\"\ndialback = {}\n",
                row.tls.as_str(),
                row.sasl.as_str(),
                row.dialback
            );
            let n = row.row_number();
            match Config::from_toml(&text) {
                Err(e @ ConfigError::InvalidRow { .. }) => {
                    assert!(invalid.contains(&n), "row {n}: {e}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains("b.example")
                            && msg.contains("fix:")
                            && msg.contains(&row.label()),
                        "{msg}"
                    );
                }
                Ok(loaded) => {
                    assert!(!invalid.contains(&n), "row {n} must be refused");
                    assert_eq!(!loaded.warnings.is_empty(), warned.contains(&n), "row {n}");
                }
                Err(e) => panic!("row {n}: {e}"),
            }
        }
    }
}
