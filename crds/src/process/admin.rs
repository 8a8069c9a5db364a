//! The admin port of both binaries: `/healthz`, `/readyz` and `/metrics` over plain
//! HTTP/1.1, `GET` and `HEAD` only.
//!
//! What the endpoints say comes from the binary ([`Endpoints`]): `/healthz` answers 503,
//! naming every stuck component, from [`Health`]; `/readyz` asks the binary's
//! [`ReadinessCheck`]; `/metrics` encodes the binary's [`Exposition`], normally a
//! `prometheus-client` [`Registry`] (OpenMetrics text, which Prometheus scrapes as such).
//!
//! By default the server listens on every address of both families: one `[::]` socket with
//! `IPV6_V6ONLY` off, so kubelet's probes reach it on an IPv4, IPv6 or dual-stack pod, and
//! `0.0.0.0` on a host without IPv6.

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::ProcessError;
use crate::health::Health;

/// The `Content-Type` of OpenMetrics text, as `prometheus-client` writes it.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `/metrics` serves.
pub trait Exposition: Send + Sync + 'static {
    /// The metrics as text.
    fn encode(&self) -> Result<String, std::fmt::Error>;

    /// The `Content-Type` of [`Exposition::encode`]'s text.
    fn content_type(&self) -> &'static str {
        OPENMETRICS_CONTENT_TYPE
    }
}

impl Exposition for Registry {
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, self)?;
        Ok(text)
    }
}

/// Registers `build_info` in `registry`: a gauge, always 1, whose `version` and `commit`
/// labels say which build runs.
pub fn register_build_info(registry: &mut Registry, version: &'static str, commit: &'static str) {
    let info = Family::<[(&'static str, &'static str); 2], Gauge>::default();
    info.get_or_create(&[("version", version), ("commit", commit)])
        .set(1);
    registry.register(
        "build_info",
        "Always 1; the labels say which build runs",
        info,
    );
}

/// What `/readyz` asks: `Ok` with a short reason when ready, `Err` with why not.
pub trait ReadinessCheck: Send + Sync + 'static {
    fn check(&self, now: Instant) -> Result<String, String>;
}

