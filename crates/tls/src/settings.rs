//! One side's TLS flags and the rustls configurations built from them.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use crate::files;
use crate::reload::Reloading;
use crate::TlsError;

/// Which port the settings are for; it names the flags in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client port: `--cert-file`, `--key-file`, `--trusted-ca-file`, ...
    Client,
    /// The peer port: `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`, ...
    Peer,
}

impl Side {
    /// The flag for `base` on this side (`cert-file` is `--peer-cert-file` for peers).
    #[must_use]
    pub fn flag(self, base: &str) -> String {
        match self {
            Side::Client => format!("--{base}"),
            Side::Peer => format!("--peer-{base}"),
        }
    }
}

/// A TLS protocol version rustls speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2, the lowest Concord speaks.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Parses `--tls-min-version`/`--tls-max-version` as etcd spells them (`TLS1.2`, `TLS1.3`);
/// empty means unset.
///
/// # Errors
/// Not a version, or one below TLS 1.2.
pub fn parse_tls_version(flag: &str, value: &str) -> Result<Option<TlsVersion>, String> {
    match value {
        "" => Ok(None),
        "TLS1.2" => Ok(Some(TlsVersion::Tls12)),
        "TLS1.3" => Ok(Some(TlsVersion::Tls13)),
        "TLS1.0" | "TLS1.1" => Err(format!(
            "{flag}={value} is not supported: Concord speaks TLS1.2 and TLS1.3 only"
        )),
        _ => Err(format!(
            "{flag}={value}: unexpected TLS version (expected TLS1.2 or TLS1.3)"
        )),
    }
}

/// The ring provider's cipher suite spelt as etcd's `--cipher-suites` spells it (the IANA
/// name; Go also accepts the ChaCha20 suites without their `_SHA256`).
fn suite_name(suite: &SupportedCipherSuite) -> String {
    format!("{:?}", suite.suite())
}

