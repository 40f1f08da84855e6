//! The workspace benchmark (`portico-bench workspace`): a private dockerd with Portico's default image,
//! the all-in-one binary with its embedded agent on it.
//!
//! - Launch to first frame: `POST /api/v1/sessions` → the bridge's first frame showing the desktop,
//!   `--launches` times (default 20), one at a time, each a fresh container (the previous one is removed
//!   first). p50 / p95 / max.
//! - The same from a warm pool of one spare (`settings.workspace.warm = 1`): each launch claims the ready
//!   spare (the pool has replaced the previous one before the next launch). Side by side with the cold
//!   path, same image and spec.
//! - Sound: one session open, the Portico process's CPU and the `AUDIO` bytes it sends while the desktop
//!   is silent and while a 1 kHz tone plays in the container (PulseAudio → the bridge's Opus encoder).
//! - Density: the agent offers `--memory-budget` MiB; workspaces of `--workspace-memory` MiB are launched
//!   and kept open until the scheduler refuses (503), and each container's real memory use is read from
//!   Docker.

use std::time::{Duration, Instant};

use portico_tests::client::{Api, Screen, attach};
use portico_tests::peers::Dockerd;
use portico_tests::portico::{Options, Portico};
use serde_json::json;

use anyhow::Context as _;

use crate::{Args, pct};

pub const HEADER: &str = "| measurement | result | goal | notes |\n|---|---|---|---|";

/// The default image's root colour (scripts/workspace/start-vnc).
const ROOT: [u8; 3] = [0x2d, 0x5a, 0x7b];

