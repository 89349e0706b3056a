//! A private CA for clusters started with TLS, and the certificates it issues.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tls::pki::{Authority, Validity};

/// How long the test certificates are valid.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A CA in a directory, issuing certificates for 127.0.0.1 and `localhost`.
pub struct TestPki {
    dir: PathBuf,
    authority: Authority,
}

/// A certificate and key issued by a [`TestPki`], as files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, its certificate written to `<dir>/<name>.pem`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let authority = Authority::new(name, Validity::from_now(VALIDITY))?;
        let pki = Self {
            dir: dir.to_path_buf(),
            authority,
        };
        tls::pki::write_pem(&pki.ca(), &pki.authority.cert_pem(), false)?;
        Ok(pki)
    }

    /// The CA certificate's file (`--trusted-ca-file`, etcdctl's `--cacert`).
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's certificate, PEM.
    #[must_use]
    pub fn ca_pem(&self) -> String {
        self.authority.cert_pem()
    }

    /// A certificate for common name `cn`, written as `<dir>/<file>.crt` and `.key` unless
    /// they are there already, valid for 127.0.0.1 and `localhost`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn issue(&self, file: &str, cn: &str) -> anyhow::Result<CertFiles> {
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        if files.cert.is_file() && files.key.is_file() {
            return Ok(files);
        }
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        let issued = self
            .authority
            .issue(cn, &hosts, Validity::from_now(VALIDITY))
            .with_context(|| format!("issue a certificate for {cn}"))?;
        tls::pki::write_pem(&files.key, &issued.key_pem, true)?;
        tls::pki::write_pem(&files.cert, &issued.cert_pem, false)?;
        Ok(files)
    }

    /// The client certificate tests connect with (common name `root`).
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn client(&self) -> anyhow::Result<CertFiles> {
        self.issue("client", "root")
    }

    /// etcdctl's flags for connecting with the client certificate.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn etcdctl_args(&self) -> anyhow::Result<Vec<String>> {
        let client = self.client()?;
        Ok(vec![
            format!("--cacert={}", self.ca().display()),
            format!("--cert={}", client.cert.display()),
            format!("--key={}", client.key.display()),
        ])
    }

    /// TLS for gRPC clients: the client certificate, the CA to verify members with.
    ///
    /// # Errors
    /// The files cannot be written or loaded.
    pub fn client_tls(&self) -> anyhow::Result<Arc<tls::ClientTls>> {
        let client = self.client()?;
        let mut settings = tls::TlsSettings::new(tls::Side::Client, client.cert, client.key);
        settings.trusted_ca_file = Some(self.ca());
        Ok(Arc::new(tls::ClientTls::new(settings)?))
    }

    /// The flags that make member `name` serve clients and peers over TLS with
    /// client-certificate auth on both.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn member_args(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let member = self.issue(name, name)?;
        Ok(tls::pki::mutual_tls_member_flags(
            &member.cert,
            &member.key,
            &self.ca(),
        ))
    }
}