/// Parses `--cipher-suites` (comma separated, IANA names as etcd takes them) into the
/// TLS 1.2 suites to offer. TLS 1.3's suites are not configurable (as in Go) and always on.
///
/// # Errors
/// A name that is not a suite rustls offers.
pub fn parse_cipher_suites(value: &str) -> Result<Vec<SupportedCipherSuite>, String> {
    let available = rustls::crypto::ring::default_provider().cipher_suites;
    let mut chosen = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let found = available.iter().find(|suite| {
            let known = suite_name(suite);
            known == name || known == format!("{name}_SHA256")
        });
        match found {
            Some(suite) => chosen.push(*suite),
            None => {
                let names: Vec<String> = available.iter().map(suite_name).collect();
                return Err(format!(
                    "--cipher-suites: unexpected TLS cipher suite {name:?} (offered: {})",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(chosen)
}

/// One side's TLS settings, as its flags give them.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Which port.
    pub side: Side,
    /// This member's certificate chain (PEM), for serving and, on the peer side, for
    /// dialling other members.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// The CA bundle that client certificates (and, for peers, the other members' server
    /// certificates) must chain to.
    pub trusted_ca_file: Option<PathBuf>,
    /// Whether connecting clients must present a certificate from the trusted CA.
    pub client_cert_auth: bool,
    /// The only common name a client certificate may carry (`--peer-cert-allowed-cn`).
    pub allowed_cn: Option<String>,
    /// A host name (or IP address) a client certificate must be valid for
    /// (`--peer-cert-allowed-hostname`).
    pub allowed_hostname: Option<String>,
    /// Whether the certificate is auto-TLS's self-signed one: members then dial each other
    /// without verifying certificates (etcd's auto-TLS), unless a trusted CA is given.
    pub self_signed: bool,
    /// The lowest TLS version spoken.
    pub min_version: TlsVersion,
    /// The highest TLS version spoken.
    pub max_version: TlsVersion,
    /// The TLS 1.2 cipher suites offered; empty: rustls's defaults.
    pub cipher_suites: Vec<SupportedCipherSuite>,
}

impl TlsSettings {
    /// Settings for `side` with only a certificate and key: TLS 1.2 and 1.3, default suites,
    /// no client certificates asked for.
    #[must_use]
    pub fn new(side: Side, cert_file: PathBuf, key_file: PathBuf) -> Self {
        Self {
            side,
            cert_file,
            key_file,
            trusted_ca_file: None,
            client_cert_auth: false,
            allowed_cn: None,
            allowed_hostname: None,
            self_signed: false,
            min_version: TlsVersion::Tls12,
            max_version: TlsVersion::Tls13,
            cipher_suites: Vec::new(),
        }
    }

    /// Checks what can be checked without reading files.
    ///
    /// # Errors
    /// Contradictory settings.
    pub fn check(&self) -> Result<(), TlsError> {
        if self.min_version > self.max_version {
            return Err(TlsError::Settings(
                "--tls-min-version is higher than --tls-max-version".into(),
            ));
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(TlsError::Settings(format!(
                "{} needs {} (the CA that client certificates must chain to)",
                self.side.flag("client-cert-auth"),
                self.side.flag("trusted-ca-file")
            )));
        }
        if !self.cipher_suites.is_empty() && self.min_version == TlsVersion::Tls13 {
            return Err(TlsError::Settings(
                "--cipher-suites cannot be set when only TLS1.3 is spoken (its suites are fixed)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::ring::default_provider();
        if !self.cipher_suites.is_empty() {
            provider.cipher_suites.retain(|suite| {
                suite.tls13().is_some()
                    || self
                        .cipher_suites
                        .iter()
                        .any(|chosen| chosen.suite() == suite.suite())
            });
        }
        Arc::new(provider)
    }

    fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        let mut versions = Vec::new();
        if self.min_version <= TlsVersion::Tls13 && self.max_version >= TlsVersion::Tls13 {
            versions.push(&rustls::version::TLS13);
        }
        if self.min_version <= TlsVersion::Tls12 {
            versions.push(&rustls::version::TLS12);
        }
        versions
    }

    fn cert_and_key(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        TlsError,
    > {
        let chain = files::certificate_chain(&self.side.flag("cert-file"), &self.cert_file)?;
        let key = files::private_key(&self.side.flag("key-file"), &self.key_file)?;
        Ok((chain, key))
    }

    /// Turns rustls's refusal of a certificate and key into one line naming both files.
    fn key_error(&self, e: &rustls::Error) -> TlsError {
        let reason = match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "the private key does not match the certificate in {}",
                self.cert_file.display()
            ),
            other => format!("unusable private key: {other}"),
        };
        TlsError::Invalid {
            flag: self.side.flag("key-file"),
            path: self.key_file.display().to_string(),
            reason,
        }
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.trusted_ca_file.clone());
        files
    }

    fn server_config(&self, alpn: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let (chain, key) = self.cert_and_key()?;
        let provider = self.provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions())
            .map_err(|e| TlsError::Settings(format!("TLS versions and cipher suites: {e}")))?;
        let builder = if self.client_cert_auth {
            let flag = self.side.flag("trusted-ca-file");
            let ca = self.trusted_ca_file.as_ref().ok_or_else(|| {
                TlsError::Settings(format!(
                    "{} needs {flag}",
                    self.side.flag("client-cert-auth")
                ))
            })?;
            let roots = files::ca_bundle(&flag, ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    flag: flag.clone(),
                    path: ca.display().to_string(),
                    reason: e.to_string(),
                })?;
            let verifier: Arc<dyn ClientCertVerifier> =
                if self.allowed_cn.is_some() || self.allowed_hostname.is_some() {
                    let hostname = self
                        .allowed_hostname
                        .as_ref()
                        .map(|name| {
                            ServerName::try_from(name.clone()).map_err(|e| {
                                TlsError::Settings(format!(
                                    "{}={name}: not a host name or IP address ({e})",
                                    self.side.flag("cert-allowed-hostname")
                                ))
                            })
                        })
                        .transpose()?;
                    Arc::new(AllowedPeer {
                        inner: verifier,
                        common_name: self.allowed_cn.clone(),
                        hostname,
                    })
                } else {
                    verifier
                };
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| self.key_error(&e))?;
        config.alpn_protocols = alpn.to_vec();
        Ok(config)
    }

    fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let (chain, key) = self.cert_and_key()?;
        let provider = self.provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&self.versions())
            .map_err(|e| TlsError::Settings(format!("TLS versions and cipher suites: {e}")))?;
        let builder = match &self.trusted_ca_file {
            Some(ca) => builder
                .with_root_certificates(files::ca_bundle(&self.side.flag("trusted-ca-file"), ca)?),
            None if self.self_signed => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate { provider })),
            None => {
                return Err(TlsError::Settings(format!(
                    "{} is needed to verify the other members' certificates",
                    self.side.flag("trusted-ca-file")
                )))
            }
        };
        let mut config = builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| self.key_error(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The server side of one port's TLS: the configuration new connections are accepted with,
/// following the files.
pub struct ServerTls {
    config: Reloading<ServerConfig>,
}

impl ServerTls {
    /// Loads `settings`; connections negotiate one of `alpn` (`h2`, and `http/1.1` where
    /// HTTP/1.1 is served too).
    ///
    /// # Errors
    /// A file is missing, unreadable or unusable, or the settings contradict each other.
    pub fn new(settings: TlsSettings, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        settings.check()?;
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let files = settings.files();
        let config = Reloading::new("server", files, move || settings.server_config(&alpn))?;
        Ok(Self { config })
    }

    /// The acceptor for a new connection.
    #[must_use]
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.current())
    }

    #[cfg(test)]
    pub(crate) fn expire_check(&self) {
        self.config.expire_check();
    }
}

