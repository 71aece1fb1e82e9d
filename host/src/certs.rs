//! Certificates for the host: PEM files from the configuration, or, when none are
//! configured, development certificates made once in the data directory.

use std::fs;
use std::path::{Path, PathBuf};

use isthmus_core::config::Config;
use isthmus_core::s2s::tls::{trust_anchors_from_pem, TlsContext, TlsIdentity, WallClock};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// Where the PEM files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub ca_certificates: Option<PathBuf>,
    /// Made by `ensure_dev_certs` for this run.
    pub generated: bool,
}

/// The configured files, or development ones in `<data_dir>/dev-certs/`, made on
/// first start for every served domain.
pub fn cert_files(config: &Config) -> Result<CertFiles, String> {
    let g = &config.gateway;
    match (&g.certificate, &g.private_key) {
        (Some(c), Some(k)) => Ok(CertFiles {
            certificate: PathBuf::from(c),
            private_key: PathBuf::from(k),
            ca_certificates: g.ca_certificates.as_ref().map(PathBuf::from),
            generated: false,
        }),
        (Some(_), None) | (None, Some(_)) => Err(
            "gateway.certificate and gateway.private_key go together: set both, or neither for development certificates".into(),
        ),
        (None, None) => ensure_dev_certs(&Path::new(&g.data_dir).join("dev-certs"), &g.served_domains),
    }
}

fn ensure_dev_certs(dir: &Path, domains: &[String]) -> Result<CertFiles, String> {
    let files = CertFiles {
        certificate: dir.join("cert.pem"),
        private_key: dir.join("key.pem"),
        ca_certificates: Some(dir.join("ca.pem")),
        generated: false,
    };
    if files.certificate.exists() && files.private_key.exists() {
        return Ok(files);
    }
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let err = |e: rcgen::Error| format!("making development certificates: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "isthmus development CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        domains.first().map_or("isthmus", String::as_str),
    );
    leaf.distinguished_name = dn;
    for d in domains {
        leaf.subject_alt_names
            .push(SanType::DnsName(d.clone().try_into().map_err(err)?));
    }
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    let write = |p: &Path, text: &str| {
        fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write(&files.certificate, &cert.pem())?;
    write(&files.private_key, &key.serialize_pem())?;
    if let Some(ca_path) = &files.ca_certificates {
        write(ca_path, &ca_cert.pem())?;
    }
    Ok(CertFiles {
        generated: true,
        ..files
    })
}

/// Reads the files into a TLS context using the injected wall clock.
pub fn tls_context(files: &CertFiles, clock: WallClock) -> Result<TlsContext, String> {
    let read =
        |p: &Path| fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let identity = TlsIdentity::from_pem(&read(&files.certificate)?, &read(&files.private_key)?)
        .map_err(|e| format!("{}: {e}", files.certificate.display()))?;
    let anchors = match &files.ca_certificates {
        Some(p) => {
            trust_anchors_from_pem(&read(p)?).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Vec::new(),
    };
    TlsContext::new(identity, anchors, clock).map_err(|e| e.to_string())
}

/// A new key and a PKCS#10 request naming each of `domains` as a DNS-ID, the
/// identifier RFC 6125 checks first and every public CA issues.
pub fn request(domains: &[String]) -> Result<(String, String), String> {
    let err = |e: rcgen::Error| format!("making the certificate request: {e}");
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        domains.first().map_or("isthmus", String::as_str),
    );
    params.distinguished_name = dn;
    for d in domains {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.clone().try_into().map_err(err)?));
    }
    let csr = params.serialize_request(&key).map_err(err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(err)?))
}
