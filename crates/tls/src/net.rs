//! Accepting and dialling connections, TLS or plain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Uri};

use crate::{ClientTls, ServerTls};

/// A TLS handshake that has not finished in this time is dropped: a client that connects
/// and says nothing holds no slot for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes run at once on one listener; more connections wait to be accepted.
const HANDSHAKES_IN_FLIGHT_MAX: usize = 512;

/// An accepted connection.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What the server knows of a connection, in each request's extensions (tonic's
/// `Connected`).
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    /// The other end's address.
    pub remote_addr: Option<SocketAddr>,
    /// The certificate chain the client presented and the handshake verified (its own
    /// first), when it presented one.
    pub peer_certificates: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(tcp) => ConnInfo {
                remote_addr: tcp.peer_addr().ok(),
                peer_certificates: None,
            },
            Conn::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                ConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    peer_certificates: session.peer_certificates().map(|certs| {
                        Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect())
                    }),
                }
            }
        }
    }
}

/// The connections accepted on `listener`: plain when `tls` is `None`, else after a TLS
/// handshake with the configuration current at that moment. Handshakes run concurrently
/// (at most [`HANDSHAKES_IN_FLIGHT_MAX`] at once, each within [`HANDSHAKE_TIMEOUT`]); one
/// that fails is logged and yields an error, which tonic's server skips.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    TcpListenerStream::new(listener)
        .map(move |accepted| {
            let tls = tls.clone();
            async move {
                let tcp = accepted?;
                nodelay(&tcp);
                let Some(tls) = tls else {
                    return Ok(Conn::Plain(tcp));
                };
                let remote = tcp.peer_addr().ok();
                let acceptor = tls.acceptor();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => Ok(Conn::Tls(Box::new(stream))),
                    // A connection closed before a word (a port probe, a load balancer's health
                    // check) is not worth an operator's attention.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(remote = ?remote, error = %e, "a connection closed during the TLS handshake");
                        Err(e)
                    }
                    Ok(Err(e)) => {
                        tracing::info!(remote = ?remote, error = %error_chain(&e), "rejected a connection: TLS handshake failed");
                        Err(e)
                    }
                    Err(_) => {
                        tracing::info!(remote = ?remote, "rejected a connection: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                        Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))
                    }
                }
            }
        })
        .buffer_unordered(HANDSHAKES_IN_FLIGHT_MAX)
}

/// Small responses must leave at once: with Nagle's algorithm on, a response written in two
/// segments waits for the other end's delayed ACK (about 40 ms).
fn nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

macro_rules! delegate_io {
    ($type:ident) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $type::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $type {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $type::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $type::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $type::Plain(s) => s.is_write_vectored(),
                    $type::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_flush(cx),
                    $type::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $type::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_io!(Conn);

/// A dialled connection.
pub enum ClientConn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

delegate_io!(ClientConn);

/// Dials members and servers for tonic channels: TCP with `TCP_NODELAY`, then TLS for an
/// `https` URL with the current client configuration.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<Arc<ClientTls>>,
    /// Whether the URL being dialled is `https`.
    secure: bool,
}

impl Dialer {
    /// A dialer for `http` and, with `tls`, `https` URLs.
    #[must_use]
    pub fn new(tls: Option<Arc<ClientTls>>) -> Self {
        Self { tls, secure: false }
    }

    /// A dialer for plain `http` URLs only.
    #[must_use]
    pub fn plain() -> Self {
        Self::new(None)
    }

    /// The endpoint for `url` and the connector that dials it. The endpoint is given the
    /// `http` form of the URL, so that tonic never wraps the connection in TLS of its own:
    /// the connector decides, from the scheme of `url`.
    ///
    /// # Errors
    /// `url` is not a URL tonic accepts, or is `https` and this dialer has no TLS settings.
    pub fn endpoint(&self, url: &str) -> Result<(Endpoint, Dialer), String> {
        let (secure, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            _ => return Err(format!("{url}: the scheme must be http or https")),
        };
        if secure && self.tls.is_none() {
            return Err(format!(
                "{url} is https, but no TLS settings are given to dial it with"
            ));
        }
        let endpoint =
            Endpoint::from_shared(format!("http://{rest}")).map_err(|e| format!("{url}: {e}"))?;
        Ok((
            endpoint,
            Dialer {
                tls: self.tls.clone(),
                secure,
            },
        ))
    }
}

impl tower::Service<Uri> for Dialer {
    type Response = TokioIo<ClientConn>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = if self.secure { self.tls.clone() } else { None };
        Box::pin(async move {
            let bad =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?;
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            nodelay(&tcp);
            let Some(tls) = tls else {
                return Ok(TokioIo::new(ClientConn::Plain(tcp)));
            };
            let name = ServerName::try_from(host).map_err(|e| bad(&e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(tls.config());
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(TokioIo::new(ClientConn::Tls(Box::new(stream))))
        })
    }
}

/// An error and its causes on one line (tonic's transport error alone says only "transport
/// error"; the cause is in its sources). A TLS alert from the other end reads as Go's
/// `crypto/tls` writes it ("remote error: tls: bad certificate"), the words operators of etcd
/// clusters (and etcd's own tests) look for. The alert is found in the text: HTTP/2 keeps an
/// IO error's message, not the error.
#[must_use]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if let Some(alert) = remote_alert(&text) {
            return format!("{line}remote error: tls: {alert}");
        }
        line.push_str(&text);
        next = cause.source();
        if next.is_some() {
            line.push_str(": ");
        }
    }
    line
}

/// The alert in rustls's words for an alert received ("received fatal alert:
/// BadCertificate"), in Go's words.
fn remote_alert(text: &str) -> Option<&'static str> {
    let (_, name) = text.split_once("received fatal alert: ")?;
    let name = name.split(|c: char| !c.is_ascii_alphanumeric()).next()?;
    Some(match name {
        "HandshakeFailure" => "handshake failure",
        "BadCertificate" => "bad certificate",
        "UnsupportedCertificate" => "unsupported certificate",
        "CertificateRevoked" => "revoked certificate",
        "CertificateExpired" => "expired certificate",
        "CertificateUnknown" => "unknown certificate",
        "UnknownCA" => "unknown certificate authority",
        "AccessDenied" => "access denied",
        "DecodeError" => "error decoding message",
        "DecryptError" => "error decrypting message",
        "ProtocolVersion" => "protocol version not supported",
        "InsufficientSecurity" => "insufficient security level",
        "InternalError" => "internal error",
        "CertificateRequired" => "certificate required",
        "NoApplicationProtocol" => "no application protocol",
        _ => return None,
    })
}