/// The client side of the peer port's TLS: the configuration a member dials the others with
/// (its own certificate as the client certificate), following the files.
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    /// Loads `settings`.
    ///
    /// # Errors
    /// A file is missing, unreadable or unusable, or no way to verify the others is given.
    pub fn new(settings: TlsSettings) -> Result<Self, TlsError> {
        settings.check()?;
        let files = settings.files();
        let config = Reloading::new("client", files, move || settings.client_config())?;
        Ok(Self { config })
    }

    /// The configuration for a new connection.
    #[must_use]
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.current()
    }
}

/// A client certificate verifier that also requires one common name
/// (`--peer-cert-allowed-cn`) or a certificate valid for one host name
/// (`--peer-cert-allowed-hostname`), as etcd does.
#[derive(Debug)]
struct AllowedPeer {
    inner: Arc<dyn ClientCertVerifier>,
    common_name: Option<String>,
    hostname: Option<ServerName<'static>>,
}

impl ClientCertVerifier for AllowedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // Refusals go out as a bad_certificate alert, as etcd sends them.
        let refused = || rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        if let Some(allowed) = &self.common_name {
            let cn = files::certificate_common_name(end_entity);
            if cn.as_deref() != Some(allowed.as_str()) {
                tracing::warn!(common_name = ?cn, allowed = %allowed, "rejected a peer certificate: its common name is not the allowed one");
                return Err(refused());
            }
        }
        if let Some(hostname) = &self.hostname {
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            if let Err(e) = rustls::client::verify_server_name(&parsed, hostname) {
                tracing::warn!(allowed = ?hostname, error = %e, "rejected a peer certificate: it is not valid for the allowed host name");
                return Err(refused());
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Auto-TLS's server verifier: any certificate is accepted (they are self-signed, as in
/// etcd), but the handshake's signatures are still checked against it, so the connection is
/// encrypted to whoever holds that certificate's key.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
