//! Portico Docker agent: connects to the local Docker engine (negotiating the API version: Debian's
//! docker.io 20.10 speaks API 1.41), registers with the webapp through the configured upstream address
//! (the load balancer) with the registration token, receives its own credential, and sends heartbeats with
//! the host's capacity. A registration that fails is loud: an error line per attempt with the reason and
//! the next retry (exponential backoff up to [`Backoff::MAX`]), and the webapp lists the agent as `failed`.
//!
//! The agent's name is bound to its persistent identity (a random key in its data directory): the webapp
//! refuses another identity under the same name until an admin removes the agent.
//!
//! Workspaces: the agent's sync (heartbeat and reconciliation in one) reports every container labelled
//! with its name and the subnets of its network; the webapp answers with the containers it wants. Missing
//! ones are created (the configured non-root user whatever the image says, limits, all capabilities
//! dropped, no-new-privileges, a per-session VNC password, nothing published, on the Portico-managed
//! network `portico-workspaces` without inter-container traffic unless another network is configured) and
//! reported ready once their VNC server answers; unwanted ones (ended sessions, orphans of a previous run)
//! are removed.

pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use portico_proto::Secret;
use portico_proto::control::{
    AgentCapacity, AgentImage, AgentNetwork, AgentRegisterRequest, AgentRegistered, AgentSync, AgentSyncResponse,
    ContainerReport, DesiredContainer,
};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Docker engine socket, e.g. `/var/run/docker.sock`.
    pub docker_socket: String,
    /// Base URL of the webapp tier (the load balancer in front of the webapps).
    pub upstream: Option<String>,
    /// SHA-256 (hex) of the upstream's TLS certificate, or `None` to use `upstream_ca` roots.
    pub upstream_cert_sha256: Option<String>,
    pub upstream_ca: Option<Vec<u8>>,
    pub registration_token: Option<Secret<String>>,
    /// The agent's persistent identity (kept in its data directory): its name is bound to it.
    pub identity: Secret<String>,
    /// This agent's name (unique per host).
    pub name: String,
    /// Docker network of the workspace containers (the bridge tier must route to it; nothing is
    /// published); `None`: the managed [`MANAGED_NETWORK`], created when missing.
    pub network: Option<String>,
    /// `uid[:gid]` the workspace containers run as, whatever their image says (never root).
    pub user: String,
    /// Memory the agent offers to workspaces, MiB; `None` = all of the host's.
    pub memory_mb: Option<u64>,
    /// The agent's metrics (served by the binary's `--metrics-listen`).
    pub metrics: Arc<metrics::AgentMetrics>,
}

/// What the agent learned about its Docker engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
    pub capacity: AgentCapacity,
}

/// Whether a Docker socket exists at `path` (the all-in-one binary starts the agent only then).
pub fn docker_socket_present(path: &str) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Connect to the engine and negotiate the API version.
pub async fn connect(docker_socket: &str) -> anyhow::Result<bollard::Docker> {
    let docker = bollard::Docker::connect_with_socket(docker_socket, 10, bollard::API_DEFAULT_VERSION)
        .with_context(|| format!("connect to docker at {docker_socket}"))?;
    docker
        .negotiate_version()
        .await
        .with_context(|| format!("negotiate the docker api version with {docker_socket}"))
}

/// The engine's version and the host's capacity.
pub async fn probe(docker: &bollard::Docker) -> anyhow::Result<EngineInfo> {
    let v = docker.version().await.context("query the docker version")?;
    let info = docker.info().await.context("query the docker host")?;
    Ok(EngineInfo {
        version: v.version.unwrap_or_default(),
        api_version: v.api_version.unwrap_or_default(),
        capacity: AgentCapacity {
            cores: info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            memory_mb: info
                .mem_total
                .and_then(|m| u64::try_from(m / (1024 * 1024)).ok())
                .unwrap_or(0),
            running: 0,
        },
    })
}

/// Exponential backoff between registration attempts: 1 s, 2 s, 4 s … up to [`Backoff::MAX`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a call to the webapp failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("the webapp refused: {0}")]
    Refused(String),
    #[error("the webapp does not know this agent's credential")]
    UnknownCredential,
    #[error("the webapp is unreachable: {0}")]
    Unreachable(String),
}

/// The webapp's internal API as the agent uses it.
pub struct Upstream {
    base: String,
    http: reqwest::Client,
}

