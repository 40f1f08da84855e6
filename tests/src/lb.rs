//! HAProxy running one of the shipped configurations (`deploy/haproxy/*.cfg`, addresses from the
//! environment), started on loopback and stopped by PID; its admin socket tells the servers' states.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::peers::{free_port, need, scratch, stop_child, wait_for};
use crate::workspace_root;

pub struct Haproxy {
    pub port: u16,
    pub stats: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Haproxy {
    /// Start HAProxy with `deploy/haproxy/{config}` and `env` (besides the bind and stats variables,
    /// which this sets: `{prefix}_BIND` to a free loopback port and `{prefix}_STATS` to a socket).
    pub fn start(config: &str, prefix: &str, env: &[(&str, String)]) -> anyhow::Result<Haproxy> {
        Self::start_on(config, prefix, free_port(), env)
    }

    /// [`Haproxy::start`] on a given port (one that was chosen before, e.g. for a public URL).
    pub fn start_on(config: &str, prefix: &str, port: u16, env: &[(&str, String)]) -> anyhow::Result<Haproxy> {
        need("/usr/sbin/haproxy", "haproxy")?;
        let dir = scratch("lb")?;
        let stats = dir.join("admin.sock");
        let cfg = workspace_root().join("deploy/haproxy").join(config);
        let log = fs::File::create(dir.join("haproxy.log"))?;
        let mut cmd = Command::new("/usr/sbin/haproxy");
        cmd.args(["-db", "-f"])
            .arg(&cfg)
            .env(format!("{prefix}_BIND"), format!("127.0.0.1:{port}"))
            .env(format!("{prefix}_STATS"), &stats)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("start haproxy")?;
        let mut lb = Haproxy {
            port,
            stats,
            dir,
            child: Some(child),
        };
        let started = wait_for("haproxy to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Err(e) = started {
            let log = lb.log();
            lb.stop();
            return Err(e.context(log));
        }
        Ok(lb)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// One admin-socket command's answer.
    pub fn admin(&self, command: &str) -> anyhow::Result<String> {
        let mut s = UnixStream::connect(&self.stats).context("haproxy admin socket")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The operational state of each server of `backend` (2 = up).
    pub fn server_states(&self, backend: &str) -> anyhow::Result<HashMap<String, u32>> {
        let out = self.admin(&format!("show servers state {backend}"))?;
        // "# be_id be_name srv_id srv_name srv_addr srv_op_state ..."
        Ok(out
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(3)?.to_string(), f.get(5)?.parse().ok()?))
            })
            .collect())
    }

    /// Wait until `server` of `backend` is up (`true`) or down (`false`) by the health checks.
    pub fn wait_server(&self, backend: &str, server: &str, up: bool, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("haproxy to see {backend}/{server} {}", if up { "up" } else { "down" }),
            timeout,
            || {
                self.server_states(backend)
                    .is_ok_and(|s| s.get(server).is_some_and(|st| (*st == 2) == up))
            },
        )
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for 127.0.0.1 shared by every instance of a test deployment (as a real one
/// shares an internal CA): returns (cert.pem, key.pem, cert+key pem for HAProxy).
pub fn shared_certificate(dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let (cert, key, both) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("both.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=portico-ra3-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("run openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(
        &both,
        format!("{}{}", fs::read_to_string(&cert)?, fs::read_to_string(&key)?),
    )?;
    Ok((cert, key, both))
}
