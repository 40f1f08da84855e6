//! `portico-bench`: benchmarks against real peers, printing a markdown table.
//!
//! `portico-bench vnc` runs the graphical benchmark (see `vnc.rs`) side by side with websockify;
//! `portico-bench rdp` the RDP workloads on FreeRDP's shadow server (see `rdp.rs`);
//! `portico-bench workspace` launch-to-first-frame and density of container workspaces (see `workspace.rs`);
//! `portico-bench upgrades` the time to `101` of many concurrent WebSocket upgrades (see `upgrades.rs`);
//! `portico-bench events` session starts at a steady rate with the events stored or not and forwarded (see
//! `events.rs`);
//! `portico-bench soak --minutes N` SSH, VNC, RDP sessions and workspaces opening and closing at a steady rate
//! with API traffic, the process's memory, threads, fds, database and event queues sampled, plotted and
//! checked (see `soak.rs`; exits non-zero when a check fails).
//!
//! `cargo run --release -p portico-tests --bin portico-bench -- ssh` runs the SSH benchmark of
//! `docs/performance.md`: bridge CPU per session on the `ssh-text` workload (N = 1, 5, 20), keystroke-to-echo
//! latency through the bridge versus a direct SSH client, and memory per idle session (100 and 1000).
//! Method: ../shared/bench/README.md (5 s warm-up, 30 s window, 3 repeats, medians with ranges).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use portico_proto::Secret;
use portico_proto::control::Target;
use portico_proto::token::Protocol;
use portico_proto::wire::{ClientMsg, ServerMsg};
use portico_tests::client::{Api, WsStream, attach};
use portico_tests::peers::Sshd;
use portico_tests::portico::{Options, Portico};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod events;
mod files;
mod rdp;
mod soak;
mod upgrades;
mod vnc;
mod workspace;

#[derive(Parser)]
struct Args {
    /// Which benchmark: `ssh`, `vnc`, `rdp`, `workspace`, `upgrades`, `events`, `soak` or `files`.
    which: String,
    /// Workspace benchmark: launches to time.
    #[arg(long, default_value_t = 20)]
    launches: usize,
    /// Workspace benchmark: memory the agent offers, MiB.
    #[arg(long, default_value_t = 4096)]
    memory_budget: u64,
    /// Workspace benchmark: memory limit of each workspace, MiB.
    #[arg(long, default_value_t = 256)]
    workspace_memory: u64,
    /// Workloads to run (default: all of the benchmark): text-heavy, text-light, video, video-full, idle.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    #[arg(long, default_value_t = 30)]
    window: u64,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,5,20")]
    sessions: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    idle: Vec<usize>,
    #[arg(long, default_value_t = 300)]
    latency_samples: usize,
    /// Events benchmark: session starts per minute.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Events benchmark: minutes of session starts, per retention setting; soak: minutes of load.
    #[arg(long, default_value_t = 10)]
    minutes: u32,
    /// Soak: the session kinds to run (default all): ssh, vnc, rdp, workspace.
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Soak: seconds between samples.
    #[arg(long, default_value_t = 2)]
    sample_secs: u64,
    /// Soak: least seconds of quiet before the idle and after readings (then until RSS is stable).
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// Soak: the run's name (target/soak/LABEL.csv and .png).
    #[arg(long, default_value = "soak")]
    label: String,
    /// Soak: also copy the plot here (e.g. docs/img/soak-60min.png).
    #[arg(long)]
    plot: Option<String>,
    /// Soak: extra environment of the portico process, KEY=VALUE (e.g. MALLOC_ARENA_MAX=2).
    #[arg(long)]
    portico_env: Vec<String>,
    /// VNC, RDP: run on emulated links instead (tc rates, 80 ms round trip, e.g. `4mbit,1mbit`): the
    /// client-facing leg shaped in a network namespace the bench creates (root).
    #[arg(long, value_delimiter = ',')]
    links: Vec<String>,
    /// VNC: recording off and on side by side (bridge cores, fps, bytes written per minute per session).
    #[arg(long)]
    recording: bool,
    /// VNC: one shared session watched by these numbers of viewers (bridge cores, owner's and viewers' fps).
    #[arg(long, value_delimiter = ',')]
    viewers: Vec<usize>,
    /// Soak: after the settle, call glibc's malloc_trim(0) in the process through gdb and report its RSS.
    #[arg(long)]
    trim_probe: bool,
    /// Upgrade benchmark: concurrent WebSocket upgrades per round.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    upgrades: Vec<usize>,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime+stime in ticks of one process, and its parent.
fn stat(pid: u32) -> Option<(u64, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
        f.get(1)?.parse().ok()?,
    ))
}