impl Upstream {
    pub fn new(base: &str, cert_sha256: Option<&str>, ca_pem: Option<&[u8]>) -> anyhow::Result<Upstream> {
        let http = portico_bridge::control::http_client(cert_sha256, ca_pem)?;
        Ok(Upstream {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &B,
    ) -> Result<T, UpstreamError> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let res = req
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(format!("{e:#}").to_lowercase()))?;
        let status = res.status();
        if status.is_success() {
            return res
                .json()
                .await
                .map_err(|e| UpstreamError::Unreachable(format!("bad response: {e}")));
        }
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        let msg = body["error"].as_str().unwrap_or("").to_owned();
        Err(match status.as_u16() {
            401 => UpstreamError::UnknownCredential,
            403 => UpstreamError::Refused(msg),
            _ => UpstreamError::Unreachable(format!("http {status}: {msg}")),
        })
    }

    pub async fn register(&self, req: &AgentRegisterRequest) -> Result<AgentRegistered, UpstreamError> {
        self.post("/internal/v1/agents/register", None, req).await
    }

    pub async fn sync(&self, credential: &str, req: &AgentSync) -> Result<AgentSyncResponse, UpstreamError> {
        self.post("/internal/v1/agents/sync", Some(credential), req).await
    }
}

/// The network workspaces join unless `--agent-network` names another: a user-defined bridge created by
/// the agent, without inter-container traffic.
pub const MANAGED_NETWORK: &str = "portico-workspaces";
/// The label of the networks Portico created.
pub const LABEL_MANAGED: &str = "org.portico.managed";
/// The user workspaces run as by default.
pub const DEFAULT_USER: &str = "1000:1000";

/// Check a workspace user: numeric `uid[:gid]`, and not root.
pub fn check_user(user: &str) -> anyhow::Result<()> {
    let (uid, gid) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let numeric = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    anyhow::ensure!(
        numeric(uid) && gid.is_none_or(numeric),
        "the workspace user {user:?} must be a numeric uid[:gid] (e.g. 1000:1000)"
    );
    anyhow::ensure!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "the workspace user must be a non-root uid (got {user:?})"
    );
    Ok(())
}

/// The workspace network: the configured one (it must exist), or the managed [`MANAGED_NETWORK`], created
/// if missing as a user-defined bridge with `com.docker.network.bridge.enable_icc=false`. Returns its name
/// and its subnets (what the webapp accepts container addresses in).
pub async fn ensure_network(
    docker: &bollard::Docker,
    configured: Option<&str>,
) -> anyhow::Result<(String, Vec<AgentNetwork>)> {
    use bollard::errors::Error as E;
    let name = configured.unwrap_or(MANAGED_NETWORK).to_owned();
    let inspect = |name: String| async move {
        docker
            .inspect_network(&name, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
    };
    let net = match inspect(name.clone()).await {
        Ok(n) => n,
        Err(E::DockerResponseServerError { status_code: 404, .. }) if configured.is_none() => {
            let req = bollard::models::NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                options: Some(std::collections::HashMap::from([(
                    "com.docker.network.bridge.enable_icc".to_owned(),
                    "false".to_owned(),
                )])),
                labels: Some(std::collections::HashMap::from([(
                    LABEL_MANAGED.to_owned(),
                    "true".to_owned(),
                )])),
                ..Default::default()
            };
            match docker.create_network(req).await {
                Ok(_) => tracing::info!(network = %name, "Created the workspace network (no inter-container traffic)"),
                // Another agent on this engine created it meanwhile.
                Err(E::DockerResponseServerError { status_code: 409, .. }) => {}
                Err(e) => return Err(e).with_context(|| format!("create the docker network {name}")),
            }
            inspect(name.clone())
                .await
                .with_context(|| format!("inspect the docker network {name}"))?
        }
        Err(e) => return Err(e).with_context(|| format!("inspect the docker network {name}")),
    };
    if configured.is_none()
        && net
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.enable_icc"))
            .is_none_or(|v| v != "false")
    {
        tracing::warn!(network = %name, "The workspace network allows inter-container traffic (enable_icc is not false)");
    }
    let subnets: Vec<AgentNetwork> = net
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| {
            Some(AgentNetwork {
                name: name.clone(),
                subnet: c.subnet.filter(|s| !s.is_empty())?,
                gateway: c.gateway.filter(|g| !g.is_empty()),
            })
        })
        .collect();
    anyhow::ensure!(!subnets.is_empty(), "the docker network {name} has no subnet");
    Ok((name, subnets))
}

