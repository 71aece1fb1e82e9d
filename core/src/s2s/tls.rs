//! TLS inside the core. rustls connections are sans-IO, so the core owns them and
//! the hosts only move bytes. Both ends authenticate with certificates during the
//! handshake, but the verdict on the peer's certificate is taken afterwards, by
//! [`TlsContext::verify_peer`], against the injected wall clock: a stream whose
//! certificate fails can then still use dialback over TLS where the partner's
//! settings allow it, and the failure is reported in words an admin can act on.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::identity;

/// Wall-clock seconds since the UNIX epoch, set by the core from its injected time.
/// rustls reads it through [`TimeProvider`](rustls::time_provider::TimeProvider), so
/// certificate checks never look at the system clock.
#[derive(Clone, Debug)]
pub struct WallClock(Arc<AtomicU64>);

impl WallClock {
    pub fn new(unix_secs: u64) -> Self {
        WallClock(Arc::new(AtomicU64::new(unix_secs)))
    }

    pub fn set(&self, unix_secs: u64) {
        self.0.store(unix_secs, Ordering::Relaxed);
    }

    pub fn unix_secs(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn now(&self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(self.unix_secs()))
    }
}

impl rustls::time_provider::TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.now())
    }
}

/// Our certificate chain and private key.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    pub fn from_pem(cert_chain_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Pem(
                "the certificate file holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        Ok(TlsIdentity { chain, key })
    }
}

/// The CA certificates in a PEM file.
pub fn trust_anchors_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("CA certificates: {e}")))
}

