//! Portico Docker agent. This release connects to the local Docker engine, negotiates the API version
//! (Debian's docker.io 20.10 speaks API 1.41) and reports what it found; provisioning of ephemeral
//! workspace containers is the next milestone (see ARCHITECTURE.md).

use std::time::Duration;

use anyhow::Context as _;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Docker engine socket, e.g. `/var/run/docker.sock`.
    pub docker_socket: String,
    /// Webapp (load balancer) base URL the agent registers with.
    pub upstream: Option<String>,
}

/// What the agent learned about its Docker engine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

/// Whether a Docker socket exists at `path` (the all-in-one binary starts the agent only then).
pub fn docker_socket_present(path: &str) -> bool {
    std::fs::metadata(path).is_ok()
}

/// Connect to the engine and negotiate the API version.
pub async fn probe(config: &AgentConfig) -> anyhow::Result<EngineInfo> {
    let docker = bollard::Docker::connect_with_socket(&config.docker_socket, 10, bollard::API_DEFAULT_VERSION)
        .with_context(|| format!("connect to docker at {}", config.docker_socket))?;
    let docker = docker
        .negotiate_version()
        .await
        .context("negotiate the docker api version")?;
    let v = docker.version().await.context("query the docker version")?;
    Ok(EngineInfo {
        version: v.version.unwrap_or_default(),
        api_version: v.api_version.unwrap_or_default(),
    })
}

/// Run the agent until the process stops: probe the engine, then keep checking that it stays reachable.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let info = probe(&config).await?;
    tracing::info!(docker_version = %info.version, api_version = %info.api_version, upstream = ?config.upstream, "Agent ready");
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        if let Err(e) = probe(&config).await {
            tracing::warn!(error = format!("{e:#}"), "Docker engine unreachable");
        }
    }
}
