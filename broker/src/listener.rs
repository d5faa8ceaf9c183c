//! Listeners: plain TCP, TLS (rustls), WebSocket (`mqtt` subprotocol) and WebSocket over
//! TLS. Each is a thin adapter that turns an accepted socket into a [`Transport`] and hands
//! it to `connection`; the handshakes run in the connection's own task, bounded by the
//! CONNECT timeout, so a slow handshake never holds up the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::server::Shared;
use crate::transport::Transport;

/// Certificate settings of a TLS or WSS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (the server's certificate first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None`: no client
    /// certificates asked for.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate (otherwise it is optional).
    pub require_client_cert: bool,
    /// Use the client certificate's subject CN as the username (the certificate, verified
    /// against `client_ca`, then stands for the password).
    pub use_identity_as_username: bool,
}

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(TlsFiles),
    /// MQTT over WebSocket (binary frames, `mqtt` subprotocol) on this HTTP path.
    Ws {
        /// Path of the upgrade request, e.g. `/mqtt`.
        path: String,
    },
    /// MQTT over WebSocket over TLS.
    Wss {
        /// Path of the upgrade request.
        path: String,
        /// Certificates.
        tls: TlsFiles,
    },
}

impl ListenerKind {
    /// A short name for logs: tcp, tls, ws, wss.
    pub fn name(&self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls(_) => "tls",
            ListenerKind::Ws { .. } => "ws",
            ListenerKind::Wss { .. } => "wss",
        }
    }
}

/// One more listener besides the primary TCP one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Address and port.
    pub bind: SocketAddr,
    /// Protocol.
    pub kind: ListenerKind,
    /// Most simultaneous connections on this listener (`None`: only the broker-wide limit).
    pub max_connections: Option<usize>,
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A certificate or key file is missing or unreadable.
    #[error("{what} {path}: {reason}")]
    Tls {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr} ({kind}): {source}; is another broker running there?")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Listener kind.
        kind: &'static str,
        /// OS error.
        source: std::io::Error,
    },
}

/// A listener ready to accept: the socket and how to wrap what it accepts.
pub(crate) struct Bound {
    pub(crate) socket: TcpListener,
    pub(crate) addr: SocketAddr,
    wrap: Wrap,
    own_limit: Option<Arc<Semaphore>>,
}

#[derive(Clone)]
enum Wrap {
    Tcp,
    /// The acceptor, and whether the client certificate's CN is the username.
    Tls(TlsAcceptor, bool),
    Ws(Arc<str>),
    Wss(TlsAcceptor, bool, Arc<str>),
}

fn tls_error(what: &'static str, path: &Path, reason: impl ToString) -> ListenerError {
    ListenerError::Tls { what, path: path.to_owned(), reason: reason.to_string() }
}

