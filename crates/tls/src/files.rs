//! Reading certificates, keys and CA bundles from PEM files, with errors that say which
//! flag, which file and what is wrong.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::TlsError;

/// Largest certificate, key or bundle file read (a bundle of every public CA is ~250 KiB).
const PEM_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// What a certificate says about itself, as far as Concord looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// Valid from, in seconds since the Unix epoch.
    pub not_before: i64,
    /// Valid until, in seconds since the Unix epoch.
    pub not_after: i64,
    /// `not_before` as written in errors.
    not_before_text: String,
    /// `not_after` as written in errors.
    not_after_text: String,
    /// Whether it may sign certificates (basic constraints CA).
    pub is_ca: bool,
}

impl CertificateFacts {
    /// Reads a DER certificate.
    ///
    /// # Errors
    /// It is not an X.509 certificate.
    pub fn of(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let validity = cert.validity();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Ok(Self {
            common_name,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            not_before_text: validity.not_before.to_string(),
            not_after_text: validity.not_after.to_string(),
            is_ca: cert.is_ca(),
        })
    }

    /// Why the certificate cannot be used at `now` (seconds since the epoch), if it cannot.
    fn unusable_at(&self, now: i64) -> Option<String> {
        if now < self.not_before {
            Some(format!(
                "the certificate is not valid before {}",
                self.not_before_text
            ))
        } else if now > self.not_after {
            Some(format!(
                "the certificate expired at {}",
                self.not_after_text
            ))
        } else {
            None
        }
    }
}

/// The common name of a DER certificate's subject (for `--peer-cert-allowed-cn`, and the
/// user name a client certificate authenticates).
#[must_use]
pub fn certificate_common_name(der: &[u8]) -> Option<String> {
    CertificateFacts::of(der).ok()?.common_name
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let unreadable = |reason: String| TlsError::Unreadable {
        flag: flag.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(unreadable(format!(
            "the file is {size} bytes; at most {PEM_FILE_BYTES_MAX} are read"
        )));
    }
    std::fs::read(path).map_err(|e| unreadable(e.to_string()))
}

fn invalid(flag: &str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        flag: flag.to_string(),
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Every certificate of a PEM file; at least one.
fn certificates(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            flag,
            path,
            "holds no certificate (expected PEM \"CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

/// A certificate chain (the member's own certificate first), every certificate in it valid
/// now.
pub(crate) fn certificate_chain(
    flag: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = certificates(flag, path)?;
    let now = now();
    for cert in &chain {
        let facts = CertificateFacts::of(cert).map_err(|e| invalid(flag, path, e))?;
        if let Some(reason) = facts.unusable_at(now) {
            return Err(invalid(flag, path, reason));
        }
    }
    Ok(chain)
}

/// A private key (PKCS#8, PKCS#1 or SEC1 PEM).
pub(crate) fn private_key(flag: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        invalid(
            flag,
            path,
            format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

/// The CA certificates of a bundle. Certificates outside their validity are left out (a
/// bundle may carry an old CA next to its successor); a bundle with no usable CA is refused.
pub(crate) fn ca_bundle(flag: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = certificates(flag, path)?;
    let now = now();
    let mut roots = RootCertStore::empty();
    let mut skipped = Vec::new();
    for cert in certs {
        let facts = CertificateFacts::of(&cert).map_err(|e| invalid(flag, path, e))?;
        if let Some(reason) = facts.unusable_at(now) {
            skipped.push(reason);
            continue;
        }
        roots
            .add(cert)
            .map_err(|e| invalid(flag, path, format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid(
            flag,
            path,
            format!("holds no usable CA certificate ({})", skipped.join("; ")),
        ));
    }
    for reason in skipped {
        tracing::warn!(flag, path = %path.display(), "a CA certificate in the bundle is left out: {reason}");
    }
    Ok(roots)
}
