//! A PostgreSQL cluster with automatic failover on loopback: one etcd (v3 API) and Patroni nodes using the
//! shipped `deploy/patroni/patroni.yml` (per-node settings from the environment), each node a real
//! PostgreSQL 15 in a temporary directory. Ports are chosen free; processes are stopped by PID; every wait
//! polls Patroni's REST API (or etcd's health endpoint) with a deadline.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::peers::{free_port, need, run, stop_child, wait_for};
use crate::workspace_root;

/// One HTTP/1.0 GET on 127.0.0.1:`port`: the status and the body (JSON when it parses, else `Null`);
/// `None` when nothing answered within a second.
pub fn http_get(port: u16, path: &str) -> Option<(u16, Value)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// The uid and gid of the `postgres` user (PostgreSQL refuses to run as root).
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres")).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
        .context("no postgres user: install the Debian package postgresql-15")
}

fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("/usr/lib/postgresql not found: install the Debian package postgresql-15")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no PostgreSQL server binaries found: install the Debian package postgresql-15")
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    // A zombie (killed, not yet reaped by its parent) counts as gone.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// An etcd server (one member) on loopback.
pub struct Etcd {
    pub client_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Etcd {
    fn start(dir: &Path) -> anyhow::Result<Etcd> {
        need("/usr/bin/etcd", "etcd-server")?;
        let mut last = None;
        for attempt in 0..5 {
            let (client_port, peer_port) = (free_port(), free_port());
            let data = dir.join(format!("etcd-{attempt}"));
            let log = dir.join(format!("etcd-{attempt}.log"));
            let out = fs::File::create(&log)?;
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let child = Command::new("/usr/bin/etcd")
                .arg("--name=e1")
                .arg(format!("--data-dir={}", data.display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=e1={peer}"))
                .arg("--initial-cluster-state=new")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("start etcd")?;
            let mut etcd = Etcd {
                client_port,
                child: Some(child),
                log,
            };
            let ready = wait_for("etcd to be healthy", Duration::from_secs(20), || {
                http_get(client_port, "/health").is_some_and(|(s, v)| s == 200 && v["health"] == "true")
            });
            match ready {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    last = Some(e.context(etcd.log()));
                    etcd.stop();
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Patroni node and the PostgreSQL it manages.
pub struct PatroniNode {
    pub name: String,
    /// Patroni's REST API (what HAProxy checks).
    pub api_port: u16,
    /// PostgreSQL.
    pub pg_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl PatroniNode {
    /// `GET` on the node's REST API.
    pub fn api(&self, path: &str) -> Option<(u16, Value)> {
        http_get(self.api_port, path)
    }

    /// Whether Patroni says this node is the primary now (`GET /primary` is 200: what HAProxy asks).
    pub fn is_primary(&self) -> bool {
        self.api("/primary").is_some_and(|(s, _)| s == 200)
    }

    /// The node's state as Patroni reports it (`GET /patroni`).
    pub fn state(&self) -> Option<Value> {
        self.api("/patroni").map(|(_, v)| v)
    }

    /// The PID of the postmaster (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> Option<u32> {
        fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A crash of the whole node: `kill -9` of the postmaster and of Patroni at once (so nobody
    /// restarts PostgreSQL or gives the leader key back); returns once both are gone.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let postmaster = self.postmaster_pid().context("no postmaster.pid")?;
        let child = self.child.as_mut().context("patroni is not running")?;
        kill(postmaster, "-KILL");
        child.kill().context("kill patroni")?;
        child.wait()?;
        self.child = None;
        wait_for("the killed postmaster to be gone", Duration::from_secs(10), || {
            !alive(postmaster)
        })
    }

    /// Ask Patroni to stop (it stops PostgreSQL first); [`PatroniNode::stop`] waits.
    fn sigterm(&self) {
        if let Some(c) = &self.child {
            kill(c.id(), "-TERM");
        }
    }

    fn stop(&mut self) {
        let postmaster = self.postmaster_pid();
        if let Some(mut c) = self.child.take() {
            // Patroni stops PostgreSQL (fast) on SIGTERM; give it time, then kill both.
            kill(c.id(), "-TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = postmaster.filter(|p| alive(*p)) {
            kill(pid, "-KILL");
        }
    }
}

impl Drop for PatroniNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd and Patroni nodes on loopback, with a database `portico` on the primary.
pub struct PatroniCluster {
    pub nodes: Vec<PatroniNode>,
    pub etcd: Etcd,
    password: String,
    dir: PathBuf,
}

impl PatroniCluster {
    /// Start etcd and `n` Patroni nodes (the shipped `deploy/patroni/patroni.yml`), wait for a leader and
    /// a synchronous standby (`GET /cluster`), and create the database `portico` on the leader.
    pub fn start(n: usize) -> anyhow::Result<PatroniCluster> {
        need("/usr/bin/patroni", "patroni")?;
        let bin = pg_bin_dir()?;
        let (uid, gid) = postgres_ids()?;
        // Under /tmp: the postgres user must be able to traverse every parent directory.
        let dir = PathBuf::from(format!("/tmp/portico-patroni-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir)?;
        let etcd = Etcd::start(&dir)?;
        let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
        let mut cluster = PatroniCluster {
            nodes: Vec::new(),
            etcd,
            password,
            dir,
        };
        let config = workspace_root().join("deploy/patroni/patroni.yml");
        for i in 1..=n {
            let name = format!("pg{i}");
            let node_dir = cluster.dir.join(&name);
            fs::create_dir_all(&node_dir)?;
            run(
                Command::new("chown").arg("postgres:postgres").arg(&node_dir),
                "chown the node directory",
            )?;
            run(
                Command::new("chmod").arg("700").arg(&node_dir),
                "chmod the node directory",
            )?;
            let (api_port, pg_port) = (free_port(), free_port());
            let log = node_dir.join("patroni.log");
            let out = fs::File::create(&log)?;
            run(Command::new("chown").arg("postgres").arg(&log), "chown the log")?;
            let api = format!("127.0.0.1:{api_port}");
            let pg = format!("127.0.0.1:{pg_port}");
            let child = Command::new("/usr/bin/patroni")
                .arg(&config)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", &node_dir)
                .env("LANG", "C.UTF-8")
                .env("PATRONI_NAME", &name)
                .env("PATRONI_RESTAPI_LISTEN", &api)
                .env("PATRONI_RESTAPI_CONNECT_ADDRESS", &api)
                .env("PATRONI_POSTGRESQL_LISTEN", &pg)
                .env("PATRONI_POSTGRESQL_CONNECT_ADDRESS", &pg)
                .env("PATRONI_POSTGRESQL_DATA_DIR", node_dir.join("data"))
                .env("PATRONI_POSTGRESQL_PGPASS", node_dir.join("pgpass"))
                .env("PATRONI_POSTGRESQL_BIN_DIR", &bin)
                .env(
                    "PATRONI_ETCD3_HOSTS",
                    format!("'127.0.0.1:{}'", cluster.etcd.client_port),
                )
                .env("PATRONI_SUPERUSER_USERNAME", "postgres")
                .env("PATRONI_SUPERUSER_PASSWORD", &cluster.password)
                .env("PATRONI_REPLICATION_USERNAME", "replicator")
                .env("PATRONI_REPLICATION_PASSWORD", &cluster.password)
                .current_dir(&node_dir)
                .uid(uid)
                .gid(gid)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .context("start patroni")?;
            cluster.nodes.push(PatroniNode {
                name,
                api_port,
                pg_port,
                data_dir: node_dir.join("data"),
                log,
                child: Some(child),
            });
        }
        // Bootstrap (initdb on one node, base backup on the others) takes a few seconds; generous for a
        // busy machine.
        cluster.wait_synchronous(Duration::from_secs(120))?;
        let leader = cluster.leader().context("no leader")?;
        let url = cluster.url_on(cluster.nodes[leader].pg_port, "postgres");
        run(
            Command::new("psql")
                .arg(url)
                .args(["-q", "-c", "CREATE DATABASE portico"]),
            "create database (psql, Debian package postgresql-client-15)",
        )?;
        Ok(cluster)
    }

    /// The database URL of `portico` through 127.0.0.1:`port` (a node, or a load balancer).
    pub fn url(&self, port: u16) -> String {
        self.url_on(port, "portico")
    }

    fn url_on(&self, port: u16, db: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{port}/{db}", self.password)
    }

    /// The index of the node that is the primary now.
    pub fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(PatroniNode::is_primary)
    }

    /// The members as `GET /cluster` on any node that answers lists them: (name, role, state).
    pub fn members(&self) -> Vec<(String, String, String)> {
        self.nodes
            .iter()
            .find_map(|n| n.api("/cluster").filter(|(s, _)| *s == 200))
            .and_then(|(_, v)| {
                v["members"].as_array().map(|ms| {
                    ms.iter()
                        .map(|m| {
                            let f = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                            (f("name"), f("role"), f("state"))
                        })
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Wait until one node leads and every other one is running as a synchronous standby (from then on a
    /// commit returns only once a standby has it).
    pub fn wait_synchronous(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let done = wait_for("a leader and synchronous standbys", timeout, || {
            let m = self.members();
            m.len() == n
                && m.iter().filter(|(_, r, s)| r == "leader" && s == "running").count() == 1
                && m.iter()
                    .filter(|(_, r, s)| r == "sync_standby" && s == "running")
                    .count()
                    == n - 1
        });
        done.map_err(|e| anyhow::anyhow!("{e}: members {:?}\n{}", self.members(), self.logs()))
    }

    /// Every node's log (Patroni and PostgreSQL).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = n.log();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                format!(
                    "--- {} (last lines)\n{}",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Nodes first, all at once (no failover to one of them while another stops), then etcd.
        for n in &self.nodes {
            n.sigterm();
        }
        self.nodes.clear();
        self.etcd.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
