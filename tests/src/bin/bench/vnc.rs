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
}

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
    let xterm = |args: &str| -> anyhow::Result<Background> {
        let cmd = format!("python3 {scroller} {args}");
        server.spawn(
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
                &cmd,
            ],
        )
    };
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
}

/// Measure over the window: proxy and Xvnc CPU, bytes and frames per session.
async fn window(proxy_pid: u32, server_pid: u32, counters: &[Arc<Counters>], args: &Args) -> Sample {
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let tck = clk_tck();
    let total = |f: fn(&Counters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let bytes = |c: &Counters| c.bytes.load(Ordering::Relaxed);
    let frames = |c: &Counters| c.frames.load(Ordering::Relaxed);
    let video = |c: &Counters| c.video.load(Ordering::Relaxed);
    let (p0, s0, b0, f0, v0, t0) = (
        tree_ticks(proxy_pid),
        tree_ticks(server_pid),
        total(bytes),
        total(frames),
        total(video),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (p1, s1, b1, f1, v1) = (
        tree_ticks(proxy_pid),
        tree_ticks(server_pid),
        total(bytes),
        total(frames),
        total(video),
    );
    let n = counters.len() as f64;
    Sample {
        proxy_cores: cores(&p0, &p1, secs, tck) / n,
        server_cores: cores(&s0, &s1, secs, tck) / n,
        kib_s: (b1 - b0) as f64 / 1024.0 / secs / n,
        fps: (f1 - f0) as f64 / secs / n,
        rss_kib: 0.0,
        video_share: (v1 - v0) as f64 / (f1 - f0).max(1) as f64,
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
    for _ in 0..n {
        let (_, mut ws) = portico_tests::client::attach(p, api, conn).await?;
        if let Some(flags) = caps {
            ws.send(Message::Binary(ClientMsg::Caps { flags }.encode().into()))
                .await?;
        }
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                let Message::Binary(b) = m else { continue };
                c.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                if b.len() > 2 && b[1] == 0x26 {
                    c.video.fetch_add(1, Ordering::Relaxed);
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
        }));
    }
    let mut s = window(p.pid(), server_pid, &counters, args).await;
    s.rss_kib = mem_kib(p.pid()).0.saturating_sub(base) as f64 / n as f64;
    for t in tasks {
        t.abort();
    }
    end_all(api).await?;
    Ok(s)
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
    fn start(vnc_port: u16) -> anyhow::Result<Websockify> {
        let port = free_port();
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
    for _ in 0..n {
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
        tasks.push(tokio::spawn(async move {
            let mut rfb = RfbClient::new(RfbConfig::default());
            loop {
                while let Some(out) = rfb.poll_transmit() {
                    if sock.send(Message::Binary(out.into())).await.is_err() {
                        return;
                    }
                }
                let Some(Ok(m)) = sock.next().await else { return };
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

/// Keystroke-to-display latency: press and release a key over the (idle) xterm, time until the next frame
/// (Portico) or update (websockify) that shows its echo. Returns milliseconds per sample.
async fn latency_portico(p: &Portico, api: &Api, conn: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let (_, mut ws) = portico_tests::client::attach(p, api, conn).await?;
    let next_frame = async |ws: &mut portico_tests::client::WsStream| -> anyhow::Result<()> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await?
                .context("socket closed")??;
            let Message::Binary(b) = m else { continue };
            if let Ok(ServerMsg::FrameEnd { frame_id }) = ServerMsg::decode(&b) {
                ws.send(Message::Binary(ClientMsg::FrameAck { frame_id }.encode().into()))
                    .await?;
                return Ok(());
            }
        }
    };
    next_frame(&mut ws).await?;
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drain what the pointer move caused.
    while tokio::time::timeout(Duration::from_millis(200), next_frame(&mut ws))
        .await
        .is_ok()
    {}
    let mut out = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        send(
            &mut ws,
            ClientMsg::Key {
                keysym: u32::from(b'x'),
                down: true,
                scancode: 0,
            },
        )
        .await?;
        send(
            &mut ws,
            ClientMsg::Key {
                keysym: u32::from(b'x'),
                down: false,
                scancode: 0,
            },
        )
        .await?;
        next_frame(&mut ws).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        while tokio::time::timeout(Duration::from_millis(20), next_frame(&mut ws))
            .await
            .is_ok()
        {}
    }
    end_all(api).await?;
    Ok(out)
}

async fn latency_websockify(ws: &Websockify, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://127.0.0.1:{}/",
        ws.port
    ))?;
    req.headers_mut().insert("sec-websocket-protocol", "binary".parse()?);
    let (mut sock, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
        .await
        .context("connect to websockify")?;
    let mut rfb = RfbClient::new(RfbConfig::default());
    // Pump until an update ends (asking for the next one at once), sending what the client has queued.
    let next_update = async |sock: &mut WsPlain, rfb: &mut RfbClient| -> anyhow::Result<()> {
        loop {
            while let Some(out) = rfb.poll_transmit() {
                sock.send(Message::Binary(out.into())).await?;
            }
            let m = tokio::time::timeout(Duration::from_secs(5), sock.next())
                .await?
                .context("socket closed")??;
            let Message::Binary(b) = m else { continue };
            rfb.handle_input(&b)?;
            let mut ended = false;
            while let Some(ev) = rfb.poll_event() {
                if ev == RfbEvent::UpdateEnd {
                    rfb.request_update(true);
                    ended = true;
                }
            }
            if ended {
                while let Some(out) = rfb.poll_transmit() {
                    sock.send(Message::Binary(out.into())).await?;
                }
                return Ok(());
            }
        }
    };
    next_update(&mut sock, &mut rfb).await?;
    rfb.pointer(WIDTH / 2, HEIGHT / 2, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    while tokio::time::timeout(Duration::from_millis(200), next_update(&mut sock, &mut rfb))
        .await
        .is_ok()
    {}
    let mut out = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        rfb.key(u32::from(b'x'), true);
        rfb.key(u32::from(b'x'), false);
        next_update(&mut sock, &mut rfb).await?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        while tokio::time::timeout(Duration::from_millis(20), next_update(&mut sock, &mut rfb))
            .await
            .is_ok()
        {}
    }
    Ok(out)
}

/// Goals per session from the issue: (max bridge cores, max KiB/s, min fps).
fn goal(w: Workload) -> &'static str {
    match w {
        Workload::TextHeavy => "≤ 0.18 cores, ≥ 20 fps, ≤ 2048 KiB/s",
        Workload::TextLight => "≤ 0.04 cores, ≤ 400 KiB/s",
        Workload::Video => "≤ 0.15 cores, ≥ 24 fps, ≤ 670 KiB/s",
        Workload::VideoFull | Workload::Idle => "",
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
        Workload::Idle,
    ];
    for w in workloads
        .into_iter()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|n| n == w.name()))
    {
        eprintln!("== vnc {}", w.name());
        let scene = scene(VncServer::xvnc(None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pid();
        let conn = api
            .create_connection(json!({ "name": format!("bench {}", w.name()), "protocol": "vnc", "host": "127.0.0.1", "port": scene.server.port }))
            .await?;
        let wsfy = Websockify::start(scene.server.port)?;
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
            rows.push(format!(
                "| {} | {n} | {pc:.4} ({pclo:.4}–{pchi:.4}) | {sc:.4} | {fps:.1} | {kib:.0} | {rss:.0} | {wc:.4} ({wclo:.4}–{wchi:.4}) | {wsc:.4} | {wfps:.1} | {wkib:.0} | {} |",
                w.name(),
                goal(w)
            ));
        }
        if w == Workload::Idle {
            eprintln!("== vnc keystroke-to-display latency (idle xterm)");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..args.repeats {
                a.extend(latency_portico(&p, &api, &conn, args.latency_samples / args.repeats.max(1)).await?);
                b.extend(latency_websockify(&wsfy, args.latency_samples / args.repeats.max(1)).await?);
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

pub const HEADER: &str = "| workload | N | Portico bridge cores/session (range) | Xvnc cores/session | fps | KiB/s | RSS KiB/session | websockify cores/session (range) | Xvnc cores/session | fps | KiB/s | goal (Portico) |\n|---|---|---|---|---|---|---|---|---|---|---|---|";
