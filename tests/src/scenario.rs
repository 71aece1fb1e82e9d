//! Ready-made scenarios on the simulation network: two gateways, `a.test` (A) and
//! `b.test` (B), each listing the other as a partner with a chosen negotiation row.
//! A local user of A sends one message to a user of B; the outcome is how A's
//! outbound stream was authenticated, or exactly how it failed.

use std::fmt;

use isthmus_core::config::{Config, Method, Negotiation, Partner};
use isthmus_core::gateway::{By, Direction, Event};
use isthmus_core::s2s::tls::{TlsContext, WallClock};
use isthmus_core::xml::{ns, Element};

use crate::pki::{CertSpec, Eku, TestCa};
use crate::sim::{Net, START_UNIX};

pub const A: &str = "a.test";
pub const B: &str = "b.test";

/// Which certificate a gateway presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cert {
    /// A valid certificate for its own domain from the shared CA.
    Good,
    /// No certificate offered as TLS client (the server side still has one).
    NoClientCert,
    /// Valid, but for another name.
    WrongName,
    /// Issued by a CA the peer does not trust.
    UntrustedIssuer,
    /// Expired.
    Expired,
    /// Valid, with only the serverAuth purpose.
    ServerAuthOnly,
    /// A wildcard `*.test`-style DNS-ID: `*.<parent>`.
    Wildcard(String),
    /// Only an XmppAddr identifier (no DNS-ID).
    XmppAddrOnly,
}

/// How a pair run ended on A's outbound stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Authenticated(Method),
    Failed {
        /// Who sent the stream error (or ended negotiation).
        sender: &'static str,
        condition: String,
        text: String,
    },
    /// Neither: the run ended without a verdict (a bug).
    Undecided,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Authenticated(m) => f.write_str(m.as_str()),
            Outcome::Failed {
                sender,
                condition,
                text,
            } if is_stream_error(condition) => {
                write!(f, "failed: {sender} sent <{condition}/>: {text}")
            }
            Outcome::Failed {
                sender,
                condition,
                text,
            } => write!(f, "failed at {sender} ({condition}): {text}"),
            Outcome::Undecided => f.write_str("undecided"),
        }
    }
}

/// The stream error conditions of RFC 6120 §4.9.3.
pub fn is_stream_error(condition: &str) -> bool {
    matches!(
        condition,
        "bad-format"
            | "bad-namespace-prefix"
            | "conflict"
            | "connection-timeout"
            | "host-gone"
            | "host-unknown"
            | "improper-addressing"
            | "internal-server-error"
            | "invalid-from"
            | "invalid-namespace"
            | "invalid-xml"
            | "not-authorized"
            | "not-well-formed"
            | "policy-violation"
            | "remote-connection-failed"
            | "reset"
            | "resource-constraint"
            | "restricted-xml"
            | "see-other-host"
            | "system-shutdown"
            | "undefined-condition"
            | "unsupported-encoding"
            | "unsupported-feature"
            | "unsupported-stanza-type"
            | "unsupported-version"
    )
}

impl Outcome {
    /// The short form for the grid: the method, or the stream error condition.
    pub fn short(&self) -> String {
        match self {
            Outcome::Authenticated(m) => m.as_str().to_owned(),
            Outcome::Failed { condition, .. } => format!("✗ {condition}"),
            Outcome::Undecided => "?".to_owned(),
        }
    }
}

pub struct PairResult {
    pub outcome: Outcome,
    /// B's view of the inbound stream: the method it accepted, if any.
    pub inbound: Option<Method>,
    /// Whether B delivered A's message to its local user.
    pub delivered: bool,
    /// Whether A returned the message to its sender as an error.
    pub bounced: Option<String>,
    pub net: Net,
}

pub struct PairSetup {
    pub a_cert: Cert,
    pub b_cert: Cert,
    /// Deliver bytes in random chunks from this seed.
    pub chunk_seed: Option<u64>,
}

impl Default for PairSetup {
    fn default() -> Self {
        PairSetup {
            a_cert: Cert::Good,
            b_cert: Cert::Good,
            chunk_seed: None,
        }
    }
}

/// The shared test CA and a rogue one.
pub struct Pki {
    pub ca: TestCa,
    pub rogue: TestCa,
}

impl Pki {
    pub fn new() -> Self {
        Pki {
            ca: TestCa::new("isthmus test CA"),
            rogue: TestCa::new("untrusted test CA"),
        }
    }

