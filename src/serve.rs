//! HTTPS serving for every tier: TLS material (given, or self-signed on first start) and one accept loop
//! that hands each connection to hyper with WebSocket upgrades enabled.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use portico_proto::proxy;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use crate::config::{Settings, write_private};

pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Hex SHA-256 of the leaf certificate (what a bridge pins with --webapp-cert-sha256).
    pub fingerprint: String,
}

/// Load the configured certificate, or generate (once) a self-signed one in the data directory.
pub fn tls(settings: &Settings) -> anyhow::Result<Tls> {
    let (cert_path, key_path) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let dir = settings.data_dir().join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                generate_self_signed(&dir, &c, &k)?;
            }
            (c, k)
        }
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("read certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse certificate {}", cert_path.display()))?;
    let leaf = certs
        .first()
        .with_context(|| format!("no certificate in {}", cert_path.display()))?;
    let fingerprint = hex::encode(sha2::Sha256::digest(leaf.as_ref()));
    let key =
        PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("read private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    // HTTP/1.1 only: browsers then carry WebSockets over plain upgrades.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    })
}

fn generate_self_signed(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    crate::config::private_dir(dir)?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).context("generate a self-signed certificate")?;
    std::fs::write(cert, ck.cert.pem()).with_context(|| format!("write {}", cert.display()))?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes())?;
    tracing::info!(path = %cert.display(), "Generated a self-signed certificate");
    Ok(())
}

/// How the listener treats connections: which peers are trusted proxies (their PROXY protocol v2 header
/// and `X-Forwarded-For` name the real client), connection caps, and the time a request head may take.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub trusted_proxies: Vec<Cidr>,
    /// Open connections (WebSockets included) in total.
    pub max_connections: usize,
    /// Open connections of one client address (not applied to trusted proxies themselves).
    pub max_connections_per_client: usize,
    /// A request head (or a TLS handshake, or a PROXY header) must arrive within this time.
    pub header_timeout: Duration,
    /// In-flight requests may finish within this time after a shutdown signal.
    pub drain_timeout: Duration,
    /// After a shutdown signal, keep serving this long with `draining` set (the health check answers 503)
    /// so that load balancers take this instance out before it stops accepting.
    pub shutdown_delay: Duration,
    /// Set when a shutdown signal arrives (shared with the webapp's health check).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// When set, the shutdown delay ends early once this says there is nothing left to wait for (a
    /// bridge without live sessions).
    pub idle: Option<IdleCheck>,
    /// A drain asked from elsewhere (an administrator through the control plane): like a signal, with
    /// the delay it carries instead of `shutdown_delay`.
    pub drain_order: Option<tokio::sync::watch::Receiver<Option<Duration>>>,
}

/// "Is there nothing left to drain?"
#[derive(Clone)]
pub struct IdleCheck(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for IdleCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdleCheck")
    }
}

impl Default for Frontend {
    fn default() -> Self {
        Frontend {
            trusted_proxies: Vec::new(),
            max_connections: 4096,
            max_connections_per_client: 256,
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            draining: Arc::default(),
            idle: None,
            drain_order: None,
        }
    }
}

impl Frontend {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client behind `X-Forwarded-For` of a request from the trusted proxy `peer`: the rightmost
    /// address that is not itself a trusted proxy (the ones left of it may be forged by the client).
    fn forwarded_client(&self, headers: &hyper::HeaderMap) -> Option<IpAddr> {
        let mut hops: Vec<IpAddr> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            for part in v.to_str().ok()?.split(',') {
                hops.push(part.trim().parse().ok()?);
            }
        }
        hops.iter()
            .rev()
            .find(|ip| !self.trusts(**ip))
            .or(hops.first())
            .copied()
    }
}

/// An address block (`10.0.0.0/8`, `::1/128`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Cidr> {
        let (addr, prefix) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let net: IpAddr = addr.parse().with_context(|| format!("invalid address in {s:?}"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .with_context(|| format!("invalid prefix length in {s:?}"))?
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip.to_canonical() {
                IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
                IpAddr::V6(a) => (u128::from(a), 128),
            }
        };
        let ((net, net_len), (ip, ip_len)) = (bits(self.net), bits(ip));
        if net_len != ip_len {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == ip & mask
    }
}

/// Open connections, in total and per client address; a slot is released when its [`Slot`] drops.
#[derive(Default)]
struct Connections {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

struct Slot {
    conns: Arc<Connections>,
    client: Option<IpAddr>,
}

impl Connections {
    fn take_total(self: &Arc<Self>, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()?;
        Some(Slot {
            conns: self.clone(),
            client: None,
        })
    }

    fn count_client(&self, slot: &mut Slot, client: IpAddr, max: usize) -> bool {
        let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(client).or_default();
        if *n >= max {
            return false;
        }
        *n += 1;
        slot.client = Some(client);
        true
    }

    fn open(&self) -> usize {
        self.total.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(c) = self.client {
            let mut map = self.conns.per_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&c) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&c);
                }
            }
        }
    }
}

