//! The graphical benchmark (`portico-bench vnc`): the standard workloads of ../shared/bench/README.md on
//! TigerVNC Xvnc 1280x720, relayed to N instant-ack clients by the Portico bridge and, side by side in the
//! same run, by websockify (the passthrough lower bound for proxy CPU).
//!
//! - Portico clients read the wire protocol and acknowledge every FRAME_END at once; they decode nothing.
//! - websockify clients speak RFB over the WebSocket with the same encodings the bridge asks for, and ask for
//!   the next incremental update as soon as one ends (they must parse RFB to find update boundaries).
//! - All N sessions watch the same display (`-AlwaysShared`), so the workload itself costs the same for any N;
//!   Xvnc encodes once per client.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use portico_proto::rfb::{RfbClient, RfbConfig, RfbEvent};
use portico_proto::wire::{ClientMsg, ServerMsg};
use portico_tests::client::Api;
use portico_tests::peers::XDisplay;
use portico_tests::peers::{Background, VncServer, free_port, wait_for};
use portico_tests::portico::Portico;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::{Args, clk_tck, cores, median_range, mem_kib, tree_ticks};

type WsPlain = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const WIDTH: u16 = 1280;
pub const HEIGHT: u16 = 720;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    TextHeavy,
    TextLight,
    Video,
    /// The whole 1280x720 desktop is a 25 fps video (`video-full` of the standard workloads).
    VideoFull,
    Idle,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::TextHeavy => "text-heavy",
            Workload::TextLight => "text-light",
            Workload::Video => "video",
            Workload::VideoFull => "video-full",
            Workload::Idle => "idle",
        }
    }
}

#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    frames: AtomicU64,
    /// `VIDEO` messages (the RDP graphics pipeline's H.264).
    video: AtomicU64,
    /// Round trips of pings sent while frames flow (PING→PONG through the bridge's queue to the browser;
    /// WebSocket ping→pong for websockify), with when they were taken.
    pings: std::sync::Mutex<Vec<(Instant, f64)>>,
    /// Messages and bytes per wire message type, kept when `PORTICO_BENCH_KINDS` is set (printed to stderr
    /// after each window: what the frames are made of).
    kinds: Option<std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>>,
}

impl Counters {
    fn new() -> Self {
        Counters {
            kinds: std::env::var_os("PORTICO_BENCH_KINDS").map(|_| Default::default()),
            ..Default::default()
        }
    }

    fn print_kinds(&self, what: &str) {
        let Some(Ok(kinds)) = self.kinds.as_ref().map(|k| k.lock()) else {
            return;
        };
        let all: u64 = kinds.values().map(|v| v.1).sum();
        eprintln!("{what}: bytes by wire message type");
        for (t, (n, b)) in kinds.iter() {
            eprintln!(
                "  {t}: {n} messages, {b} bytes ({:.1} %)",
                100.0 * *b as f64 / all.max(1) as f64
            );
        }
    }
}

/// One ping in flight at a time, this often.
const PING_EVERY: Duration = Duration::from_millis(250);

/// What runs on the display of a server (`S`: the VNC or RDP server) for one workload.
pub struct Scene<S> {
    pub server: S,
    _programs: Vec<Background>,
}

fn bench_dir() -> std::path::PathBuf {
    std::path::PathBuf::from("/tmp/portico-bench")
}

/// The video frames of `width` x `height` (make_frames.sh), made once and cached.
fn frames(width: u16, height: u16) -> anyhow::Result<std::path::PathBuf> {
    let dir = bench_dir().join(format!("frames_{width}x{height}"));
    if !dir.join("f199.png").exists() {
        eprintln!("  making the {width}x{height} video frames (once)…");
        let script = portico_tests::workspace_root().join("tests/bench/make_frames.sh");
        let st = Command::new("sh")
            .arg(script)
            .args([width.to_string(), height.to_string()])
            .arg(&dir)
            .status()?;
        anyhow::ensure!(st.success(), "make_frames.sh failed (install imagemagick)");
    }
    Ok(dir)
}

