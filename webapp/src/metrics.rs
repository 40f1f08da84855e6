//! The webapp's metrics: one [`Registry`] and its typed handles (see `portico_proto::metrics`): HTTP
//! latency per route template (one middleware layer over the router, [`layer`]), the health check's
//! database round trip, and what is read at scrape time ([`WebappMetrics::refresh`]): sessions by state
//! and protocol, agents and their capacity, workspace containers, the database pool and the event queues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use portico_proto::metrics::{CounterVec, Gauge, GaugeVec, Histogram, HistogramVec, LATENCY_BUCKETS, Registry};

use crate::AppState;

/// The longest a scrape waits for its database reads.
const SCRAPE_DB_BUDGET: Duration = Duration::from_millis(800);

pub struct WebappMetrics {
    pub registry: Arc<Registry>,
    http_seconds: HistogramVec,
    http_requests: CounterVec,
    /// The health check's database round trip, by result (`ok`, `error`, `timeout`).
    pub health_db_seconds: HistogramVec,
    sessions: GaugeVec,
    agents: GaugeVec,
    bridges: GaugeVec,
    agent_cores: GaugeVec,
    agent_memory: GaugeVec,
    agent_used_memory: GaugeVec,
    agent_workspaces: GaugeVec,
    containers: GaugeVec,
    pool: GaugeVec,
    pool_max: Gauge,
    events_queue: GaugeVec,
    events_dropped: CounterVec,
    events_capacity: Gauge,
    scrape_db_seconds: Histogram,
    scrape_db_ok: Gauge,
}

impl std::fmt::Debug for WebappMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebappMetrics")
    }
}

impl Default for WebappMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WebappMetrics {
    pub fn new() -> Self {
        let r = Arc::new(Registry::new());
        WebappMetrics {
            http_seconds: r.histogram_vec(
                "portico_webapp_http_request_duration_seconds",
                "Time to answer an HTTP request (to the response head), by method and route template (fallback: the web client's files and unknown paths).",
                &["method", "route"],
                LATENCY_BUCKETS,
            ),
            http_requests: r.counter_vec(
                "portico_webapp_http_requests_total",
                "HTTP requests answered, by method, route template and status code.",
                &["method", "route", "status"],
            ),
            health_db_seconds: r.histogram_vec(
                "portico_webapp_healthcheck_db_seconds",
                "The health check's database round trip, by result (ok, error, timeout: the 0.8 s budget ran out).",
                &["result"],
                LATENCY_BUCKETS,
            ),
            sessions: r.gauge_vec(
                "portico_webapp_sessions",
                "Sessions that have not ended, by state (pending: token not claimed yet; active) and protocol, read from the database at scrape time.",
                &["state", "protocol"],
            ),
            agents: r.gauge_vec(
                "portico_webapp_agents",
                "Registered Docker agents by state (healthy, draining, down: three heartbeats missed), from the database at scrape time.",
                &["state"],
            ),
            bridges: r.gauge_vec(
                "portico_webapp_bridges",
                "Bridges by state (healthy, draining, down: silent for the down window and not restarted under its name since; stopped, replaced and revoked identities are not counted), from the database at scrape time.",
                &["state"],
            ),
            agent_cores: r.gauge_vec(
                "portico_webapp_agent_cores",
                "CPU cores each healthy agent offers.",
                &["agent"],
            ),
            agent_memory: r.gauge_vec(
                "portico_webapp_agent_memory_bytes",
                "Memory each healthy agent offers to workspaces.",
                &["agent"],
            ),
            agent_used_memory: r.gauge_vec(
                "portico_webapp_agent_used_memory_bytes",
                "Memory of each healthy agent taken by its starting and ready workspaces.",
                &["agent"],
            ),
            agent_workspaces: r.gauge_vec(
                "portico_webapp_agent_workspaces",
                "Workspace containers running on each agent, as it last reported.",
                &["agent"],
            ),
            containers: r.gauge_vec(
                "portico_webapp_workspaces",
                "Workspace containers wanted, by state (starting, ready).",
                &["state"],
            ),
            pool: r.gauge_vec(
                "portico_webapp_db_pool_connections",
                "Database pool connections, by state (idle, in_use).",
                &["state"],
            ),
            pool_max: r.gauge(
                "portico_webapp_db_pool_max_connections",
                "Most connections the database pool opens.",
            ),
            events_queue: r.gauge_vec(
                "portico_webapp_event_queue_depth",
                "Events waiting in a sink's queue (database, or a forwarder's target).",
                &["sink"],
            ),
            events_dropped: r.counter_vec(
                "portico_webapp_events_dropped_total",
                "Events dropped because a sink's queue was full.",
                &["sink"],
            ),
            events_capacity: r.gauge(
                "portico_webapp_event_queue_capacity",
                "Events each sink's queue holds at most.",
            ),
            scrape_db_seconds: r.histogram(
                "portico_webapp_metrics_db_seconds",
                "Time the scrape's database reads took.",
                LATENCY_BUCKETS,
            ),
            scrape_db_ok: r.gauge(
                "portico_webapp_metrics_db_ok",
                "1 when the last scrape could read the database (sessions, agents, workspaces are current), else 0.",
            ),
            registry: r,
        }
    }

    fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_seconds.with(&[method, route]).observe_duration(elapsed);
        self.http_requests.with(&[method, route, &status.to_string()]).inc();
    }

    /// Read what lives outside the registry, before a scrape: the pool and event queues (memory), then
    /// sessions, agents and workspaces from the database (at most [`SCRAPE_DB_BUDGET`]; on failure they
    /// keep their last values and `portico_webapp_metrics_db_ok` says 0).
    pub async fn refresh(&self, st: &AppState) {
        let pool = &st.db.pool;
        let (size, idle) = (f64::from(pool.size()), pool.num_idle() as f64);
        self.pool.with(&["idle"]).set(idle);
        self.pool.with(&["in_use"]).set((size - idle).max(0.0));
        self.pool_max.set(f64::from(pool.options().get_max_connections()));
        let stats = st.events.stats();
        self.events_capacity.set(crate::events::QUEUE as f64);
        for (sink, depth, dropped) in &stats.sinks {
            self.events_queue.with(&[sink]).set(*depth as f64);
            self.events_dropped.with(&[sink]).set_total(*dropped);
        }
        let started = Instant::now();
        let read = tokio::time::timeout(SCRAPE_DB_BUDGET, self.read_db(st)).await;
        self.scrape_db_seconds.observe_duration(started.elapsed());
        match read {
            Ok(Ok(())) => self.scrape_db_ok.set(1.0),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Metrics: cannot read the database");
                self.scrape_db_ok.set(0.0);
            }
            Err(_) => {
                tracing::debug!(budget = ?SCRAPE_DB_BUDGET, "Metrics: the database did not answer in time");
                self.scrape_db_ok.set(0.0);
            }
        }
    }

    async fn read_db(&self, st: &AppState) -> sqlx::Result<()> {
        let sessions = st.db.count_live_sessions().await?;
        let containers = st.db.count_live_containers().await?;
        let now = crate::now_unix();
        let alive_since = st.agents_alive_since(now);
        let agents = st.db.list_agents().await?;
        let loads = st.db.agent_loads(alive_since).await?;

        self.sessions.clear();
        for state in ["pending", "active"] {
            for protocol in ["ssh", "vnc", "rdp", "container"] {
                self.sessions.with(&[state, protocol]).set(0.0);
            }
        }
        for (state, protocol, n) in &sessions {
            self.sessions.with(&[state, protocol]).set(*n as f64);
        }
        self.containers.clear();
        for state in ["starting", "ready"] {
            self.containers.with(&[state]).set(0.0);
        }
        for (state, n) in &containers {
            self.containers.with(&[state]).set(*n as f64);
        }
        let bridges_alive_since = st.bridges_alive_since(now);
        let bridges = st.db.list_bridges().await?;
        let states = crate::bridge_states(&bridges, bridges_alive_since);
        for state in ["healthy", "draining", "down"] {
            let n = states.iter().filter(|s| **s == state).count();
            self.bridges.with(&[state]).set(n as f64);
        }
        self.agents.clear();
        self.agent_workspaces.clear();
        let (mut healthy, mut draining, mut down) = (0u32, 0u32, 0u32);
        for a in agents.iter().filter(|a| a.registered_at.is_some()) {
            let alive = a.state == "healthy" && a.last_heartbeat_at.is_some_and(|t| t >= alive_since);
            match (alive, a.draining_at.is_some()) {
                (false, _) => down += 1,
                (true, true) => draining += 1,
                (true, false) => healthy += 1,
            }
            if alive {
                self.agent_workspaces.with(&[&a.name]).set(a.running as f64);
            }
        }
        self.agents.with(&["healthy"]).set(f64::from(healthy));
        self.agents.with(&["draining"]).set(f64::from(draining));
        self.agents.with(&["down"]).set(f64::from(down));
        for g in [&self.agent_cores, &self.agent_memory, &self.agent_used_memory] {
            g.clear();
        }
        const MIB: f64 = 1024.0 * 1024.0;
        for l in &loads {
            self.agent_cores.with(&[&l.name]).set(l.cores as f64);
            self.agent_memory.with(&[&l.name]).set(l.memory_mb as f64 * MIB);
            self.agent_used_memory
                .with(&[&l.name])
                .set(l.used_memory_mb as f64 * MIB);
        }
        Ok(())
    }
}

/// Time every request of `router` by its route template: one layer over the whole router, never per
/// handler. Requests that match no route (the web client's files) count as `fallback`.
pub fn layer(router: Router<AppState>, metrics: Arc<WebappMetrics>) -> Router<AppState> {
    router.layer(middleware::from_fn_with_state(metrics, track))
}

async fn track(State(m): State<Arc<WebappMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "fallback".to_owned(), |p| p.as_str().to_owned());
    // Only the methods the API uses: anything else is one series, whatever a client sends.
    let method = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let res = next.run(req).await;
    m.request(method, &route, res.status().as_u16(), started.elapsed());
    res
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn requests_are_timed_by_route_template_not_by_path() {
        let m = Arc::new(WebappMetrics::new());
        let app = Router::new()
            .route("/api/v1/things/{id}", get(|| async { "thing" }))
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no") })
            .layer(middleware::from_fn_with_state(m.clone(), track));
        for path in ["/api/v1/things/1", "/api/v1/things/2", "/app.js"] {
            let res = app
                .clone()
                .oneshot(Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(res.status().is_success() || res.status() == 404);
        }
        let text = m.registry.render();
        assert!(
            text.contains(
                "portico_webapp_http_requests_total{method=\"GET\",route=\"/api/v1/things/{id}\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("portico_webapp_http_requests_total{method=\"GET\",route=\"fallback\",status=\"404\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "portico_webapp_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/things/{id}\"} 2\n"
            ),
            "{text}"
        );
    }
}
