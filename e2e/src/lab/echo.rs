//! The lab pods' workload: a tiny echo server on TCP (HTTP/1.x) and UDP that answers every
//! request with who served it (`pod`, `node`) and who asked (`client`, the peer address as
//! the pod's socket sees it). Tests read `client` to check source-IP preservation.
//!
//! It owns its two sockets and nothing else; HTTP is parsed by hand, just enough to find the
//! end of the request head.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// A request head larger than this is answered anyway, without reading further.
const MAX_HEAD: usize = 16 * 1024;
/// A client that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the echo server answers: `pod=..`, `node=..`, `client=..`, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EchoReply {
    /// `namespace/name` of the pod that served the request.
    pub pod: String,
    /// The node the pod runs on.
    pub node: String,
    /// The peer address as the pod's socket saw it (IPv4-mapped IPv6 shown as IPv4).
    pub client: SocketAddr,
}

impl EchoReply {
    /// The reply body.
    pub fn render(&self) -> String {
        format!(
            "pod={}\nnode={}\nclient={}\n",
            self.pod, self.node, self.client
        )
    }

    /// Parses a body written by [`EchoReply::render`]; `None` if a line is missing.
    pub fn parse(body: &str) -> Option<EchoReply> {
        let fields: BTreeMap<&str, &str> = body
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .collect();
        Some(EchoReply {
            pod: fields.get("pod")?.to_string(),
            node: fields.get("node")?.to_string(),
            client: fields.get("client")?.parse().ok()?,
        })
    }
}

/// A peer address in the form users expect: `::ffff:10.0.0.1` is shown as `10.0.0.1`.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// A full HTTP response carrying `body`.
fn http_response(body: &str, head_only: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body }
    )
}

/// The echo server's two bound sockets.
#[derive(Debug)]
pub struct EchoServer {
    pod: String,
    node: String,
    tcp: TcpListener,
    udp: UdpSocket,
}

impl EchoServer {
    /// Binds TCP and UDP on `ip:port`. With port 0 the UDP socket takes the TCP port's number
    /// when it can, else its own.
    pub async fn bind(ip: IpAddr, port: u16, pod: String, node: String) -> Result<EchoServer> {
        let addr = SocketAddr::new(ip, port);
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(crate::io_err(addr.to_string()))?;
        let tcp_port = tcp
            .local_addr()
            .map_err(crate::io_err(addr.to_string()))?
            .port();
        let udp = match UdpSocket::bind(SocketAddr::new(ip, tcp_port)).await {
            Ok(s) => s,
            Err(_) if port == 0 => UdpSocket::bind(addr)
                .await
                .map_err(crate::io_err(addr.to_string()))?,
            Err(e) => return Err(crate::io_err(addr.to_string())(e)),
        };
        Ok(EchoServer {
            pod,
            node,
            tcp,
            udp,
        })
    }

    pub fn tcp_addr(&self) -> Result<SocketAddr> {
        self.tcp.local_addr().map_err(crate::io_err("echo tcp"))
    }

    pub fn udp_addr(&self) -> Result<SocketAddr> {
        self.udp.local_addr().map_err(crate::io_err("echo udp"))
    }

    /// Serves until `cancel` fires. Errors on one connection or datagram are logged and
    /// never stop the server.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let EchoServer {
            pod,
            node,
            tcp,
            udp,
        } = self;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let reply = EchoReply { pod: pod.clone(), node: node.clone(), client: unmap(peer) };
                        tokio::spawn(async move {
                            if let Err(e) = answer_http(stream, &reply).await {
                                tracing::debug!(client = %reply.client, error = %e, "HTTP connection failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                received = udp.recv_from(&mut buf) => match received {
                    Ok((_, peer)) => {
                        let reply = EchoReply { pod: pod.clone(), node: node.clone(), client: unmap(peer) };
                        if let Err(e) = udp.send_to(reply.render().as_bytes(), peer).await {
                            tracing::debug!(client = %reply.client, error = %e, "UDP reply failed");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
                },
            }
        }
    }
}

/// Reads one request head (up to `\r\n\r\n`, EOF, or [`MAX_HEAD`] bytes) and answers it.
async fn answer_http(mut stream: TcpStream, reply: &EchoReply) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
            break;
        }
    }
    let head_only = head.starts_with(b"HEAD ");
    tracing::debug!(client = %reply.client, "HTTP request");
    if let Some(n) = stream_length(&head) {
        // `GET /stream/N`: N bytes of zeros, for throughput measurements.
        stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let zeros = vec![0u8; 64 * 1024];
        let mut left = n;
        while left > 0 && !head_only {
            let k = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
            stream.write_all(&zeros[..k]).await?;
            left -= k as u64;
        }
        return stream.shutdown().await;
    }
    stream
        .write_all(http_response(&reply.render(), head_only).as_bytes())
        .await?;
    stream.shutdown().await
}

/// At most this much is streamed for one request (64 GiB).
const MAX_STREAM: u64 = 64 << 30;

/// `N` of a request line `GET /stream/N ...` (capped at [`MAX_STREAM`]).
fn stream_length(head: &[u8]) -> Option<u64> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let path = line.split_whitespace().nth(1)?;
    let n: u64 = path.strip_prefix("/stream/")?.parse().ok()?;
    Some(n.min(MAX_STREAM))
}

/// Serves `pod`'s echo on `[::]:port` (dual-stack), or on `0.0.0.0:port` where IPv6 is
/// unavailable, until `cancel` fires.
pub async fn serve_echo(
    pod: String,
    node: String,
    port: u16,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let server = match EchoServer::bind(
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        port,
        pod.clone(),
        node.clone(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "cannot bind [::], falling back to IPv4 only");
            EchoServer::bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port, pod, node).await?
        }
    };
    tracing::info!(tcp = ?server.tcp_addr().ok(), udp = ?server.udp_addr().ok(), "echo server listening");
    server.run(cancel).await
}

