//! The agent's metrics: one [`Registry`] and its typed handles (see `portico_proto::metrics`): the capacity
//! it offers, its workspace containers by state, its registration and syncs, and container start times.

use std::sync::Arc;

use portico_proto::control::{AgentCapacity, ContainerReport, ContainerState};
use portico_proto::metrics::{CounterVec, Gauge, GaugeVec, HistogramVec, Registry};

/// Container start times, seconds (create, start, and the VNC server's first answer).
const START_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0];

pub struct AgentMetrics {
    pub registry: Arc<Registry>,
    cores: Gauge,
    memory: Gauge,
    workspaces: GaugeVec,
    registered: Gauge,
    registrations: CounterVec,
    syncs: CounterVec,
    starts: HistogramVec,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let r = Arc::new(Registry::new());
        AgentMetrics {
            cores: r.gauge("portico_agent_capacity_cores", "CPU cores of the Docker host."),
            memory: r.gauge(
                "portico_agent_capacity_memory_bytes",
                "Memory the agent offers to workspaces (--agent-memory-mb, else the host's).",
            ),
            workspaces: r.gauge_vec(
                "portico_agent_workspaces",
                "This agent's workspace containers at its last sync, by state (starting, ready, failed).",
                &["state"],
            ),
            registered: r.gauge(
                "portico_agent_registered",
                "1 while the agent holds a credential the webapp accepted, else 0.",
            ),
            registrations: r.counter_vec(
                "portico_agent_registrations_total",
                "Registration attempts with the webapp, by result (ok, failed).",
                &["result"],
            ),
            syncs: r.counter_vec(
                "portico_agent_syncs_total",
                "Syncs (heartbeat and reconciliation) with the webapp, by result (ok, error, unknown_credential, docker_unreachable).",
                &["result"],
            ),
            starts: r.histogram_vec(
                "portico_agent_workspace_start_seconds",
                "Time from a wanted container to its VNC server answering (or the start failing), by result.",
                &["result"],
                START_BUCKETS,
            ),
            registry: r,
        }
    }

    pub fn capacity(&self, c: &AgentCapacity) {
        self.cores.set(f64::from(c.cores));
        self.memory.set(c.memory_mb as f64 * 1024.0 * 1024.0);
    }

    /// The containers of a sync's report.
    pub fn reported(&self, reports: &[ContainerReport]) {
        let count = |s: ContainerState| reports.iter().filter(|r| r.state == s).count() as f64;
        self.workspaces.with(&["starting"]).set(count(ContainerState::Starting));
        self.workspaces.with(&["ready"]).set(count(ContainerState::Ready));
        self.workspaces.with(&["failed"]).set(count(ContainerState::Failed));
    }

    pub fn registration(&self, ok: bool) {
        self.registrations.with(&[if ok { "ok" } else { "failed" }]).inc();
        self.registered.set(if ok { 1.0 } else { 0.0 });
    }

    pub fn sync(&self, result: &str) {
        self.syncs.with(&[result]).inc();
        if result == "unknown_credential" {
            self.registered.set(0.0);
        }
    }

    pub fn started(&self, ok: bool, elapsed: std::time::Duration) {
        self.starts
            .with(&[if ok { "ok" } else { "failed" }])
            .observe_duration(elapsed);
    }
}
