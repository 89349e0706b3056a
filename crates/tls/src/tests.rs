use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::pki::{self, Authority, Issued, Validity};
use crate::{ClientTls, ServerTls, Side, TlsError, TlsSettings};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn localhost() -> Vec<String> {
    vec!["127.0.0.1".into(), "localhost".into()]
}

/// Writes `issued` as `<name>.crt` and `<name>.key` in `dir`.
fn write(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    pki::write_pem(&cert, &issued.cert_pem, false).unwrap();
    pki::write_pem(&key, &issued.key_pem, true).unwrap();
    (cert, key)
}

fn write_ca(dir: &Path, name: &str, ca: &Authority) -> PathBuf {
    let path = dir.join(format!("{name}.pem"));
    pki::write_pem(&path, &ca.cert_pem(), false).unwrap();
    path
}

fn ca(name: &str) -> Authority {
    Authority::new(name, Validity::from_now(DAY)).unwrap()
}

/// Serves `tls` on a loopback port: every connection that completes a handshake gets "ok".
async fn serve(tls: Arc<ServerTls>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Box::pin(crate::incoming(listener, Some(tls)));
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            if let Ok(mut conn) = conn {
                tokio::spawn(async move {
                    let _ = conn.write_all(b"ok").await;
                    let _ = conn.flush().await;
                });
            }
        }
    });
    addr
}

/// Dials `addr` with `client` and reads the greeting: whether the server let it in.
async fn exchange(addr: std::net::SocketAddr, client: &ClientTls) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(client.config());
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut greeting = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    assert_eq!(&greeting, b"ok");
    Ok(())
}

fn client(side: Side, cert: &(PathBuf, PathBuf), ca: Option<PathBuf>) -> ClientTls {
    let mut settings = TlsSettings::new(side, cert.0.clone(), cert.1.clone());
    settings.trusted_ca_file = ca;
    ClientTls::new(settings).unwrap()
}