pub fn scene<S: XDisplay>(server: S, w: Workload) -> anyhow::Result<Scene<S>> {
    let scroller = bench_dir().join("scroller.py").display().to_string();
    let xterm = |args: &str| -> anyhow::Result<Background> { server.text_xterm(&format!("python3 {scroller} {args}")) };
    let programs = match w {
        Workload::TextHeavy => vec![xterm("20 6 1")?],
        Workload::TextLight => vec![xterm("5 1 3")?],
        Workload::Idle => {
            let bg = xterm("5 1 3")?;
            std::thread::sleep(Duration::from_secs(2));
            // Stop the scroller (not the xterm): the desktop is idle but alive.
            // (The pattern must not match the xterm, whose command line contains the scroller's.)
            let pattern = format!("^[^ ]*python3[^ ]* {scroller} 5 1 3");
            let st = Command::new("pkill").args(["-STOP", "-f", &pattern]).status()?;
            anyhow::ensure!(st.success(), "could not stop the scroller");
            vec![bg]
        }
        Workload::Video | Workload::VideoFull => {
            server.x("xsetroot", &["-solid", "#000000"])?;
            let (width, height, at) = if w == Workload::Video {
                (640, 360, "+320+180")
            } else {
                (1280, 720, "+0+0")
            };
            let dir = frames(width, height)?;
            if w == Workload::VideoFull {
                let player = portico_tests::workspace_root().join("tests/bench/play_frames.py");
                let (player, dir) = (player.display().to_string(), dir.display().to_string());
                let (ws, hs) = (width.to_string(), height.to_string());
                vec![server.spawn("python3", &[&player, &dir, &ws, &hs])?]
            } else {
                let mut files: Vec<String> = std::fs::read_dir(&dir)?
                    .filter_map(|e| e.ok().map(|e| e.path().display().to_string()))
                    .filter(|p| p.ends_with(".png"))
                    .collect();
                files.sort();
                let mut args = vec!["-delay", "4", "-loop", "0", "-geometry", at];
                args.extend(files.iter().map(String::as_str));
                vec![server.spawn("animate", &args)?]
            }
        }
    };
    wait_for("the workload window", Duration::from_secs(30), || {
        server.x("xdotool", &["search", "--onlyvisible", "--name", "."]).is_ok()
    })?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(Scene {
        server,
        _programs: programs,
    })
}

pub struct Sample {
    pub proxy_cores: f64,
    pub server_cores: f64,
    pub kib_s: f64,
    pub fps: f64,
    pub rss_kib: f64,
    /// Share of frames that carried H.264 (`VIDEO` messages per frame).
    pub video_share: f64,
    /// Ping round trips over the window, milliseconds.
    pub latency_ms: Vec<f64>,
    /// The fewest frames in one second of the window (per session).
    pub worst_second_fps: f64,
    /// Frames in each second of the window (per session).
    pub per_second: Vec<f64>,
    /// Frames per second of each client, in the order of the counters.
    pub each_fps: Vec<f64>,
}

