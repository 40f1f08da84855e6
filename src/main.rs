//! `portico`: one binary for every tier. Without a subcommand it runs all-in-one (webapp + bridge, and the
//! agent when a Docker socket is present) on one HTTPS listener with an embedded SQLite database.

/// The allocator: jemalloc, whose background threads return pages unused for 10 s to the system (glibc's
/// malloc kept the peak of a series of VNC/RDP sessions for good: docs/performance.md, "Memory over time").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod config;
mod local;
mod metrics;
mod serve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use config::Settings;
use portico_bridge::{Bridge, BridgeConfig, HttpControlPlane};
use portico_proto::Secret;
use portico_webapp::{AppState, WebappConfig};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "Browser access to SSH, VNC and RDP without exposing their ports"
)]
struct Cli {
    /// TOML file with the same settings as the flags (kebab-case keys); flags and env win.
    #[arg(long, short, global = true, env = "PORTICO_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Webapp + bridge (+ agent when Docker is present) in one process (the default).
    AllInOne,
    /// Only the control plane (API, web client, token minting); stateless, run several behind a load balancer.
    Webapp,
    /// Only the connection proxy; needs --webapp-url and --node-secret.
    Bridge,
    /// Only the Docker agent.
    Agent,
    /// Run database migrations and exit.
    Migrate,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTICO_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,russh=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.settings.with_file(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::AllInOne) {
        Command::AllInOne => all_in_one(settings).await,
        Command::Webapp => webapp_only(settings).await,
        Command::Bridge => bridge_only(settings).await,
        Command::Agent => agent_only(settings).await,
        Command::Migrate => {
            portico_webapp::db::Db::connect(&settings.database_url()?).await?;
            println!("migrations applied");
            Ok(())
        }
    }
}

fn agent_config(s: &Settings) -> anyhow::Result<portico_agent::AgentConfig> {
    let upstream_ca = match &s.webapp_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("read {}", p.display()))?),
        None => None,
    };
    Ok(portico_agent::AgentConfig {
        docker_socket: s.docker_socket.clone().unwrap_or_else(|| "/var/run/docker.sock".into()),
        upstream: s.webapp_url.clone(),
        upstream_cert_sha256: s.webapp_cert_sha256.clone(),
        upstream_ca,
        registration_token: s.agent_registration_token.clone().map(Secret::new),
        identity: Secret::new(s.agent_identity()?),
        name: s.agent_name.clone().unwrap_or_else(host_name),
        network: s.agent_network.clone().filter(|n| !n.is_empty()),
        user: s
            .agent_user
            .clone()
            .unwrap_or_else(|| portico_agent::DEFAULT_USER.into()),
        memory_mb: s.agent_memory_mb,
        metrics: Arc::default(),
    })
}

/// Only the Docker agent (and its metrics listener, when asked).
async fn agent_only(settings: Settings) -> anyhow::Result<()> {
    let config = agent_config(&settings)?;
    let tiers = metrics::Tiers {
        agent: Some(config.metrics.clone()),
        ..Default::default()
    };
    metrics::start(&settings, tiers).await?;
    portico_agent::run(config).await
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".into())
}

/// Connections the kernel may queue before Portico accepts them.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(settings: &Settings) -> anyhow::Result<(TcpListener, String)> {
    let addr = settings.listen()?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .context("create the listening socket")?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("listen on {addr}"))?;
    // A deep accept queue (the kernel caps it at net.core.somaxconn): with the default of 128, a burst of
    // hundreds of connections overflowed it and the dropped SYNs waited a second for their retransmission.
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("listen on {addr}"))?;
    let local = listener.local_addr()?;
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    let host = if local.is_ipv6() && !local.ip().is_unspecified() {
        format!("[{host}]")
    } else {
        host
    };
    Ok((listener, format!("https://{host}:{}", local.port())))
}