async fn first_frame(p: &Portico, api: &Api, conn: &str) -> anyhow::Result<(String, Screen)> {
    let (s, ws) = attach(p, api, conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    let mut screen = Screen::new(ws);
    screen
        .until("the first frame of the desktop", Duration::from_secs(60), |c| {
            c.frames > 0 && c.width > 0 && c.pixel(c.width - 5, c.height - 5) == ROOT
        })
        .await?;
    Ok((sid, screen))
}

fn containers(engine: &Dockerd) -> anyhow::Result<Vec<String>> {
    Ok(engine
        .docker(&["ps", "-aq", "--filter", "label=org.portico.session"])?
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

async fn wait_no_containers(engine: &Dockerd) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !containers(engine)?.is_empty() {
        anyhow::ensure!(Instant::now() < deadline, "containers not removed within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Seconds of each sound measurement.
const SOUND_SECS: u64 = 8;

/// The Portico process's CPU (share of a core) and the sound sent (kbit/s, packets) over `SOUND_SECS`.
async fn measure_sound(p: &Portico, screen: &mut Screen) -> anyhow::Result<(f64, f64, u64)> {
    let tck = crate::clk_tck();
    let (bytes0, packets0) = (screen.term.audio_bytes, screen.term.audio_packets);
    let before = crate::tree_ticks(p.pid());
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(SOUND_SECS) {
        screen.pump(Duration::from_millis(100)).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = crate::cores(&before, &crate::tree_ticks(p.pid()), secs, tck);
    let kbits = (screen.term.audio_bytes - bytes0) as f64 * 8.0 / 1000.0 / secs;
    Ok((cpu, kbits, screen.term.audio_packets - packets0))
}

async fn sound(engine: &Dockerd, p: &Portico, api: &Api, conn: &str) -> anyhow::Result<String> {
    let (sid, mut screen) = first_frame(p, api, conn).await?;
    // Like the web client: it plays the sound (the bridge sends none until told).
    screen
        .term
        .send(portico_proto::wire::ClientMsg::AudioControl { play: true })
        .await?;
    let id = containers(engine)?
        .into_iter()
        .next()
        .context("the session's container")?;
    // The bridge reaches the audio server once PulseAudio is up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.log().contains("Sound connected") {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the bridge never reached the workspace's audio server"
        );
        screen.pump(Duration::from_millis(100)).await?;
    }
    let (cpu_silent, kbits_silent, _) = measure_sound(p, &mut screen).await?;
    // A tone for longer than the measurement, played by the session's user with PulseAudio's pacat.
    let samples = 48_000 * (SOUND_SECS + 3);
    let script = format!(
        "LC_ALL=C awk 'BEGIN{{for(i=0;i<{samples};i++)printf \"%c\",128+100*sin(6.2831853*1000*i/48000)}}' | pacat --raw --format=u8 --rate=48000 --channels=1"
    );
    let player = {
        let host = engine.host.clone();
        std::thread::spawn(move || {
            std::process::Command::new("docker")
                .args([
                    "-H",
                    &host,
                    "exec",
                    "-e",
                    "XDG_RUNTIME_DIR=/tmp/portico-run",
                    &id,
                    "sh",
                    "-c",
                    &script,
                ])
                .output()
        })
    };
    // From the first packet on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while screen.term.audio_packets == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no sound reached the client within 10 s");
        screen.pump(Duration::from_millis(50)).await?;
    }
    let (cpu_tone, kbits_tone, packets) = measure_sound(p, &mut screen).await?;
    let _ = player.join();
    api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    let expected = SOUND_SECS * 50;
    Ok(format!(
        "| sound of one workspace session (Opus 64 kbit/s, 20 ms packets) | a tone: {kbits_tone:.1} kbit/s to the browser ({packets} packets in {SOUND_SECS} s, {expected} expected), Portico at {:.1} % of a core; silent: {kbits_silent:.1} kbit/s, {:.1} % | | the all-in-one process (webapp, agent, bridge): the tone's extra CPU is the bridge reading 1536 kbit/s of PCM and encoding it; silence is read and dropped without encoding |",
        cpu_tone * 100.0,
        cpu_silent * 100.0
    ))
}

/// Wait until the engine has exactly one container, a ready spare of the warm pool.
async fn wait_one_ready_spare(engine: &Dockerd, api: &Api) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agents = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
        let ready = agents.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["spares"]["ready"] == 1 && x["spares"]["starting"] == 0)
        });
        if ready && containers(engine)?.len() == 1 {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no ready spare alone within 60 s: {agents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Memory used by a container (cgroup), MiB, as `docker stats` reports it.
fn memory_mib(engine: &Dockerd, id: &str) -> anyhow::Result<f64> {
    let out = engine.docker(&["stats", "--no-stream", "--format", "{{.MemUsage}}", id])?;
    let used = out.split('/').next().unwrap_or("").trim();
    let (num, unit) = used.split_at(used.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(used.len()));
    let v: f64 = num.trim().parse().unwrap_or(0.0);
    Ok(match unit {
        "GiB" => v * 1024.0,
        "KiB" => v / 1024.0,
        "B" => v / (1024.0 * 1024.0),
        _ => v,
    })
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let engine = Dockerd::start()?;
    let t = Instant::now();
    let image = engine.with_workspace_image()?;
    eprintln!("workspace image ready in {:.1} s", t.elapsed().as_secs_f64());
    let budget = args.memory_budget.to_string();
    let socket = engine.socket.display().to_string();
    let p = Portico::start_with(Options {
        extra_args: vec![
            "--docker-socket".into(),
            socket,
            "--agent-name".into(),
            "bench".into(),
            "--agent-memory-mb".into(),
            budget,
        ],
        ..Options::default()
    })?;
    let api = Api::admin(&p).await?;
    api.wait_healthy_agent().await?;
    let conn = api
        .create_connection(json!({
            "name": "bench workspace", "protocol": "container",
            "settings": { "workspace": {
                "image": image, "cpu_millis": 100, "memory_mb": args.workspace_memory, "pids_limit": 256,
                "geometry": "1280x720",
            } },
        }))
        .await?;

    eprintln!("== launch to first frame, {} launches", args.launches);
    let mut times = Vec::with_capacity(args.launches);
    for i in 0..args.launches {
        wait_no_containers(&engine).await?;
        let t0 = Instant::now();
        let (sid, _screen) = first_frame(&p, &api, &conn).await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        eprintln!("  launch {i}: {ms:.0} ms");
        times.push(ms);
        api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
    }
    let (p50, p95, max) = (pct(&mut times, 0.5), pct(&mut times, 0.95), pct(&mut times, 1.0));
    rows.push(format!(
        "| launch to first frame (local image, 1280x720) | p50 {p50:.0} ms, p95 {p95:.0} ms, max {max:.0} ms | < 2000 ms | {} launches one after another, each a fresh container; POST /api/v1/sessions → first frame with the desktop's pixels |",
        args.launches
    ));
    // Where the time goes, from the logs: the agent's create + start + RFB banner, and the bridge's wait.
    let log = p.log();
    let field = |line: &str, key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let mut agent_ms: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("Workspace container ready"))
        .filter_map(|l| field(l, " ms="))
        .collect();
    let mut bridge_ms: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("Workspace ready") && l.contains("waited_ms="))
        .filter_map(|l| field(l, "waited_ms="))
        .collect();
    if !agent_ms.is_empty() && !bridge_ms.is_empty() {
        rows.push(format!(
            "| of which: container create + start + VNC banner (agent) | p50 {:.0} ms, p95 {:.0} ms | | the bridge waited for readiness p50 {:.0} ms, p95 {:.0} ms after the claim |",
            pct(&mut agent_ms, 0.5),
            pct(&mut agent_ms, 0.95),
            pct(&mut bridge_ms, 0.5),
            pct(&mut bridge_ms, 0.95)
        ));
    }

    eprintln!(
        "== launch to first frame from a warm pool of 1, {} launches",
        args.launches
    );
    wait_no_containers(&engine).await?;
    let warm_conn = api
        .create_connection(json!({
            "name": "bench warm workspace", "protocol": "container",
            "settings": { "workspace": {
                "image": image, "cpu_millis": 100, "memory_mb": args.workspace_memory, "pids_limit": 256,
                "geometry": "1280x720", "warm": 1,
            } },
        }))
        .await?;
    let mut warm_times = Vec::with_capacity(args.launches);
    for i in 0..args.launches {
        // The previous session's container gone and its replacement spare ready: one container left.
        wait_one_ready_spare(&engine, &api).await?;
        let t0 = Instant::now();
        let (sid, _screen) = first_frame(&p, &api, &warm_conn).await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        eprintln!("  warm launch {i}: {ms:.0} ms");
        warm_times.push(ms);
        api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
    }
    let warm_claimed = p
        .log()
        .lines()
        .filter(|l| l.contains("Workspace scheduled on a warm spare"))
        .count();
    anyhow::ensure!(
        warm_claimed == args.launches,
        "only {warm_claimed} of {} warm launches claimed a spare",
        args.launches
    );
    let (w50, w95, wmax) = (
        pct(&mut warm_times, 0.5),
        pct(&mut warm_times, 0.95),
        pct(&mut warm_times, 1.0),
    );
    rows.push(format!(
        "| launch to first frame, warm pool of 1 (same image and spec) | p50 {w50:.0} ms, p95 {w95:.0} ms, max {wmax:.0} ms | p50 < 300 ms | {} launches, each claiming the ready spare (cold p50 {p50:.0} ms above: {:.1}× faster); a spare is never reused: it ends with its session and the pool starts a new one |",
        args.launches,
        p50 / w50.max(1.0)
    ));
    api.request(
        reqwest::Method::DELETE,
        &format!("/api/v1/connections/{warm_conn}"),
        None,
    )
    .await?;

    eprintln!("== sound: one session, silent then a tone");
    wait_no_containers(&engine).await?;
    rows.push(sound(&engine, &p, &api, &conn).await?);

    eprintln!(
        "== density: {} MiB workspaces in a {} MiB budget",
        args.workspace_memory, args.memory_budget
    );
    wait_no_containers(&engine).await?;
    let mut held = Vec::new();
    let refusal = loop {
        // Bounded: the budget fits budget / size workspaces; one more must be refused.
        anyhow::ensure!(
            held.len() <= (args.memory_budget / args.workspace_memory) as usize,
            "the scheduler placed more workspaces than the budget holds"
        );
        let (status, body) = api
            .request(
                reqwest::Method::POST,
                "/api/v1/sessions",
                Some(json!({ "connection_id": conn })),
            )
            .await?;
        if status == 503 {
            break body["error"].as_str().unwrap_or_default().to_owned();
        }
        anyhow::ensure!(status == 201, "session refused: {status} {body}");
        // Open it like a browser would, and wait for its desktop.
        let ws = portico_tests::client::ws_with_token(
            body["ws_url"].as_str().unwrap_or_default(),
            &p.cert_sha256,
            body["token"].as_str().unwrap_or_default(),
        )
        .await?
        .map_err(|r| anyhow::anyhow!("upgrade refused: {} {}", r.status, r.body))?;
        let mut screen = Screen::new(ws);
        screen
            .until("the desktop", Duration::from_secs(60), |c| {
                c.width > 0 && c.pixel(c.width - 5, c.height - 5) == ROOT
            })
            .await?;
        held.push(screen);
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = containers(&engine)?;
    let mut used = Vec::new();
    for id in &ids {
        used.push(memory_mib(&engine, id)?);
    }
    let mean = used.iter().sum::<f64>() / used.len().max(1) as f64;
    let max_used = used.iter().copied().fold(0.0, f64::max);
    rows.push(format!(
        "| workspaces per agent, {} MiB budget, {} MiB limit each | {} running, the next refused (503: {refusal}) | budget / limit = {} | idle desktops (Xvnc 1280x720 + twm + xterm) use {mean:.1} MiB each (max {max_used:.1}): at real use the budget would hold {:.0} |",
        args.memory_budget,
        args.workspace_memory,
        held.len(),
        args.memory_budget / args.workspace_memory,
        args.memory_budget as f64 / mean.max(1.0)
    ));
    drop(held);
    Ok(rows)
}