/// Measure over the window: proxy and Xvnc CPU, bytes and frames per session.
async fn window(proxy_pid: u32, server_pid: u32, counters: &[Arc<Counters>], args: &Args) -> Sample {
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let tck = clk_tck();
    let total = |f: fn(&Counters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let bytes = |c: &Counters| c.bytes.load(Ordering::Relaxed);
    let frames = |c: &Counters| c.frames.load(Ordering::Relaxed);
    let video = |c: &Counters| c.video.load(Ordering::Relaxed);
    let each0: Vec<u64> = counters.iter().map(|c| frames(c)).collect();
    let (p0, s0, b0, f0, v0, t0) = (
        tree_ticks(proxy_pid),
        tree_ticks(server_pid),
        total(bytes),
        total(frames),
        total(video),
        Instant::now(),
    );
    // Frames per second, second by second: a periodic dip shows in the worst one.
    let mut per_second = Vec::new();
    let mut last = f0;
    for s in 1..=args.window {
        tokio::time::sleep_until((t0 + Duration::from_secs(s)).into()).await;
        let now = total(frames);
        per_second.push((now - last) as f64 / counters.len() as f64);
        last = now;
    }
    let worst_second_fps = per_second.iter().copied().fold(f64::MAX, f64::min);
    let secs = t0.elapsed().as_secs_f64();
    let (p1, s1, b1, f1, v1) = (
        tree_ticks(proxy_pid),
        tree_ticks(server_pid),
        total(bytes),
        total(frames),
        total(video),
    );
    let n = counters.len() as f64;
    let latency_ms = counters
        .iter()
        .flat_map(|c| {
            c.pings
                .lock()
                .map(|p| {
                    p.iter()
                        .filter(|(at, _)| *at >= t0)
                        .map(|&(_, ms)| ms)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    Sample {
        latency_ms,
        proxy_cores: cores(&p0, &p1, secs, tck) / n,
        server_cores: cores(&s0, &s1, secs, tck) / n,
        kib_s: (b1 - b0) as f64 / 1024.0 / secs / n,
        fps: (f1 - f0) as f64 / secs / n,
        rss_kib: 0.0,
        video_share: (v1 - v0) as f64 / (f1 - f0).max(1) as f64,
        worst_second_fps: if worst_second_fps == f64::MAX {
            0.0
        } else {
            worst_second_fps
        },
        per_second,
        each_fps: counters
            .iter()
            .zip(each0)
            .map(|(c, f0)| (frames(c) - f0) as f64 / secs)
            .collect(),
    }
}

/// N Portico sessions, each an instant-ack client.
/// N instant-ack sessions of `conn`; `caps`: the `CAPS` the client sends first (RDP: `CAPS_H264` for the
/// graphics pipeline; `None`: none, as an older client).
pub async fn portico_run(
    p: &Portico,
    api: &Api,
    conn: &str,
    server_pid: u32,
    n: usize,
    args: &Args,
    caps: Option<u32>,
) -> anyhow::Result<Sample> {
    let base = mem_kib(p.pid()).0;
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    for i in 0..n {
        let (_, mut ws) = portico_tests::client::attach(p, api, conn).await?;
        if let Some(flags) = caps {
            ws.send(Message::Binary(ClientMsg::Caps { flags }.encode().into()))
                .await?;
        }
        let c = Arc::new(Counters::new());
        counters.push(c.clone());
        // The first session also pings: the latency behind its frames.
        tasks.push(drive(ws, c, i == 0, i));
    }
    let mut s = window(p.pid(), server_pid, &counters, args).await;
    if let Some(c) = counters.first()
        && c.kinds.is_some()
    {
        c.print_kinds("portico, first session");
        if let Some(l) = p.log().lines().rfind(|l| l.contains("follow the link")) {
            eprintln!("  last switch: {l}");
        }
    }
    s.rss_kib = mem_kib(p.pid()).0.saturating_sub(base) as f64 / n as f64;
    for t in tasks {
        t.abort();
    }
    end_all(api).await?;
    Ok(s)
}

/// A client that draws every frame at once (acknowledges it as it arrives) and counts what it gets; the
/// pinging one also measures the latency behind the frames.
fn drive(
    mut ws: portico_tests::client::WsStream,
    c: Arc<Counters>,
    pinging: bool,
    i: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PING_EVERY);
        let mut ping: Option<([u8; 8], Instant)> = None;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                m = ws.next() => {
                    let Some(Ok(m)) = m else { break };
                    let Message::Binary(b) = m else { continue };
                    c.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                    if let (Some(Ok(mut k)), Some(t)) = (c.kinds.as_ref().map(|k| k.lock()), b.get(1)) {
                        // IMAGE (0x21): x, y, w, h, then the format (1 PNG, 2 JPEG).
                        let label = match (t, b.get(10)) {
                            (0x21, Some(1)) => "image/png".to_string(),
                            (0x21, Some(2)) => "image/jpeg".to_string(),
                            _ => format!("0x{t:02x}"),
                        };
                        let e = k.entry(label).or_default();
                        e.0 += 1;
                        e.1 += b.len() as u64;
                    }
                    if b.len() > 2
                        && b[1] == 0x04
                        && let Ok(ServerMsg::Error(e)) = ServerMsg::decode(&b)
                    {
                        eprintln!("session {i}: error {}: {}", e.code, e.message);
                    }
                    if b.len() > 2 && b[1] == 0x26 {
                        c.video.fetch_add(1, Ordering::Relaxed);
                    }
                    if b.len() == 10 && b[1] == 0x06
                        && let Ok(ServerMsg::Pong(p)) = ServerMsg::decode(&b)
                        && let Some((want, at)) = ping
                        && p == want
                    {
                        ping = None;
                        if let Ok(mut v) = c.pings.lock() {
                            v.push((Instant::now(), at.elapsed().as_secs_f64() * 1000.0));
                        }
                    }
                    // FRAME_END is type 0x25 with a 4-byte id: decode only that.
                    if b.len() == 6
                        && b[1] == 0x25
                        && let Ok(ServerMsg::FrameEnd { frame_id }) = ServerMsg::decode(&b)
                    {
                        c.frames.fetch_add(1, Ordering::Relaxed);
                        let ack = ClientMsg::FrameAck { frame_id }.encode();
                        if ws.send(Message::Binary(ack.into())).await.is_err() {
                            break;
                        }
                    }
                }
                _ = tick.tick(), if pinging && ping.is_none() => {
                    seq += 1;
                    let nonce = seq.to_be_bytes();
                    ping = Some((nonce, Instant::now()));
                    if ws.send(Message::Binary(ClientMsg::Ping(nonce).encode().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

pub async fn end_all(api: &Api) -> anyhow::Result<()> {
    let sessions = api.ok(reqwest::Method::GET, "/api/v1/sessions", None).await?;
    for s in sessions.as_array().cloned().unwrap_or_default() {
        let id = s["id"].as_str().unwrap_or_default();
        let _ = api
            .request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

struct Websockify {
    child: Child,
    port: u16,
}

impl Websockify {
    /// On `port`, or a free one.
    fn start(vnc_port: u16, port: Option<u16>) -> anyhow::Result<Websockify> {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new("websockify")
            .args([format!("127.0.0.1:{port}"), format!("127.0.0.1:{vnc_port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start websockify (install the Debian package websockify)")?;
        wait_for("websockify", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })?;
        Ok(Websockify { child, port })
    }
}

impl Drop for Websockify {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// N RFB-over-WebSocket clients through websockify, asking for the next update as soon as one ends.
async fn websockify_run(ws: &Websockify, server_pid: u32, n: usize, args: &Args) -> anyhow::Result<Sample> {
    let mut tasks = Vec::new();
    let mut counters = Vec::new();
    for i in 0..n {
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{}/",
            ws.port
        ))?;
        req.headers_mut().insert("sec-websocket-protocol", "binary".parse()?);
        let (mut sock, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .context("connect to websockify")?;
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        let pinging = i == 0;
        tasks.push(tokio::spawn(async move {
            let mut rfb = RfbClient::new(RfbConfig::default());
            let mut tick = tokio::time::interval(PING_EVERY);
            let mut ping: Option<([u8; 8], Instant)> = None;
            let mut seq = 0u64;
            loop {
                while let Some(out) = rfb.poll_transmit() {
                    if sock.send(Message::Binary(out.into())).await.is_err() {
                        return;
                    }
                }
                let m = tokio::select! {
                    m = sock.next() => m,
                    _ = tick.tick(), if pinging && ping.is_none() => {
                        seq += 1;
                        let nonce = seq.to_be_bytes();
                        ping = Some((nonce, Instant::now()));
                        if sock.send(Message::Ping(nonce.to_vec().into())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let Some(Ok(m)) = m else { return };
                if let Message::Pong(p) = &m
                    && let Some((want, at)) = ping
                    && p[..] == want[..]
                {
                    ping = None;
                    if let Ok(mut v) = c.pings.lock() {
                        v.push((Instant::now(), at.elapsed().as_secs_f64() * 1000.0));
                    }
                }
                let Message::Binary(b) = m else { continue };
                c.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                if rfb.handle_input(&b).is_err() {
                    return;
                }
                while let Some(ev) = rfb.poll_event() {
                    if ev == RfbEvent::UpdateEnd {
                        c.frames.fetch_add(1, Ordering::Relaxed);
                        rfb.request_update(true);
                    }
                }
            }
        }));
    }
    let s = window(ws.child.id(), server_pid, &counters, args).await;
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(s)
}

/// How long without a drawing frame counts as a quiet screen before a keystroke (several round trips of
/// the slowest link), and the longest wait for it (a screen still refining lossy patches then gets the
/// key anyway: its echo may then be measured on a refinement, which the settle column shows).
const QUIET: Duration = Duration::from_millis(400);
const QUIET_LIMIT: Duration = Duration::from_secs(5);
/// Per keystroke over a quiet idle xterm: milliseconds from the key to the first frame (Portico) or
/// update (websockify) that draws anything (on the idle xterm only the echo draws), how many more drawing
/// frames followed before the screen was quiet again for [`QUIET`] (a character drawn twice: a lossy
/// patch, then its refinement), and milliseconds from the key to the last of them.
#[derive(Default)]
pub struct Echoes {
    pub ms: Vec<f64>,
    pub redraws: Vec<f64>,
    pub settled_ms: Vec<f64>,
}

impl Echoes {
    /// One keystroke: `echo` the first drawing, then `more` until quiet (`Ok(false)` once quiet for
    /// [`QUIET`]), each given what is left of [`QUIET_LIMIT`] at most.
    async fn sample<S>(
        &mut self,
        state: &mut S,
        key: Instant,
        echoed: bool,
        mut more: impl AsyncFnMut(&mut S, Duration) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(echoed, "no echo within 5 s");
        self.ms.push(key.elapsed().as_secs_f64() * 1000.0);
        let mut last = key.elapsed();
        let mut redraws = 0.0;
        // A screen that never settles (a lossy patch refined bit by bit) counts as settled at the limit.
        while last < QUIET_LIMIT && more(state, QUIET).await? {
            redraws += 1.0;
            last = key.elapsed();
        }
        self.redraws.push(redraws);
        self.settled_ms.push(last.as_secs_f64() * 1000.0);
        Ok(())
    }
}

/// Read frames (acknowledging each) until one that draws something ends: `Ok(false)` when `within` passes
/// first.
async fn drawing_frame(ws: &mut portico_tests::client::WsStream, within: Duration) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + within;
    let mut drew = false;
    loop {
        let Ok(m) = tokio::time::timeout_at(deadline, ws.next()).await else {
            return Ok(false);
        };
        let Message::Binary(b) = m.context("socket closed")?? else {
            continue;
        };
        match ServerMsg::decode(&b) {
            Ok(ServerMsg::Image { .. } | ServerMsg::Fill { .. } | ServerMsg::Copy { .. }) => drew = true,
            Ok(ServerMsg::FrameEnd { frame_id }) => {
                ws.send(Message::Binary(ClientMsg::FrameAck { frame_id }.encode().into()))
                    .await?;
                if std::mem::take(&mut drew) {
                    return Ok(true);
                }
            }
            _ => {}
        }
    }
}

/// Wait (at most [`QUIET_LIMIT`]) until no frame draws for [`QUIET`].
async fn quiet_portico(ws: &mut portico_tests::client::WsStream) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < QUIET_LIMIT && drawing_frame(ws, QUIET).await? {}
    Ok(())
}

/// Keystroke-to-echo latency through Portico, over the idle xterm.
async fn latency_portico(p: &Portico, api: &Api, conn: &str, samples: usize) -> anyhow::Result<Echoes> {
    let (_, mut ws) = portico_tests::client::attach(p, api, conn).await?;
    anyhow::ensure!(drawing_frame(&mut ws, Duration::from_secs(10)).await?, "no first frame");
    let send = async |ws: &mut portico_tests::client::WsStream, m: ClientMsg| {
        ws.send(Message::Binary(m.encode().into())).await
    };
    send(
        &mut ws,
        ClientMsg::Pointer {
            x: WIDTH / 2,
            y: HEIGHT / 2,
            buttons: 0,
        },
    )
    .await?;
    let mut out = Echoes::default();
    for _ in 0..samples {
        quiet_portico(&mut ws).await?;
        let t = Instant::now();
        for down in [true, false] {
            let key = ClientMsg::Key {
                keysym: u32::from(b'x'),
                down,
                scancode: 0,
            };
            send(&mut ws, key).await?;
        }
        let echoed = drawing_frame(&mut ws, Duration::from_secs(5)).await?;
        out.sample(&mut ws, t, echoed, async |ws, within| drawing_frame(ws, within).await)
            .await?;
    }
    end_all(api).await?;
    Ok(out)
}

/// Keystroke-to-echo latency through websockify (an RFB client asking for the next update as soon as one
/// ends), over the same idle xterm.
async fn latency_websockify(ws: &Websockify, samples: usize) -> anyhow::Result<Echoes> {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://127.0.0.1:{}/",
        ws.port
    ))?;
    req.headers_mut().insert("sec-websocket-protocol", "binary".parse()?);
    let (sock, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .context("connect to websockify")?;
    let rfb = RfbClient::new(RfbConfig::default());
    // Pump until an update that draws something ends (asking for the next one as each ends): `Ok(false)`
    // when `within` passes first.
    let drawing_update = async |sock: &mut WsPlain, rfb: &mut RfbClient, within: Duration| -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + within;
        let mut drew = false;
        loop {
            while let Some(out) = rfb.poll_transmit() {
                sock.send(Message::Binary(out.into())).await?;
            }
            let Ok(m) = tokio::time::timeout_at(deadline, sock.next()).await else {
                return Ok(false);
            };
            let Message::Binary(b) = m.context("socket closed")?? else {
                continue;
            };
            rfb.handle_input(&b)?;
            let mut ended = false;
            while let Some(ev) = rfb.poll_event() {
                match ev {
                    RfbEvent::UpdateEnd => {
                        rfb.request_update(true);
                        ended = true;
                    }
                    RfbEvent::Rect { .. } | RfbEvent::Fill { .. } | RfbEvent::Jpeg { .. } | RfbEvent::Copy { .. } => {
                        drew = true;
                    }
                    _ => {}
                }
            }
            if ended && std::mem::take(&mut drew) {
                while let Some(out) = rfb.poll_transmit() {
                    sock.send(Message::Binary(out.into())).await?;
                }
                return Ok(true);
            }
        }
    };
    let mut c = (sock, rfb);
    anyhow::ensure!(
        drawing_update(&mut c.0, &mut c.1, Duration::from_secs(10)).await?,
        "no first update"
    );
    c.1.pointer(WIDTH / 2, HEIGHT / 2, 0);
    let mut out = Echoes::default();
    for _ in 0..samples {
        let started = Instant::now();
        while started.elapsed() < QUIET_LIMIT && drawing_update(&mut c.0, &mut c.1, QUIET).await? {}
        let t = Instant::now();
        c.1.key(u32::from(b'x'), true);
        c.1.key(u32::from(b'x'), false);
        let echoed = drawing_update(&mut c.0, &mut c.1, Duration::from_secs(5)).await?;
        out.sample(&mut c, t, echoed, async |(sock, rfb), within| {
            drawing_update(sock, rfb, within).await
        })
        .await?;
    }
    Ok(out)
}

/// Goals per session from the issues: (max bridge cores, max KiB/s, min fps); every workload also within
/// 2× websockify's CPU per session at the same fps.
fn goal(w: Workload) -> &'static str {
    match w {
        Workload::TextHeavy => "≤ 2× websockify, ≤ 0.18 cores, ≥ 20 fps, ≤ 2048 KiB/s",
        Workload::TextLight => "≤ 2× websockify, ≤ 0.04 cores, ≤ 400 KiB/s",
        Workload::Video => "≤ 2× websockify, ≤ 0.15 cores, ≥ 24 fps, ≤ 670 KiB/s",
        Workload::VideoFull => "≤ 2× websockify, ≥ 24 fps",
        Workload::Idle => "",
    }
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let mut latency = None;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let workloads = [
        Workload::TextHeavy,
        Workload::TextLight,
        Workload::Video,
        Workload::VideoFull,
        Workload::Idle,
    ];
    for w in selected(args, &workloads) {
        eprintln!("== vnc {}", w.name());
        let scene = scene(VncServer::xvnc(None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pid();
        let conn = api
            .create_connection(json!({ "name": format!("bench {}", w.name()), "protocol": "vnc", "host": "127.0.0.1", "port": scene.server.port }))
            .await?;
        let wsfy = Websockify::start(scene.server.port, None)?;
        for &n in &args.sessions {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for r in 0..args.repeats {
                // Interleaved: Portico, then websockify, in each repeat.
                let a = portico_run(&p, &api, &conn, server_pid, n, args, None).await?;
                eprintln!(
                    "  N={n} run {r} portico:    {:.4} cores, Xvnc {:.4}, {:.0} KiB/s, {:.1} fps, +{:.0} KiB RSS per session",
                    a.proxy_cores, a.server_cores, a.kib_s, a.fps, a.rss_kib
                );
                let b = websockify_run(&wsfy, server_pid, n, args).await?;
                eprintln!(
                    "  N={n} run {r} websockify: {:.4} cores, Xvnc {:.4}, {:.0} KiB/s, {:.1} fps",
                    b.proxy_cores, b.server_cores, b.kib_s, b.fps
                );
                ours.push(a);
                theirs.push(b);
            }
            let med = |v: &[Sample], f: fn(&Sample) -> f64| median_range(v.iter().map(f).collect());
            let (pc, pclo, pchi) = med(&ours, |s| s.proxy_cores);
            let (sc, _, _) = med(&ours, |s| s.server_cores);
            let (kib, _, _) = med(&ours, |s| s.kib_s);
            let (fps, _, _) = med(&ours, |s| s.fps);
            let (rss, _, _) = med(&ours, |s| s.rss_kib);
            let (wc, wclo, wchi) = med(&theirs, |s| s.proxy_cores);
            let (wsc, _, _) = med(&theirs, |s| s.server_cores);
            let (wkib, _, _) = med(&theirs, |s| s.kib_s);
            let (wfps, _, _) = med(&theirs, |s| s.fps);
            let ratio = if wc > 0.0 {
                format!("{:.1}×", pc / wc)
            } else {
                "–".into()
            };
            rows.push(format!(
                "| {} | {n} | {pc:.4} ({pclo:.4}–{pchi:.4}) | {sc:.4} | {fps:.1} | {kib:.0} | {rss:.0} | {wc:.4} ({wclo:.4}–{wchi:.4}) | {wsc:.4} | {wfps:.1} | {wkib:.0} | {ratio} | {} |",
                w.name(),
                goal(w)
            ));
        }
        if w == Workload::Idle {
            eprintln!("== vnc keystroke-to-display latency (idle xterm)");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..args.repeats {
                a.extend(
                    latency_portico(&p, &api, &conn, args.latency_samples / args.repeats.max(1))
                        .await?
                        .ms,
                );
                b.extend(
                    latency_websockify(&wsfy, args.latency_samples / args.repeats.max(1))
                        .await?
                        .ms,
                );
            }
            let (a50, a99, b50, b99) = (
                crate::pct(&mut a, 0.5),
                crate::pct(&mut a, 0.99),
                crate::pct(&mut b, 0.5),
                crate::pct(&mut b, 0.99),
            );
            eprintln!("  portico p50 {a50:.2} ms p99 {a99:.2} ms; websockify p50 {b50:.2} ms p99 {b99:.2} ms");
            latency = Some(format!(
                "\nKeystroke to display (key into the idle xterm until the frame/update showing its echo), {} samples each: Portico p50 {a50:.2} ms, p99 {a99:.2} ms; websockify p50 {b50:.2} ms, p99 {b99:.2} ms.",
                a.len()
            ));
        }
        end_all(&api).await?;
    }
    rows.extend(latency);
    Ok(rows)
}

/// Bytes of the recordings in `dir`.
fn recorded_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Recording off and on, interleaved in each repeat on one Portico: the bridge's cores and the fps per
/// session, and what the recordings grow by per minute per session.
pub async fn run_recording(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let dir = p.data_dir.join("recordings");
    for w in selected(args, &[Workload::TextHeavy, Workload::TextLight, Workload::VideoFull]) {
        eprintln!("== vnc {} recording off / on", w.name());
        let scene = scene(VncServer::xvnc(None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pid();
        let mut conns = Vec::new();
        for policy in ["off", "on"] {
            conns.push(
                api.create_connection(
                    json!({ "name": format!("bench {} recording {policy}", w.name()), "protocol": "vnc",
                    "host": "127.0.0.1", "port": scene.server.port, "settings": { "recording": policy } }),
                )
                .await?,
            );
        }
        for &n in &args.sessions {
            let mut runs: [Vec<(Sample, f64)>; 2] = [Vec::new(), Vec::new()];
            for r in 0..args.repeats {
                for (i, conn) in conns.iter().enumerate() {
                    let before = recorded_bytes(&dir);
                    let started = Instant::now();
                    let s = portico_run(&p, &api, conn, server_pid, n, args, None).await?;
                    end_all(&api).await?;
                    let minutes = started.elapsed().as_secs_f64() / 60.0;
                    let written = (recorded_bytes(&dir) - before) as f64 / 1024.0 / minutes / n as f64;
                    eprintln!(
                        "  N={n} run {r} recording {}: {:.4} cores, {:.1} fps, {:.0} KiB/s, {written:.0} KiB written/min per session",
                        ["off", "on"][i],
                        s.proxy_cores,
                        s.fps,
                        s.kib_s
                    );
                    runs[i].push((s, written));
                }
            }
            let med = |v: &[(Sample, f64)], f: fn(&(Sample, f64)) -> f64| median_range(v.iter().map(f).collect()).0;
            let [off, on] = &runs;
            let (c0, c1) = (med(off, |s| s.0.proxy_cores), med(on, |s| s.0.proxy_cores));
            rows.push(format!(
                "| {} | {n} | {c0:.4} | {c1:.4} | {:+.4} | {:.1} | {:.1} | {:.0} | {:.0} |",
                w.name(),
                c1 - c0,
                med(off, |s| s.0.fps),
                med(on, |s| s.0.fps),
                med(on, |s| s.0.kib_s),
                med(on, |s| s.1),
            ));
        }
    }
    Ok(rows)
}

/// One session watched by 0, 1, 5 and 10 viewers (`--viewers`; a link share, view-only), each viewer a
/// client that draws at once: the bridge's cores in all (not per session), the owner's fps and the
/// viewers' mean fps. The viewers get the owner's frames as encoded while they keep up.
pub async fn run_viewers(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let (_, viewer_api) = api.user_api(&p, "bench-viewer", "user").await?;
    for w in selected(args, &[Workload::TextHeavy, Workload::VideoFull]) {
        eprintln!("== vnc {} with viewers", w.name());
        let scene = scene(VncServer::xvnc(None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pid();
        let conn = api
            .create_connection(json!({ "name": format!("bench {} shared", w.name()), "protocol": "vnc",
                "host": "127.0.0.1", "port": scene.server.port, "settings": { "sharing": "view" } }))
            .await?;
        for &v in &args.viewers {
            let mut runs: Vec<(f64, f64, f64)> = Vec::new();
            for r in 0..args.repeats {
                let (s, ws) = portico_tests::client::attach(&p, &api, &conn).await?;
                let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
                let mut counters = vec![Arc::new(Counters::new())];
                let mut tasks = vec![drive(ws, counters[0].clone(), true, 0)];
                if v > 0 {
                    let (_, link) = api.share_link(&sid, "view").await?;
                    for i in 0..v {
                        let (_, ws) = viewer_api.join_session(&p.cert_sha256, json!({ "link": link })).await?;
                        let c = Arc::new(Counters::new());
                        counters.push(c.clone());
                        tasks.push(drive(ws, c, false, i + 1));
                    }
                }
                let sample = window(p.pid(), server_pid, &counters, args).await;
                for t in tasks {
                    t.abort();
                }
                end_all(&api).await?;
                let cores = sample.proxy_cores * counters.len() as f64;
                let owner = sample.each_fps.first().copied().unwrap_or(0.0);
                let viewers = if v == 0 {
                    0.0
                } else {
                    sample.each_fps[1..].iter().sum::<f64>() / v as f64
                };
                eprintln!(
                    "  viewers={v} run {r}: {cores:.4} bridge cores, owner {owner:.1} fps, viewers {viewers:.1} fps"
                );
                runs.push((cores, owner, viewers));
            }
            let med = |f: fn(&(f64, f64, f64)) -> f64| median_range(runs.iter().map(f).collect());
            let (c, c_lo, c_hi) = med(|r| r.0);
            rows.push(format!(
                "| {} | {v} | {c:.4} ({c_lo:.4}–{c_hi:.4}) | {:.1} | {} |",
                w.name(),
                med(|r| r.1).0,
                if v == 0 {
                    "–".to_owned()
                } else {
                    format!("{:.1}", med(|r| r.2).0)
                },
            ));
        }
    }
    Ok(rows)
}

pub const VIEWERS_HEADER: &str =
    "| workload | viewers | bridge cores in all (range) | owner fps | viewers' mean fps |\n|---|---|---|---|---|";

pub const RECORDING_HEADER: &str = "| workload | N | bridge cores/session, off | on | difference | fps off | fps on | KiB/s to the browser (on) | KiB written/min per session (on) |\n|---|---|---|---|---|---|---|---|---|";

pub const HEADER: &str = "| workload | N | Portico bridge cores/session (range) | Xvnc cores/session | fps | KiB/s | RSS KiB/session | websockify cores/session (range) | Xvnc cores/session | fps | KiB/s | Portico ÷ websockify (cores) | goal (Portico) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// The workloads of `all` that `--workloads` names (all when it names none).
fn selected(args: &Args, all: &[Workload]) -> Vec<Workload> {
    all.iter()
        .copied()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|n| n == w.name()))
        .collect()
}

pub fn lat(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let (p50, p95) = (crate::pct(v, 0.5), crate::pct(v, 0.95));
    let max = v.iter().copied().fold(0.0, f64::max);
    format!("{p50:.0} / {p95:.0} / {max:.0}")
}

/// The first of `--links` up, and Portico listening on the shaped port, with an admin's API.
pub async fn on_link(args: &Args) -> anyhow::Result<(portico_tests::link::Link, Portico, Api)> {
    use portico_tests::link::{Link, PORTICO_PORT};
    let first = args.links.first().context("no link given")?;
    let link = Link::up(first)?;
    let p = Portico::start_with(portico_tests::portico::Options {
        extra_args: vec!["--listen".into(), format!("127.0.0.1:{PORTICO_PORT}")],
        ..Default::default()
    })?;
    let api = Api::admin(&p).await?;
    Ok((link, p, api))
}

/// The display on emulated links (`--links 4mbit,1mbit`, run inside the bench's namespace, see
/// `portico_tests::link`): per workload and link, one session through Portico and one through websockify, side by
/// side; latency is a ping's round trip behind the frames (one at a time, every 250 ms over the window),
/// and for the idle xterm the key-to-echo time.
pub async fn run_links(args: &Args) -> anyhow::Result<Vec<String>> {
    use portico_tests::link::WEBSOCKIFY_PORT;
    let (link, p, api) = on_link(args).await?;
    let mut rows = Vec::new();
    let workloads = [
        Workload::TextHeavy,
        Workload::TextLight,
        Workload::VideoFull,
        Workload::Idle,
    ];
    for w in selected(args, &workloads) {
        let scene = scene(VncServer::xvnc(None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pid();
        let conn = api
            .create_connection(json!({ "name": format!("link {}", w.name()), "protocol": "vnc", "host": "127.0.0.1", "port": scene.server.port }))
            .await?;
        let wsfy = Websockify::start(scene.server.port, Some(WEBSOCKIFY_PORT))?;
        for rate in &args.links {
            link.rate(rate)?;
            eprintln!("== vnc {} on {rate}, 80 ms", w.name());
            if w == Workload::Idle {
                let samples = args.latency_samples.min(60);
                let mut a = latency_portico(&p, &api, &conn, samples).await?;
                let mut b = latency_websockify(&wsfy, samples).await?;
                let redraws = |e: &Echoes| e.redraws.iter().sum::<f64>() / e.redraws.len().max(1) as f64;
                let (ra, rb) = (redraws(&a), redraws(&b));
                let (sa, sb) = (
                    a.settled_ms.iter().copied().fold(0.0, f64::max),
                    b.settled_ms.iter().copied().fold(0.0, f64::max),
                );
                eprintln!(
                    "  key to echo: portico {} ms, {ra:.2} more drawing frames per key, quiet {sa:.0} ms after a key at most; websockify {} ms, {rb:.2}, {sb:.0} ms",
                    lat(&mut a.ms),
                    lat(&mut b.ms)
                );
                rows.push(format!(
                    "| {rate} | key → echo (idle xterm) | {ra:.2} redraws/key, quiet ≤ {sa:.0} ms | | {} | | {rb:.2} redraws/key, quiet ≤ {sb:.0} ms | | {} |",
                    lat(&mut a.ms),
                    lat(&mut b.ms)
                ));
                continue;
            }
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for r in 0..args.repeats {
                let a = portico_run(&p, &api, &conn, server_pid, 1, args, None).await?;
                let b = websockify_run(&wsfy, server_pid, 1, args).await?;
                eprintln!(
                    "  run {r}: portico {:.1} fps (worst second {:.0}) {:.0} KiB/s latency {} ms {:.4} cores; websockify {:.1} fps {:.0} KiB/s latency {} ms",
                    a.fps,
                    a.worst_second_fps,
                    a.kib_s,
                    lat(&mut a.latency_ms.clone()),
                    a.proxy_cores,
                    b.fps,
                    b.kib_s,
                    lat(&mut b.latency_ms.clone())
                );
                let series = |s: &Sample| {
                    s.per_second
                        .iter()
                        .map(|f| format!("{f:.0}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                eprintln!(
                    "    frames per second: portico {}; websockify {}",
                    series(&a),
                    series(&b)
                );
                ours.push(a);
                theirs.push(b);
            }
            let med = |v: &[Sample], f: fn(&Sample) -> f64| median_range(v.iter().map(f).collect()).0;
            let mut la: Vec<f64> = ours.iter().flat_map(|s| s.latency_ms.clone()).collect();
            let mut lb: Vec<f64> = theirs.iter().flat_map(|s| s.latency_ms.clone()).collect();
            let worst = |v: &[Sample]| v.iter().map(|s| s.worst_second_fps).fold(f64::MAX, f64::min);
            rows.push(format!(
                "| {rate} | {} | {:.1} ({:.0}) | {:.0} | {} | {:.4} | {:.1} ({:.0}) | {:.0} | {} |",
                w.name(),
                med(&ours, |s| s.fps),
                worst(&ours),
                med(&ours, |s| s.kib_s),
                lat(&mut la),
                med(&ours, |s| s.proxy_cores),
                med(&theirs, |s| s.fps),
                worst(&theirs),
                med(&theirs, |s| s.kib_s),
                lat(&mut lb),
            ));
        }
        end_all(&api).await?;
    }
    Ok(rows)
}

pub const LINK_HEADER: &str = "| link (80 ms RTT) | workload | Portico fps (worst second) | KiB/s | latency p50 / p95 / max, ms | bridge cores | websockify fps (worst second) | KiB/s | latency p50 / p95 / max, ms |\n|---|---|---|---|---|---|---|---|---|";