/// Labels on every container the agent creates.
pub const LABEL_AGENT: &str = "org.portico.agent";
pub const LABEL_SESSION: &str = "org.portico.session";
/// The VNC port inside the container, as the spec said.
const LABEL_VNC_PORT: &str = "org.portico.vnc_port";
/// How long a started container may take until its VNC server answers.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent knows beyond what Docker lists: containers whose VNC server answered, sessions whose
/// container is being started, and sessions whose start failed (reported until the webapp lets go).
#[derive(Default)]
struct Local {
    verified: std::collections::HashSet<String>,
    starting: std::collections::HashSet<String>,
    failed: std::collections::HashMap<String, String>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Local>>;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Local> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The workspace side of the agent: creates, lists and removes this agent's containers.
pub struct Workspaces {
    docker: bollard::Docker,
    agent: String,
    network: String,
    user: String,
    local: Shared,
    /// Woken when a start finished (the webapp hears of it at once instead of at the next poll).
    news: std::sync::Arc<tokio::sync::Notify>,
    metrics: Arc<metrics::AgentMetrics>,
}

fn ip_of(
    summary_networks: Option<&std::collections::HashMap<String, bollard::models::EndpointSettings>>,
    network: &str,
) -> Option<String> {
    let nets = summary_networks?;
    nets.get(network)
        .or_else(|| nets.values().next())
        .and_then(|n| n.ip_address.clone())
        .filter(|ip| !ip.is_empty())
}

impl Workspaces {
    pub fn new(docker: bollard::Docker, agent: &str, network: &str, user: &str) -> Self {
        Workspaces {
            docker,
            agent: agent.to_owned(),
            network: network.to_owned(),
            user: user.to_owned(),
            local: Shared::default(),
            news: std::sync::Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::default(),
        }
    }

    /// Count into `metrics` (container starts).
    pub fn with_metrics(mut self, metrics: Arc<metrics::AgentMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Every container of this agent (running or not), as reports for the webapp.
    pub async fn scan(&self) -> anyhow::Result<Vec<ContainerReport>> {
        use bollard::models::ContainerSummaryStateEnum as S;
        let filters =
            std::collections::HashMap::from([("label".to_owned(), vec![format!("{LABEL_AGENT}={}", self.agent)])]);
        let list = self
            .docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .context("list workspace containers")?;
        let mut out = Vec::with_capacity(list.len());
        let mut local = lock(&self.local);
        let mut seen = std::collections::HashSet::new();
        for c in list {
            let (Some(id), Some(sid)) = (
                c.id.clone(),
                c.labels.as_ref().and_then(|l| l.get(LABEL_SESSION)).cloned(),
            ) else {
                continue;
            };
            seen.insert(id.clone());
            if matches!(c.state, Some(S::REMOVING)) {
                continue; // Going away: neither wanted nor failed.
            }
            let nets = c.network_settings.as_ref().and_then(|n| n.networks.as_ref());
            out.push(match c.state {
                Some(S::RUNNING) if local.verified.contains(&id) => {
                    let port = c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_VNC_PORT))
                        .and_then(|p| p.parse().ok());
                    ContainerReport::ready(sid, id, ip_of(nets, &self.network), port)
                }
                Some(S::RUNNING | S::CREATED | S::RESTARTING) => ContainerReport::starting(sid, id),
                _ => {
                    let status = c.status.as_deref().unwrap_or("not running").to_lowercase();
                    ContainerReport::failed(sid, id, format!("the workspace container stopped ({status})"))
                }
            });
        }
        local.verified.retain(|id| seen.contains(id));
        // Sessions Docker has no container for (yet, or any more): failed starts and starts in flight.
        let failed = local
            .failed
            .iter()
            .map(|(sid, why)| ContainerReport::failed(sid.clone(), String::new(), why.clone()));
        let starting = local
            .starting
            .iter()
            .map(|sid| ContainerReport::starting(sid.clone(), String::new()));
        let extra: Vec<ContainerReport> = failed
            .chain(starting)
            .filter(|r| !out.iter().any(|o| o.session_id == r.session_id))
            .collect();
        out.extend(extra);
        Ok(out)
    }