// Proves a bad certificate, key or bundle stops startup with one line naming the flag, the
// file and the problem: missing, not PEM, expired, not yet valid, a key of another
// certificate, client-certificate auth without a CA.
#[test]
fn startup_errors_name_the_flag_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("test-ca");
    let good = write(
        dir.path(),
        "good",
        &ca.issue("m0", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );
    let other = write(
        dir.path(),
        "other",
        &ca.issue("m1", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );
    let now = std::time::SystemTime::now();
    let expired = write(
        dir.path(),
        "expired",
        &ca.issue(
            "old",
            &localhost(),
            Validity {
                not_before: now - 3 * DAY,
                not_after: now - DAY,
            },
        )
        .unwrap(),
    );
    let future = write(
        dir.path(),
        "future",
        &ca.issue(
            "new",
            &localhost(),
            Validity {
                not_before: now + DAY,
                not_after: now + 3 * DAY,
            },
        )
        .unwrap(),
    );
    let server = |cert: &Path, key: &Path| {
        ServerTls::new(
            TlsSettings::new(Side::Client, cert.to_path_buf(), key.to_path_buf()),
            &[b"h2"],
        )
        .err()
        .map(|e| e.to_string())
    };
    assert_eq!(server(&good.0, &good.1), None);

    let missing = dir.path().join("missing.crt");
    let message = server(&missing, &good.1).unwrap();
    assert_eq!(
        message,
        format!(
            "cannot read --cert-file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "hello\n").unwrap();
    let message = server(&garbage, &good.1).unwrap();
    assert!(
        message.starts_with(&format!(
            "--cert-file {}: holds no certificate",
            garbage.display()
        )),
        "{message}"
    );

    let message = server(&expired.0, &expired.1).unwrap();
    assert!(message.contains("the certificate expired at"), "{message}");
    assert!(message.starts_with("--cert-file "), "{message}");
    let message = server(&future.0, &future.1).unwrap();
    assert!(
        message.contains("the certificate is not valid before"),
        "{message}"
    );

    let message = server(&good.0, &other.1).unwrap();
    assert_eq!(
        message,
        format!(
            "--key-file {}: the private key does not match the certificate in {}",
            other.1.display(),
            good.0.display()
        )
    );
    let message = server(&good.0, &good.0).unwrap();
    assert!(
        message.starts_with(&format!(
            "--key-file {}: holds no usable PEM private key",
            good.0.display()
        )),
        "{message}"
    );

    let mut settings = TlsSettings::new(Side::Peer, good.0.clone(), good.1.clone());
    settings.client_cert_auth = true;
    assert_eq!(
        ServerTls::new(settings, &[b"h2"]).err().unwrap(),
        TlsError::Settings(
            "--peer-client-cert-auth needs --peer-trusted-ca-file (the CA that client certificates must chain to)".into()
        )
    );
    let message = ClientTls::new(TlsSettings::new(Side::Peer, good.0.clone(), good.1.clone()))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        message,
        "--peer-trusted-ca-file is needed to verify the other members' certificates"
    );
}

// Proves client-certificate auth: a client with a certificate from the trusted CA gets in;
// one from another CA, or with none, is refused; an allowed common name or host name narrows
// it further.
#[tokio::test]
async fn client_certificate_auth_admits_only_the_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca("ours");
    let foreign = ca("foreign");
    let ours_pem = write_ca(dir.path(), "ours", &ours);
    let server_cert = write(
        dir.path(),
        "server",
        &ours
            .issue("m0", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );
    let member = write(
        dir.path(),
        "member",
        &ours
            .issue("m1", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );
    let stranger = write(
        dir.path(),
        "stranger",
        &foreign
            .issue("m1", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );

    let mut settings = TlsSettings::new(Side::Peer, server_cert.0.clone(), server_cert.1.clone());
    settings.trusted_ca_file = Some(ours_pem.clone());
    settings.client_cert_auth = true;
    let addr = serve(Arc::new(
        ServerTls::new(settings.clone(), &[b"h2"]).unwrap(),
    ))
    .await;

    exchange(addr, &client(Side::Peer, &member, Some(ours_pem.clone())))
        .await
        .unwrap();
    let refused = exchange(addr, &client(Side::Peer, &stranger, Some(ours_pem.clone()))).await;
    assert!(refused.is_err(), "a certificate from a foreign CA got in");

    // No certificate at all.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                rustls::pki_types::pem::PemObject::from_pem_slice(ours.cert_pem().as_bytes())
                    .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
                    .unwrap(),
            ))
            .unwrap();
        roots
    })
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let outcome = async {
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await?;
        let mut greeting = [0u8; 2];
        stream.read_exact(&mut greeting).await
    }
    .await;
    assert!(outcome.is_err(), "a client without a certificate got in");

    // Only common name "m2" allowed: m1's certificate, though from the CA, is refused.
    settings.allowed_cn = Some("m2".into());
    let addr = serve(Arc::new(ServerTls::new(settings, &[b"h2"]).unwrap())).await;
    assert!(
        exchange(addr, &client(Side::Peer, &member, Some(ours_pem.clone())))
            .await
            .is_err()
    );
    let m2 = write(
        dir.path(),
        "m2",
        &ours
            .issue("m2", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );
    exchange(addr, &client(Side::Peer, &m2, Some(ours_pem)))
        .await
        .unwrap();
}

// Proves rotation without restart: after the certificate, key and CA bundle are replaced on
// disk, new connections get the new certificate (a client trusting only the new CA gets in,
// one trusting only the old is refused); a change that does not load (a certificate written
// before its key) keeps the previous files in use.
#[tokio::test]
async fn new_connections_use_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = ca("old");
    let new_ca = ca("new");
    let old_pem = write_ca(dir.path(), "old-ca", &old_ca);
    let new_pem = write_ca(dir.path(), "new-ca", &new_ca);
    let served = write(
        dir.path(),
        "served",
        &old_ca
            .issue("m0", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );
    let client_cert = write(
        dir.path(),
        "client",
        &old_ca
            .issue("c", &localhost(), Validity::from_now(DAY))
            .unwrap(),
    );

    let tls = Arc::new(
        ServerTls::new(
            TlsSettings::new(Side::Client, served.0.clone(), served.1.clone()),
            &[b"h2"],
        )
        .unwrap(),
    );
    let addr = serve(tls.clone()).await;
    let trusts_old = client(Side::Client, &client_cert, Some(old_pem));
    let trusts_new = client(Side::Client, &client_cert, Some(new_pem));
    exchange(addr, &trusts_old).await.unwrap();
    assert!(exchange(addr, &trusts_new).await.is_err());

    // Half a rotation: the new certificate is there, its key not yet.
    let rotated = ca_issue(&new_ca);
    pki::write_pem(&served.0, &rotated.cert_pem, false).unwrap();
    tls.expire_check();
    exchange(addr, &trusts_old).await.unwrap();

    pki::write_pem(&served.1, &rotated.key_pem, true).unwrap();
    tls.expire_check();
    exchange(addr, &trusts_new).await.unwrap();
    assert!(exchange(addr, &trusts_old).await.is_err());
}

fn ca_issue(ca: &Authority) -> Issued {
    ca.issue("m0", &localhost(), Validity::from_now(DAY))
        .unwrap()
}

// Proves auto-TLS: the self-signed certificate is made once and kept (a restart reuses it),
// and members dial each other without a CA, the connection still TLS.
#[tokio::test]
async fn auto_tls_certificates_are_kept_and_accepted_without_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = dir.path().join("fixtures").join("peer");
    let (cert, key) = pki::auto_tls(&fixtures, &localhost()).unwrap();
    let first = std::fs::read(&cert).unwrap();
    let (cert_again, _) = pki::auto_tls(&fixtures, &localhost()).unwrap();
    assert_eq!(std::fs::read(&cert_again).unwrap(), first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let mut settings = TlsSettings::new(Side::Peer, cert.clone(), key.clone());
    settings.self_signed = true;
    let addr = serve(Arc::new(
        ServerTls::new(settings.clone(), &[b"h2"]).unwrap(),
    ))
    .await;
    exchange(addr, &ClientTls::new(settings).unwrap())
        .await
        .unwrap();
}

#[test]
fn tls_versions_and_cipher_suites_parse_as_etcd_spells_them() {
    use crate::{parse_cipher_suites, parse_tls_version, TlsVersion};
    assert_eq!(
        parse_tls_version("--tls-min-version", "TLS1.3"),
        Ok(Some(TlsVersion::Tls13))
    );
    assert_eq!(parse_tls_version("--tls-min-version", ""), Ok(None));
    assert!(parse_tls_version("--tls-min-version", "TLS1.1")
        .unwrap_err()
        .contains("TLS1.2 and TLS1.3 only"));
    let suites = parse_cipher_suites(
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    )
    .unwrap();
    assert_eq!(suites.len(), 2);
    let refused = parse_cipher_suites("TLS_RSA_WITH_AES_128_CBC_SHA").unwrap_err();
    assert!(
        refused.starts_with(
            "--cipher-suites: unexpected TLS cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\""
        ),
        "{refused}"
    );
}

// Proves a TLS alert from the other end is told in Go's words, which operators of etcd
// clusters grep their logs for, wherever in the error's causes it sits.
#[test]
fn remote_alerts_read_as_go_writes_them() {
    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let alert = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
    );
    assert_eq!(
        crate::error_chain(&Wrapper(alert)),
        "transport error: remote error: tls: bad certificate"
    );
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(
        crate::error_chain(&Wrapper(refused)),
        "transport error: refused"
    );
}
