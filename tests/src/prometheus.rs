//! A real Prometheus (Debian's `prometheus`) on loopback with a generated configuration that scrapes
//! Portico's metrics listeners every second, queried through its HTTP API (`/api/v1/query`); and plain
//! HTTP helpers for the metrics listeners themselves.

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::peers::{free_port, need, scratch, stop_child};

const BINARY: &str = "/usr/bin/prometheus";

/// One scrape job: a metrics listener (`HOST:PORT`), with the bearer token it wants, if any.
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub addr: String,
    pub token: Option<String>,
}

impl Target {
    pub fn new(job: &str, addr: &str) -> Target {
        Target {
            job: job.to_owned(),
            addr: addr.to_owned(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Target {
        self.token = Some(token.to_owned());
        self
    }
}

/// One element of an instant vector: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: HashMap<String, String>,
    pub value: f64,
}

pub struct Prometheus {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The configuration scraping `targets` every second (scrape timeout 1 s).
pub fn config(targets: &[Target]) -> String {
    let mut c = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
    );
    for t in targets {
        c.push_str(&format!(
            "  - job_name: '{}'\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{}']\n",
            t.job, t.addr
        ));
        if let Some(token) = &t.token {
            c.push_str(&format!(
                "    authorization:\n      type: Bearer\n      credentials: '{token}'\n"
            ));
        }
    }
    c
}

impl Prometheus {
    /// Start Prometheus on a free loopback port scraping `targets`; returns once it is ready.
    pub async fn start(targets: &[Target]) -> anyhow::Result<Prometheus> {
        need(BINARY, "prometheus")?;
        let dir = scratch("prometheus")?;
        let cfg = dir.join("prometheus.yml");
        fs::write(&cfg, config(targets))?;
        let port = free_port();
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start prometheus")?;
        let mut p = Prometheus {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _, _)) = http_get(&p.addr(), "/-/ready", None).await {
                return Ok(p);
            }
            if let Some(c) = p.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!("prometheus exited ({status}):\n{}", p.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 30 s:\n{}", p.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's vector.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, _, body) = http_get(&self.addr(), &path, None).await?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("query {promql}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            bail!("query {promql}: http {status}: {body}");
        }
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .iter()
            .map(|r| Sample {
                labels: r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// Poll `promql` (every 200 ms, at most `within`) until its vector satisfies `pred`; the vector then.
    pub async fn until(
        &self,
        promql: &str,
        within: Duration,
        pred: impl Fn(&[Sample]) -> bool,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = Instant::now() + within;
        let mut last = Vec::new();
        loop {
            match self.query(promql).await {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(v) => last = v,
                // Retried: Prometheus may still be loading.
                Err(_) => {}
            }
            if Instant::now() > deadline {
                let targets = http_get(&self.addr(), "/api/v1/targets", None)
                    .await
                    .map(|r| r.2)
                    .unwrap_or_default();
                bail!("prometheus: {promql} did not hold within {within:?}; last {last:?}\ntargets: {targets}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Poll until `promql` gives exactly one sample with value `want`.
    pub async fn until_value(&self, promql: &str, within: Duration, want: f64) -> anyhow::Result<()> {
        self.until(promql, within, |v| v.len() == 1 && v[0].value == want)
            .await
            .map(|_| ())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encoding of a query parameter (RFC 3986 unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A plain HTTP/1.0 GET to `addr` (`HOST:PORT`): status, headers (lower-case names) and body. Bounded: 10 s.
pub async fn http_get(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, HashMap<String, String>, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(t) = bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of the response head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, body.to_owned()))
}

/// The address (`HOST:PORT`) a Portico process announced for its metrics listener, from its log.
pub fn metrics_addr(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        l.strip_prefix("portico metrics listening on http://")
            .and_then(|r| r.strip_suffix("/metrics"))
            .map(str::to_owned)
    })
}

/// Wait (polling its log every 50 ms, at most 30 s) for a process's metrics address.
pub fn wait_metrics_addr(what: &str, log: impl Fn() -> String) -> anyhow::Result<String> {
    let mut addr = None;
    crate::peers::wait_for(
        &format!("{what} to announce its metrics listener"),
        Duration::from_secs(30),
        || {
            addr = metrics_addr(&log());
            addr.is_some()
        },
    )
    .with_context(log)?;
    addr.context("metrics address")
}

/// The value of one series (`name{labels}` exactly as rendered) in a metrics page.
pub fn sample_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// TCP ports on which process `pid` listens (its sockets in LISTEN state, IPv4 and IPv6).
pub fn listening_ports(pid: u32) -> anyhow::Result<Vec<u16>> {
    let mut inodes = std::collections::HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(target) = fs::read_link(fd?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_string_lossy()
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for row in text.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
                ports.extend(port);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_encoding() {
        let c = config(&[
            Target::new("webapp", "127.0.0.1:1"),
            Target::new("bridge", "127.0.0.1:2").with_token("t0k"),
        ]);
        assert!(
            c.contains("job_name: 'bridge'") && c.contains("credentials: 't0k'"),
            "{c}"
        );
        assert_eq!(
            url_encode("up{job=\"a b\"} == 1"),
            "up%7Bjob%3D%22a%20b%22%7D%20%3D%3D%201"
        );
        assert_eq!(sample_value("a_total{x=\"1\"} 3\na_total 4\n", "a_total"), Some(4.0));
        assert_eq!(
            metrics_addr("x\nportico metrics listening on http://127.0.0.1:9/metrics\n").as_deref(),
            Some("127.0.0.1:9")
        );
    }
}