    /// Make Docker match what the webapp wants: start the missing containers (in the background), remove
    /// the ones nobody wants (orphans of ended sessions, of a previous run, of failed starts).
    pub async fn apply(self: &std::sync::Arc<Self>, reports: &[ContainerReport], desired: Vec<DesiredContainer>) {
        let wanted: std::collections::HashSet<&str> = desired.iter().map(|d| d.session_id.as_str()).collect();
        {
            let mut local = lock(&self.local);
            local.failed.retain(|sid, _| wanted.contains(sid.as_str()));
        }
        for r in reports {
            if !wanted.contains(r.session_id.as_str()) && !r.container_id.is_empty() {
                let this = self.clone();
                let (id, sid) = (r.container_id.clone(), r.session_id.clone());
                tokio::spawn(async move { this.remove(&id, &sid).await });
            }
        }
        for d in desired {
            let known = reports.iter().any(|r| r.session_id == d.session_id);
            let busy = {
                let mut local = lock(&self.local);
                let busy = local.starting.contains(&d.session_id) || local.failed.contains_key(&d.session_id);
                if !busy && !known {
                    local.starting.insert(d.session_id.clone());
                }
                busy
            };
            if !busy && !known {
                let this = self.clone();
                tokio::spawn(async move { this.start(d).await });
            }
        }
    }

