//! How a run's clients reach its members: plain, or over TLS with a certificate from the
//! run's own CA (members then require one on both ports).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// The TLS every client of the current run connects with (`None`: plain). Every connection
/// the workloads make starts from [`options`]; a run sets this once before its first
/// connection, and runs in one process go one at a time (see [`RunGuard`]).
static CLIENT_TLS: RwLock<Option<TlsOptions>> = RwLock::new(None);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Connect options for a member of the current run: TLS when the run has it.
pub(crate) fn options() -> ConnectOptions {
    let tls = CLIENT_TLS.read().unwrap_or_else(|e| e.into_inner()).clone();
    match tls {
        Some(tls) => ConnectOptions::new().with_tls(tls),
        None => ConnectOptions::new(),
    }
}

/// Held while a run goes on: sets the clients' TLS and clears it at the end.
pub(crate) struct RunGuard;

impl RunGuard {
    /// # Errors
    /// Another run is going on in this process.
    pub(crate) fn begin(tls: Option<TlsOptions>) -> anyhow::Result<RunGuard> {
        anyhow::ensure!(
            !RUNNING.swap(true, Ordering::SeqCst),
            "another chaos run is going on in this process; runs go one at a time"
        );
        *CLIENT_TLS.write().unwrap_or_else(|e| e.into_inner()) = tls;
        Ok(RunGuard)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        *CLIENT_TLS.write().unwrap_or_else(|e| e.into_inner()) = None;
        RUNNING.store(false, Ordering::SeqCst);
    }
}

/// Writes a new key for encryption at rest to `<out>/at-rest.key`, readable by its owner
/// only; its path.
///
/// # Errors
/// The file cannot be written.
pub(crate) fn write_key_file(out: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = out.join("at-rest.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(file, "{}", encryption::KeyRing::generate_line())?;
    Ok(path)
}

/// A run's CA and certificates, in `<out>/pki`: one member certificate for every host's
/// address, one client certificate.
pub(crate) struct RunPki {
    dir: PathBuf,
}

impl RunPki {
    /// Makes the CA and certificates for `ips`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub(crate) fn make(out: &Path, ips: &[String]) -> anyhow::Result<RunPki> {
        use tls::pki::{write_pem, Authority, Validity};
        let dir = out.join("pki");
        let validity = Validity::from_now(Duration::from_secs(24 * 3600));
        let ca = Authority::new("concord-chaos-ca", validity)?;
        let mut hosts = ips.to_vec();
        hosts.push("127.0.0.1".into());
        let member = ca.issue("member", &hosts, validity)?;
        let client = ca.issue("root", &hosts, validity)?;
        let pki = RunPki { dir };
        write_pem(&pki.file("ca.pem"), &ca.cert_pem(), false)?;
        write_pem(&pki.file("member.key"), &member.key_pem, true)?;
        write_pem(&pki.file("member.crt"), &member.cert_pem, false)?;
        write_pem(&pki.file("client.key"), &client.key_pem, true)?;
        write_pem(&pki.file("client.crt"), &client.cert_pem, false)?;
        Ok(pki)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `concord serve`'s flags: TLS with client-certificate auth on both ports.
    pub(crate) fn member_flags(&self) -> Vec<String> {
        tls::pki::mutual_tls_member_flags(
            &self.file("member.crt"),
            &self.file("member.key"),
            &self.file("ca.pem"),
        )
    }

    /// The clients' TLS: the CA to verify members with, the client certificate.
    ///
    /// # Errors
    /// The files cannot be read.
    pub(crate) fn client_tls(&self) -> anyhow::Result<TlsOptions> {
        let read =
            |name: &str| std::fs::read(self.file(name)).with_context(|| format!("read {name}"));
        Ok(TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")?))
            .identity(Identity::from_pem(read("client.crt")?, read("client.key")?)))
    }
}
