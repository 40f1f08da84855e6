//! A real rsyslog (Debian's `rsyslogd`) receiving syslog on 127.0.0.1, for the event forwarding tests: one
//! plain TCP listener (imtcp, octet counting or LF framing as the sender chooses) and one TLS listener (the
//! `ossl` network stream driver of `rsyslog-openssl`, a server certificate for 127.0.0.1 signed by a test
//! CA made with the `openssl` CLI). Every message received is written to a file, one line each, with the
//! fields rsyslog's RFC 5424 parser found. Run in the foreground as a child and stopped by PID; it can be
//! stopped and started again on the same ports (a receiver that goes away and comes back).

use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::peers::{free_port, need, scratch, stop_child};
use crate::slapd::{Slapd, make_ca};

/// A running (or stopped) rsyslogd.
pub struct Rsyslog {
    /// Plain TCP (`syslog+tcp://127.0.0.1:PORT`).
    pub tcp_port: u16,
    /// TLS (`syslog+tls://127.0.0.1:PORT`).
    pub tls_port: u16,
    /// The CA that signed the TLS listener's certificate (PEM), and its path.
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
}

/// One message as rsyslog parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `tcp` or `tls`: the listener it came in on.
    pub input: String,
    pub pri: u32,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub structured_data: String,
    /// The MSG part (a leading byte order mark removed).
    pub msg: String,
}

/// The fields of each output line, tab-separated (JSON escapes tabs, so MSG holds none).
const TEMPLATE: &str =
    "%inputname%\\t%pri%\\t%hostname%\\t%app-name%\\t%procid%\\t%msgid%\\t%structured-data%\\t%msg%\\n";

impl Rsyslog {
    pub fn start() -> anyhow::Result<Rsyslog> {
        need("/usr/sbin/rsyslogd", "rsyslog")?;
        need("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so", "rsyslog-openssl")?;
        need("/usr/bin/openssl", "openssl")?;
        let dir = scratch("rsyslog")?;
        let ca_pem = make_ca(&dir, "ca", "/CN=Portico test syslog CA")?;
        Slapd::server_cert(&dir)?;
        let mut r = Rsyslog {
            tcp_port: 0,
            tls_port: 0,
            ca_pem,
            ca_path: dir.join("ca.pem"),
            dir,
            child: None,
        };
        // Another process may grab a free port between choosing and binding: retry with new ones.
        let mut last = None;
        for _ in 0..5 {
            r.tcp_port = free_port();
            r.tls_port = free_port();
            if r.tcp_port == r.tls_port {
                continue;
            }
            match r.launch() {
                Ok(()) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("rsyslogd did not start")))
    }

    fn write_config(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.display();
        let conf = self.dir.join("rsyslog.conf");
        fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{dir}\" maxMessageSize=\"64k\"\n\
                 \x20 DefaultNetstreamDriverCAFile=\"{dir}/ca.pem\"\n\
                 \x20 DefaultNetstreamDriverCertFile=\"{dir}/server.pem\"\n\
                 \x20 DefaultNetstreamDriverKeyFile=\"{dir}/server.key\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tls}\" name=\"tls\")\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\" name=\"tcp\" StreamDriver.Name=\"ptcp\" StreamDriver.Mode=\"0\")\n\
                 template(name=\"fields\" type=\"string\" string=\"{TEMPLATE}\")\n\
                 action(type=\"omfile\" file=\"{dir}/received.log\" template=\"fields\")\n",
                tls = self.tls_port,
                tcp = self.tcp_port,
            ),
        )?;
        Ok(conf)
    }

    /// Start rsyslogd (again) on the chosen ports and wait until both listeners accept connections.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("rsyslogd is already running");
        }
        let conf = self.write_config()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))?;
        let child = Command::new("/usr/sbin/rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start rsyslogd")?;
        self.child = Some(child);
        let start = Instant::now();
        let limit = Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                bail!("rsyslogd exited ({status}) before listening; log:\n{}", self.log());
            }
            let accepts = |port: u16| {
                TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
            };
            if accepts(self.tcp_port) && accepts(self.tls_port) {
                return Ok(());
            }
            if start.elapsed() > limit {
                self.stop();
                bail!(
                    "timed out after {limit:?} waiting for rsyslogd to listen; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop rsyslogd (SIGTERM, then SIGKILL); its ports stop accepting.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
    }

    /// Every message received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let text = fs::read_to_string(self.dir.join("received.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.splitn(8, '\t').collect();
                let [input, pri, hostname, app_name, procid, msgid, sd, msg] = f.as_slice() else {
                    return None;
                };
                Some(Received {
                    input: (*input).to_owned(),
                    pri: pri.parse().ok()?,
                    hostname: (*hostname).to_owned(),
                    app_name: (*app_name).to_owned(),
                    procid: (*procid).to_owned(),
                    msgid: (*msgid).to_owned(),
                    structured_data: (*sd).to_owned(),
                    msg: msg.trim_start_matches('\u{feff}').to_owned(),
                })
            })
            .collect()
    }

    /// Wait (polling every 50 ms, at most `timeout`) until `pred` holds for what was received.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if pred(&got) {
                return Ok(got);
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; received {} messages; rsyslogd log:\n{}",
                    got.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