#[derive(Debug)]
pub enum TlsError {
    Pem(String),
    Config(String),
    TrustAnchor(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem(t) => write!(f, "reading PEM: {t}"),
            TlsError::Config(t) => write!(f, "TLS configuration: {t}"),
            TlsError::TrustAnchor(t) => write!(f, "trusted CA certificate: {t}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// The verdict on a peer's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertCheck {
    /// Chain, validity and identity all hold; `identity` says which identifier matched.
    Valid {
        identity: String,
    },
    Invalid(CertFault),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertFault {
    NoCertificate,
    UntrustedIssuer,
    Expired {
        not_after_unix: Option<u64>,
    },
    NotYetValid,
    WrongPurpose,
    NameMismatch {
        reference: String,
        presented: Vec<String>,
    },
    Malformed(String),
}

impl CertFault {
    pub fn describe(&self) -> String {
        match self {
            CertFault::NoCertificate => "no certificate was presented".into(),
            CertFault::UntrustedIssuer => "it is not issued by a trusted CA".into(),
            CertFault::Expired { not_after_unix } => match not_after_unix {
                Some(t) => format!("it expired (notAfter {t} s after the UNIX epoch)"),
                None => "it expired".into(),
            },
            CertFault::NotYetValid => "it is not valid yet".into(),
            CertFault::WrongPurpose => {
                "its extended key usage allows neither serverAuth nor clientAuth".into()
            }
            CertFault::NameMismatch {
                reference,
                presented,
            } => {
                if presented.is_empty() {
                    format!(
                        "it is not valid for {reference}: it names no DNS-ID, SRV-ID or XmppAddr"
                    )
                } else {
                    format!(
                        "it is not valid for {reference}: it names {}",
                        presented.join(", ")
                    )
                }
            }
            CertFault::Malformed(t) => format!("it cannot be read: {t}"),
        }
    }
}

/// Certificates, keys and rustls configurations for both TLS roles.
#[derive(Clone)]
pub struct TlsContext {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    anchors: Arc<Vec<CertificateDer<'static>>>,
    clock: WallClock,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TlsContext {
    pub fn new(
        identity: TlsIdentity,
        trust_anchors: Vec<CertificateDer<'static>>,
        clock: WallClock,
    ) -> Result<Self, TlsError> {
        for a in &trust_anchors {
            webpki::anchor_from_trusted_cert(a)
                .map_err(|e| TlsError::TrustAnchor(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let time: Arc<dyn rustls::time_provider::TimeProvider> = Arc::new(clock.clone());
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let verifier = Arc::new(DeferredVerifier { algorithms });
        let mut server = rustls::ServerConfig::builder_with_details(provider, time)
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // No tickets: nothing to resume between s2s streams, and fewer records.
        server.send_tls13_tickets = 0;
        let client = client_config(&clock, algorithms, Some(identity))?;
        Ok(TlsContext {
            server: Arc::new(server),
            client,
            anchors: Arc::new(trust_anchors),
            clock,
            algorithms,
        })
    }

    /// The same context, but presenting no certificate when initiating.
    pub fn without_client_certificate(&self) -> Result<Self, TlsError> {
        Ok(TlsContext {
            client: client_config(&self.clock, self.algorithms, None)?,
            ..self.clone()
        })
    }

    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// The receiving side of STARTTLS: asks for, but does not require, a client certificate.
    pub fn server(&self) -> Result<rustls::ServerConnection, TlsError> {
        rustls::ServerConnection::new(self.server.clone())
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// The initiating side of STARTTLS, presenting our certificate as client certificate.
    pub fn client(&self, sni_domain: &str) -> Result<rustls::ClientConnection, TlsError> {
        let name = ServerName::try_from(sni_domain.to_owned())
            .map_err(|e| TlsError::Config(format!("{sni_domain}: {e}")))?;
        rustls::ClientConnection::new(self.client.clone(), name)
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// Chain to a trusted CA, validity at the injected time, and identity for
    /// `reference_domain`. serverAuth-only certificates are accepted for both roles:
    /// public CAs stopped issuing clientAuth in 2026.
    pub fn verify_peer(
        &self,
        peer_chain: Option<&[CertificateDer<'_>]>,
        reference_domain: &str,
    ) -> CertCheck {
        let Some((ee_der, intermediates)) = peer_chain.and_then(|c| c.split_first()) else {
            return CertCheck::Invalid(CertFault::NoCertificate);
        };
        let ee = match webpki::EndEntityCert::try_from(ee_der) {
            Ok(ee) => ee,
            Err(e) => return CertCheck::Invalid(CertFault::Malformed(e.to_string())),
        };
        let anchors: Vec<_> = self
            .anchors
            .iter()
            .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
            .collect();
        let now = self.clock.now();
        let verify = |usage: webpki::KeyUsage| {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map(|_| ())
        };
        let chain = match verify(webpki::KeyUsage::server_auth()) {
            Err(webpki::Error::RequiredEkuNotFoundContext(_)) => {
                verify(webpki::KeyUsage::client_auth())
            }
            other => other,
        };
        if let Err(e) = chain {
            return CertCheck::Invalid(match e {
                webpki::Error::UnknownIssuer => CertFault::UntrustedIssuer,
                webpki::Error::CertExpired { not_after, .. } => CertFault::Expired {
                    not_after_unix: Some(not_after.as_secs()),
                },
                webpki::Error::CertNotValidYet { .. } => CertFault::NotYetValid,
                webpki::Error::RequiredEkuNotFoundContext(_) => CertFault::WrongPurpose,
                other => CertFault::Malformed(format!("{other:?}")),
            });
        }
        let ids = match identity::presented_ids(ee_der) {
            Ok(ids) => ids,
            Err(e) => return CertCheck::Invalid(CertFault::Malformed(e)),
        };
        match identity::matches(&ids, reference_domain) {
            Some(identity) => CertCheck::Valid { identity },
            None => CertCheck::Invalid(CertFault::NameMismatch {
                reference: reference_domain.to_owned(),
                presented: ids.describe(),
            }),
        }
    }
}

/// The initiating side's configuration; `identity` is the client certificate, if any.
fn client_config(
    clock: &WallClock,
    algorithms: WebPkiSupportedAlgorithms,
    identity: Option<TlsIdentity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_details(
        Arc::new(rustls::crypto::ring::default_provider()),
        Arc::new(clock.clone()),
    )
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| TlsError::Config(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(DeferredVerifier { algorithms }));
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    // Nothing to resume between s2s streams.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts any certificate during the handshake but checks the handshake
/// signatures; the certificate itself is judged afterwards by `verify_peer`.
#[derive(Debug)]
struct DeferredVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DeferredVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for DeferredVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