/// The address and path of an `http://IP:PORT/PATH` URL (an IP, not a name; IPv6 in
/// brackets; the port defaults to 80).
pub fn parse_http_url(url: &str) -> Option<(SocketAddr, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = match authority.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let ip: IpAddr = authority
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(authority)
                .parse()
                .ok()?;
            SocketAddr::new(ip, 80)
        }
    };
    Some((addr, path))
}

/// One `GET` of `url` (see [`parse_http_url`]) within `timeout`; the response body.
pub async fn fetch(url: &str, timeout: Duration) -> Result<String> {
    let (addr, path) = parse_http_url(url)
        .ok_or_else(|| Error::Lab(format!("{url}: not http://IP[:PORT]/PATH")))?;
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Lab(format!("{url}: no answer within {timeout:?}")))?
        .map_err(crate::io_err(url))?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_requests_name_their_length() {
        assert_eq!(
            stream_length(b"GET /stream/1000 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(1000)
        );
        assert_eq!(
            stream_length(b"GET /stream/99999999999999 HTTP/1.0\r\n\r\n"),
            Some(MAX_STREAM)
        );
        assert_eq!(stream_length(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(stream_length(b"GET /stream/x HTTP/1.1\r\n\r\n"), None);
        assert_eq!(stream_length(b""), None);
    }

    #[test]
    fn urls_name_an_address_and_a_path() {
        assert_eq!(
            parse_http_url("http://10.0.0.1:8080/x"),
            Some(("10.0.0.1:8080".parse().unwrap(), "/x".into()))
        );
        assert_eq!(
            parse_http_url("http://10.0.0.1"),
            Some(("10.0.0.1:80".parse().unwrap(), "/".into()))
        );
        assert_eq!(
            parse_http_url("http://[fd00::1]/"),
            Some(("[fd00::1]:80".parse().unwrap(), "/".into()))
        );
        assert_eq!(
            parse_http_url("http://[fd00::1]:81/a/b"),
            Some(("[fd00::1]:81".parse().unwrap(), "/a/b".into()))
        );
        assert_eq!(parse_http_url("https://10.0.0.1/"), None);
        assert_eq!(parse_http_url("http://example.com/"), None);
    }

    #[tokio::test]
    async fn fetch_reads_an_echo_reply() {
        let server = EchoServer::bind(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            0,
            "ns/p".into(),
            "n1".into(),
        )
        .await
        .unwrap();
        let addr = server.tcp_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.run(cancel.clone()));
        let body = fetch(&format!("http://{addr}/"), Duration::from_secs(5))
            .await
            .unwrap();
        let r = EchoReply::parse(&body).unwrap();
        assert_eq!((r.pod.as_str(), r.node.as_str()), ("ns/p", "n1"));
        cancel.cancel();
        task.await.unwrap().unwrap();
        assert!(
            fetch(&format!("http://{addr}/"), Duration::from_secs(2))
                .await
                .is_err()
        );
    }

    #[test]
    fn reply_round_trips_and_unmaps_ipv4_in_ipv6() {
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:4242".parse().unwrap();
        let r = EchoReply {
            pod: "default/web-1".into(),
            node: "node1".into(),
            client: unmap(mapped),
        };
        let body = r.render();
        assert_eq!(
            body,
            "pod=default/web-1\nnode=node1\nclient=10.0.0.7:4242\n"
        );
        assert_eq!(EchoReply::parse(&body), Some(r));
        let v6: SocketAddr = "[fd00::5]:80".parse().unwrap();
        assert_eq!(unmap(v6), v6);
        assert_eq!(EchoReply::parse("pod=x\nnode=y\n"), None);
    }

    #[test]
    fn head_requests_get_headers_only() {
        let full = http_response("pod=a\n", false);
        assert!(full.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(full.contains("Content-Length: 6\r\n"));
        assert!(full.contains("Connection: close\r\n"));
        assert!(full.ends_with("\r\n\r\npod=a\n"));
        assert!(http_response("pod=a\n", true).ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn answers_http_and_udp_with_pod_node_and_client() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let server = EchoServer::bind(lo, 0, "default/echo-a".into(), "node2".into())
            .await
            .unwrap();
        let (tcp_addr, udp_addr) = (server.tcp_addr().unwrap(), server.udp_addr().unwrap());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(server.run(cancel.clone()));

        // HTTP, with the request head split over two writes.
        let mut conn = TcpStream::connect(tcp_addr).await.unwrap();
        let local = conn.local_addr().unwrap();
        conn.write_all(b"GET /any/path HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conn.write_all(b"\r\n").await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        let reply = EchoReply::parse(body).unwrap();
        assert_eq!(reply.pod, "default/echo-a");
        assert_eq!(reply.node, "node2");
        assert_eq!(reply.client, local);

        // UDP.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(b"hello", udp_addr).await.unwrap();
        let mut buf = [0u8; 1024];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, udp_addr);
        let body = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(body.lines().any(|l| l == "pod=default/echo-a"), "{body}");
        assert!(body.lines().any(|l| l == "node=node2"), "{body}");
        assert_eq!(
            EchoReply::parse(body).unwrap().client,
            sock.local_addr().unwrap()
        );

        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serve_echo_listens_dual_stack_on_the_given_port() {
        let port = crate::process::free_port().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve_echo("ns/p".into(), "n".into(), port, cancel.clone()));
        let mut response = String::new();
        for _ in 0..100 {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await {
                c.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
                c.read_to_string(&mut response).await.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            response.contains("\r\n\r\npod=ns/p\nnode=n\nclient=127.0.0.1:"),
            "{response}"
        );
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
