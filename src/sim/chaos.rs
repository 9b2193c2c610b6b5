//! A TCP proxy that fails on demand, put between the service and a dependency (Redis,
//! RabbitMQ) to show what an outage, a partition or a slow link does: `cut` resets every open
//! connection and refuses new ones until `heal`; `delay` holds each chunk in both directions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Links {
    cut: bool,
    delay: Duration,
    /// Cancelled by `cut`, ending every connection open now.
    open: CancellationToken,
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// Connections reset or refused by `cut`.
    pub refused: Arc<std::sync::atomic::AtomicU64>,
    links: Arc<Mutex<Links>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let links = Arc::new(Mutex::new(Links::default()));
        let stop = CancellationToken::new();
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (l, s, r) = (links.clone(), stop.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let (cut, delay, open) = {
                    let g = l.lock();
                    (g.cut, g.delay, g.open.clone())
                };
                if cut {
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream, delay, open));
            }
        });
        Ok(Proxy {
            addr,
            refused,
            links,
            stop,
        })
    }

    /// Resets every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut g = self.links.lock();
        g.cut = true;
        g.open.cancel();
        g.open = CancellationToken::new();
    }

    pub fn heal(&self) {
        self.links.lock().cut = false;
    }

    /// Holds each chunk this long, in both directions, on connections opened from now on.
    pub fn delay(&self, d: Duration) {
        self.links.lock().delay = d;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.links.lock().open.cancel();
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    open: CancellationToken,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = open.cancelled() => {}
        _ = pipe(cr, sw, delay) => {}
        _ = pipe(sr, cw, delay) => {}
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