/// CPU ticks of `root` and all its descendants, per pid.
fn tree_ticks(root: u32) -> HashMap<u32, u64> {
    let mut procs = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(st) = stat(pid)
            {
                procs.insert(pid, st);
            }
        }
    }
    let mut out = HashMap::new();
    for (&pid, &(ticks, _)) in &procs {
        let mut cur = pid;
        for _ in 0..64 {
            if cur == root {
                out.insert(pid, ticks);
                break;
            }
            match procs.get(&cur) {
                Some(&(_, ppid)) if ppid > 1 => cur = ppid,
                _ => break,
            }
        }
    }
    out
}

fn cores(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>, secs: f64, tck: f64) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, a)| a.saturating_sub(*before.get(pid).unwrap_or(&0)))
        .sum();
    ticks as f64 / tck / secs
}

fn mem_kib(pid: u32) -> (u64, u64) {
    let field = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    (field("status", "VmRSS:"), field("smaps_rollup", "Pss:"))
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn open(p: &Portico, api: &Api, conn: &str) -> anyhow::Result<(String, WsStream)> {
    let (s, ws) = attach(p, api, conn).await?;
    Ok((s["session_id"].as_str().unwrap_or_default().to_owned(), ws))
}

/// A Portico (release build, quiet logs) with an admin client and a password connection to `sshd`.
async fn portico_with_connection(sshd: &Sshd) -> anyhow::Result<(Portico, Api, String)> {
    portico_with_ssh(sshd, json!({})).await
}

/// [`portico_with_connection`] with these connection settings.
async fn portico_with_ssh(sshd: &Sshd, settings: serde_json::Value) -> anyhow::Result<(Portico, Api, String)> {
    let p = Portico::start_with(Options {
        extra_env: vec![("PORTICO_LOG".into(), "warn".into())],
        ..Options::default()
    })?;
    let api = Api::admin(&p).await?;
    let conn = api
        .create_connection(json!({
            "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port,
            "username": sshd.user.name, "password": sshd.user.password, "settings": settings,
        }))
        .await?;
    Ok((p, api, conn))
}

/// Read until the session is connected.
async fn until_connected(ws: &mut WsStream) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            match ServerMsg::decode(&b)? {
                ServerMsg::Status(s) if s.state == "connected" => return Ok(()),
                ServerMsg::Error(e) => anyhow::bail!("session error: {}", e.message),
                _ => {}
            }
        }
    }
    anyhow::bail!("session did not connect")
}

fn bin(m: ClientMsg) -> Message {
    Message::Binary(m.encode().into())
}

struct Counter {
    bytes: std::sync::atomic::AtomicU64,
}