    /// A TLS context for `domain` presenting `cert`, trusting the shared CA.
    pub fn context(&self, domain: &str, cert: &Cert) -> TlsContext {
        let mut spec = CertSpec::for_domain(domain);
        let mut ca = &self.ca;
        match cert {
            Cert::Good | Cert::NoClientCert => {}
            Cert::WrongName => spec = CertSpec::for_domain("wrong.example"),
            Cert::UntrustedIssuer => ca = &self.rogue,
            Cert::Expired => spec.expired = true,
            Cert::ServerAuthOnly => spec.eku = Eku::ServerOnly,
            Cert::Wildcard(parent) => spec.dns = vec![format!("*.{parent}")],
            Cert::XmppAddrOnly => {
                spec.dns = Vec::new();
                spec.xmpp_addr = vec![domain.to_owned()];
            }
        }
        let issued = ca.issue(&spec);
        let clock = WallClock::new(START_UNIX);
        let ctx = TlsContext::new(issued.identity(), vec![self.ca.cert_der.clone()], clock)
            .expect("test TLS context");
        if *cert == Cert::NoClientCert {
            ctx.without_client_certificate().expect("test TLS context")
        } else {
            ctx
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A configuration serving `served` with one partner `partner` using `row`.
pub fn config(served: &str, partner: &str, row: Negotiation) -> Config {
    let mut config = Config::default();
    config.gateway.served_domains = vec![served.to_owned()];
    config.gateway.dialback_secret = Some(format!("secret of {served}"));
    let mut p = Partner::new(partner);
    p.negotiation = row;
    config.partners.push(p);
    config
}

pub fn message(from: &str, to: &str, body: &str) -> Element {
    Element::new(ns::SERVER, "message")
        .attr("from", from)
        .attr("to", to)
        .attr("type", "chat")
        .attr("id", "m1")
        .child(Element::new(ns::SERVER, "body").text(body))
}

/// Builds the two gateways on a fresh network.
pub fn pair_net(pki: &Pki, row_a: Negotiation, row_b: Negotiation, setup: &PairSetup) -> Net {
    let mut net = Net::new();
    if let Some(seed) = setup.chunk_seed {
        net.set_chunking(seed);
    }
    net.add_gateway(
        "A",
        config(A, B, row_a),
        Some(pki.context(A, &setup.a_cert)),
        1,
    );
    net.add_gateway(
        "B",
        config(B, A, row_b),
        Some(pki.context(B, &setup.b_cert)),
        2,
    );
    net
}

/// A's user sends one message to B's user; run until quiet; judge.
pub fn run_pair(
    pki: &Pki,
    row_a: Negotiation,
    row_b: Negotiation,
    setup: &PairSetup,
) -> PairResult {
    let mut net = pair_net(pki, row_a, row_b, setup);
    net.send_stanza(
        0,
        message("alice@a.test/desk", "bob@b.test", "hello from A"),
    );
    net.run();
    judge(net)
}

/// Reads the outcome of A's outbound stream to B from the events.
pub fn judge(net: Net) -> PairResult {
    let mut outcome = Outcome::Undecided;
    let mut inbound = None;
    for (node, e) in &net.events {
        match e {
            Event::Authenticated {
                direction: Direction::Outbound,
                method,
                ..
            } if node == "A" && outcome == Outcome::Undecided => {
                outcome = Outcome::Authenticated(*method)
            }
            Event::Authenticated {
                direction: Direction::Inbound,
                method,
                remote,
                ..
            } if node == "B" && remote == A && inbound.is_none() => inbound = Some(*method),
            Event::Failed {
                kind: "outbound",
                by,
                condition,
                text,
                ..
            } if node == "A" && outcome == Outcome::Undecided => {
                outcome = Outcome::Failed {
                    sender: match by {
                        By::Us => "A",
                        By::Peer => "B",
                    },
                    condition: condition.clone(),
                    text: text.clone(),
                }
            }
            _ => {}
        }
    }
    let delivered = net
        .delivered
        .iter()
        .any(|(n, el)| n == "B" && el.name == "message" && el.get_attr("type") != Some("error"));
    let bounced = net
        .delivered
        .iter()
        .find(|(n, el)| n == "A" && el.get_attr("type") == Some("error"))
        .map(|(_, el)| el.to_xml(ns::SERVER));
    PairResult {
        outcome,
        inbound,
        delivered,
        bounced,
        net,
    }
}

/// The outcome DESIGN.md's rules predict for a pair, ignoring certificates: the
/// most preferred method both rows allow, or none.
pub fn expected_method(row_a: Negotiation, row_b: Negotiation) -> Option<Method> {
    Method::ALL
        .into_iter()
        .find(|m| row_a.allows(*m) && row_b.allows(*m))
}

/// The 13 rows that load (the 18 minus the 5 invalid ones), in Lync order.
pub fn loadable_rows() -> Vec<Negotiation> {
    Negotiation::all_rows()
        .into_iter()
        .filter(|r| !matches!(r.verdict(), isthmus_core::config::Verdict::Invalid(_)))
        .collect()
}

/// Binds insta to `tests/snapshots/<folder>/` with plain snapshot names.
pub fn snapshots_in(folder: &str) -> insta::internals::SettingsBindDropGuard {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.set_snapshot_path(format!("snapshots/{folder}"));
    s.bind_to_scope()
}
