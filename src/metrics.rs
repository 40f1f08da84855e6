//! `--metrics-listen ADDR:PORT`: a separate plain-HTTP listener (meant for an internal address) that serves
//! `GET /metrics` in the Prometheus text format: the registries of the tiers this process runs (each tier
//! keeps its own: `portico_webapp_*`, `portico_bridge_*`, `portico_agent_*`) and the process's own
//! resources (`portico_process_*`, read from /proc/self at each scrape). Off unless asked; with
//! `--metrics-token` a scrape must send `Authorization: Bearer TOKEN`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use portico_proto::metrics::{CONTENT_TYPE, Gauge, Registry};
use sha2::Digest as _;
use tokio::net::TcpListener;

type Refresh = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What one scrape renders: the tiers' registries (refreshed first) and the process's resources.
pub struct Exporter {
    registries: Vec<Arc<Registry>>,
    refreshers: Vec<Refresh>,
    process: Process,
    /// SHA-256 of the bearer token a scrape must present (compared as digests).
    token: Option<[u8; 32]>,
    /// One scrape at a time: a refresh and its rendering are not interleaved with another's.
    busy: tokio::sync::Mutex<()>,
}

impl Exporter {
    pub fn new(token: Option<&str>) -> Self {
        Exporter {
            registries: Vec::new(),
            refreshers: Vec::new(),
            process: Process::new(),
            token: token.map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Render `registry` at every scrape.
    pub fn registry(&mut self, registry: Arc<Registry>) -> &mut Self {
        self.registries.push(registry);
        self
    }

    /// Run `f` before every scrape (values read at scrape time: the database, pools, queues).
    pub fn refresh<F, Fut>(&mut self, f: F) -> &mut Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.refreshers.push(Box::new(move || Box::pin(f())));
        self
    }

    pub async fn scrape(&self) -> String {
        let _one = self.busy.lock().await;
        let started = Instant::now();
        for r in &self.refreshers {
            r().await;
        }
        self.process.refresh();
        let mut out = String::with_capacity(16 * 1024);
        for r in &self.registries {
            r.render_into(&mut out);
        }
        self.process.scrape_seconds.set(started.elapsed().as_secs_f64());
        self.process.registry.render_into(&mut out);
        out
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.token else { return true };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| <[u8; 32]>::from(sha2::Sha256::digest(t.trim().as_bytes())));
        given.as_ref() == Some(want)
    }
}

/// The tiers this process runs, whose metrics the listener serves.
#[derive(Default)]
pub struct Tiers<'a> {
    pub webapp: Option<&'a portico_webapp::AppState>,
    pub bridge: Option<&'a Arc<portico_bridge::Bridge>>,
    pub agent: Option<Arc<portico_agent::metrics::AgentMetrics>>,
}

/// Start the metrics listener of `tiers` when `--metrics-listen` asks for one; nothing otherwise.
pub async fn start(settings: &crate::config::Settings, tiers: Tiers<'_>) -> anyhow::Result<()> {
    let Some(listener) = bind(settings.metrics_listen.as_deref()).await? else {
        return Ok(());
    };
    let mut e = Exporter::new(settings.metrics_token.as_deref().filter(|t| !t.is_empty()));
    if let Some(st) = tiers.webapp {
        e.registry(st.metrics.registry.clone());
        let st = st.clone();
        e.refresh(move || {
            let st = st.clone();
            async move { st.metrics.refresh(&st).await }
        });
    }
    if let Some(bridge) = tiers.bridge {
        let metrics = bridge.registry.metrics.clone();
        e.registry(metrics.registry.clone());
        e.refresh(move || {
            metrics.refresh();
            std::future::ready(())
        });
    }
    if let Some(agent) = tiers.agent {
        e.registry(agent.registry.clone());
    }
    serve(listener, e)
}

/// Bind the metrics listener when `--metrics-listen` asks for one (`None`: no listener at all).
pub async fn bind(addr: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr.filter(|a| !a.trim().is_empty()) else {
        return Ok(None);
    };
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .with_context(|| format!("invalid --metrics-listen address {addr:?} (expected IP:PORT)"))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr} for metrics"))?;
    Ok(Some(listener))
}

