//! Making keys and certificates: auto-TLS's self-signed ones, and a private CA that issues
//! member and client certificates (`concord dev`, tests). Keys are ECDSA P-256.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsError;

/// How long auto-TLS certificates are valid (etcd's `--self-signed-cert-validity` default,
/// one year).
pub const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate and its private key, PEM encoded.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// From.
    pub not_before: SystemTime,
    /// Until.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `length`.
    #[must_use]
    pub fn from_now(length: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + length,
        }
    }
}

fn error(what: &str, e: &rcgen::Error) -> TlsError {
    TlsError::Settings(format!("cannot make {what}: {e}"))
}

/// Subject alternative names for `hosts`: IP addresses as such, anything else as a DNS name.
fn alt_names(hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    hosts
        .iter()
        .map(|host| match host.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => {
                Ok(SanType::DnsName(host.clone().try_into().map_err(|e| {
                    error(&format!("a certificate for {host:?}"), &e)
                })?))
            }
        })
        .collect()
}

fn leaf_params(
    common_name: &str,
    hosts: &[String],
    validity: Validity,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Concord");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.subject_alt_names = alt_names(hosts)?;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Members use one certificate to serve and to dial each other, as in etcd.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// A certificate authority that issues certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

impl Authority {
    /// A new CA named `common_name`, with a new key.
    ///
    /// # Errors
    /// Key generation or signing failed.
    pub fn new(common_name: &str, validity: Validity) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(|e| error("a CA key", &e))?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Concord");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let issuer =
            CertifiedIssuer::self_signed(params, key).map_err(|e| error("a CA certificate", &e))?;
        Ok(Self { issuer, key_pem })
    }

    /// The CA's certificate, PEM (what `--trusted-ca-file` and etcdctl's `--cacert` take).
    #[must_use]
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key, PEM.
    #[must_use]
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A certificate for `common_name`, valid for `hosts` (IP addresses and DNS names), for
    /// serving and for client authentication.
    ///
    /// # Errors
    /// A host is not a valid name, or signing failed.
    pub fn issue(
        &self,
        common_name: &str,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(|e| error("a key", &e))?;
        let cert = leaf_params(common_name, hosts, validity)?
            .signed_by(&key, &self.issuer)
            .map_err(|e| error(&format!("a certificate for {common_name}"), &e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed certificate for `hosts` (auto-TLS).
///
/// # Errors
/// A host is not a valid name, or signing failed.
pub fn self_signed(hosts: &[String], validity: Validity) -> Result<Issued, TlsError> {
    let key = KeyPair::generate().map_err(|e| error("a key", &e))?;
    let cert = leaf_params("concord", hosts, validity)?
        .self_signed(&key)
        .map_err(|e| error("a self-signed certificate", &e))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Auto-TLS (etcd's `--auto-tls`, `--peer-auto-tls`): the certificate and key in `dir`
/// (`cert.pem`, `key.pem`), made self-signed for `hosts` if they are not both there yet, as
/// etcd keeps them in `<data-dir>/fixtures/{client,peer}`.
///
/// # Errors
/// The directory or files cannot be written.
pub fn auto_tls(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    let issued = self_signed(hosts, Validity::from_now(SELF_SIGNED_VALIDITY))?;
    write_pem(&key, &issued.key_pem, true)?;
    write_pem(&cert, &issued.cert_pem, false)?;
    Ok((cert, key))
}

/// Writes a PEM file durably: to a temporary file (mode 0600 for a private key), fsynced,
/// then renamed over `path`.
///
/// # Errors
/// The file cannot be written.
pub fn write_pem(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let fail = |e: std::io::Error| TlsError::Unreadable {
        flag: "writing".into(),
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temporary).map_err(fail)?;
    file.write_all(contents.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)?;
    Ok(())
}

/// The `concord serve` flags for a member that serves TLS on both ports with one certificate
/// and requires a certificate from `ca` of every client and peer.
#[must_use]
pub fn mutual_tls_member_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    let (cert, key, ca) = (cert.display(), key.display(), ca.display());
    vec![
        format!("--cert-file={cert}"),
        format!("--key-file={key}"),
        format!("--trusted-ca-file={ca}"),
        "--client-cert-auth".into(),
        format!("--peer-cert-file={cert}"),
        format!("--peer-key-file={key}"),
        format!("--peer-trusted-ca-file={ca}"),
        "--peer-client-cert-auth".into(),
    ]
}
