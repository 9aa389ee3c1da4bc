//! A loopback TCP proxy that can cut the line, for outage tests: put it in front of PostgreSQL or
//! RabbitMQ, point the service under test at [`FaultProxy::addr`], and [`FaultProxy::cut`] makes
//! the dependency vanish — every open connection is dropped at once and new ones are accepted and
//! closed immediately (the client sees EOF, as after a server crash) — until
//! [`FaultProxy::restore`]. The real service is never touched, so other tests sharing it go on.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// Whether the line is cut, and how many cuts there were: a connection ends when the count moves
/// past the one it was accepted under, even if a restore came before its task looked.
#[derive(Debug, Clone, Copy, Default)]
struct Line {
    cut: bool,
    cuts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    cut: AtomicU64,
    refused: AtomicU64,
}

/// Connection counts since the proxy started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections forwarded to the upstream (refused ones not included).
    pub accepted: u64,
    /// Forwarded connections that a [`FaultProxy::cut`] dropped.
    pub cut: u64,
    /// Connections accepted and closed at once because the line was cut.
    pub refused: u64,
}

/// See the module documentation. Dropping it stops the proxy and closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    line: watch::Sender<Line>,
    counters: Arc<Counters>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the fault proxy on loopback");
        let addr = listener.local_addr().expect("proxy address");
        let (line, _) = watch::channel(Line::default());
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(listener, upstream, line.clone(), counters.clone()));
        Self { addr, upstream, line, counters, accept_task }
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `url` with its `host:port` of the upstream replaced by the proxy's (e.g. a `DATABASE_URL`).
    pub fn rewrite_url(&self, url: &str) -> String {
        let upstream = self.upstream.to_string();
        assert!(url.contains(&upstream), "{url} does not name the proxy's upstream {upstream}");
        url.replacen(&upstream, &self.addr.to_string(), 1)
    }

    /// Drops every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        tracing::info!(proxy = %self.addr, upstream = %self.upstream, "fault proxy: line cut");
        self.line.send_modify(|line| {
            line.cut = true;
            line.cuts += 1;
        });
    }

    /// Lets new connections through again (the dropped ones stay dropped).
    pub fn restore(&self) {
        tracing::info!(proxy = %self.addr, upstream = %self.upstream, "fault proxy: line restored");
        self.line.send_modify(|line| line.cut = false);
    }

    pub fn is_cut(&self) -> bool {
        self.line.borrow().cut
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            cut: self.counters.cut.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The connection tasks end when the sender goes (their `changed()` fails).
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, line: watch::Sender<Line>, counters: Arc<Counters>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off a little rather than spin.
                tracing::warn!(%error, "fault proxy: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut watch = line.subscribe();
        let now = *watch.borrow_and_update();
        if now.cut {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut client = client;
            let mut server = match TcpStream::connect(upstream).await {
                Ok(server) => server,
                Err(error) => {
                    tracing::warn!(%error, %upstream, "fault proxy: upstream unreachable");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                result = tokio::io::copy_bidirectional(&mut client, &mut server) => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "fault proxy: connection ended with an error");
                    }
                }
                // Cut (or the proxy dropped): both sockets close when this task returns.
                _ = watch.wait_for(|line| line.cuts != now.cuts) => {
                    counters.cut.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// An echo server on loopback; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo server");
        let addr = listener.local_addr().expect("echo address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("write through the proxy");
        let mut reply = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
            .await
            .expect("echo within 5 s")
            .expect("read the echo");
        reply
    }

    /// Reads until the connection ends; true if it ended (EOF or reset) within [`WAIT`].
    async fn ends(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => panic!("expected the connection to end, read {n} bytes"),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn forwards_bytes_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut a = TcpStream::connect(proxy.addr()).await.expect("connect a");
        let mut b = TcpStream::connect(proxy.addr()).await.expect("connect b");
        assert_eq!(round_trip(&mut a, b"hello").await, b"hello");
        assert_eq!(round_trip(&mut b, b"second connection").await, b"second connection");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut a, &big).await, big, "large payloads arrive intact");
        assert_eq!(proxy.stats(), ProxyStats { accepted: 2, cut: 0, refused: 0 });
        assert!(!proxy.is_cut());
    }

    #[tokio::test]
    async fn cut_ends_open_connections_and_refuses_new_ones_until_restored() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut open, b"before").await, b"before");

        proxy.cut();
        assert!(proxy.is_cut());
        assert!(ends(&mut open).await, "an open connection ends when the line is cut");

        // A new connection is accepted by the kernel but closed at once, never reaching upstream.
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("the proxy still listens");
        let _ = refused.write_all(b"anyone?").await;
        assert!(ends(&mut refused).await, "a connection during the cut is closed without an echo");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect after restore");
        assert_eq!(round_trip(&mut again, b"after").await, b"after");
        assert_eq!(proxy.stats(), ProxyStats { accepted: 2, cut: 1, refused: 1 });
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client_connection() {
        // A port that was free a moment ago: nothing listens there.
        let dead: SocketAddr = format!("127.0.0.1:{}", crate::free_port()).parse().expect("addr");
        let proxy = FaultProxy::start(dead).await;
        let mut client = TcpStream::connect(proxy.addr()).await.expect("the proxy accepts");
        assert!(ends(&mut client).await, "the client sees the connection end, not a hang");
        assert_eq!(proxy.stats().accepted, 1);
    }

    #[tokio::test]
    async fn rewrite_url_swaps_the_upstream_for_the_proxy() {
        let upstream: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
        let proxy = FaultProxy::start(upstream).await;
        let url = proxy.rewrite_url("postgres://root@127.0.0.1:5432/vc_test_1");
        assert_eq!(url, format!("postgres://root@{}/vc_test_1", proxy.addr()));
    }

    #[tokio::test]
    #[should_panic(expected = "does not name the proxy's upstream")]
    async fn rewrite_url_refuses_a_url_for_another_server() {
        let proxy = FaultProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
        let _ = proxy.rewrite_url("amqp://guest:guest@127.0.0.1:5672/%2f");
    }
}