/// Serve `GET /metrics` from `exporter` on `listener` (plain HTTP) until the process ends.
pub fn serve(listener: TcpListener, exporter: Exporter) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    if exporter.token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(listen = %local, "Metrics are served without a token on a non-loopback address: keep it internal, or set --metrics-token");
    }
    // Tests and scripts read this line.
    println!("portico metrics listening on http://{local}/metrics");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(exporter));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "Metrics listener stopped");
        }
    });
    Ok(())
}

async fn metrics(State(exporter): State<Arc<Exporter>>, headers: HeaderMap) -> Response {
    if !exporter.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "missing or wrong metrics token\n",
        )
            .into_response();
    }
    let body = exporter.scrape().await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// The process's resources, from /proc/self (Linux).
struct Process {
    registry: Registry,
    rss: Gauge,
    vms: Gauge,
    threads: Gauge,
    fds: Gauge,
    max_fds: Gauge,
    scrape_seconds: Gauge,
}

impl Process {
    fn new() -> Self {
        let registry = Registry::new();
        let info = registry.gauge_vec(
            "portico_build_info",
            "Always 1; the version of the portico binary in a label.",
            &["version"],
        );
        info.with(&[env!("CARGO_PKG_VERSION")]).set(1.0);
        Process {
            rss: registry.gauge(
                "portico_process_resident_memory_bytes",
                "Resident memory of the process (VmRSS).",
            ),
            vms: registry.gauge(
                "portico_process_virtual_memory_bytes",
                "Virtual memory of the process (VmSize).",
            ),
            threads: registry.gauge("portico_process_threads", "Threads of the process."),
            fds: registry.gauge("portico_process_open_fds", "Open file descriptors (sockets included)."),
            max_fds: registry.gauge("portico_process_max_fds", "The soft limit of open file descriptors."),
            scrape_seconds: registry.gauge(
                "portico_metrics_scrape_duration_seconds",
                "How long this scrape took to refresh and render the tiers' metrics (the cost of a scrape).",
            ),
            registry,
        }
    }

    fn refresh(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let s = parse_status(&status);
            self.rss.set(s.rss_bytes as f64);
            self.vms.set(s.vm_bytes as f64);
            self.threads.set(s.threads as f64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of them.
            self.fds.set(dir.count().saturating_sub(1) as f64);
        }
        if let Some(n) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| parse_max_open_files(&l))
        {
            self.max_fds.set(n as f64);
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Status {
    rss_bytes: u64,
    vm_bytes: u64,
    threads: u64,
}

/// VmRSS, VmSize (kB) and Threads of /proc/self/status.
fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let n = || {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match key {
            "VmRSS" => s.rss_bytes = n() * 1024,
            "VmSize" => s.vm_bytes = n() * 1024,
            "Threads" => s.threads = n(),
            _ => {}
        }
    }
    s
}

/// The soft limit of "Max open files" in /proc/self/limits.
fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_and_limits_are_parsed() {
        let status = "Name:\tportico\nVmSize:\t  123456 kB\nVmRSS:\t   20480 kB\nThreads:\t17\n";
        assert_eq!(
            parse_status(status),
            Status {
                rss_bytes: 20480 * 1024,
                vm_bytes: 123456 * 1024,
                threads: 17
            }
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1_048_576));
        assert_eq!(parse_max_open_files("nothing"), None);
    }

    #[tokio::test]
    async fn a_scrape_renders_every_registry_and_the_process_and_checks_the_token() {
        let tier = Arc::new(Registry::new());
        let c = tier.counter("portico_test_things_total", "Things.");
        let mut e = Exporter::new(Some("s3cret"));
        e.registry(tier.clone());
        let seen = c.clone();
        e.refresh(move || {
            let seen = seen.clone();
            async move { seen.inc() }
        });
        let text = e.scrape().await;
        assert!(text.contains("portico_test_things_total 1\n"), "{text}");
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("portico_process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(rss > 1e6, "{text}");
        assert!(text.contains("# TYPE portico_process_open_fds gauge\n"), "{text}");
        let mut h = HeaderMap::new();
        assert!(!e.authorized(&h));
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!e.authorized(&h));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(e.authorized(&h));
        assert!(Exporter::new(None).authorized(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn no_listener_unless_asked() {
        assert!(bind(None).await.unwrap().is_none());
        assert!(bind(Some("")).await.unwrap().is_none());
        assert!(bind(Some("not-an-address")).await.is_err());
        let l = bind(Some("127.0.0.1:0")).await.unwrap().unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
    }
}