async fn webapp_state(settings: &Settings, public_url: &str) -> anyhow::Result<AppState> {
    let mut cfg = WebappConfig::new(
        settings.database_url()?,
        settings.master_key()?,
        settings.node_secret()?,
        settings.public_url.clone().unwrap_or_else(|| public_url.to_owned()),
    );
    if let Some(b) = &settings.bridge_public_url {
        cfg.bridge_public_url = b.clone();
    }
    if let Some(o) = &settings.embed_origins {
        cfg.embed_origins = o.iter().filter(|o| !o.trim().is_empty()).cloned().collect();
    }
    if let Some(z) = &settings.zone {
        cfg.zone = z.clone();
    }
    if let Some(s) = settings.session_grace_secs {
        cfg.session_grace = Duration::from_secs(s);
    }
    if let Some(s) = settings.session_idle_secs {
        cfg.session_idle_timeout = Duration::from_secs(s);
    }
    if let Some(s) = settings.session_max_secs {
        cfg.session_max_duration = Duration::from_secs(s);
    }
    if let Some(s) = settings.agent_heartbeat_secs {
        cfg.agent_heartbeat = Duration::from_secs(s.max(1));
    }
    cfg.recording_dir = Some(settings.recording_dir());
    if let Some(d) = settings.recording_retention_days {
        cfg.recording_retention_days = d;
    }
    if let Some(d) = settings.event_retention_days {
        cfg.event_retention_days = d;
    }
    if let Some(f) = &settings.event_forward {
        cfg.event_forward = f.iter().filter(|t| !t.trim().is_empty()).cloned().collect();
    }
    if let Some(p) = &settings.event_forward_ca {
        cfg.event_forward_ca = Some(std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?);
    }
    cfg.agent_registration_token = Some(Secret::new(settings.agent_registration_token_or_generate()?));
    let state = AppState::new(cfg).await?;
    if let Some(pw) = state.ensure_admin(settings.admin_password.clone()).await? {
        println!("created the first admin user: admin / {pw}  (shown once; set PORTICO_ADMIN_PASSWORD to choose it)");
    }
    state.spawn_maintenance();
    Ok(state)
}

fn bridge_id(settings: &Settings) -> String {
    settings.bridge_id.clone().unwrap_or_else(|| {
        let mut b = [0u8; 4];
        let _ = getrandom::fill(&mut b);
        format!("bridge-{}", hex::encode(b))
    })
}

/// The bridge's settings: its name, its pool and the caps on what servers may impose.
fn bridge_config(settings: &Settings, zone: String) -> anyhow::Result<BridgeConfig> {
    let mut config = BridgeConfig::new(bridge_id(settings), zone);
    config.max_desktop = settings.max_desktop.unwrap_or_default();
    if let Some(r) = &settings.bridge_route {
        anyhow::ensure!(
            portico_proto::control::valid_route(r),
            "invalid --bridge-route {r:?} (expected 1 to 63 of a-z, 0-9 and '-', not starting with '-')"
        );
    }
    config.route = settings.bridge_route.clone();
    config.recording_dir = settings.recording_dir.clone();
    if let Some(s) = settings.control_plane_grace_secs {
        config.control_plane_grace = (s > 0).then(|| Duration::from_secs(s));
    }
    Ok(config)
}

fn announce(url: &str, tls: &serve::Tls) {
    // Tests and scripts read this line.
    println!("portico listening on {url} (certificate sha256 {})", tls.fingerprint);
}

