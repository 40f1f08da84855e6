//! Portico Docker agent: connects to the local Docker engine (negotiating the API version: Debian's
//! docker.io 20.10 speaks API 1.41), registers with the webapp through the configured upstream address
//! (the load balancer) with the registration token, receives its own credential, and sends heartbeats with
//! the host's capacity. A registration that fails is loud: an error line per attempt with the reason and
//! the next retry (exponential backoff up to [`Backoff::MAX`]), and the webapp lists the agent as `failed`.
//!
//! Provisioning of workspace containers builds on this (issue 5, next step).

use std::time::Duration;

use anyhow::Context as _;
use portico_proto::Secret;
use portico_proto::control::{
    AgentCapacity, AgentHeartbeat, AgentHeartbeatResponse, AgentRegisterRequest, AgentRegistered,
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
    /// This agent's name (unique per host).
    pub name: String,
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

    pub async fn heartbeat(
        &self,
        credential: &str,
        hb: &AgentHeartbeat,
    ) -> Result<AgentHeartbeatResponse, UpstreamError> {
        self.post("/internal/v1/agents/heartbeat", Some(credential), hb).await
    }
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
    loop {
        // Register, loudly, until it works.
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        let registered = loop {
            attempt += 1;
            let info = probe(&docker).await;
            let (docker_version, capacity) = match &info {
                Ok(i) => (i.version.clone(), i.capacity.clone()),
                Err(_) => (String::new(), AgentCapacity::default()),
            };
            let req = AgentRegisterRequest {
                name: config.name.clone(),
                registration_token: token.clone(),
                docker_version,
                capacity,
            };
            match upstream.register(&req).await {
                Ok(r) => break r,
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
        let mut every = Duration::from_secs(registered.heartbeat_secs.max(1).into());
        loop {
            tokio::time::sleep(every).await;
            let capacity = match probe(&docker).await {
                Ok(i) => i.capacity,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "Docker engine unreachable");
                    continue; // No heartbeat: the webapp marks this agent down while Docker is gone.
                }
            };
            match upstream
                .heartbeat(registered.credential.expose(), &AgentHeartbeat { capacity })
                .await
            {
                Ok(r) => every = Duration::from_secs(r.heartbeat_secs.max(1).into()),
                Err(UpstreamError::UnknownCredential) => {
                    tracing::warn!(agent = %config.name, "The webapp no longer knows this agent; registering again");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "Heartbeat failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..8).map(|_| b.delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
