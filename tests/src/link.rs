//! Emulated slow links (4 Mbit/s or 1 Mbit/s each way, 80 ms round trip) on the client-facing leg only:
//! the clients ↔ Portico (and ↔ websockify beside it), shaped in a network namespace that the caller
//! creates and runs itself in (peers, Portico and clients on the namespace's own loopback: nothing leaves
//! it). Used by the display benchmarks (`--links 4mbit,1mbit`) and by the browser test on a shaped link.
//! The rate is HTB on an IFB device, the 80 ms round trip a user-space delay line (`tests/bench/link/`,
//! the method of ../shared/bench/link/: this kernel has no netem).

use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// The shaped ports: Portico's listener and websockify's.
pub const PORTICO_PORT: u16 = 18443;
pub const WEBSOCKIFY_PORT: u16 = 18444;
/// Each way: an 80 ms round trip.
const DELAY_MS: u32 = 40;
const NETNS_ENV: &str = "PORTICO_LINK_NETNS";

/// Whether this process runs inside a namespace of [`run_in_namespace`].
pub fn inside() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

fn sh(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Run this process again, with `args`, inside a new network namespace (root; iproute2, iptables), then
/// remove the namespace: its exit status (output inherited).
pub fn run_in_namespace<I, S>(args: I) -> anyhow::Result<std::process::ExitStatus>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    in_namespace(args, |c| c.status())
}

/// [`run_in_namespace`] with `envs` set, its output captured.
pub fn output_in_namespace<I, S>(args: I, envs: &[(&str, &str)]) -> anyhow::Result<std::process::Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    in_namespace(args, |c| c.envs(envs.iter().copied()).stdin(Stdio::null()).output())
}

fn in_namespace<I, S, T>(args: I, run: impl FnOnce(&mut Command) -> std::io::Result<T>) -> anyhow::Result<T>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let ns = format!("portico-link-{}", std::process::id());
    // A namespace left over by an interrupted run of this process id is not ours to keep.
    let _ = Command::new("ip")
        .args(["netns", "del", &ns])
        .stderr(Stdio::null())
        .status();
    sh(
        Command::new("ip").args(["netns", "add", &ns]),
        "ip netns add (an emulated link needs root)",
    )?;
    let result = (|| {
        sh(
            Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]),
            "ip link set lo up",
        )?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns]).arg(exe).args(args).env(NETNS_ENV, &ns);
        run(&mut cmd).context("run in the namespace")
    })();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    result
}

/// The shaping of the namespace's client-facing ports, removed on drop.
pub struct Link {
    ns: String,
    delay: Child,
}

fn shape(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let script = crate::workspace_root().join("tests/bench/link/shape.sh");
    sh(
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("SHAPE_NS", ns)
            .env("SHAPE_PORTS", format!("{PORTICO_PORT} {WEBSOCKIFY_PORT}")),
        &format!("shape.sh {}", args.join(" ")),
    )
}

impl Link {
    /// Shape at `rate` (tc syntax: `4mbit`) with an 80 ms round trip.
    pub fn up(rate: &str) -> anyhow::Result<Link> {
        let ns = std::env::var(NETNS_ENV).context("not inside a namespace of run_in_namespace")?;
        // A namespace left over by an interrupted run of this process id is not ours to keep.
        let _ = shape(&ns, &["down"]);
        let script = crate::workspace_root().join("tests/bench/link/nfq_delay.py");
        // The delay line binds its queue first (the queue rule drops what no one reads).
        let mut delay = Command::new("nice")
            .args(["-n", "-10", "python3"])
            .arg(script)
            .args(["0", &DELAY_MS.to_string(), "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the delay line (python3)")?;
        if let Err(e) = shape(&ns, &["up", rate]) {
            let _ = delay.kill();
            let _ = delay.wait();
            return Err(e);
        }
        Ok(Link { ns, delay })
    }

    /// Change the rate.
    pub fn rate(&self, rate: &str) -> anyhow::Result<()> {
        shape(&self.ns, &["rate", rate])
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.delay.kill();
        let _ = self.delay.wait();
        let _ = shape(&self.ns, &["down"]);
    }
}
