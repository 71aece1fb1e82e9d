//! Gateway configuration: the gateway-wide settings (Set-CsXmppGatewayConfiguration),
//! the allowed partners (New-CsXmppAllowedPartner), and the negotiation verdicts.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
