//! Real peers for the tests, started on loopback and stopped by PID: OpenSSH sshd (with a real local user),
//! PostgreSQL 15, TigerVNC Xvnc and x11vnc, FreeRDP's shadow server and xrdp, and Chromium driven by
//! playwright-core scripts in `tests/browser/`.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::workspace_root;

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Poll `f` every 50 ms until it holds; a clear error naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

pub(crate) fn scratch(kind: &str) -> anyhow::Result<PathBuf> {
    let dir = workspace_root()
        .join(".test-runs")
        .join(format!("{kind}-{}", uuid::Uuid::new_v4()));
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start (run scripts/install-test-deps.sh)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn need(path: &str, package: &str) -> anyhow::Result<()> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        bail!("{path} not found: install the Debian package {package} (scripts/install-test-deps.sh does)")
    }
}

/// Stop a child: SIGTERM, then SIGKILL after 2 s.
pub(crate) fn stop_child(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Serializes changes to the test user and its authorized_keys across the test threads.
static USER_LOCK: Mutex<()> = Mutex::new(());

/// A real local Linux user for SSH logins.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub password: String,
    pub home: PathBuf,
}

/// Create (once) the local user `portico-t` with a known password.
pub fn ensure_test_user() -> anyhow::Result<TestUser> {
    let _guard = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let name = "portico-t";
    let password = "portico-pass-1";
    if Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        run(
            Command::new("useradd").args(["-m", "-s", "/bin/bash", name]),
            "useradd (the tests must run as root)",
        )?;
    }
    // Setting the password every time also unlocks an account another run left behind.
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .context("chpasswd")?;
    child
        .stdin
        .take()
        .context("chpasswd stdin")?
        .write_all(format!("{name}:{password}\n").as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "chpasswd failed");
    let home = PathBuf::from(format!("/home/{name}"));
    Ok(TestUser {
        name: name.into(),
        password: password.into(),
        home,
    })
}

/// An OpenSSH server on 127.0.0.1 with its own host key and config, for the test user.
pub struct Sshd {
    pub port: u16,
    pub user: TestUser,
    pub dir: PathBuf,
    pub client_key_path: PathBuf,
    /// OpenSSH private key (ed25519) authorized for the user.
    pub client_private_key: String,
    /// `SHA256:…` of the host key, as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: String,
    child: Option<Child>,
    extra_config: String,
}

impl Sshd {
    pub fn start() -> anyhow::Result<Sshd> {
        Self::start_with_config("")
    }

    /// Start with extra lines appended to sshd_config (e.g. `ForceCommand …` for benchmarks).
    pub fn start_with_config(extra: &str) -> anyhow::Result<Sshd> {
        need("/usr/sbin/sshd", "openssh-server")?;
        let user = ensure_test_user()?;
        let dir = scratch("sshd")?;
        let client_key_path = dir.join("client_ed25519");
        run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "portico-test", "-f"])
                .arg(&client_key_path),
            "ssh-keygen",
        )?;
        let pubkey = fs::read_to_string(dir.join("client_ed25519.pub"))?;
        authorize(&user, &pubkey)?;
        let client_private_key = fs::read_to_string(&client_key_path)?;
        let mut sshd = Sshd {
            port: 0,
            user,
            dir,
            client_key_path,
            client_private_key,
            host_key_fingerprint: String::new(),
            child: None,
            extra_config: extra.to_owned(),
        };
        sshd.new_host_key()?;
        // Another process may grab a free port between choosing and binding: retry.
        let mut last = None;
        for _ in 0..5 {
            sshd.port = free_port();
            match sshd.launch() {
                Ok(()) => return Ok(sshd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("sshd did not start")))
    }

    fn new_host_key(&mut self) -> anyhow::Result<()> {
        let key = self.dir.join("ssh_host_ed25519_key");
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(self.dir.join("ssh_host_ed25519_key.pub"));
        run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
            "ssh-keygen host key",
        )?;
        let out = run(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.dir.join("ssh_host_ed25519_key.pub")),
            "ssh-keygen -lf",
        )?;
        self.host_key_fingerprint = out
            .split_whitespace()
            .nth(1)
            .context("fingerprint in ssh-keygen output")?
            .to_owned();
        Ok(())
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        fs::create_dir_all("/run/sshd").context("create /run/sshd")?;
        let cfg = self.dir.join("sshd_config");
        fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/ssh_host_ed25519_key\nPidFile {dir}/sshd.pid\n\
                 PermitRootLogin no\nPasswordAuthentication yes\nPubkeyAuthentication yes\nKbdInteractiveAuthentication no\n\
                 UsePAM yes\nAuthorizedKeysFile .ssh/authorized_keys\nAllowUsers {user}\nMaxStartups 2000:30:4000\nMaxSessions 100\n\
                 LogLevel VERBOSE\nPrintMotd no\nAcceptEnv LANG LC_*\nSubsystem sftp /usr/lib/openssh/sftp-server\n{extra}\n",
                port = self.port,
                dir = self.dir.display(),
                user = self.user.name,
                extra = self.extra_config,
            ),
        )?;
        run(Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(&cfg), "sshd -t")?;
        let log = fs::File::create(self.dir.join("sshd.log"))?;
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start sshd")?;
        self.child = Some(child);
        let port = self.port;
        let ready = wait_for("sshd banner", Duration::from_secs(10), || {
            banner(port).is_some_and(|b| b.starts_with("SSH-2.0"))
        });
        if let Err(e) = ready {
            if let Some(mut c) = self.child.take() {
                stop_child(&mut c);
            }
            bail!("{e}: sshd log:\n{}", self.log());
        }
        Ok(())
    }

    /// Stop, make a new host key, start again on the same port.
    pub fn restart_with_new_host_key(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        self.new_host_key()?;
        self.launch()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn banner(port: u16) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn authorize(user: &TestUser, pubkey: &str) -> anyhow::Result<()> {
    let _guard = USER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let ssh_dir = user.home.join(".ssh");
    fs::create_dir_all(&ssh_dir)?;
    let keys = ssh_dir.join("authorized_keys");
    let mut f = fs::OpenOptions::new().create(true).append(true).open(&keys)?;
    f.write_all(pubkey.as_bytes())?;
    let owner = format!("{0}:{0}", user.name);
    run(Command::new("chown").arg("-R").arg(&owner).arg(&ssh_dir), "chown .ssh")?;
    run(Command::new("chmod").arg("700").arg(&ssh_dir), "chmod .ssh")?;
    run(Command::new("chmod").arg("600").arg(&keys), "chmod authorized_keys")?;
    Ok(())
}

/// A PostgreSQL server on 127.0.0.1 with database `portico`, password auth over TCP.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    password: String,
}