/// N sessions streaming ssh-text; returns (bridge cores/session, peer cores/session, KiB/s per session).
async fn cpu_run(
    p: &Portico,
    sshd: &Sshd,
    api: &Api,
    conn: &str,
    n: usize,
    args: &Args,
    script: &str,
) -> anyhow::Result<(f64, f64, f64)> {
    let counter = std::sync::Arc::new(Counter { bytes: 0.into() });
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (_, mut ws) = open(p, api, conn).await?;
        until_connected(&mut ws).await?;
        ws.send(bin(ClientMsg::Resize {
            cols: 120,
            rows: 40,
            width_px: 0,
            height_px: 0,
        }))
        .await?;
        ws.send(bin(ClientMsg::TermInput(
            format!("exec python3 {script} 20 6 1\r").into_bytes(),
        )))
        .await?;
        let c = counter.clone();
        tasks.push(tokio::spawn(async move {
            // The instant-ack client: read everything, decode nothing beyond the frame.
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Binary(b) = m {
                    c.bytes.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let tck = clk_tck();
    let (b0, s0, bytes0, t0) = (
        tree_ticks(p.pid()),
        tree_ticks(sshd.pid()),
        counter.bytes.load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (b1, s1, bytes1) = (
        tree_ticks(p.pid()),
        tree_ticks(sshd.pid()),
        counter.bytes.load(std::sync::atomic::Ordering::Relaxed),
    );
    for t in tasks {
        t.abort();
    }
    // Let the bridge notice the closed sockets and the grace period not matter: end everything now.
    for s in api
        .ok(reqwest::Method::GET, "/api/v1/sessions", None)
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let _ = api
            .request(
                reqwest::Method::DELETE,
                &format!("/api/v1/sessions/{}", s["id"].as_str().unwrap_or_default()),
                None,
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = n as f64;
    Ok((
        cores(&b0, &b1, secs, tck) / n,
        cores(&s0, &s1, secs, tck) / n,
        (bytes1 - bytes0) as f64 / 1024.0 / secs / n,
    ))
}

async fn latency_bridge(p: &Portico, api: &Api, conn: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let (_, mut ws) = open(p, api, conn).await?;
    until_connected(&mut ws).await?;
    ws.send(bin(ClientMsg::TermInput(b"exec cat > /dev/null\r".to_vec())))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Drain.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await {}
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let ch = b'a' + (i % 26) as u8;
        let t = Instant::now();
        ws.send(bin(ClientMsg::TermInput(vec![ch]))).await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .context("echo timeout")?
                .context("closed")??;
            if let Message::Binary(b) = m
                && let Ok(ServerMsg::TermOutput(o)) = ServerMsg::decode(&b)
                && o.contains(&ch)
            {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

async fn latency_direct(sshd: &Sshd, samples: usize) -> anyhow::Result<Vec<f64>> {
    let target = Target {
        connection_id: "direct".into(),
        protocol: Protocol::Ssh,
        host: "127.0.0.1".into(),
        port: sshd.port,
        username: sshd.user.name.clone(),
        password: Some(Secret::new(sshd.user.password.clone())),
        private_key: None,
        host_key_fingerprint: None,
        settings: Default::default(),
        workspace_pending: false,
    };
    let mut shell = portico_bridge::ssh::connect(&target, 80, 24).await?;
    shell.channel.data_bytes(b"exec cat > /dev/null\r".to_vec()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), shell.channel.wait()).await {}
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let ch = b'a' + (i % 26) as u8;
        let t = Instant::now();
        shell.channel.data_bytes(vec![ch]).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), shell.channel.wait())
                .await
                .context("echo timeout")?
            {
                Some(russh::ChannelMsg::Data { data }) if data.contains(&ch) => break,
                Some(_) => {}
                None => anyhow::bail!("channel closed"),
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

/// Open `target` idle sessions in total (adding to `held`) and return the bridge RSS/Pss per session.
async fn idle_memory(
    p: &Portico,
    api: &Api,
    conn: &str,
    held: &mut Vec<WsStream>,
    target: usize,
    base: (u64, u64),
) -> anyhow::Result<(f64, f64)> {
    while held.len() < target {
        let batch = (target - held.len()).min(20);
        let mut futs = Vec::new();
        for _ in 0..batch {
            futs.push(async {
                let (_, mut ws) = open(p, api, conn).await?;
                until_connected(&mut ws).await?;
                anyhow::Ok(ws)
            });
        }
        for r in futures_util::future::join_all(futs).await {
            held.push(r?);
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, pss) = mem_kib(p.pid());
    let n = held.len() as f64;
    Ok((
        (rss.saturating_sub(base.0)) as f64 / n,
        (pss.saturating_sub(base.1)) as f64 / n,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        ["ssh", "vnc", "rdp", "workspace", "upgrades", "events", "soak", "files"].contains(&args.which.as_str()),
        "unknown benchmark {:?} (available: ssh, vnc, rdp, workspace, upgrades, events, soak, files)",
        args.which
    );
    if !args.links.is_empty() && !portico_tests::link::inside() {
        let status = portico_tests::link::run_in_namespace(std::env::args_os().skip(1))?;
        std::process::exit(status.code().unwrap_or(1));
    }
    if std::env::var("PORTICO_BENCH_RELEASE").is_err() {
        eprintln!("note: set PORTICO_BENCH_RELEASE=1 (the bench script does) to measure a release build");
    }
    let script_dir = std::path::Path::new("/tmp/portico-bench");
    std::fs::create_dir_all(script_dir)?;
    let script = script_dir.join("scroller.py");
    std::fs::copy(portico_tests::workspace_root().join("tests/bench/scroller.py"), &script)?;
    let script = script.display().to_string();
    if args.which == "soak" {
        return soak::run(&args).await;
    }
    if args.which != "ssh" {
        let (header, rows) = match args.which.as_str() {
            "vnc" if !args.links.is_empty() => (vnc::LINK_HEADER, vnc::run_links(&args).await?),
            "vnc" if args.recording => (vnc::RECORDING_HEADER, vnc::run_recording(&args).await?),
            "vnc" if !args.viewers.is_empty() => (vnc::VIEWERS_HEADER, vnc::run_viewers(&args).await?),
            "vnc" => (vnc::HEADER, vnc::run(&args).await?),
            "rdp" if !args.links.is_empty() => (rdp::LINK_HEADER, rdp::run_links(&args).await?),
            "rdp" => (rdp::HEADER, rdp::run(&args).await?),
            "upgrades" => (upgrades::HEADER, upgrades::run(&args).await?),
            "events" => (events::HEADER, events::run(&args).await?),
            "files" => (files::HEADER, files::run(&args).await?),
            _ => (workspace::HEADER, workspace::run(&args).await?),
        };
        println!("{header}");
        for r in rows {
            println!("{r}");
        }
        return Ok(());
    }
    let sshd = Sshd::start()?;
    let mut rows: Vec<String> = Vec::new();

    eprintln!("== ssh-text CPU");
    {
        let (p, api, conn) = portico_with_connection(&sshd).await?;
        for &n in &args.sessions {
            let (mut b, mut s, mut k) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..args.repeats {
                let (bc, sc, kib) = cpu_run(&p, &sshd, &api, &conn, n, &args, &script).await?;
                eprintln!("  N={n} run {r}: bridge {bc:.4} cores/session, sshd+shell {sc:.4}, {kib:.1} KiB/s/session");
                b.push(bc);
                s.push(sc);
                k.push(kib);
            }
            let (bm, blo, bhi) = median_range(b);
            let (sm, _, _) = median_range(s);
            let (km, _, _) = median_range(k);
            rows.push(format!(
                "| ssh-text CPU, N={n} | {bm:.4} cores/session (range {blo:.4}–{bhi:.4}) | ≤ 0.02 | sshd+shell {sm:.4} cores/session; {km:.0} KiB/s/session to the client |"
            ));
        }

        eprintln!("== keystroke-to-echo latency");
        let mut direct = latency_direct(&sshd, args.latency_samples).await?;
        let mut bridged = latency_bridge(&p, &api, &conn, args.latency_samples).await?;
        let (d50, d99, b50, b99) = (
            pct(&mut direct, 0.5),
            pct(&mut direct, 0.99),
            pct(&mut bridged, 0.5),
            pct(&mut bridged, 0.99),
        );
        rows.push(format!(
            "| echo latency, direct SSH | p50 {d50:.3} ms, p99 {d99:.3} ms | | {} samples |",
            args.latency_samples
        ));
        rows.push(format!(
            "| echo latency, through the bridge (TLS+WS) | p50 {b50:.3} ms, p99 {b99:.3} ms | added p50 < 2 ms | added p50 {:.3} ms, p99 {:.3} ms |",
            b50 - d50,
            b99 - d99
        ));
    }

    eprintln!("== idle memory");
    {
        let (p, api, conn) = portico_with_connection(&sshd).await?;
        // Warm the allocator and the code paths with one session, then take the baseline.
        let mut held = Vec::new();
        idle_memory(&p, &api, &conn, &mut held, 1, (0, 0)).await?;
        let base = mem_kib(p.pid());
        for &n in &args.idle {
            let (rss, pss) = idle_memory(&p, &api, &conn, &mut held, n + 1, base).await?;
            rows.push(format!(
                "| idle SSH session memory, N={n} | {:.1} KiB RSS/session ({:.1} KiB Pss) | < 1024 KiB | bridge total RSS {} MiB |",
                rss,
                pss,
                mem_kib(p.pid()).0 / 1024
            ));
            eprintln!("  N={n}: {rss:.1} KiB RSS/session");
        }
    }

    println!("| measurement | Portico | goal | notes |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
