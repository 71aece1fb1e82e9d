//! A throwaway PKI for tests. Ed25519 keys (fixed-size signatures), fixed serial
//! numbers and fixed validity dates keep certificate sizes, and so the TLS record
//! sizes in transcripts, identical on every run.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, OtherNameValue, SanType, SerialNumber, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use isthmus_core::s2s::tls::TlsIdentity;

/// id-on-xmppAddr (RFC 6120 §13.7.1.4).
const XMPP_ADDR_OID: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 5];

pub struct TestCa {
    alg: &'static SignatureAlgorithm,
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
}

/// Which extended key usages a certificate carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eku {
    ServerAndClient,
    ServerOnly,
    ClientOnly,
    None,
}

#[derive(Clone, Debug)]
pub struct CertSpec {
    pub dns: Vec<String>,
    pub xmpp_addr: Vec<String>,
    pub eku: Eku,
    pub expired: bool,
}

impl CertSpec {
    pub fn for_domain(d: &str) -> Self {
        CertSpec {
            dns: vec![d.to_owned()],
            xmpp_addr: Vec::new(),
            eku: Eku::ServerAndClient,
            expired: false,
        }
    }
}

pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    pub fn identity(&self) -> TlsIdentity {
        TlsIdentity {
            chain: self.chain.clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        Self::with_algorithm(name, &PKCS_ED25519)
    }

    /// ECDSA P-256 keys, for peers whose TLS stack reads no Ed25519 PKCS#8 keys
    /// (Prosody's LuaSec on OpenSSL 3).
    pub fn new_ecdsa(name: &str) -> TestCa {
        Self::with_algorithm(name, &PKCS_ECDSA_P256_SHA256)
    }

    fn with_algorithm(name: &str, alg: &'static SignatureAlgorithm) -> TestCa {
        let key = KeyPair::generate_for(alg).expect("CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(SerialNumber::from(vec![0x11u8]));
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            alg,
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    pub fn issue(&self, spec: &CertSpec) -> Issued {
        let key = KeyPair::generate_for(self.alg).expect("key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            spec.dns.first().map_or("xmpp", String::as_str),
        );
        params.distinguished_name = dn;
        for d in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into().expect("DNS name")));
        }
        for x in &spec.xmpp_addr {
            params.subject_alt_names.push(SanType::OtherName((
                XMPP_ADDR_OID.to_vec(),
                OtherNameValue::Utf8String(x.clone()),
            )));
        }
        params.extended_key_usages = match spec.eku {
            Eku::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Eku::ServerOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Eku::ClientOnly => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Eku::None => Vec::new(),
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from(vec![0x22u8]));
        if spec.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2026, 1, 1);
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        }
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        Issued {
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