fn pg_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("/usr/lib/postgresql not found: install postgresql-15 (scripts/install-test-deps.sh does)")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, p)| p)
        .context("no PostgreSQL server binaries (initdb) found: install postgresql-15")
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    c
}

impl Postgres {
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = pg_bin()?;
        // Under /tmp: the postgres user must be able to traverse every parent directory.
        let dir = PathBuf::from(format!("/tmp/portico-pg-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(dir.join("sock"))?;
        let password = format!("pg-{}", uuid::Uuid::new_v4().simple());
        fs::write(dir.join("pwfile"), &password)?;
        run(
            Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir),
            "chown postgres dir",
        )?;
        run(
            as_postgres(&bin, "initdb")
                .arg("-D")
                .arg(dir.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ])
                .arg(format!("--pwfile={}", dir.join("pwfile").display())),
            "initdb",
        )?;
        let mut pg = Postgres {
            port: 0,
            dir,
            bin,
            password,
        };
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port();
            match pg.start_again() {
                Ok(()) => {
                    run(
                        Command::new("psql")
                            .arg(pg.url_for("postgres"))
                            .args(["-q", "-c", "CREATE DATABASE portico"]),
                        "create database",
                    )?;
                    return Ok(pg);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    pub fn url(&self) -> String {
        self.url_for("portico")
    }

    /// Start (again) with the same data directory and port.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.join("sock").display()
        );
        run(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "30", "-o", &opts, "start"]),
            "pg_ctl start",
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n{}",
                fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            )
        })?;
        Ok(())
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        run(
            as_postgres(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        )?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // pg_ctl stops the postmaster by the PID in its pid file.
        let _ = self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn chromium_path() -> anyhow::Result<PathBuf> {
    need("/usr/bin/chromium", "chromium")?;
    Ok(PathBuf::from("/usr/bin/chromium"))
}

pub fn node_browser_dir() -> PathBuf {
    workspace_root().join("tests/browser")
}

/// Run `node tests/browser/<script>` with `env`; stdout on success, an error with all output otherwise.
pub fn run_browser_script(script: &str, env: &[(&str, &str)], timeout: Duration) -> anyhow::Result<String> {
    let chromium = chromium_path()?;
    let dir = node_browser_dir();
    if !dir.join("node_modules/playwright-core").exists() {
        bail!("playwright-core is not installed in tests/browser: run scripts/install-test-deps.sh");
    }
    let out_path = std::env::temp_dir().join(format!("portico-browser-{}.log", uuid::Uuid::new_v4()));
    let out = fs::File::create(&out_path)?;
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .current_dir(&dir)
        .env("CHROMIUM", chromium)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("start node (install nodejs)")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > timeout {
            stop_child(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = fs::read_to_string(&out_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    match status {
        Some(s) if s.success() => Ok(output),
        Some(s) => bail!("browser script {script} failed ({s}):\n{output}"),
        None => bail!("browser script {script} timed out after {timeout:?}:\n{output}"),
    }
}

/// A VNC server on its own X display: TigerVNC's Xvnc, or x11vnc serving an Xvfb.
pub struct VncServer {
    pub port: u16,
    pub display: u16,
    pub password: Option<String>,
    dir: PathBuf,
    /// The VNC server, then (x11vnc) the X server.
    children: Vec<Child>,
}

static NEXT_DISPLAY: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A free X display number (no lock file), spread by process id so parallel test binaries rarely collide.
fn next_display() -> u16 {
    for _ in 0..60 {
        let d = 40
            + (u16::try_from(std::process::id() % 20).unwrap_or(0)
                + NEXT_DISPLAY.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
                % 60;
        if !Path::new(&format!("/tmp/.X{d}-lock")).exists() && !Path::new(&format!("/tmp/.X11-unix/X{d}")).exists() {
            return d;
        }
    }
    99
}

/// A fresh Xvfb on `display` (`-noreset`, so the root background survives its clients), once its socket exists.
fn xvfb(display: u16, width: u16, height: u16, log: &fs::File) -> anyhow::Result<Child> {
    let mut child = Command::new("/usr/bin/Xvfb")
        .arg(format!(":{display}"))
        .args([
            "-screen",
            "0",
            &format!("{width}x{height}x24"),
            "-nolisten",
            "tcp",
            "-noreset",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone()?)
        .spawn()
        .context("start Xvfb")?;
    if let Err(e) = wait_for("Xvfb socket", Duration::from_secs(10), || {
        Path::new(&format!("/tmp/.X11-unix/X{display}")).exists()
    }) {
        stop_child(&mut child);
        return Err(e);
    }
    Ok(child)
}

/// A VNC password file in the classic DES format (`vncpasswd -f`).
fn vnc_password_file(dir: &Path, password: &str) -> anyhow::Result<PathBuf> {
    let mut child = Command::new("vncpasswd")
        .arg("-f")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("vncpasswd (install tigervnc-tools)")?;
    child
        .stdin
        .take()
        .context("vncpasswd stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "vncpasswd failed");
    let path = dir.join("passwd");
    fs::write(&path, out.stdout)?;
    Ok(path)
}

impl VncServer {
    /// TigerVNC Xvnc; `password`: VncAuth with it, `None`: no authentication.
    pub fn xvnc(password: Option<&str>, width: u16, height: u16) -> anyhow::Result<VncServer> {
        need("/usr/bin/Xvnc", "tigervnc-standalone-server")?;
        let dir = scratch("xvnc")?;
        let security: Vec<String> = match password {
            Some(pw) => {
                let file = vnc_password_file(&dir, pw)?;
                vec![
                    "-SecurityTypes".into(),
                    "VncAuth".into(),
                    "-PasswordFile".into(),
                    file.display().to_string(),
                ]
            }
            None => vec!["-SecurityTypes".into(), "None".into()],
        };
        Self::start_with(dir, password, |display, port, log| {
            let xvnc = Command::new("/usr/bin/Xvnc")
                .arg(format!(":{display}"))
                .args([
                    "-geometry",
                    &format!("{width}x{height}"),
                    "-depth",
                    "24",
                    "-rfbport",
                    &port.to_string(),
                ])
                .args([
                    "-interface",
                    "127.0.0.1",
                    "-localhost",
                    "-nolisten",
                    "tcp",
                    "-AlwaysShared",
                    // Every connection comes from 127.0.0.1: after 5 that end before authenticating (the
                    // banner probe, wrong passwords, a benchmark's peers) TigerVNC refuses the address for
                    // 10 s ("Too many security failures"), which would fail whatever connects next.
                    "-UseBlacklist",
                    "0",
                ])
                .args(&security)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start Xvnc")?;
            Ok(vec![xvnc])
        })
    }

    /// x11vnc serving a fresh Xvfb (`-noreset`, so the root background survives).
    pub fn x11vnc(password: Option<&str>, width: u16, height: u16) -> anyhow::Result<VncServer> {
        need("/usr/bin/Xvfb", "xvfb")?;
        need("/usr/bin/x11vnc", "x11vnc")?;
        let dir = scratch("x11vnc")?;
        let auth: Vec<String> = match password {
            Some(pw) => vec!["-rfbauth".into(), vnc_password_file(&dir, pw)?.display().to_string()],
            None => vec!["-nopw".into()],
        };
        Self::start_with(dir, password, |display, port, log| {
            let mut children = vec![xvfb(display, width, height, &log)?];
            let x11vnc = Command::new("/usr/bin/x11vnc")
                .args(["-display", &format!(":{display}"), "-rfbport", &port.to_string()])
                .args(["-localhost", "-forever", "-shared", "-noxdamage", "-quiet", "-nossl"])
                .args(&auth)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start x11vnc")?;
            children.insert(0, x11vnc);
            Ok(children)
        })
    }

    fn start_with(
        dir: PathBuf,
        password: Option<&str>,
        spawn: impl Fn(u16, u16, fs::File) -> anyhow::Result<Vec<Child>>,
    ) -> anyhow::Result<VncServer> {
        let mut last = None;
        for _ in 0..10 {
            let display = next_display();
            let port = free_port();
            let log = fs::File::create(dir.join("server.log"))?;
            let mut server = VncServer {
                port,
                display,
                password: password.map(str::to_owned),
                dir: dir.clone(),
                children: Vec::new(),
            };
            let started = spawn(display, port, log).and_then(|children| {
                server.children = children;
                wait_for("rfb banner", Duration::from_secs(15), || {
                    banner(port).is_some_and(|b| b.starts_with("RFB"))
                })
            });
            match started {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last = Some(anyhow::anyhow!(
                        "{e}: {}",
                        fs::read_to_string(dir.join("server.log")).unwrap_or_default()
                    ));
                    server.stop();
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free X display")))
    }

    /// The VNC server's process id.
    pub fn pid(&self) -> u32 {
        self.children.first().map_or(0, Child::id)
    }

    fn stop(&mut self) {
        for mut c in self.children.drain(..) {
            stop_child(&mut c);
        }
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The process ids below `root` (children, grandchildren...), read from /proc, deepest last.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

fn kill_pids(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// How a FreeRDP shadow server authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowAuth {
    /// TLS, any credentials (`-auth`).
    None,
    /// NLA (CredSSP/NTLM) against a SAM file with the test user's password.
    Nla,
}

/// Serializes xrdp servers: xrdp finds its session manager at the compiled-in [::1]:3350.
static XRDP_LOCK: Mutex<()> = Mutex::new(());

/// The X displays xrdp's sessions get here (`X11DisplayOffset` 100; sesman tries 50 more).
const XRDP_DISPLAYS: std::ops::RangeInclusive<u16> = 100..=150;

/// The per-display sockets xrdp's session (chansrv, sesman) leaves in its socket directory.
fn remove_xrdp_sockets(display: u16) {
    for kind in [
        "xrdp_chansrv_socket_",
        "xrdp_disconnect_display_",
        "xrdp_display_",
        "xrdpapi_",
    ] {
        let _ = fs::remove_file(format!("/run/xrdp/sockdir/{kind}{display}"));
    }
}

/// A real RDP server on 127.0.0.1: FreeRDP's shadow server on its own Xvfb, or xrdp with xorgxrdp
/// sessions for the test user.
pub struct RdpServer {
    pub port: u16,
    /// The X display the RDP server shows (xrdp: the first one sessions may get; [`XDisplay::display`]
    /// finds the session's).
    pub display: u16,
    /// A user name and password the server accepts.
    pub user: TestUser,
    /// SHA-256 of the server's TLS certificate (hex), when the harness made it.
    pub cert_sha256_hex: Option<String>,
    dir: PathBuf,
    children: Vec<Child>,
    xauthority: Option<PathBuf>,
    _xrdp: Option<std::sync::MutexGuard<'static, ()>>,
}

impl RdpServer {
    /// `freerdp-shadow-cli` sharing a fresh Xvfb of `width` x `height`.
    pub fn shadow(auth: ShadowAuth, width: u16, height: u16) -> anyhow::Result<RdpServer> {
        need("/usr/bin/freerdp-shadow-cli", "freerdp2-shadow-x11")?;
        need("/usr/bin/Xvfb", "xvfb")?;
        let user = ensure_test_user()?;
        let dir = scratch("shadow")?;
        let home = dir.join("home");
        fs::create_dir_all(&home)?;
        let mut last = None;
        for _ in 0..5 {
            let display = next_display();
            let port = free_port();
            let log = fs::File::create(dir.join("server.log"))?;
            let mut server = RdpServer {
                port,
                display,
                user: user.clone(),
                cert_sha256_hex: None,
                dir: dir.clone(),
                children: Vec::new(),
                xauthority: None,
                _xrdp: None,
            };
            let started = (|| -> anyhow::Result<()> {
                server.children.push(xvfb(display, width, height, &log)?);
                let mut cmd = Command::new("/usr/bin/freerdp-shadow-cli");
                cmd.env("HOME", &home)
                    .env("DISPLAY", format!(":{display}"))
                    .args(["/bind-address:127.0.0.1", &format!("/port:{port}")]);
                match auth {
                    ShadowAuth::None => {
                        cmd.arg("-auth");
                    }
                    ShadowAuth::Nla => {
                        let sam = run(
                            Command::new("winpr-hash").args(["-u", &user.name, "-p", &user.password, "-f", "sam"]),
                            "winpr-hash (install winpr-utils)",
                        )?;
                        let sam_path = dir.join("SAM");
                        fs::write(&sam_path, sam)?;
                        cmd.args(["+auth", "/sec:nla", &format!("/sam-file:{}", sam_path.display())]);
                    }
                }
                let shadow = cmd
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("start freerdp-shadow-cli")?;
                server.children.insert(0, shadow);
                wait_for("the shadow server's port", Duration::from_secs(15), || {
                    TcpStream::connect(("127.0.0.1", port)).is_ok()
                })
            })();
            match started {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last = Some(anyhow::anyhow!("{e}: {}", server.log()));
                    server.stop();
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the shadow server did not start")))
    }

    /// xrdp 0.9 (TLS; no NLA) with xorgxrdp sessions for the test user, whose desktop is a solid
    /// `#305030` root and an xterm at the top left. One at a time (see [`XRDP_LOCK`]).
    pub fn xrdp() -> anyhow::Result<RdpServer> {
        need("/usr/sbin/xrdp", "xrdp")?;
        need("/usr/lib/xorg/Xorg", "xorgxrdp")?;
        let guard = XRDP_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let user = ensure_test_user()?;
        let dir = scratch("xrdp")?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        run(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=portico-test-xrdp",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req",
        )?;
        let fp = run(
            Command::new("openssl")
                .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
                .arg(&cert),
            "openssl x509",
        )?;
        let cert_sha256_hex = fp.trim().rsplit('=').next().map(|h| h.replace(':', "").to_lowercase());
        let wm = dir.join("startwm.sh");
        fs::write(
            &wm,
            "#!/bin/sh\nxsetroot -solid '#305030'\nexec xterm -geometry 80x24+10+10 -fa 'DejaVu Sans Mono' -fs 11\n",
        )?;
        run(Command::new("chmod").args(["755"]).arg(&wm), "chmod")?;
        let port = free_port();
        let sub = |src: &str, pairs: &[(&str, String)]| -> anyhow::Result<String> {
            let mut out = String::new();
            for line in fs::read_to_string(src).with_context(|| format!("read {src}"))?.lines() {
                let key = line.split('=').next().unwrap_or("");
                match pairs.iter().find(|(k, _)| *k == key && line.contains('=')) {
                    Some((k, v)) if !(key == "port" && line != "port=3389") => out.push_str(&format!("{k}={v}\n")),
                    _ => out.push_str(&format!("{line}\n")),
                }
            }
            Ok(out)
        };
        let xrdp_ini = sub(
            "/etc/xrdp/xrdp.ini",
            &[
                ("port", format!("tcp://127.0.0.1:{port}")),
                ("certificate", cert.display().to_string()),
                ("key_file", key.display().to_string()),
                ("security_layer", "negotiate".into()),
                ("autorun", "Xorg".into()),
                ("LogFile", dir.join("xrdp.log").display().to_string()),
                ("EnableSyslog", "false".into()),
            ],
        )?;
        let sesman_ini = sub(
            "/etc/xrdp/sesman.ini",
            &[
                ("LogFile", dir.join("sesman.log").display().to_string()),
                ("EnableSyslog", "false".into()),
                ("DefaultWindowManager", wm.display().to_string()),
                ("EnableUserWindowManager", "false".into()),
                ("X11DisplayOffset", "100".into()),
                ("AllowRootLogin", "false".into()),
            ],
        )?;
        fs::write(dir.join("xrdp.ini"), xrdp_ini)?;
        fs::write(dir.join("sesman.ini"), sesman_ini)?;
        // What the packaged systemd units prepare.
        fs::create_dir_all("/run/xrdp/sockdir")?;
        let _ = Command::new("chown")
            .args(["root:xrdp", "/run/xrdp", "/run/xrdp/sockdir"])
            .status();
        let _ = Command::new("chmod").args(["2775", "/run/xrdp"]).status();
        let _ = Command::new("chmod").args(["3777", "/run/xrdp/sockdir"]).status();
        let _ = fs::remove_file("/run/xrdp/xrdp.pid");
        let _ = fs::remove_file("/run/xrdp/xrdp-sesman.pid");
        // sesman skips a display whose channel sockets exist, and killed sessions leave them behind: after
        // enough runs every display of the range looked taken ("no display in range is available").
        // Displays 100..=150 are this harness's alone (X11DisplayOffset, one xrdp at a time).
        for d in XRDP_DISPLAYS {
            if !Path::new(&format!("/tmp/.X11-unix/X{d}")).exists() && !Path::new(&format!("/tmp/.X{d}-lock")).exists()
            {
                remove_xrdp_sockets(d);
            }
        }
        if TcpStream::connect("[::1]:3350").is_ok() {
            bail!("another xrdp-sesman already listens on [::1]:3350 (xrdp finds its session manager only there)");
        }
        let mut server = RdpServer {
            port,
            display: 100,
            user: user.clone(),
            cert_sha256_hex,
            dir: dir.clone(),
            children: Vec::new(),
            xauthority: Some(user.home.join(".Xauthority")),
            _xrdp: Some(guard),
        };
        let log = fs::File::create(dir.join("server.log"))?;
        let sesman = Command::new("/usr/sbin/xrdp-sesman")
            .arg("-n")
            .arg("-c")
            .arg(dir.join("sesman.ini"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .spawn()
            .context("start xrdp-sesman")?;
        server.children.push(sesman);
        let xrdp = Command::new("/usr/sbin/xrdp")
            .arg("-n")
            .arg("-c")
            .arg(dir.join("xrdp.ini"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start xrdp")?;
        server.children.insert(0, xrdp);
        let ready = wait_for("xrdp and xrdp-sesman", Duration::from_secs(15), || {
            TcpStream::connect("[::1]:3350").is_ok() && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if let Err(e) = ready {
            let log = server.log();
            server.stop();
            bail!("{e}: {log}");
        }
        Ok(server)
    }

    /// The server's logs (for failure messages).
    pub fn log(&self) -> String {
        ["server.log", "xrdp.log", "sesman.log"]
            .iter()
            .filter_map(|f| fs::read_to_string(self.dir.join(f)).ok())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Process ids of the server (and, for xrdp, its sessions), for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.children.iter().map(Child::id).collect();
        let below: Vec<u32> = pids.iter().flat_map(|p| descendants(*p)).collect();
        pids.extend(below);
        pids
    }

    /// The X display of xrdp's session for the test user (its Xorg runs under sesman), once it exists.
    fn session_display(&self) -> Option<u16> {
        self.children.iter().flat_map(|c| descendants(c.id())).find_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let mut args = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned());
            let program = args.next()?;
            if !program.ends_with("Xorg") {
                return None;
            }
            args.find_map(|a| a.strip_prefix(':').and_then(|n| n.parse().ok()))
        })
    }

    fn stop(&mut self) {
        // xrdp's sessions (Xorg, chansrv, the window manager) run under sesman: collect them first.
        let session_display = self.xauthority.as_ref().and_then(|_| self.session_display());
        let below: Vec<u32> = self.children.iter().flat_map(|c| descendants(c.id())).collect();
        for mut c in self.children.drain(..) {
            stop_child(&mut c);
        }
        kill_pids(&below);
        // A killed Xorg leaves its socket and lock behind; the next session would skip that display.
        if let Some(d) = session_display {
            let _ = fs::remove_file(format!("/tmp/.X11-unix/X{d}"));
            let _ = fs::remove_file(format!("/tmp/.X{d}-lock"));
            remove_xrdp_sockets(d);
        }
    }
}

impl XDisplay for RdpServer {
    fn display(&self) -> u16 {
        match self.xauthority {
            Some(_) => self.session_display().unwrap_or(self.display),
            None => self.display,
        }
    }

    fn x_env(&self) -> Vec<(String, String)> {
        self.xauthority
            .iter()
            .map(|a| ("XAUTHORITY".to_owned(), a.display().to_string()))
            .collect()
    }
}

impl Drop for RdpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

static NEXT_DOCKERD: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A private Docker engine (Debian's docker.io, overlay2) with its own socket, data root and bridge, so it
/// never touches the host's `docker0` or iptables. Containers get addresses on its bridge, reachable from
/// the host (the tests' only container traffic).
pub struct Dockerd {
    /// `unix:///…/docker.sock`.
    pub host: String,
    pub socket: PathBuf,
    pub bridge: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    pub fn start() -> anyhow::Result<Dockerd> {
        need("/usr/sbin/dockerd", "docker.io")?;
        let n = (std::process::id() % 100) as u16 * 10
            + NEXT_DOCKERD.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 10;
        let bridge = format!("pdk{n}");
        let subnet = format!("172.31.{}.1/24", 16 + n % 200);
        // A stale bridge of the same name (a killed run) is replaced.
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        run(
            Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]),
            "ip link add (iproute2, as root)",
        )?;
        run(
            Command::new("ip").args(["addr", "add", &subnet, "dev", &bridge]),
            "ip addr add",
        )?;
        run(
            Command::new("ip").args(["link", "set", &bridge, "up"]),
            "ip link set up",
        )?;
        // Short paths: the socket path must fit a sockaddr_un.
        let dir = PathBuf::from(format!("/tmp/portico-dockerd-{n}-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir)?;
        let socket = dir.join("docker.sock");
        let host = format!("unix://{}", socket.display());
        let log = fs::File::create(dir.join("dockerd.log"))?;
        // Without it dockerd writes /etc/docker/key.json (the flag form is refused).
        let config = dir.join("daemon.json");
        // User-defined networks (the agent's managed `portico-workspaces`) get subnets of this engine's own
        // pool: engines side by side on one host never hand out the same subnet.
        fs::write(
            &config,
            format!(
                "{{\"deprecated-key-path\": \"{}\", \"default-address-pools\": [{{\"base\": \"10.{}.{}.0/24\", \"size\": 26}}]}}",
                dir.join("key.json").display(),
                200 + n / 256,
                n % 256
            ),
        )?;
        // The data root lives on the workspace's disk (ext4, for overlay2), not on a tmpfs /tmp.
        let data_root = scratch("dockerd-data")?;
        let child = Command::new("/usr/sbin/dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(&data_root)
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args(["-H", &host, "--bridge", &bridge, "--storage-driver", "overlay2"])
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start dockerd")?;
        let mut d = Dockerd {
            host,
            socket,
            bridge,
            dir,
            child: Some(child),
        };
        fs::write(d.dir.join("data-root"), data_root.display().to_string())?;
        let ready = wait_for("dockerd", Duration::from_secs(30), || {
            d.docker(&["info", "--format", "{{.Driver}}"]).is_ok()
        });
        if let Err(e) = ready {
            let log = d.log();
            d.stop();
            bail!("{e}: {log}");
        }
        Ok(d)
    }

    /// Import Portico's default workspace image into this engine (`scripts/build-workspace-image.sh`: it
    /// builds the rootfs once per machine, cached, then each import takes seconds); returns the tag.
    pub fn with_workspace_image(&self) -> anyhow::Result<&'static str> {
        self.with_image("default", "portico/workspace:latest")
    }

    /// Import Portico's browser workspace image (`--flavor browser`: Chromium full-screen) into this
    /// engine, like [`Dockerd::with_workspace_image`]; returns the tag.
    pub fn with_browser_image(&self) -> anyhow::Result<&'static str> {
        self.with_image("browser", "portico/workspace-browser:latest")
    }

    fn with_image(&self, flavor: &str, tag: &'static str) -> anyhow::Result<&'static str> {
        let script = crate::workspace_root().join("scripts/build-workspace-image.sh");
        run(
            Command::new("bash")
                .arg(&script)
                .args(["--flavor", flavor, "--docker-host", &self.host, "--tag", tag]),
            "scripts/build-workspace-image.sh",
        )?;
        Ok(tag)
    }

    /// Run the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("docker").arg("-H").arg(&self.host).args(args), "docker")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        // The Linux bridges of the engine's user-defined networks outlive it: without removing them, a
        // machine that runs the suite again and again runs out of the engine's default address pools.
        let networks: Vec<String> = if self.child.is_some() {
            self.docker(&["network", "ls", "-q", "--no-trunc", "--filter", "driver=bridge"])
                .unwrap_or_default()
                .lines()
                .filter_map(|id| id.get(..12).map(|short| format!("br-{short}")))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(mut c) = self.child.take() {
            // Running containers' shims live below dockerd/containerd.
            let below = descendants(c.id());
            stop_child(&mut c);
            kill_pids(&below);
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        for br in networks {
            let _ = Command::new("ip").args(["link", "del", &br]).output();
        }
        if let Ok(root) = fs::read_to_string(self.dir.join("data-root")) {
            let root = root.trim();
            // overlay2 leaves mounts behind when killed: unmount before removing.
            let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
            for m in mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(root))
            {
                let _ = Command::new("umount").args(["-l", m]).output();
            }
            let _ = fs::remove_dir_all(root);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server with an X display that test programs can draw on (`xsetroot`, `xterm`, `xdotool`...).
pub trait XDisplay {
    /// The X display number.
    fn display(&self) -> u16;

    /// Extra environment of X clients (e.g. the X authority of a display owned by another user).
    fn x_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn x_command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DISPLAY", format!(":{}", self.display()));
        c.envs(self.x_env());
        c
    }

    /// Run an X client (e.g. `xsetroot`) on this display and wait for it.
    fn x(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(self.x_command(program).args(args), program)
    }

    /// Start an X client (e.g. `xterm`) on this display in the background; it stops when dropped.
    fn spawn(&self, program: &str, args: &[&str]) -> anyhow::Result<Background> {
        self.spawn_env(program, args, &[])
    }

    /// [`XDisplay::spawn`] with more environment (e.g. a UTF-8 locale).
    fn spawn_env(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Background> {
        let child = self
            .x_command(program)
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {program} (run scripts/install-test-deps.sh)"))?;
        Ok(Background(Some(child)))
    }

    /// An xterm at the top left printing a line 20 times a second, `lines` lines in all: a screen that keeps
    /// changing, bounded (one small process per line, so it loads the machine little).
    fn painter(&self, lines: u32) -> anyhow::Result<Background> {
        let script = format!("i=0; while [ $i -lt {lines} ]; do echo line $i; i=$((i+1)); sleep 0.05; done");
        self.spawn("xterm", &["-geometry", "80x24+0+0", "-e", "sh", "-c", &script])
    }

    /// A maximized xterm (black on white, DejaVu Sans Mono 10, no scroll bar) running `command` (a shell
    /// command line): the benchmarks' text workloads.
    fn text_xterm(&self, command: &str) -> anyhow::Result<Background> {
        self.spawn(
            "xterm",
            &[
                "-maximized",
                "-fa",
                "DejaVu Sans Mono",
                "-fs",
                "10",
                "-bg",
                "white",
                "-fg",
                "black",
                "+sb",
                "-e",
                command,
            ],
        )
    }
}

impl XDisplay for VncServer {
    fn display(&self) -> u16 {
        self.display
    }
}

/// A real HAProxy in TCP mode on 127.0.0.1 in front of one backend, passing each client's address on with
/// the PROXY protocol v2 (`send-proxy-v2`), as a load balancer in front of Portico does.
pub struct Haproxy {
    pub port: u16,
    _dir: PathBuf,
    _process: Background,
}

impl Haproxy {
    pub fn send_proxy_v2(backend: std::net::SocketAddr) -> anyhow::Result<Haproxy> {
        need("/usr/sbin/haproxy", "haproxy")?;
        let dir = scratch("haproxy")?;
        let port = free_port();
        let cfg = dir.join("haproxy.cfg");
        fs::write(
            &cfg,
            format!(
                "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n\
                 frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be\n\n\
                 backend be\n    server portico {backend} send-proxy-v2\n"
            ),
        )?;
        let child = Command::new("/usr/sbin/haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start haproxy")?;
        let process = Background(Some(child));
        wait_for("haproxy to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(Haproxy {
            port,
            _dir: dir,
            _process: process,
        })
    }
}

/// A background process, stopped (TERM, then KILL) when dropped.
pub struct Background(Option<Child>);

impl Background {
    /// Wait for the process to exit and return its standard output.
    pub fn output(mut self, timeout: Duration) -> anyhow::Result<String> {
        let mut child = self.0.take().context("no process")?;
        let deadline = Instant::now() + timeout;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                stop_child(&mut child);
                bail!("process still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        Ok(out)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            stop_child(&mut c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_accepts_key_and_password_logins() -> anyhow::Result<()> {
        let sshd = Sshd::start()?;
        let common = [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ];
        let out = run(
            Command::new("ssh")
                .args(common)
                .args(["-o", "IdentitiesOnly=yes", "-i"])
                .arg(&sshd.client_key_path)
                .args([
                    "-p",
                    &sshd.port.to_string(),
                    &format!("{}@127.0.0.1", sshd.user.name),
                    "id -un",
                ]),
            "ssh with key",
        )?;
        assert_eq!(out.trim(), sshd.user.name);
        let out = run(
            Command::new("sshpass")
                .args(["-p", &sshd.user.password, "ssh"])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "PubkeyAuthentication=no",
                ])
                .args([
                    "-p",
                    &sshd.port.to_string(),
                    &format!("{}@127.0.0.1", sshd.user.name),
                    "echo pw-ok",
                ]),
            "ssh with password",
        )?;
        assert_eq!(out.trim(), "pw-ok");
        assert!(sshd.host_key_fingerprint.starts_with("SHA256:"));
        Ok(())
    }

    #[test]
    fn postgres_stops_and_starts_again() -> anyhow::Result<()> {
        let pg = Postgres::start()?;
        let q = |url: &str| Command::new("psql").arg(url).args(["-tAc", "select 1"]).output();
        assert_eq!(String::from_utf8_lossy(&q(&pg.url())?.stdout).trim(), "1");
        pg.stop()?;
        assert!(!q(&pg.url())?.status.success());
        pg.start_again()?;
        assert_eq!(String::from_utf8_lossy(&q(&pg.url())?.stdout).trim(), "1");
        Ok(())
    }
}