    async fn remove(&self, id: &str, session_id: &str) {
        let opts = bollard::query_parameters::RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => tracing::info!(container_id = %id, %session_id, "Workspace container removed"),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409, ..
            }) => {}
            Err(e) => {
                tracing::warn!(container_id = %id, %session_id, error = %e, "Could not remove a workspace container")
            }
        }
        lock(&self.local).verified.remove(id);
    }

    async fn start(&self, d: DesiredContainer) {
        let sid = d.session_id.clone();
        let started = tokio::time::Instant::now();
        let result = self.create_and_wait(&d).await;
        self.metrics.started(result.is_ok(), started.elapsed());
        let mut local = lock(&self.local);
        local.starting.remove(&sid);
        match result {
            Ok(id) => {
                tracing::info!(session_id = %sid, container_id = %id, ms = started.elapsed().as_millis() as u64, "Workspace container ready");
                local.verified.insert(id);
            }
            Err(e) => {
                let why = format!("{e:#}").to_lowercase();
                tracing::error!(session_id = %sid, error = %why, "Workspace container failed to start");
                local.failed.insert(sid, why);
            }
        }
        drop(local);
        self.news.notify_one();
    }

    /// The container's Docker definition: the configured user, limits, no privileges, nothing published.
    pub fn container_body(&self, d: &DesiredContainer) -> bollard::models::ContainerCreateBody {
        let spec = &d.spec;
        let mut env = vec![
            format!("VNC_PASSWORD={}", d.vnc_password.expose()),
            format!("RFB_PORT={}", spec.vnc_port),
        ];
        if let Some(g) = &spec.geometry {
            env.push(format!("GEOMETRY={g}"));
        }
        let memory = i64::from(spec.memory_mb) * 1024 * 1024;
        bollard::models::ContainerCreateBody {
            image: Some(spec.image.clone()),
            // Whatever the image's USER says: never root.
            user: Some(self.user.clone()),
            env: Some(env),
            labels: Some(std::collections::HashMap::from([
                (LABEL_AGENT.to_owned(), self.agent.clone()),
                (LABEL_SESSION.to_owned(), d.session_id.clone()),
                (LABEL_VNC_PORT.to_owned(), spec.vnc_port.to_string()),
            ])),
            host_config: Some(bollard::models::HostConfig {
                memory: Some(memory),
                memory_swap: Some(memory),
                nano_cpus: Some(i64::from(spec.cpu_millis) * 1_000_000),
                pids_limit: Some(i64::from(spec.pids_limit)),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                network_mode: Some(self.network.clone()),
                shm_size: Some(64 * 1024 * 1024),
                init: Some(true),
                // Nothing is published on the host: the bridge reaches the container on its network.
                publish_all_ports: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create_and_wait(&self, d: &DesiredContainer) -> anyhow::Result<String> {
        let name = format!("portico-{}", d.session_id);
        let created = self
            .docker
            .create_container(
                Some(bollard::query_parameters::CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                self.container_body(d),
            )
            .await
            .with_context(|| format!("create the container from image {}", d.spec.image))?;
        let id = created.id;
        let result = async {
            self.docker
                .start_container(&id, None::<bollard::query_parameters::StartContainerOptions>)
                .await
                .context("start the container")?;
            let info = self
                .docker
                .inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>)
                .await
                .context("inspect the container")?;
            let ip = ip_of(
                info.network_settings.as_ref().and_then(|n| n.networks.as_ref()),
                &self.network,
            )
            .context("the container has no ip address on the workspace network")?;
            wait_for_rfb(&self.docker, &id, &ip, d.spec.vnc_port).await
        }
        .await;
        if let Err(e) = result {
            self.remove(&id, &d.session_id).await;
            return Err(e);
        }
        Ok(id)
    }
}

/// The images `docker` holds, for the webapp's catalog: each repository tag (newest images first, at most
/// [`AgentSync::MAX_IMAGES`]) with its size and its `org.portico.*` / `org.opencontainers.image.*` labels.
pub async fn list_images(docker: &bollard::Docker) -> anyhow::Result<Vec<AgentImage>> {
    let mut list = docker
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await
        .context("list the engine's images")?;
    list.sort_by_key(|i| std::cmp::Reverse(i.created));
    let mut out = Vec::new();
    for i in list {
        let labels: std::collections::BTreeMap<String, String> = i
            .labels
            .iter()
            .filter(|(k, v)| {
                (k.starts_with("org.portico.") || k.starts_with("org.opencontainers.image."))
                    && k.len() <= 128
                    && v.len() <= 512
            })
            .take(32)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for tag in i.repo_tags.iter().filter(|t| !t.contains("<none>") && t.len() <= 255) {
            if out.len() == AgentSync::MAX_IMAGES {
                return Ok(out);
            }
            out.push(AgentImage {
                name: tag.clone(),
                size_mb: u64::try_from(i.size).unwrap_or(0) / 1_000_000,
                labels: labels.clone(),
            });
        }
    }
    Ok(out)
}

/// Wait until a VNC server answers with its RFB banner (or the container stops, or [`READY_TIMEOUT`]).
async fn wait_for_rfb(docker: &bollard::Docker, id: &str, ip: &str, port: u16) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer");
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect((ip, port))).await {
            Ok(Ok(mut tcp)) => {
                let mut banner = [0u8; 12];
                match tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut banner)).await {
                    Ok(Ok(_)) if banner.starts_with(b"RFB ") => return Ok(()),
                    Ok(Ok(_)) => anyhow::bail!("the container's port {port} does not speak vnc"),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no banner".into(),
                }
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "connect timed out".into(),
        }
        let state = docker
            .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
            .await
            .ok()
            .and_then(|i| i.state);
        if let Some(st) = state
            && st.running != Some(true)
        {
            anyhow::bail!(
                "the container exited with code {} before its vnc server started",
                st.exit_code.unwrap_or(-1)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "the container's vnc server did not answer within {} s ({last})",
        READY_TIMEOUT.as_secs()
    )
}

/// Run the agent until the process stops.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let upstream_url = config
        .upstream
        .clone()
        .context("the agent needs the webapp's upstream address (--webapp-url, the load balancer)")?;
    let token = config
        .registration_token
        .clone()
        .context("the agent needs a registration token (--agent-registration-token)")?;
    check_user(&config.user).context("--agent-user")?;
    let upstream = Upstream::new(
        &upstream_url,
        config.upstream_cert_sha256.as_deref(),
        config.upstream_ca.as_deref(),
    )?;
    let mut backoff = Backoff::new();
    let docker = loop {
        match connect(&config.docker_socket).await {
            Ok(d) => break d,
            Err(e) => {
                let retry = backoff.delay();
                tracing::error!(
                    error = format!("{e:#}"),
                    retry_in_s = retry.as_secs(),
                    "Docker engine unreachable"
                );
                tokio::time::sleep(retry).await;
            }
        }
    };
    // The network comes first (containers join it); an engine that cannot give it is retried loudly.
    let (network, mut networks) = loop {
        match ensure_network(&docker, config.network.as_deref()).await {
            Ok(n) => break n,
            Err(e) => {
                let retry = backoff.delay();
                tracing::error!(
                    error = format!("{e:#}"),
                    retry_in_s = retry.as_secs(),
                    "Workspace network unavailable"
                );
                tokio::time::sleep(retry).await;
            }
        }
    };
    let metrics = config.metrics.clone();
    let workspaces = std::sync::Arc::new(
        Workspaces::new(docker.clone(), &config.name, &network, &config.user).with_metrics(metrics.clone()),
    );
    let capacity = |info: &EngineInfo| {
        let mut c = info.capacity.clone();
        if let Some(m) = config.memory_mb {
            c.memory_mb = m;
        }
        c
    };
    loop {
        // Register, loudly, until it works.
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        let (registered, mut engine) = loop {
            attempt += 1;
            let info = probe(&docker).await.ok();
            // Again at every registration: a managed network removed meanwhile is created anew.
            if let Ok((_, n)) = ensure_network(&docker, config.network.as_deref()).await {
                networks = n;
            }
            let (docker_version, capacity) = match &info {
                Some(i) => (i.version.clone(), capacity(i)),
                None => (String::new(), AgentCapacity::default()),
            };
            let req = AgentRegisterRequest {
                name: config.name.clone(),
                registration_token: token.clone(),
                identity: config.identity.clone(),
                docker_version,
                capacity,
                networks: networks.clone(),
            };
            let registered = upstream.register(&req).await;
            metrics.registration(registered.is_ok());
            match registered {
                Ok(r) => break (r, info),
                Err(e) => {
                    let retry = backoff.delay();
                    tracing::error!(
                        agent = %config.name,
                        upstream = %upstream_url,
                        attempt,
                        error = %e,
                        retry_in_s = retry.as_secs(),
                        "Agent registration failed"
                    );
                    tokio::time::sleep(retry).await;
                }
            }
        };
        tracing::info!(agent = %config.name, agent_id = %registered.agent_id, upstream = %upstream_url, "Agent registered");
        // Sync: report, get what is wanted (the webapp holds the answer while nothing changes), apply.
        // The first sync after a (re)start removes the orphans of the previous run.
        // The webapp holds a sync at most one heartbeat interval, so a held sync is a heartbeat too.
        // The host's capacity is probed once (again only if that failed); listing the containers is what
        // every sync asks Docker.
        let mut wait_ms = 0;
        let mut images_at: Option<tokio::time::Instant> = None;
        loop {
            if engine.is_none() {
                engine = probe(&docker).await.ok();
            }
            let scanned = match &engine {
                Some(info) => workspaces.scan().await.map(|r| (info, r)),
                None => Err(anyhow::anyhow!("cannot query the docker host")),
            };
            let (info, reports) = match scanned {
                Ok(x) => x,
                Err(e) => {
                    // No heartbeat: the webapp marks this agent down while Docker is gone.
                    metrics.sync("docker_unreachable");
                    tracing::warn!(error = format!("{e:#}"), "Docker engine unreachable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // The image catalog, every few syncs (and at once after a registration).
            let due = images_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(AgentSync::IMAGES_EVERY_SECS));
            let images = if due {
                match list_images(&docker).await {
                    Ok(i) => {
                        images_at = Some(tokio::time::Instant::now());
                        Some(i)
                    }
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "Could not list the engine's images");
                        None
                    }
                }
            } else {
                None
            };
            let req = AgentSync {
                capacity: capacity(info),
                containers: reports,
                wait_ms,
                networks: networks.clone(),
                images,
            };
            metrics.capacity(&req.capacity);
            metrics.reported(&req.containers);
            let news = workspaces.news.clone();
            let answer = tokio::select! {
                a = upstream.sync(registered.credential.expose(), &req) => Some(a),
                // A start finished: report it now rather than when the held sync returns.
                () = news.notified() => None,
            };
            match answer {
                None => wait_ms = 0,
                Some(Ok(r)) => {
                    metrics.sync("ok");
                    workspaces.apply(&req.containers, r.desired).await;
                    wait_ms = r.heartbeat_secs.max(1) * 1000;
                }
                Some(Err(UpstreamError::UnknownCredential)) => {
                    metrics.sync("unknown_credential");
                    tracing::warn!(agent = %config.name, "The webapp no longer knows this agent; registering again");
                    break;
                }
                Some(Err(e)) => {
                    metrics.sync("error");
                    tracing::warn!(error = %e, "Sync with the webapp failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    wait_ms = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_users_are_numeric_and_never_root() {
        for ok in ["1000:1000", "1000", "65534:0"] {
            assert!(check_user(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "0:0", "root", "1000:staff", "", ":1000", "1000:"] {
            assert!(check_user(bad).is_err(), "{bad}");
        }
        assert!(format!("{:#}", check_user("0:0").unwrap_err()).contains("non-root"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
