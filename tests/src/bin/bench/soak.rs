//! The soak benchmark (`portico-bench soak --minutes N`): the real all-in-one binary under a steady,
//! bounded load for N minutes, with its resources sampled over time, plotted, and checked.
//!
//! - Peers: OpenSSH sshd, TigerVNC Xvnc and FreeRDP's shadow server (each display showing the text-light
//!   scroller, so frames keep coming), and a private dockerd with Portico's workspace image for the
//!   embedded agent.
//! - Load: each kind opens a session at a fixed period (`ssh` every 2 s, `vnc` 3 s, `rdp` 4 s, `workspace`
//!   12 s) and keeps it a few seconds with traffic (terminal: a command echoed every 500 ms; displays: every
//!   frame acknowledged, a pointer move every 500 ms); at most a few of a kind at once (a tick that finds them
//!   all busy is counted as skipped, never queued). Every other session ends through the API (`DELETE`),
//!   the others by dropping the socket (the browser tab closed: the bridge's grace period, 5 s here, ends
//!   it). Beside them a steady API load: connections, sessions and events listed, 4 requests/s.
//! - Samples every `--sample-secs` (2 s): VmRSS, threads and open fds of the process (/proc), the SQLite
//!   database with its write-ahead log, and, when the binary has `--metrics-listen`, the event queues'
//!   depth and drops and the bridge's live sessions. CSV and a gnuplot PNG in `target/soak/` (`--plot`
//!   copies the PNG elsewhere, e.g. `docs/img/`).
//! - Phases: start; warm-up (one session of each kind, then idle: the *idle* baseline is taken once no
//!   session is live and RSS is stable); load; drain (the last sessions end); settle (no session live, no
//!   workspace container left, RSS stable, at least `--settle-secs`): the *after* reading.
//! - Checks (a table; any failure exits non-zero): sessions and API requests succeed; after / idle RSS
//!   ≤ 1.20; threads and fds back near the idle baseline; no growth across the load phase (the mean of its
//!   last third against the mean of its first third, after the first fifth as ramp-up); the database grows by
//!   a bounded amount per session; the event queues never fill and end empty.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use portico_proto::wire::{ClientMsg, ServerMsg};
use portico_tests::client::{Api, Term, WsStream, ws_with_token};
use portico_tests::peers::{Dockerd, RdpServer, ShadowAuth, Sshd, VncServer, free_port};
use portico_tests::portico::{Options, Portico};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::Args;
use crate::vnc::{Scene, Workload, scene};

/// The desktops of the VNC and RDP servers (the text-light scroller runs on both).
const DESK_W: u16 = 1024;
const DESK_H: u16 = 640;
/// The limit of the issue: after the load, RSS within 20 % of idle.
const RSS_RATIO_LIMIT: f64 = 1.20;
/// How far threads and fds may stay above the idle baseline after the settle.
const THREADS_SLACK: f64 = 4.0;
const FDS_SLACK: f64 = 8.0;
/// Growth allowed between the first and last third of the load phase (means).
const TREND_RSS_FRACTION: f64 = 0.10;
const TREND_RSS_MIN_KIB: f64 = 8.0 * 1024.0;
const TREND_THREADS: f64 = 4.0;
const TREND_FDS: f64 = 16.0;
/// The database's growth per session started (rows of the session and its events, the write-ahead log).
const DB_BYTES_PER_SESSION: f64 = 64.0 * 1024.0;
/// Share of sessions that may fail (a loaded 2-core machine; each failure is printed).
const FAILURE_FRACTION: f64 = 0.01;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Phase {
    Start = 0,
    Warmup = 1,
    Idle = 2,
    Load = 3,
    Drain = 4,
    Settle = 5,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Warmup => "warmup",
            Phase::Idle => "idle",
            Phase::Load => "load",
            Phase::Drain => "drain",
            Phase::Settle => "settle",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Warmup,
            2 => Phase::Idle,
            3 => Phase::Load,
            4 => Phase::Drain,
            5 => Phase::Settle,
            _ => Phase::Start,
        }
    }
}

#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    phase: Phase,
    rss_kib: u64,
    threads: u64,
    fds: u64,
    /// Connections of the SQLite pool (sqlx runs one worker thread per connection, each with the database
    /// and its write-ahead log open): bounded by the pool's maximum, closed after its idle timeout.
    db_conns: u64,
    /// Open fds that are the database's files (.db, .db-wal).
    db_fds: u64,
    db_bytes: u64,
    /// Sessions the benchmark holds open (client side).
    live: u64,
    /// From /metrics, when the binary serves it.
    queue: Option<f64>,
    queue_capacity: Option<f64>,
    dropped: Option<f64>,
    bridge_sessions: Option<f64>,
    pool_max: Option<f64>,
}

/// What the sampler reads, shared with the driver.
struct Probe {
    pid: u32,
    data_dir: PathBuf,
    metrics: Option<u16>,
    started: Instant,
    phase: AtomicU8,
    live: AtomicU64,
    samples: Mutex<Vec<Sample>>,
}

fn status_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Open fds of `pid`, and how many of them are the database's files.
fn open_fds(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let (mut all, mut db) = (0, 0);
    for e in dir.flatten() {
        all += 1;
        if std::fs::read_link(e.path()).is_ok_and(|t| {
            let t = t.display().to_string();
            t.ends_with(".db") || t.ends_with(".db-wal")
        }) {
            db += 1;
        }
    }
    (all, db)
}

/// Threads of `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| {
        d.flatten()
            .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|n| n.starts_with(prefix)))
            .count() as u64
    })
}

