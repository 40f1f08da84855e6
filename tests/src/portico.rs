//! Start the real `portico` binary (all-in-one, webapp, or bridge) on a free loopback port and stop it by PID.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;

use crate::workspace_root;

/// Path of the `portico` binary, built once per test process (`cargo build --bin portico`).
pub fn binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let release = std::env::var("PORTICO_BENCH_RELEASE").is_ok();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "portico", "--bin", "portico"])
                .current_dir(workspace_root());
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().map_err(|e| format!("run cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build --bin portico failed: {status}"));
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace_root().join("target"));
            Ok(target.join(if release { "release" } else { "debug" }).join("portico"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A fresh random master key (base64), so tests can derive the same signing key as the webapp.
pub fn random_master_key() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("os rng");
    base64::engine::general_purpose::STANDARD.encode(b)
}

pub struct Options {
    /// `None` = all-in-one; else `webapp` / `bridge`.
    pub subcommand: Option<&'static str>,
    pub database_url: Option<String>,
    pub master_key: String,
    pub node_secret: String,
    pub admin_password: String,
    pub extra_env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            subcommand: None,
            database_url: None,
            master_key: random_master_key(),
            node_secret: format!("node-{}", uuid::Uuid::new_v4()),
            admin_password: "admin-pass-1".into(),
            extra_env: Vec::new(),
            extra_args: Vec::new(),
        }
    }
}

/// Append every line of `reader` to `log` (in a thread); send the "listening on" line to `listening`.
fn collect_lines(
    reader: impl std::io::Read + Send + 'static,
    log: std::sync::Arc<Mutex<String>>,
    listening: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            if let (Some(tx), Some(rest)) = (&listening, line.strip_prefix("portico listening on ")) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
}

/// A running `portico` process.
pub struct Portico {
    child: Child,
    pub url: String,
    pub cert_sha256: String,
    pub data_dir: PathBuf,
    pub master_key: String,
    pub node_secret: String,
    pub admin_password: String,
    log: std::sync::Arc<Mutex<String>>,
}