/// A stream that holds its connection slot for as long as it lives (also after a WebSocket upgrade).
struct Counted<T> {
    io: T,
    _slot: Slot,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Read a PROXY protocol v2 header if the stream starts with one (only called for trusted proxies); the
/// bytes after it are left unread. `Ok(None)`: no header (a proxy that does not send one). A TLS stream
/// starts with 0x16, a PROXY v2 header with 0x0D: one peeked byte tells them apart.
async fn read_proxy_header(tcp: &mut TcpStream) -> anyhow::Result<Option<SocketAddr>> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await.context("read the connection")?;
    anyhow::ensure!(n > 0, "connection closed before its first bytes");
    if first[0] != proxy::SIGNATURE[0] {
        return Ok(None);
    }
    let mut header = vec![0u8; proxy::FIXED_LEN];
    tcp.read_exact(&mut header)
        .await
        .context("read the proxy protocol header")?;
    anyhow::ensure!(proxy::maybe_header(&header), "not a proxy protocol v2 header");
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    anyhow::ensure!(len <= proxy::MAX_PAYLOAD, "proxy protocol header too long");
    header.resize(proxy::FIXED_LEN + len, 0);
    tcp.read_exact(&mut header[proxy::FIXED_LEN..])
        .await
        .context("read the proxy protocol header")?;
    let parsed = proxy::parse(&header)?.context("incomplete proxy protocol header")?;
    Ok(parsed.source)
}

/// Serve `app` on every TLS connection until SIGTERM or SIGINT; then stop accepting, ask every
/// connection to finish its request in flight, and return the [`Draining`] to wait for them.
pub async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    app: Router,
    frontend: Frontend,
) -> anyhow::Result<Draining> {
    let frontend = Arc::new(frontend);
    let conns = Arc::new(Connections::default());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listen for SIGTERM")?;
    // Set at the signal: from then on the health check fails, and accepting stops at this instant.
    let mut stop_at: Option<tokio::time::Instant> = None;
    let mut drain_order = frontend.drain_order.clone();
    loop {
        let ordered = async {
            match drain_order.as_mut() {
                Some(rx) => rx.wait_for(Option::is_some).await.ok().and_then(|d| *d),
                None => std::future::pending().await,
            }
        };
        let signalled = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(delay) = ordered, if stop_at.is_none() => {
                frontend.draining.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(?delay, "Drain ordered: no new sessions, stopping once nothing is left");
                stop_at = Some(tokio::time::Instant::now() + delay);
                continue;
            }
            _ = signalled, if stop_at.is_none() => {
                frontend.draining.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(delay = ?frontend.shutdown_delay, "Shutdown signal: draining (health check 503), then no new connections");
                stop_at = Some(tokio::time::Instant::now() + frontend.shutdown_delay);
                continue;
            }
            _ = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if stop_at.is_some() => break,
            // Draining with nothing left (checked every 200 ms): stop now rather than at the deadline.
            _ = tokio::time::sleep(Duration::from_millis(200)), if stop_at.is_some() && frontend.idle.is_some() => {
                if frontend.idle.as_ref().is_some_and(|idle| (idle.0)()) {
                    tracing::info!("Drained: nothing left, stopping before the deadline");
                    break;
                }
                continue;
            }
        };
        let (mut tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(mut slot) = conns.take_total(frontend.max_connections) else {
            tracing::warn!(%peer, max = frontend.max_connections, "Connection refused: too many connections");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls, frontend, conns, mut stop) =
            (app.clone(), tls.clone(), frontend.clone(), conns.clone(), stop.clone());
        tokio::spawn(async move {
            let from_proxy = frontend.trusts(peer.ip());
            let mut client = peer;
            let mut proxied = false;
            if from_proxy {
                match tokio::time::timeout(frontend.header_timeout, read_proxy_header(&mut tcp)).await {
                    Ok(Ok(Some(source))) => (client, proxied) = (source, true),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => return tracing::debug!(%peer, error = format!("{e:#}"), "Bad proxy protocol header"),
                    Err(_) => return tracing::debug!(%peer, "Proxy protocol header timed out"),
                }
            }
            // A trusted proxy without a PROXY header carries many clients on its connections: not capped per client.
            let per_client = !from_proxy || proxied;
            if per_client && !conns.count_client(&mut slot, client.ip(), frontend.max_connections_per_client) {
                return tracing::warn!(client = %client.ip(), max = frontend.max_connections_per_client, "Connection refused: too many connections from one client");
            }
            let stream = match tokio::time::timeout(frontend.header_timeout, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%client, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%client, "TLS handshake timed out"),
            };
            // A trusted proxy without a PROXY header names each request's client in X-Forwarded-For.
            let forwarded = from_proxy && !proxied;
            let front = frontend.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                let addr = match forwarded.then(|| front.forwarded_client(req.headers())).flatten() {
                    Some(ip) => SocketAddr::new(ip, 0),
                    None => client,
                };
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
                app.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(frontend.header_timeout);
            let io = TokioIo::new(Counted {
                io: stream,
                _slot: slot,
            });
            let conn = builder.serve_connection(io, svc).with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%client, error = %e, "Connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(
        open = conns.open(),
        "Shutting down: no new connections, letting requests finish"
    );
    Ok(Draining {
        conns,
        deadline: tokio::time::Instant::now() + frontend.drain_timeout,
        _stop: stop_tx,
    })
}

/// The listener has stopped accepting; connections still open finish (see [`Draining::finish`]).
pub struct Draining {
    conns: Arc<Connections>,
    deadline: tokio::time::Instant,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Draining {
    /// Wait until every connection has ended (WebSockets end with their sessions, which the caller closes
    /// first), at most until the drain deadline.
    pub async fn finish(self) {
        while self.conns.open() > 0 && tokio::time::Instant::now() < self.deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_forwarded_for() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.9.8.7".parse().unwrap()) && !c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()), "v4-mapped");
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err() && "x/8".parse::<Cidr>().is_err());
        let f = Frontend {
            trusted_proxies: vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
            ..Frontend::default()
        };
        let xff = |v: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().unwrap());
            f.forwarded_client(&h)
        };
        // The client may prepend anything; the rightmost untrusted hop is the one the proxy saw.
        assert_eq!(
            xff("6.6.6.6, 203.0.113.9, 10.0.0.2"),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(xff("10.0.0.3"), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(xff("not-an-ip"), None);
    }
}