/// The SQLite database with its write-ahead log and shared-memory index, bytes.
fn db_bytes(dir: &Path) -> u64 {
    ["portico.db", "portico.db-wal", "portico.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// `GET /metrics` over plain HTTP/1.0 (bounded by a timeout); the whole body.
async fn scrape(port: u16) -> anyhow::Result<String> {
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("metrics scrape timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").context("metrics response without a body")?;
    anyhow::ensure!(head.contains(" 200 "), "metrics answered {head:?}");
    Ok(body.to_owned())
}

/// The sum of every series of `name` (any labels), `None` when absent.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

impl Probe {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    fn set_phase(&self, p: Phase) {
        eprintln!(
            "== soak phase: {} (t = {:.0} s)",
            p.name(),
            self.started.elapsed().as_secs_f64()
        );
        self.phase.store(p as u8, Ordering::SeqCst);
    }

    async fn sample(&self) -> Sample {
        let (fds, db_fds) = open_fds(self.pid);
        let mut s = Sample {
            t: self.started.elapsed().as_secs_f64(),
            phase: self.phase(),
            rss_kib: status_field(self.pid, "VmRSS:"),
            threads: status_field(self.pid, "Threads:"),
            fds,
            db_conns: threads_named(self.pid, "sqlx-sqlite"),
            db_fds,
            db_bytes: db_bytes(&self.data_dir),
            live: self.live.load(Ordering::SeqCst),
            queue: None,
            queue_capacity: None,
            dropped: None,
            bridge_sessions: None,
            pool_max: None,
        };
        if let Some(port) = self.metrics {
            match scrape(port).await {
                Ok(text) => {
                    s.queue = metric_sum(&text, "portico_webapp_event_queue_depth");
                    s.queue_capacity = metric_sum(&text, "portico_webapp_event_queue_capacity");
                    s.dropped = metric_sum(&text, "portico_webapp_events_dropped_total");
                    s.bridge_sessions = metric_sum(&text, "portico_bridge_sessions");
                    s.pool_max = metric_sum(&text, "portico_webapp_db_pool_max_connections");
                }
                Err(e) => eprintln!("  metrics scrape failed: {e:#}"),
            }
        }
        s
    }

    fn last(&self, n: usize) -> Vec<Sample> {
        let s = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        s[s.len().saturating_sub(n)..].to_vec()
    }
}

/// Sample every `every` until `stop` is set (the sampling interval is the pacing, not a wait for an event).
async fn sampler(probe: Arc<Probe>, every: Duration, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let s = probe.sample().await;
        if let Ok(mut v) = probe.samples.lock() {
            v.push(s);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Terminal,
    Display,
}

/// One kind of session: its connection, pace and outcomes.
struct Kind {
    name: &'static str,
    conn: String,
    traffic: Traffic,
    period: Duration,
    hold: Duration,
    max_open: usize,
    /// How long the first frame (or the shell) may take: a workspace starts a container first.
    connect_timeout: Duration,
    started: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Kind {
    fn new(name: &'static str, conn: String, traffic: Traffic, period: u64, hold: u64, max_open: usize) -> Kind {
        Kind {
            name,
            conn,
            traffic,
            period: Duration::from_secs(period),
            hold: Duration::from_secs(hold),
            max_open,
            connect_timeout: Duration::from_secs(if name == "workspace" { 60 } else { 30 }),
            started: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }
}

/// What a session task needs.
struct Ctx {
    api: Api,
    cert: String,
    probe: Arc<Probe>,
}

/// A terminal session: connected, then a command echoed every 500 ms for `hold`.
async fn terminal(ws: WsStream, n: u64, hold: Duration, connect: Duration) -> anyhow::Result<Term> {
    let mut term = Term::new(ws);
    term.until("the shell", connect, |t| {
        t.statuses.iter().any(|s| s.state == "connected")
    })
    .await?;
    let until = Instant::now() + hold;
    let mut i = 0u64;
    while Instant::now() < until {
        // The shell prints `soakN-I`; the echo of the typed line shows `"s""oak…`, so only the output matches.
        let marker = format!("soak{n}-{i}");
        term.input(&format!("echo \"s\"\"oak{n}-{i}\"\r")).await?;
        term.until("the command's output", Duration::from_secs(10), |t| {
            t.text().contains(&marker)
        })
        .await?;
        term.output.clear();
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(term)
}

/// Read one display message (bounded), acknowledge frame ends; `Ok(None)` when the socket ended.
async fn display_pump(ws: &mut WsStream, timeout: Duration, frames: &mut u64) -> anyhow::Result<Option<()>> {
    let msg = match tokio::time::timeout(timeout, ws.next()).await {
        Err(_) => return Ok(Some(())),
        Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Ok(None),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(Some(Ok(m))) => m,
    };
    let Message::Binary(b) = msg else { return Ok(Some(())) };
    match ServerMsg::decode(&b).context("decode server message")? {
        ServerMsg::FrameEnd { frame_id } => {
            *frames += 1;
            ws.send(Message::Binary(ClientMsg::FrameAck { frame_id }.encode().into()))
                .await?;
        }
        ServerMsg::Error(e) => anyhow::bail!("session error: {} ({})", e.message, e.code),
        ServerMsg::Closed(c) => anyhow::bail!("session closed: {c:?}"),
        _ => {}
    }
    Ok(Some(()))
}

/// A graphical session: the first frame within `connect`, then frames acknowledged and the pointer moved
/// for `hold`.
async fn display(mut ws: WsStream, hold: Duration, connect: Duration) -> anyhow::Result<WsStream> {
    let mut frames = 0u64;
    let deadline = Instant::now() + connect;
    while frames == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "no frame within {connect:?}");
        if display_pump(&mut ws, left.min(Duration::from_millis(500)), &mut frames)
            .await?
            .is_none()
        {
            anyhow::bail!("socket closed before the first frame");
        }
    }
    let until = Instant::now() + hold;
    let mut next_move = Instant::now();
    let mut i = 0u16;
    while Instant::now() < until {
        if Instant::now() >= next_move {
            i = i.wrapping_add(1);
            let (x, y) = (100 + (i * 37) % 600, 100 + (i * 53) % 400);
            ws.send(Message::Binary(ClientMsg::Pointer { x, y, buttons: 0 }.encode().into()))
                .await?;
            next_move = Instant::now() + Duration::from_millis(500);
        }
        if display_pump(&mut ws, Duration::from_millis(200), &mut frames)
            .await?
            .is_none()
        {
            anyhow::bail!("socket closed during the session after {frames} frames");
        }
    }
    Ok(ws)
}

/// After `DELETE`, the bridge closes the socket within about a second: read (acknowledging) until it does.
async fn until_closed(ws: &mut WsStream, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "socket still open {timeout:?} after DELETE");
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => continue,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return Ok(()),
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(ServerMsg::FrameEnd { frame_id }) = ServerMsg::decode(&b) {
                    let _ = ws
                        .send(Message::Binary(ClientMsg::FrameAck { frame_id }.encode().into()))
                        .await;
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// One session of `kind`, from `POST /api/v1/sessions` to its end (API or dropped socket).
async fn one_session(ctx: &Ctx, kind: &Kind, n: u64) -> anyhow::Result<()> {
    let s = ctx.api.create_session(&kind.conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    let ws = ws_with_token(
        s["ws_url"].as_str().unwrap_or_default(),
        &ctx.cert,
        s["token"].as_str().unwrap_or_default(),
    )
    .await?
    .map_err(|r| anyhow::anyhow!("upgrade refused: {} {}", r.status, r.body))?;
    let mut ws = match kind.traffic {
        Traffic::Terminal => terminal(ws, n, kind.hold, kind.connect_timeout).await?.ws,
        Traffic::Display => display(ws, kind.hold, kind.connect_timeout).await?,
    };
    if n.is_multiple_of(2) {
        let (status, body) = ctx
            .api
            .request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
        anyhow::ensure!((200..300).contains(&status), "DELETE session: {status} {body}");
        until_closed(&mut ws, Duration::from_secs(15))
            .await
            .with_context(|| format!("session {sid}"))?;
    } else {
        // The tab closed: the bridge keeps the session for its grace period, then ends it.
        let _ = ws.close(None).await;
    }
    Ok(())
}

/// Start a session of `kind` every `kind.period` until `until`; returns the tasks (each bounded in time).
async fn drive(ctx: Arc<Ctx>, kind: Arc<Kind>, until: Instant) -> Vec<tokio::task::JoinHandle<()>> {
    let open = Arc::new(tokio::sync::Semaphore::new(kind.max_open));
    let mut tick = tokio::time::interval(kind.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = Vec::new();
    let mut n = 0u64;
    loop {
        tick.tick().await;
        if Instant::now() >= until {
            break;
        }
        let Ok(permit) = open.clone().try_acquire_owned() else {
            kind.skipped.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        n += 1;
        kind.started.fetch_add(1, Ordering::SeqCst);
        let (ctx, kind, number) = (ctx.clone(), kind.clone(), n);
        tasks.push(tokio::spawn(async move {
            ctx.probe.live.fetch_add(1, Ordering::SeqCst);
            let bound = kind.connect_timeout + kind.hold + Duration::from_secs(60);
            let r = tokio::time::timeout(bound, one_session(&ctx, &kind, number)).await;
            ctx.probe.live.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            let err = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(_) => Some(format!("session not done within {bound:?}")),
            };
            match err {
                None => {
                    kind.ok.fetch_add(1, Ordering::SeqCst);
                }
                Some(e) => {
                    kind.failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("  {} session {number} failed: {e}", kind.name);
                    if let Ok(mut v) = kind.errors.lock()
                        && v.len() < 5
                    {
                        v.push(e);
                    }
                }
            }
        }));
        tasks.retain(|t| !t.is_finished());
    }
    tasks
}

/// Steady API traffic until `until`: connections, sessions and events listed in turn, every 250 ms.
async fn api_load(api: Api, until: Instant, ok: Arc<AtomicU64>, failed: Arc<AtomicU64>) {
    let paths = [
        "/api/v1/connections",
        "/api/v1/sessions",
        "/api/v1/events?limit=50",
        "/api/v1/agents",
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut i = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        let path = paths[i % paths.len()];
        i += 1;
        match api.request(reqwest::Method::GET, path, None).await {
            Ok((s, _)) if (200..300).contains(&s) => {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok((s, body)) => {
                failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("  GET {path}: {s} {body}");
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::SeqCst);
                eprintln!("  GET {path}: {e:#}");
            }
        }
    }
}

/// Wait (bounded) until nothing is live: no session in the API, none on the bridge (metrics), no workspace
/// container in the engine.
async fn wait_quiet(api: &Api, probe: &Probe, engine: Option<&Dockerd>, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let sessions = api
            .ok(reqwest::Method::GET, "/api/v1/sessions", None)
            .await?
            .as_array()
            .map_or(0, Vec::len);
        let bridge = match probe.metrics {
            Some(port) => scrape(port)
                .await
                .ok()
                .and_then(|t| metric_sum(&t, "portico_bridge_sessions"))
                .unwrap_or(0.0),
            None => 0.0,
        };
        let containers = match engine {
            Some(e) => e
                .docker(&["ps", "-aq", "--filter", "label=org.portico.session"])?
                .lines()
                .filter(|l| !l.is_empty())
                .count(),
            None => 0,
        };
        if sessions == 0 && bridge == 0.0 && containers == 0 && probe.live.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still live after {timeout:?}: {sessions} sessions in the API, {bridge} on the bridge, {containers} containers"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until RSS is stable (the last 5 samples within 1 % or 1 MiB) and at least `min` has passed;
/// at most `max`. Returns whether it became stable.
async fn wait_stable(probe: &Probe, min: Duration, max: Duration, every: Duration) -> bool {
    let t0 = Instant::now();
    let since = probe.started.elapsed().as_secs_f64();
    loop {
        let last = probe.last(5);
        let fresh: Vec<&Sample> = last.iter().filter(|s| s.t >= since).collect();
        if t0.elapsed() >= min && fresh.len() == 5 {
            let lo = fresh.iter().map(|s| s.rss_kib).min().unwrap_or(0);
            let hi = fresh.iter().map(|s| s.rss_kib).max().unwrap_or(0);
            if (hi - lo) as f64 <= (hi as f64 * 0.01).max(1024.0) {
                return true;
            }
        }
        if t0.elapsed() >= max {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Least-squares slope of `y` over `x`.
fn slope(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let num: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let den: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// A series judged for growth: its name, how it is read from a sample, the absolute and relative rise
/// allowed, its unit.
type Trend = (&'static str, fn(&Sample) -> f64, f64, f64, &'static str);

struct Check {
    what: String,
    value: String,
    limit: String,
    pass: bool,
}

fn check(checks: &mut Vec<Check>, what: impl Into<String>, value: String, limit: impl Into<String>, pass: bool) {
    checks.push(Check {
        what: what.into(),
        value,
        limit: limit.into(),
        pass,
    });
}

fn write_csv(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let opt = |v: Option<f64>| v.map_or_else(|| "NaN".to_owned(), |v| format!("{v}"));
    let mut out = String::from(
        "t_s,phase,rss_kib,threads,fds,db_bytes,live_sessions,bridge_sessions,event_queue,event_queue_capacity,events_dropped,db_conns,db_fds\n",
    );
    for s in samples {
        out.push_str(&format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            s.t,
            s.phase.name(),
            s.rss_kib,
            s.threads,
            s.fds,
            s.db_bytes,
            s.live,
            opt(s.bridge_sessions),
            opt(s.queue),
            opt(s.queue_capacity),
            opt(s.dropped),
            s.db_conns,
            s.db_fds,
        ));
    }
    std::fs::write(path, out)?;
    Ok(())
}

/// Plot the CSV with gnuplot (Debian's gnuplot-nox): four panels over time, the load phase marked.
fn plot(csv: &Path, png: &Path, title: &str, load: (f64, f64), idle_rss_mib: f64, queue: bool) -> anyhow::Result<()> {
    let (l0, l1) = (load.0 / 60.0, load.1 / 60.0);
    let marks = format!(
        "set arrow 1 from {l0},graph 0 to {l0},graph 1 nohead dt 2 lc rgb '#888888'\n\
         set arrow 2 from {l1},graph 0 to {l1},graph 1 nohead dt 2 lc rgb '#888888'\n"
    );
    let queue_plot = if queue {
        "'' using ($1/60):9 with lines lw 1.5 lc rgb '#d95f02' title 'event queue depth (all sinks)'"
    } else {
        "1/0 notitle"
    };
    let script = format!(
        "set datafile separator ','\n\
         set terminal pngcairo size 1200,1000 font 'DejaVu Sans,10'\n\
         set output '{png}'\n\
         set multiplot layout 4,1 title '{title}'\n\
         set key top left\n\
         set grid\n\
         set xlabel 'minutes (dashed lines: load starts, load ends)'\n\
         {marks}\
         set ylabel 'RSS (MiB)'\n\
         plot '{csv}' every ::1 using ($1/60):($3/1024) with lines lw 1.5 lc rgb '#1b9e77' title 'VmRSS', \
              {limit} with lines dt 3 lc rgb '#e7298a' title 'idle x 1.20'\n\
         set ylabel 'count'\n\
         plot '{csv}' every ::1 using ($1/60):4 with lines lw 1.5 lc rgb '#7570b3' title 'threads', \
              '' every ::1 using ($1/60):5 with lines lw 1.5 lc rgb '#66a61e' title 'open fds', \
              '' every ::1 using ($1/60):12 with lines lw 1.5 dt 2 lc rgb '#a6761d' title 'SQLite pool connections'\n\
         set ylabel 'database (MiB)'\n\
         plot '{csv}' every ::1 using ($1/60):($6/1048576) with lines lw 1.5 lc rgb '#e6ab02' title 'SQLite db + wal + shm'\n\
         set ylabel 'count'\n\
         plot '{csv}' every ::1 using ($1/60):7 with steps lw 1.5 lc rgb '#1f78b4' title 'sessions held by the load', {queue_plot}\n\
         unset multiplot\n",
        png = png.display(),
        csv = csv.display(),
        limit = idle_rss_mib * RSS_RATIO_LIMIT,
    );
    let gp = csv.with_extension("gp");
    std::fs::write(&gp, script)?;
    let out = std::process::Command::new("gnuplot")
        .arg(&gp)
        .output()
        .context("run gnuplot (install gnuplot-nox: scripts/install-test-deps.sh)")?;
    anyhow::ensure!(
        out.status.success(),
        "gnuplot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// RSS after asking glibc to return its free memory (`malloc_trim(0)` called through gdb): tells how much
/// of what the process holds is free heap kept by the allocator rather than memory still in use.
fn trim_probe(pid: u32) -> anyhow::Result<u64> {
    let out = std::process::Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-ex", "call (int) malloc_trim(0)"])
        .output()
        .context("run gdb (for --trim-probe)")?;
    anyhow::ensure!(
        out.status.success(),
        "gdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(status_field(pid, "VmRSS:"))
}

/// What the open fds of `pid` are: sockets, pipes, event fds, files… with counts.
fn fd_kinds(pid: u32) -> String {
    let mut kinds: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path()).map_or_else(|_| "?".into(), |t| t.display().to_string());
            let kind = match target.split_once(':') {
                Some((k, rest)) if !target.starts_with('/') => {
                    if k == "anon_inode" {
                        rest.to_owned()
                    } else {
                        k.to_owned()
                    }
                }
                _ => target
                    .rsplit('/')
                    .next()
                    .unwrap_or("?")
                    .split('.')
                    .next_back()
                    .map_or("file".into(), |ext| format!("file .{ext}")),
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The names of the threads of `pid`, with counts.
fn thread_names(pid: u32) -> String {
    let mut names: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            *names.entry(name.trim().to_owned()).or_default() += 1;
        }
    }
    names
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn binary_has_metrics() -> bool {
    portico_tests::portico::binary()
        .ok()
        .and_then(|b| std::process::Command::new(b).arg("--help").output().ok())
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains("--metrics-listen"))
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let kinds_wanted = |k: &str| args.kinds.is_empty() || args.kinds.iter().any(|x| x == k);

    eprintln!("== soak: peers");
    let sshd = if kinds_wanted("ssh") {
        Some(Sshd::start()?)
    } else {
        None
    };
    let vnc = if kinds_wanted("vnc") {
        Some(scene(VncServer::xvnc(None, DESK_W, DESK_H)?, Workload::TextLight)?)
    } else {
        None
    };
    let rdp = if kinds_wanted("rdp") {
        Some(scene(
            RdpServer::shadow(ShadowAuth::None, DESK_W, DESK_H)?,
            Workload::TextLight,
        )?)
    } else {
        None
    };
    let engine = if kinds_wanted("workspace") {
        let e = Dockerd::start()?;
        e.with_workspace_image()?;
        Some(e)
    } else {
        None
    };

    let metrics_port = binary_has_metrics().then(free_port);
    if metrics_port.is_none() {
        eprintln!("  note: this portico has no --metrics-listen: event-queue depth is not sampled");
    }
    let mut extra_args = vec!["--session-grace-secs".into(), "5".into()];
    if let Some(port) = metrics_port {
        extra_args.extend(["--metrics-listen".into(), format!("127.0.0.1:{port}")]);
    }
    if let Some(e) = &engine {
        extra_args.extend([
            "--docker-socket".into(),
            e.socket.display().to_string(),
            "--agent-name".into(),
            "soak".into(),
            "--agent-memory-mb".into(),
            "4096".into(),
        ]);
    }
    let mut extra_env = vec![("PORTICO_LOG".to_owned(), "warn".to_owned())];
    for kv in &args.portico_env {
        let (k, v) = kv.split_once('=').context("--portico-env takes KEY=VALUE")?;
        extra_env.push((k.to_owned(), v.to_owned()));
    }
    let p = Portico::start_with(Options {
        extra_args,
        extra_env,
        ..Options::default()
    })?;
    let r = soak(
        args,
        &p,
        sshd.as_ref(),
        vnc.as_ref(),
        rdp.as_ref(),
        engine.as_ref(),
        metrics_port,
    )
    .await;
    let log_file = portico_tests::workspace_root().join(format!("target/soak/{}.log", args.label));
    let _ = std::fs::write(&log_file, p.log());
    if r.is_err() {
        let log = p.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!(
            "portico log (last {} lines):\n{}",
            tail.len(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    r
}

/// The soak itself, once the peers and Portico run.
async fn soak(
    args: &Args,
    p: &Portico,
    sshd: Option<&Sshd>,
    vnc: Option<&Scene<VncServer>>,
    rdp: Option<&Scene<RdpServer>>,
    engine: Option<&Dockerd>,
    metrics_port: Option<u16>,
) -> anyhow::Result<()> {
    let every = Duration::from_secs(args.sample_secs.max(1));
    let out_dir = portico_tests::workspace_root().join("target/soak");
    std::fs::create_dir_all(&out_dir)?;
    let fresh_rss = status_field(p.pid(), "VmRSS:");
    let api = Api::admin(p).await?;
    if engine.is_some() {
        api.wait_healthy_agent().await?;
    }

    let mut kinds: Vec<Arc<Kind>> = Vec::new();
    if let Some(sshd) = sshd {
        let conn = api
            .create_connection(json!({
                "name": "soak ssh", "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port,
                "username": sshd.user.name, "password": sshd.user.password,
            }))
            .await?;
        kinds.push(Arc::new(Kind::new("ssh", conn, Traffic::Terminal, 2, 6, 6)));
    }
    if let Some(vnc) = vnc {
        let conn = api
            .create_connection(
                json!({ "name": "soak vnc", "protocol": "vnc", "host": "127.0.0.1", "port": vnc.server.port }),
            )
            .await?;
        kinds.push(Arc::new(Kind::new("vnc", conn, Traffic::Display, 3, 8, 6)));
    }
    if let Some(rdp) = rdp {
        let conn = api
            .create_connection(json!({
                "name": "soak rdp", "protocol": "rdp", "host": "127.0.0.1", "port": rdp.server.port,
                "username": "soak", "password": "soak",
                "settings": {"width": DESK_W, "height": DESK_H, "danger_accept_any_certificate": true},
            }))
            .await?;
        kinds.push(Arc::new(Kind::new("rdp", conn, Traffic::Display, 4, 8, 4)));
    }
    if engine.is_some() {
        let image = "portico/workspace:latest";
        let conn = api
            .create_connection(json!({
                "name": "soak workspace", "protocol": "container",
                "settings": { "workspace": {
                    "image": image, "cpu_millis": 200, "memory_mb": 256, "pids_limit": 256,
                    "geometry": "1024x640",
                } },
            }))
            .await?;
        kinds.push(Arc::new(Kind::new("workspace", conn, Traffic::Display, 12, 6, 2)));
    }
    anyhow::ensure!(
        !kinds.is_empty(),
        "no session kinds to run (--kinds ssh,vnc,rdp,workspace)"
    );

    let probe = Arc::new(Probe {
        pid: p.pid(),
        data_dir: p.data_dir.clone(),
        metrics: metrics_port,
        started: Instant::now(),
        phase: AtomicU8::new(Phase::Start as u8),
        live: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler_task = tokio::spawn(sampler(probe.clone(), every, stop.clone()));
    // The load's own client (its keep-alive connections end with it, before the after reading).
    let load_api = Api::admin(p).await?;
    let ctx = Arc::new(Ctx {
        api: load_api.clone(),
        cert: p.cert_sha256.clone(),
        probe: probe.clone(),
    });

    // Warm-up: one session of each kind, ended through the API, so first-use allocations (TLS, code paths,
    // the agent's network, caches) are in the baseline, and bursts of API requests; then the idle baseline.
    probe.set_phase(Phase::Warmup);
    for k in &kinds {
        let r = tokio::time::timeout(
            k.connect_timeout + k.hold + Duration::from_secs(60),
            one_session(&ctx, k, 0),
        )
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("warm-up {} session failed: {e:#}", k.name),
            Err(_) => anyhow::bail!("warm-up {} session did not end in time", k.name),
        }
    }
    // Bursts of concurrent API requests open the SQLite pool's connections as a busy moment would: the pool
    // keeps them for sqlx's idle timeout (10 minutes), each with its page cache, so the baseline holds the
    // same bounded pool as the after reading.
    for _ in 0..3 {
        let burst = (0..48).map(|i| {
            let path = if i % 2 == 0 {
                "/api/v1/events?limit=200"
            } else {
                "/api/v1/sessions"
            };
            load_api.request(reqwest::Method::GET, path, None)
        });
        for r in futures_util::future::join_all(burst).await {
            let (status, body) = r?;
            anyhow::ensure!((200..300).contains(&status), "warm-up request: {status} {body}");
        }
    }
    wait_quiet(&api, &probe, engine, Duration::from_secs(60)).await?;
    probe.set_phase(Phase::Idle);
    let idle_stable = wait_stable(
        &probe,
        Duration::from_secs(args.settle_secs),
        Duration::from_secs(180),
        every,
    )
    .await;
    let idle: Vec<Sample> = probe.last(5);
    let idle_rss = mean(&idle.iter().map(|s| s.rss_kib as f64).collect::<Vec<_>>());
    let idle_threads = mean(&idle.iter().map(|s| s.threads as f64).collect::<Vec<_>>());
    let idle_fds = mean(&idle.iter().map(|s| s.fds as f64).collect::<Vec<_>>());
    let idle_db_conns = mean(&idle.iter().map(|s| s.db_conns as f64).collect::<Vec<_>>());
    let idle_db_fds = mean(&idle.iter().map(|s| s.db_fds as f64).collect::<Vec<_>>());
    let idle_detail = (thread_names(p.pid()), fd_kinds(p.pid()));
    eprintln!(
        "  idle: RSS {:.1} MiB, {idle_threads:.0} threads, {idle_fds:.0} fds (fresh start: {:.1} MiB)",
        idle_rss / 1024.0,
        fresh_rss as f64 / 1024.0
    );

    // Load.
    probe.set_phase(Phase::Load);
    let load_start = probe.started.elapsed().as_secs_f64();
    let until = Instant::now() + Duration::from_secs(u64::from(args.minutes) * 60);
    let (api_ok, api_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let api_task = tokio::spawn(api_load(load_api.clone(), until, api_ok.clone(), api_failed.clone()));
    let drivers: Vec<_> = kinds
        .iter()
        .map(|k| tokio::spawn(drive(ctx.clone(), k.clone(), until)))
        .collect();
    // A progress line every minute; the load phase ends at `until`, not at the next line.
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(Duration::from_secs(60))).await;
        let last = probe.last(1);
        if let Some(s) = last.first() {
            let counts: Vec<String> = kinds
                .iter()
                .map(|k| {
                    format!(
                        "{} {}/{}",
                        k.name,
                        k.ok.load(Ordering::SeqCst),
                        k.started.load(Ordering::SeqCst)
                    )
                })
                .collect();
            eprintln!(
                "  t = {:.0} min: RSS {:.1} MiB, {} threads, {} fds, db {:.2} MiB, {} live; ok/started: {}",
                (s.t - load_start) / 60.0,
                s.rss_kib as f64 / 1024.0,
                s.threads,
                s.fds,
                s.db_bytes as f64 / 1048576.0,
                s.live,
                counts.join(", ")
            );
        }
    }
    let load_end = probe.started.elapsed().as_secs_f64();

    // Drain: the drivers stop starting sessions; each session task is bounded in time.
    probe.set_phase(Phase::Drain);
    let mut tasks = Vec::new();
    for d in drivers {
        tasks.extend(d.await?);
    }
    let drain_deadline = Instant::now() + Duration::from_secs(180);
    for t in tasks {
        let left = drain_deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            anyhow::bail!("session tasks still running 180 s after the load ended");
        }
    }
    let _ = api_task.await;
    drop(ctx);
    drop(load_api);

    // Settle: nothing live, then RSS stable.
    wait_quiet(&api, &probe, engine, Duration::from_secs(120)).await?;
    probe.set_phase(Phase::Settle);
    let after_stable = wait_stable(
        &probe,
        Duration::from_secs(args.settle_secs),
        Duration::from_secs(180),
        every,
    )
    .await;
    let after: Vec<Sample> = probe.last(3);
    let after_rss = mean(&after.iter().map(|s| s.rss_kib as f64).collect::<Vec<_>>());
    let after_threads = mean(&after.iter().map(|s| s.threads as f64).collect::<Vec<_>>());
    let after_fds = mean(&after.iter().map(|s| s.fds as f64).collect::<Vec<_>>());
    let after_db_conns = mean(&after.iter().map(|s| s.db_conns as f64).collect::<Vec<_>>());
    let after_db_fds = mean(&after.iter().map(|s| s.db_fds as f64).collect::<Vec<_>>());
    let after_detail = (thread_names(p.pid()), fd_kinds(p.pid()));
    let trimmed = if args.trim_probe {
        match trim_probe(p.pid()) {
            Ok(kib) => Some(kib),
            Err(e) => {
                eprintln!("  trim probe failed: {e:#}");
                None
            }
        }
    } else {
        None
    };
    stop.store(true, Ordering::SeqCst);
    let _ = sampler_task.await;
    let samples = probe.samples.lock().map(|s| s.clone()).unwrap_or_default();

    // Files.
    let csv = out_dir.join(format!("{}.csv", args.label));
    let png = out_dir.join(format!("{}.png", args.label));
    write_csv(&csv, &samples)?;
    let queue_seen = samples.iter().any(|s| s.queue.is_some());
    let title = format!(
        "Portico soak: {} min of {} sessions + API traffic ({})",
        args.minutes,
        kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
        args.label
    );
    match plot(
        &csv,
        &png,
        &title,
        (load_start, load_end),
        idle_rss / 1024.0,
        queue_seen,
    ) {
        Ok(()) => {
            eprintln!("  plot: {}", png.display());
            if let Some(dest) = &args.plot {
                std::fs::copy(&png, dest).with_context(|| format!("copy the plot to {dest}"))?;
                eprintln!("  plot copied to {dest}");
            }
        }
        Err(e) => eprintln!("  no plot: {e:#}"),
    }
    eprintln!("  samples: {}", csv.display());

    // Checks.
    let mut checks = Vec::new();
    let mut total_started = 0u64;
    for k in &kinds {
        let (started, ok, failed, skipped) = (
            k.started.load(Ordering::SeqCst),
            k.ok.load(Ordering::SeqCst),
            k.failed.load(Ordering::SeqCst),
            k.skipped.load(Ordering::SeqCst),
        );
        total_started += started;
        let errors = k.errors.lock().map(|e| e.join(" / ")).unwrap_or_default();
        check(
            &mut checks,
            format!(
                "{} sessions (every {} s, held {} s)",
                k.name,
                k.period.as_secs(),
                k.hold.as_secs()
            ),
            format!(
                "{ok} ok of {started} started, {failed} failed, {skipped} ticks skipped (all busy){}",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; first errors: {errors}")
                }
            ),
            format!("≥ 1 ok, failed ≤ {:.0} %", FAILURE_FRACTION * 100.0),
            ok > 0 && failed as f64 <= FAILURE_FRACTION * started as f64,
        );
    }
    let (aok, afail) = (api_ok.load(Ordering::SeqCst), api_failed.load(Ordering::SeqCst));
    check(
        &mut checks,
        "API requests (4/s: connections, sessions, events, agents)",
        format!("{aok} ok, {afail} failed"),
        "0 failed",
        afail == 0 && aok > 0,
    );
    let peak_rss = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let ratio = after_rss / idle_rss.max(1.0);
    check(
        &mut checks,
        "RSS: idle → peak → after the settle",
        format!(
            "{:.1} → {:.1} → {:.1} MiB (after / idle = {ratio:.2}){}{}",
            idle_rss / 1024.0,
            peak_rss as f64 / 1024.0,
            after_rss / 1024.0,
            if idle_stable && after_stable {
                ""
            } else {
                "; RSS was not stable within 180 s"
            },
            trimmed.map_or(String::new(), |t| format!(
                "; after malloc_trim(0): {:.1} MiB",
                t as f64 / 1024.0
            )),
        ),
        format!("after / idle ≤ {RSS_RATIO_LIMIT:.2}"),
        ratio <= RSS_RATIO_LIMIT,
    );
    // The SQLite pool keeps the connections it opened under load until its idle timeout (sqlx: 10 minutes),
    // each with a worker thread and two fds: bounded by the pool's size, so it is checked on its own and the
    // threads and fds outside it must come back.
    let pool_max = samples.iter().filter_map(|s| s.pool_max).fold(0.0, f64::max);
    let pool_max = if pool_max > 0.0 { pool_max } else { 16.0 };
    let peak_db_conns = samples.iter().map(|s| s.db_conns).max().unwrap_or(0);
    check(
        &mut checks,
        "SQLite pool connections: idle → peak → after",
        format!("{idle_db_conns:.0} → {peak_db_conns} → {after_db_conns:.0}"),
        format!("≤ the pool's maximum ({pool_max:.0})"),
        peak_db_conns as f64 <= pool_max,
    );
    let peak_threads = samples.iter().map(|s| s.threads).max().unwrap_or(0);
    let (idle_other, after_other) = (idle_threads - idle_db_conns, after_threads - after_db_conns);
    check(
        &mut checks,
        "threads: idle → peak → after (outside the SQLite pool: idle → after)",
        format!("{idle_threads:.0} → {peak_threads} → {after_threads:.0} ({idle_other:.0} → {after_other:.0})"),
        format!("outside the pool: after ≤ idle + {THREADS_SLACK:.0}"),
        after_other <= idle_other + THREADS_SLACK,
    );
    let peak_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let (idle_other, after_other) = (idle_fds - idle_db_fds, after_fds - after_db_fds);
    check(
        &mut checks,
        "open fds: idle → peak → after (outside the SQLite pool: idle → after)",
        format!("{idle_fds:.0} → {peak_fds} → {after_fds:.0} ({idle_other:.0} → {after_other:.0})"),
        format!("outside the pool: after ≤ idle + {FDS_SLACK:.0}"),
        after_other <= idle_other + FDS_SLACK,
    );

    // Trend over the load phase: the first fifth is ramp-up; the rest is cut in thirds, whose first and last
    // means are compared (a leak per session shows as a steady rise; sessions coming and going are noise
    // around a flat mean). The least-squares slope is printed beside, per hour.
    let load: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.phase == Phase::Load && s.t >= load_start + (load_end - load_start) * 0.2)
        .collect();
    let third = load.len() / 3;
    if third >= 2 {
        let xs: Vec<f64> = load.iter().map(|s| s.t).collect();
        let series: [Trend; 3] = [
            (
                "RSS",
                |s| s.rss_kib as f64,
                TREND_RSS_MIN_KIB,
                TREND_RSS_FRACTION,
                "KiB",
            ),
            ("threads", |s| s.threads as f64, TREND_THREADS, 0.0, ""),
            ("open fds", |s| s.fds as f64, TREND_FDS, 0.0, ""),
        ];
        for (name, f, abs, frac, unit) in series {
            let ys: Vec<f64> = load.iter().map(|s| f(s)).collect();
            let first = mean(&ys[..third]);
            let last = mean(&ys[ys.len() - third..]);
            let allowed = abs.max(first * frac);
            let per_hour = slope(&xs, &ys) * 3600.0;
            let mib = unit == "KiB";
            let scale = if mib { 1024.0 } else { 1.0 };
            let u = if mib { " MiB" } else { "" };
            let show = |v: f64| format!("{:.1}", v / scale);
            let (per_hour_show, allowed_show) = (per_hour / scale, allowed / scale);
            check(
                &mut checks,
                format!("{name}: trend over the load (first third → last third mean)"),
                format!(
                    "{}{u} → {}{u} (slope {per_hour_show:+.1}{u}/h)",
                    show(first),
                    show(last)
                ),
                format!("rise ≤ {allowed_show:.1}{u}"),
                last - first <= allowed,
            );
        }
    } else {
        check(
            &mut checks,
            "trend over the load",
            format!("{} samples in the load phase", load.len()),
            "≥ 6 samples after the ramp-up",
            false,
        );
    }
    let db_start = samples
        .iter()
        .find(|s| s.phase == Phase::Load)
        .map_or(0, |s| s.db_bytes);
    let db_end = samples.last().map_or(0, |s| s.db_bytes);
    let db_max = samples.iter().map(|s| s.db_bytes).max().unwrap_or(0);
    let per_session = (db_max.saturating_sub(db_start)) as f64 / (total_started.max(1)) as f64;
    check(
        &mut checks,
        "database (SQLite + wal + shm): load start → end (max), per session started",
        format!(
            "{:.2} → {:.2} MiB (max {:.2}); {:.1} KiB per session",
            db_start as f64 / 1048576.0,
            db_end as f64 / 1048576.0,
            db_max as f64 / 1048576.0,
            per_session / 1024.0
        ),
        format!("≤ {:.0} KiB per session", DB_BYTES_PER_SESSION / 1024.0),
        per_session <= DB_BYTES_PER_SESSION,
    );
    if queue_seen {
        let max_q = samples.iter().filter_map(|s| s.queue).fold(0.0, f64::max);
        let cap = samples.iter().filter_map(|s| s.queue_capacity).fold(0.0, f64::max);
        let dropped = samples.iter().filter_map(|s| s.dropped).fold(0.0, f64::max);
        let end_q = samples.last().and_then(|s| s.queue).unwrap_or(0.0);
        check(
            &mut checks,
            "event queues (all sinks): max depth, at the end, dropped",
            format!("max {max_q:.0} (capacity {cap:.0} per sink), {end_q:.0} at the end, {dropped:.0} dropped"),
            "never full, 0 at the end, 0 dropped",
            (cap == 0.0 || max_q < cap) && end_q == 0.0 && dropped == 0.0,
        );
    } else {
        check(
            &mut checks,
            "event queues",
            "not sampled (the binary serves no /metrics)".to_owned(),
            "",
            true,
        );
    }

    println!(
        "Soak `{}`: {} min of load ({}), samples every {} s; fresh start {:.1} MiB RSS",
        args.label,
        args.minutes,
        kinds.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
        every.as_secs(),
        fresh_rss as f64 / 1024.0
    );
    println!();
    println!("| check | measured | limit | result |");
    println!("|---|---|---|---|");
    for c in &checks {
        println!(
            "| {} | {} | {} | {} |",
            c.what,
            c.value,
            c.limit,
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    println!();
    println!("Threads at idle: {}; after: {}.", idle_detail.0, after_detail.0);
    println!("Open fds at idle: {}; after: {}.", idle_detail.1, after_detail.1);
    let failed: Vec<&str> = checks.iter().filter(|c| !c.pass).map(|c| c.what.as_str()).collect();
    anyhow::ensure!(failed.is_empty(), "soak checks failed: {}", failed.join("; "));
    Ok(())
}