async fn all_in_one(settings: Settings) -> anyhow::Result<()> {
    let frontend = settings.frontend()?;
    let tls = serve::tls(&settings)?;
    let (listener, url) = bind(&settings).await?;
    let state = webapp_state(&settings, &url).await?;
    let draining_flag = state.draining.clone();
    let mut config = bridge_config(&settings, state.config.zone.clone())?;
    // The embedded bridge records where the webapp reads.
    config.recording_dir = state.config.recording_dir.clone();
    let control = local::LocalControl::register(
        portico_webapp::Internal::new(state.clone()),
        state.config.node_secret.expose(),
        &config.bridge_id,
        config.route.clone(),
    )
    .await?;
    let bridge = Bridge::new(config, Arc::new(control));
    bridge.spawn_sync();
    let mut agent_cfg = agent_config(&settings)?;
    let mut agent_metrics = None;
    if portico_agent::docker_socket_present(&agent_cfg.docker_socket) {
        agent_metrics = Some(agent_cfg.metrics.clone());
        // The embedded agent registers with this very process, over its own listener.
        agent_cfg.upstream = Some(url.clone());
        agent_cfg.upstream_cert_sha256 = Some(tls.fingerprint.clone());
        agent_cfg.registration_token = state.config.agent_registration_token.clone();
        tokio::spawn(async move {
            if let Err(e) = portico_agent::run(agent_cfg).await {
                tracing::warn!(error = format!("{e:#}"), "Agent stopped");
            }
        });
    }
    // The security headers cover the bridge's answers too (one layer over both).
    let tiers = metrics::Tiers {
        webapp: Some(&state),
        bridge: Some(&bridge),
        agent: agent_metrics,
    };
    metrics::start(&settings, tiers).await?;
    let app = portico_webapp::headers::layer(portico_webapp::router(state).merge(bridge.router()));
    announce(&url, &tls);
    let frontend = serve::Frontend {
        draining: draining_flag,
        ..frontend
    };
    let draining = serve::serve(listener, tls.acceptor, app, frontend).await?;
    bridge.shutdown().await;
    draining.finish().await;
    Ok(())
}

async fn webapp_only(settings: Settings) -> anyhow::Result<()> {
    let frontend = settings.frontend()?;
    let tls = serve::tls(&settings)?;
    let (listener, url) = bind(&settings).await?;
    let state = webapp_state(&settings, &url).await?;
    let tiers = metrics::Tiers {
        webapp: Some(&state),
        ..Default::default()
    };
    metrics::start(&settings, tiers).await?;
    announce(&url, &tls);
    let frontend = serve::Frontend {
        draining: state.draining.clone(),
        ..frontend
    };
    serve::serve(listener, tls.acceptor, portico_webapp::router(state), frontend)
        .await?
        .finish()
        .await;
    Ok(())
}

async fn bridge_only(settings: Settings) -> anyhow::Result<()> {
    let frontend = settings.frontend()?;
    let webapp_url = settings
        .webapp_url
        .clone()
        .context("the bridge needs --webapp-url (the webapp tier's address)")?;
    let node_secret = settings
        .node_secret
        .clone()
        .context("the bridge needs --node-secret (the webapps' node credential)")?;
    let ca = match &settings.webapp_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("read {}", p.display()))?),
        None => None,
    };
    if settings.webapp_cert_sha256.is_none() && ca.is_none() {
        anyhow::bail!("the bridge needs --webapp-cert-sha256 or --webapp-ca to trust the webapp's certificate");
    }
    let zone = settings.zone.clone().unwrap_or_else(|| "default".into());
    let config = bridge_config(&settings, zone)?;
    let control = HttpControlPlane::new(
        webapp_url,
        Secret::new(node_secret),
        &config.bridge_id,
        config.route.clone(),
        settings.webapp_cert_sha256.as_deref(),
        ca.as_deref(),
    )?;
    let bridge = Bridge::new(config, Arc::new(control));
    bridge.spawn_sync();
    let tls = serve::tls(&settings)?;
    let (listener, url) = bind(&settings).await?;
    let tiers = metrics::Tiers {
        bridge: Some(&bridge),
        ..Default::default()
    };
    metrics::start(&settings, tiers).await?;
    announce(&url, &tls);
    // A draining bridge keeps its live sessions (and their reattaches) until they end or the delay runs
    // out (--shutdown-delay-secs is its drain deadline), then ends what is left.
    let registry = bridge.registry.clone();
    let frontend = serve::Frontend {
        draining: bridge.draining.clone(),
        idle: Some(serve::IdleCheck(Arc::new(move || registry.ids().is_empty()))),
        drain_order: Some(bridge.drain_order.subscribe()),
        ..frontend
    };
    let draining = serve::serve(listener, tls.acceptor, bridge.router(), frontend).await?;
    bridge.shutdown().await;
    draining.finish().await;
    Ok(())
}