/// The binary's answers behind the three endpoints.
#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<dyn Exposition>,
    pub readiness: Arc<dyn ReadinessCheck>,
    pub health: Health,
}

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoints")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one admin request.
pub fn respond(method: &Method, path: &str, endpoints: &Endpoints) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return response(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD are served\n",
        );
    }
    match path {
        "/healthz" => {
            let stuck = endpoints.health.check();
            if stuck.is_empty() {
                response(StatusCode::OK, TEXT, "ok\n")
            } else {
                let body: String = stuck.iter().map(|p| format!("stuck: {p}\n")).collect();
                response(StatusCode::SERVICE_UNAVAILABLE, TEXT, body)
            }
        }
        "/readyz" => match endpoints.readiness.check(Instant::now()) {
            Ok(why) => response(StatusCode::OK, TEXT, format!("ready: {why}\n")),
            Err(why) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => match endpoints.metrics.encode() {
            Ok(body) => response(StatusCode::OK, endpoints.metrics.content_type(), body),
            Err(e) => {
                warn!(error = %e, "cannot encode metrics");
                response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "cannot encode metrics\n",
                )
            }
        },
        _ => response(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Where the admin server listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// Every address of both families on this port: one `[::]` socket with `IPV6_V6ONLY`
    /// off, or `0.0.0.0` when the host has no IPv6.
    AllFamilies(u16),
    /// Exactly this address (an unspecified IPv6 one accepts IPv4 too).
    Address(SocketAddr),
}

impl Listen {
    /// `--admin-address` as given, else every address on `default_port`.
    pub fn from_flag(addr: Option<SocketAddr>, default_port: u16) -> Listen {
        addr.map_or(Listen::AllFamilies(default_port), Listen::Address)
    }
}

/// A listening socket on `addr`; an unspecified IPv6 address takes IPv4 connections too,
/// whatever `net.ipv6.bindv6only` says.
fn listen_on(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn bind_listener(listen: Listen) -> Result<TcpListener, ProcessError> {
    let bind = |addr: SocketAddr| {
        listen_on(addr)
            .and_then(TcpListener::from_std)
            .map_err(|source| ProcessError::Bind { addr, source })
    };
    match listen {
        Listen::Address(addr) => bind(addr),
        Listen::AllFamilies(port) => {
            let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            match bind(any6) {
                Err(ProcessError::Bind { source, .. }) if no_ipv6(&source) => {
                    info!(error = %source, "admin server: no IPv6 on this host; listening on IPv4 only");
                    bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
                }
                other => other,
            }
        }
    }
}

/// The errors of a host without IPv6 (a kernel without it, or IPv6 switched off).
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// The admin server, bound and ready to serve.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    endpoints: Endpoints,
}

impl AdminServer {
    /// Binds (port 0 picks a free port; see [`AdminServer::local_addr`]). Needs a Tokio
    /// runtime.
    pub fn bind(listen: Listen, endpoints: Endpoints) -> Result<Self, ProcessError> {
        let listener = bind_listener(listen)?;
        let local_addr = listener.local_addr().map_err(ProcessError::LocalAddr)?;
        Ok(AdminServer {
            listener,
            local_addr,
            endpoints,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel` fires, then stops accepting, lets open connections finish
    /// their current request (for up to five seconds) and returns.
    pub async fn serve(self, cancel: CancellationToken) {
        info!(addr = %self.local_addr, "admin server listening");
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoints = self.endpoints.clone();
            let cancel = cancel.clone();
            connections.spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = respond(request.method(), request.uri().path(), &endpoints);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = cancel.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = served {
                    debug!(error = %e, "admin server: connection ended with an error");
                }
            });
        }
        drop(self.listener);
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            warn!("admin server: connections still open after the grace period; dropping them");
        }
        info!(addr = %self.local_addr, "admin server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Limits;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One HTTP/1.1 request over a fresh connection; returns (status, raw response).
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {raw:?}"));
        (status, raw)
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl ReadinessCheck for Flag {
        fn check(&self, _now: Instant) -> Result<String, String> {
            if self.0.load(Ordering::Acquire) {
                Ok("serving".into())
            } else {
                Err("starting".into())
            }
        }
    }

    struct Started {
        addr: SocketAddr,
        ready: Arc<Flag>,
        health: Health,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(listen: Listen) -> Started {
        let mut registry = Registry::with_prefix("ferrolb");
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("test_things", "Things counted in a test", counter);
        register_build_info(&mut registry, "1.2.3", "abc\"def");
        let ready = Arc::new(Flag::default());
        let health = Health::new();
        let endpoints = Endpoints {
            metrics: Arc::new(registry),
            readiness: ready.clone(),
            health: health.clone(),
        };
        let server = AdminServer::bind(listen, endpoints).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.serve(cancel.clone()));
        Started {
            addr,
            ready,
            health,
            cancel,
            task,
        }
    }

    fn loopback() -> Listen {
        Listen::Address("127.0.0.1:0".parse().unwrap())
    }

    #[tokio::test]
    async fn the_three_endpoints_answer_from_what_the_binary_hands_in() {
        let s = start(loopback()).await;
        assert_eq!(get(s.addr, "/healthz").await.0, 200);
        let (status, raw) = get(s.addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(raw.ends_with("not ready: starting\n"), "{raw}");
        s.ready.0.store(true, Ordering::Release);
        let (status, raw) = get(s.addr, "/readyz").await;
        assert_eq!(status, 200);
        assert!(raw.ends_with("ready: serving\n"), "{raw}");

        let (status, raw) = get(s.addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(raw.contains(OPENMETRICS_CONTENT_TYPE), "{raw}");
        assert!(raw.contains("ferrolb_test_things_total 1"), "{raw}");
        assert!(
            raw.contains("ferrolb_build_info{version=\"1.2.3\",commit=\"abc\\\"def\"} 1"),
            "{raw}"
        );
        assert!(raw.contains("# EOF"), "{raw}");

        let watch = s
            .health
            .register("Service watch", Limits::calling_api(None));
        watch.ended();
        let (status, raw) = get(s.addr, "/healthz").await;
        assert_eq!(status, 503);
        assert!(
            raw.ends_with("stuck: Service watch: has stopped\n"),
            "{raw}"
        );
        assert_eq!(get(s.addr, "/nope").await.0, 404);
        s.cancel.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn other_methods_are_refused() {
        let s = start(loopback()).await;
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        stream
            .write_all(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        s.cancel.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn the_default_listener_answers_on_ipv4_and_ipv6_loopback() {
        let s = start(Listen::AllFamilies(0)).await;
        let v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
        if s.addr.is_ipv4() {
            assert!(!v6, "fell back to IPv4 although this host has IPv6");
        }
        let mut targets = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, s.addr.port()))];
        if v6 {
            targets.push(SocketAddr::from((Ipv6Addr::LOCALHOST, s.addr.port())));
        } else {
            eprintln!("no IPv6 on this host: only 127.0.0.1 checked");
        }
        for target in targets {
            let (status, body) = get(target, "/healthz").await;
            assert_eq!(status, 200, "{target}: {body}");
        }
        s.cancel.cancel();
        s.task.await.unwrap();
    }

    #[tokio::test]
    async fn the_server_stops_on_cancel_and_frees_its_port() {
        let s = start(loopback()).await;
        // An idle keep-alive connection must not hold shutdown up.
        let mut idle = TcpStream::connect(s.addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), s.task)
            .await
            .expect("the server stops after cancel")
            .unwrap();
        assert!(
            TcpStream::connect(s.addr).await.is_err(),
            "nothing listens any more"
        );
    }
}