impl Portico {
    pub fn start() -> anyhow::Result<Portico> {
        Self::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> anyhow::Result<Portico> {
        let bin = binary()?;
        let data_dir = workspace_root()
            .join(".test-runs")
            .join(format!("portico-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let mut cmd = Command::new(bin);
        if let Some(sc) = opts.subcommand {
            cmd.arg(sc);
        }
        cmd.arg("--data-dir").arg(&data_dir);
        if !opts.extra_args.iter().any(|a| a == "--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&opts.extra_args);
        // The all-in-one binary embeds an agent when a Docker socket exists: only a test's own engine.
        if opts.subcommand.is_none() && !opts.extra_args.iter().any(|a| a == "--docker-socket") {
            cmd.arg("--docker-socket").arg(data_dir.join("no-docker.sock"));
        }
        cmd.env("PORTICO_MASTER_KEY", &opts.master_key)
            .env("PORTICO_NODE_SECRET", &opts.node_secret)
            .env("PORTICO_ADMIN_PASSWORD", &opts.admin_password)
            .env("PORTICO_LOG", "info,portico_bridge=debug")
            .env_remove("PORTICO_DATABASE_URL");
        if let Some(db) = &opts.database_url {
            cmd.env("PORTICO_DATABASE_URL", db);
        }
        for (k, v) in &opts.extra_env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawn portico")?;
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        collect_lines(child.stderr.take().context("stderr")?, log.clone(), None);
        collect_lines(child.stdout.take().context("stdout")?, log.clone(), Some(tx));
        let started = Instant::now();
        let line = loop {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
                break l;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "portico exited early ({status}):\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                bail!(
                    "portico did not start within 60 s:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        // "https://127.0.0.1:PORT (certificate sha256 HEX)"
        let (url, rest) = line.split_once(' ').context("listening line")?;
        let cert_sha256 = rest
            .trim_start_matches("(certificate sha256 ")
            .trim_end_matches(')')
            .to_owned();
        Ok(Portico {
            child,
            url: url.to_owned(),
            cert_sha256,
            data_dir,
            master_key: opts.master_key,
            node_secret: opts.node_secret,
            admin_password: opts.admin_password,
            log,
        })
    }

    /// Options for a standalone bridge that talks to this webapp.
    pub fn bridge_options(&self, bridge_id: &str) -> Options {
        Options {
            subcommand: Some("bridge"),
            master_key: self.master_key.clone(),
            node_secret: self.node_secret.clone(),
            extra_args: vec![
                "--webapp-url".into(),
                self.url.clone(),
                "--webapp-cert-sha256".into(),
                self.cert_sha256.clone(),
                "--bridge-id".into(),
                bridge_id.into(),
            ],
            ..Options::default()
        }
    }

    pub fn ws_base(&self) -> String {
        self.url.replacen("https://", "wss://", 1)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM (a graceful shutdown) and wait for the process to exit, at most `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        self.sigterm()?;
        self.wait_exit(timeout)
    }

    /// SIGKILL (a crash, no clean-up) and wait for the process to be gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("kill portico")?;
        self.child.wait().context("wait for portico")?;
        Ok(())
    }

    /// Send SIGTERM and return at once.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("send SIGTERM")?;
        Ok(())
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("portico still running {timeout:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("{name} in /proc/<pid>/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// The Ed25519 key the webapp signs tokens with (derived from the master key exactly as the webapp does).
    pub fn signing_key(&self) -> ed25519_dalek::SigningKey {
        let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
            .decode(&self.master_key)
            .expect("b64")
            .try_into()
            .expect("32");
        portico_webapp::crypto::Keys::derive(&raw).token_signing
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A `portico agent` process registered (or trying to register) with a webapp.
pub struct AgentProcess {
    child: Child,
    log: std::sync::Arc<Mutex<String>>,
    data_dir: PathBuf,
    /// How it was started (for [`AgentProcess::restart`]).
    cmd: Vec<std::ffi::OsString>,
    token: String,
}

impl AgentProcess {
    /// Start an agent named `name` against `webapp` through its public address, with `token`.
    pub fn start(webapp: &Portico, docker_socket: &std::path::Path, name: &str, token: &str) -> anyhow::Result<Self> {
        Self::start_with(webapp, docker_socket, name, token, &[])
    }

    /// [`AgentProcess::start`] with extra command-line arguments.
    pub fn start_with(
        webapp: &Portico,
        docker_socket: &std::path::Path,
        name: &str,
        token: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let data_dir = workspace_root()
            .join(".test-runs")
            .join(format!("agent-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&data_dir)?;
        let mut cmd: Vec<std::ffi::OsString> = vec!["agent".into(), "--data-dir".into(), data_dir.clone().into()];
        for a in ["--webapp-url", &webapp.url, "--webapp-cert-sha256", &webapp.cert_sha256] {
            cmd.push(a.into());
        }
        cmd.extend([
            "--docker-socket".into(),
            docker_socket.into(),
            "--agent-name".into(),
            name.into(),
        ]);
        cmd.extend(extra.iter().map(Into::into));
        let log = std::sync::Arc::new(Mutex::new(String::new()));
        let child = Self::spawn(&cmd, token, &log)?;
        Ok(AgentProcess {
            child,
            log,
            data_dir,
            cmd,
            token: token.to_owned(),
        })
    }

    fn spawn(cmd: &[std::ffi::OsString], token: &str, log: &std::sync::Arc<Mutex<String>>) -> anyhow::Result<Child> {
        let mut child = Command::new(binary()?)
            .args(cmd)
            .env("PORTICO_AGENT_REGISTRATION_TOKEN", token)
            .env("PORTICO_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn portico agent")?;
        collect_lines(child.stderr.take().context("stderr")?, log.clone(), None);
        collect_lines(child.stdout.take().context("stdout")?, log.clone(), None);
        Ok(child)
    }

    /// Start the same agent again (same name, arguments and data directory, so the same identity) after
    /// it was killed; its log goes on.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Self::spawn(&self.cmd, &self.token, &self.log)?;
        Ok(())
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill the agent at once (a lost host: no goodbye).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
