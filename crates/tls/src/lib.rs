//! TLS for the client and peer ports: what etcd's TLS flags mean, turned into rustls
//! configurations that follow their files on disk.
//!
//! - [`TlsSettings`] is one side's flags (the client port's `--cert-file`, `--key-file`,
//!   `--trusted-ca-file`, `--client-cert-auth`, ... or the peer port's `--peer-*` set).
//! - [`ServerTls`] and [`ClientTls`] load them once at startup, failing with one line that
//!   names the flag, the file and what is wrong (missing, unreadable, not PEM, expired, not
//!   yet valid, a key that does not match its certificate). Afterwards they look at the files
//!   at most once a second, when a connection is made, and rebuild the configuration when
//!   one changed: new connections use the new certificate, key and CA bundle, open ones keep
//!   theirs. A change that does not load (a certificate written before its key) keeps the
//!   previous configuration and is logged.
//! - [`incoming`] turns a TCP listener into a stream of accepted connections, TLS or plain,
//!   with handshakes run concurrently and bounded in time and number; [`Dialer`] is the
//!   matching connector for tonic channels.
//! - [`pki`] makes keys and certificates: auto-TLS's self-signed ones (etcd's `--auto-tls`)
//!   and a private CA with member and client certificates (`concord dev`, tests).
//!
//! Only TLS 1.2 and 1.3 exist here (rustls has nothing older), with the ring provider.

mod files;
mod net;
pub mod pki;
mod reload;
mod settings;

pub use files::{certificate_common_name, CertificateFacts};
pub use net::{error_chain, incoming, ClientConn, Conn, ConnInfo, Dialer, HANDSHAKE_TIMEOUT};
pub use settings::{
    parse_cipher_suites, parse_tls_version, ClientTls, ServerTls, Side, TlsSettings, TlsVersion,
};

/// Why TLS settings cannot be used. Each message is one line naming the flag and the file.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {flag} {path}: {reason}")]
    Unreadable {
        /// The flag that names the file.
        flag: String,
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A file can be read but does not hold what the flag needs.
    #[error("{flag} {path}: {reason}")]
    Invalid {
        /// The flag that names the file.
        flag: String,
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The settings contradict each other or name something unsupported.
    #[error("{0}")]
    Settings(String),
}

#[cfg(test)]
mod tests;