/// Loads certificates and key into a rustls server configuration.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, ListenerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_error("certificate file", &files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error("certificate file", &files.cert, e))?;
    if certs.is_empty() {
        return Err(tls_error("certificate file", &files.cert, "no PEM certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_error("key file", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("certificate file", &files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| tls_error("client CA file", ca, e))? {
                let c = c.map_err(|e| tls_error("client CA file", ca, e))?;
                roots.add(c).map_err(|e| tls_error("client CA file", ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| tls_error("client CA file", ca, e))?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("key file (does it match the certificate?)", &files.key, e))?;
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds a listener (and loads its certificates): errors name the file or address.
pub(crate) async fn bind(cfg: &ListenerConfig) -> Result<Bound, ListenerError> {
    let wrap = match &cfg.kind {
        ListenerKind::Tcp => Wrap::Tcp,
        ListenerKind::Tls(f) => Wrap::Tls(tls_acceptor(f)?, f.use_identity_as_username),
        ListenerKind::Ws { path } => Wrap::Ws(Arc::from(path.as_str())),
        ListenerKind::Wss { path, tls } => {
            Wrap::Wss(tls_acceptor(tls)?, tls.use_identity_as_username, Arc::from(path.as_str()))
        }
    };
    let bind_err = |source| ListenerError::Bind { addr: cfg.bind, kind: cfg.kind.name(), source };
    let socket = TcpListener::bind(cfg.bind).await.map_err(bind_err)?;
    let addr = socket.local_addr().map_err(bind_err)?;
    let own_limit = cfg.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    Ok(Bound { socket, addr, wrap, own_limit })
}

/// Accepts connections until shutdown; each runs in its own task holding a permit of the
/// broker-wide connection limit and a `done` sender (shutdown waits for all of them).
pub(crate) async fn accept_loop(
    bound: Bound,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        // This listener's own limit first, then the broker-wide one.
        let own = match &bound.own_limit {
            None => None,
            Some(l) => tokio::select! {
                _ = shutdown.changed() => return,
                p = l.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
            },
        };
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = bound.socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, shutdown, done, wrap) = (shared.clone(), shutdown.clone(), done.clone(), bound.wrap.clone());
        tokio::spawn(async move {
            serve_one(shared, stream, peer, wrap, shutdown, permit).await;
            drop(own);
            drop(done);
        });
    }
}

async fn serve_one(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    wrap: Wrap,
    shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let limit = shared.limits.connect_timeout();
    // Boxed: the TLS and WebSocket handshake futures are large (12 KB), and inline they would
    // size every connection's task for its whole life, not just for the handshake.
    let (transport, identity) = match tokio::time::timeout(limit, Box::pin(handshake(stream, wrap))).await {
        Ok(Ok(t)) => t,
        Ok(Err(why)) => {
            tracing::info!(%peer, reason = %why, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "no handshake within {limit:?}; closing");
            return;
        }
    };
    crate::connection::serve(shared, transport, peer, identity, shutdown).await;
    drop(permit);
}

/// The transport, and the identity (client certificate CN) to use as username, if any.
async fn handshake(stream: TcpStream, wrap: Wrap) -> Result<(Transport, Option<String>), String> {
    match wrap {
        Wrap::Tcp => Ok((Transport::Tcp(stream), None)),
        Wrap::Tls(acceptor, cn) => {
            let tls = acceptor.accept(stream).await.map_err(|e| format!("TLS: {e}"))?;
            let identity = identity(&tls, cn)?;
            Ok((Transport::Other(Box::new(tls)), identity))
        }
        Wrap::Ws(path) => Ok((websocket(stream, &path).await?, None)),
        Wrap::Wss(acceptor, cn, path) => {
            let tls = acceptor.accept(stream).await.map_err(|e| format!("TLS: {e}"))?;
            let identity = identity(&tls, cn)?;
            Ok((websocket(tls, &path).await?, identity))
        }
    }
}

/// The subject CN of the client's (verified) certificate, when the listener uses it as the
/// username; a client without a usable certificate is refused then.
fn identity(tls: &tokio_rustls::server::TlsStream<TcpStream>, wanted: bool) -> Result<Option<String>, String> {
    if !wanted {
        return Ok(None);
    }
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no client certificate, and this listener takes the username from it")?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| format!("client certificate: {e}"))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the client certificate has no subject CN to use as username")?;
    Ok(Some(cn.to_string()))
}

/// Upgrades to WebSocket (checking the path and offering the `mqtt` subprotocol) and
/// returns a byte stream: binary frames in, binary frames out, MQTT packets free to span
/// frames as the spec allows.
// The handshake callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn websocket<S>(stream: S, path: &str) -> Result<Transport, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let want = path.to_owned();
    let check = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != want {
            let mut e = ErrorResponse::new(Some(format!("no MQTT endpoint at {}; use {want}", req.uri().path())));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"));
        if let Some(p) = offered {
            if let Ok(v) = HeaderValue::from_str(p) {
                resp.headers_mut().insert("Sec-WebSocket-Protocol", v);
            }
        }
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, check).await.map_err(|e| format!("WebSocket: {e}"))?;
    // The broker side reads and writes bytes; a task moves them between frames and bytes.
    let (broker_side, pump_side) = tokio::io::duplex(64 << 10);
    tokio::spawn(pump(ws, pump_side));
    Ok(Transport::Other(Box::new(broker_side)))
}

async fn pump<S>(ws: tokio_tungstenite::WebSocketStream<S>, bytes: tokio::io::DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(bytes);
    let inbound = async {
        while let Some(m) = ws_rx.next().await {
            match m {
                Ok(WsMessage::Binary(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                // MQTT over WebSocket is binary only [MQTT-6.0.0-1]: close.
                Ok(WsMessage::Text(_)) | Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => {} // ping / pong are answered by tungstenite
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(WsMessage::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // When either direction ends, the other is dropped: the connection is over.
    tokio::select! {
        _ = inbound => {}
        _ = outbound => {}
    }
}
