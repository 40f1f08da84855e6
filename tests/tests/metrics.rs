//! Metrics (`--metrics-listen`): a real Prometheus scrapes a webapp, a bridge (behind a bearer token) and
//! an agent every second while a real SSH session runs and a forged token is refused; the signals are read
//! back through Prometheus's query API. And no metrics listener exists unless one is asked for.

use std::time::Duration;

use portico_proto::token::{SessionClaims, TokenSigner};
use portico_proto::wire::ClientMsg;
use portico_tests::client::{Api, Screen, ws_with_token};
use portico_tests::peers::XDisplay as _;
use portico_tests::peers::{Dockerd, Sshd, VncServer};
use portico_tests::portico::{AgentProcess, Options, Portico};
use portico_tests::prometheus::{Prometheus, Target, http_get, listening_ports, sample_value, wait_metrics_addr};
use serde_json::json;

use crate::ssh_connection;
use crate::vnc::vnc_connection;

const AGENT_TOKEN: &str = "agent-registration-token-for-metrics";
const SCRAPE_TOKEN: &str = "metrics-scrape-token-for-tests";
/// Long enough for a few 1 s scrapes and rule-free queries on a busy 2-core machine.
const WITHIN: Duration = Duration::from_secs(30);

fn claims_of(token: &str) -> anyhow::Result<SessionClaims> {
    use base64::Engine as _;
    let part = token.split('.').nth(1).unwrap_or_default();
    Ok(serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?,
    )?)
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_tier_during_a_real_session() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        extra_args: vec![
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--agent-registration-token".into(),
            AGENT_TOKEN.into(),
        ],
        ..Options::default()
    })?;
    let mut opts = web.bridge_options("bridge-metrics");
    opts.extra_args.extend([
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-token".into(),
        SCRAPE_TOKEN.into(),
    ]);
    let bridge = Portico::start_with(opts)?;
    let dockerd = Dockerd::start()?;
    let agent = AgentProcess::start_with(
        &web,
        &dockerd.socket,
        "agent-metrics",
        AGENT_TOKEN,
        &["--metrics-listen", "127.0.0.1:0"],
    )?;
    let web_m = wait_metrics_addr("the webapp", || web.log())?;
    let bridge_m = wait_metrics_addr("the bridge", || bridge.log())?;
    let agent_m = wait_metrics_addr("the agent", || agent.log())?;

    // The bridge's listener wants its token; the others are open (loopback).
    let (status, _, _) = http_get(&bridge_m, "/metrics", None).await?;
    assert_eq!(status, 401, "a scrape without the token");
    let (status, _, _) = http_get(&bridge_m, "/metrics", Some("wrong")).await?;
    assert_eq!(status, 401, "a scrape with a wrong token");
    let (status, headers, body) = http_get(&bridge_m, "/metrics", Some(SCRAPE_TOKEN)).await?;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(body.contains("# TYPE portico_bridge_sessions gauge\n"), "{body}");

    let prom = Prometheus::start(&[
        Target::new("webapp", &web_m),
        Target::new("bridge", &bridge_m).with_token(SCRAPE_TOKEN),
        Target::new("agent", &agent_m),
    ])
    .await?;
    // Every target is up.
    prom.until("up", WITHIN, |v| v.len() == 3 && v.iter().all(|s| s.value == 1.0))
        .await?;

    // A real SSH session through the bridge.
    let api = Api::admin(&web).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let (_, mut term) = portico_tests::client::open_via(&bridge, &api, &conn).await?;
    term.input("echo metrics-$((6*7))\r").await?;
    term.until("the echo", Duration::from_secs(10), |t| t.text().contains("metrics-42"))
        .await?;

    // A forged token (another signing key) for a second session: refused before the upgrade.
    let s2 = api.create_session(&conn).await?;
    let id2 = s2["session_id"].as_str().unwrap_or_default();
    let forger = TokenSigner::new(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let forged = forger.sign(&claims_of(s2["token"].as_str().unwrap_or_default())?);
    let url2 = format!("{}/bridge/v1/ws?session={id2}", bridge.ws_base());
    match ws_with_token(&url2, &bridge.cert_sha256, &forged).await? {
        Ok(_) => anyhow::bail!("a forged token was accepted"),
        Err(r) => assert_eq!(r.status, 401, "{}", r.body),
    }
    // The health check, as a load balancer would call it.
    for _ in 0..3 {
        let (status, _) = api.request(reqwest::Method::GET, "/api/__healthcheck", None).await?;
        assert_eq!(status, 200);
    }

    // What Prometheus saw.
    prom.until_value("portico_bridge_sessions{protocol=\"ssh\"}", WITHIN, 1.0)
        .await?;
    prom.until_value(
        "portico_webapp_sessions{state=\"active\",protocol=\"ssh\"}",
        WITHIN,
        1.0,
    )
    .await?;
    prom.until_value(
        "portico_bridge_token_refusals_total{reason=\"unknown_key\"}",
        WITHIN,
        1.0,
    )
    .await?;
    prom.until_value(
        "portico_bridge_claim_duration_seconds_count{result=\"ok\"}",
        WITHIN,
        1.0,
    )
    .await?;
    prom.until_value("portico_bridge_websocket_upgrades_total{kind=\"new\"}", WITHIN, 1.0)
        .await?;
    prom.until("portico_bridge_bytes_to_browser_total{protocol=\"ssh\"}", WITHIN, |v| {
        v.len() == 1 && v[0].value > 0.0
    })
    .await?;
    prom.until(
        "sum(portico_webapp_healthcheck_db_seconds_count{result=\"ok\"})",
        WITHIN,
        |v| v.len() == 1 && v[0].value >= 3.0,
    )
    .await?;
    prom.until(
        "histogram_quantile(0.99, sum by (le) (portico_webapp_healthcheck_db_seconds_bucket))",
        WITHIN,
        |v| v.len() == 1 && v[0].value > 0.0 && v[0].value <= 1.0,
    )
    .await?;
    prom.until(
        "portico_webapp_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/sessions\"}",
        WITHIN,
        |v| v.len() == 1 && v[0].value >= 2.0,
    )
    .await?;
    prom.until("portico_webapp_db_pool_max_connections", WITHIN, |v| {
        v.len() == 1 && v[0].value > 0.0
    })
    .await?;
    // The process's own resources, on every tier (what the soak benchmark samples).
    for metric in [
        "portico_process_resident_memory_bytes",
        "portico_process_open_fds",
        "portico_process_threads",
    ] {
        prom.until(metric, WITHIN, |v| v.len() == 3 && v.iter().all(|s| s.value > 0.0))
            .await?;
    }
    // The agent registered and reports its capacity; the webapp counts it healthy.
    prom.until_value("portico_agent_registered", WITHIN, 1.0).await?;
    prom.until("portico_agent_capacity_memory_bytes", WITHIN, |v| {
        v.len() == 1 && v[0].value > 0.0
    })
    .await?;
    prom.until_value("portico_webapp_agents{state=\"healthy\"}", WITHIN, 1.0)
        .await?;

    // The session ends: the bridge's gauge goes back to 0 and the end is counted with its code.
    term.send(ClientMsg::Disconnect).await?;
    prom.until_value("portico_bridge_sessions{protocol=\"ssh\"}", WITHIN, 0.0)
        .await?;
    prom.until_value(
        "portico_bridge_sessions_ended_total{protocol=\"ssh\",code=\"ended\"}",
        WITHIN,
        1.0,
    )
    .await?;
    drop(agent);
    Ok(())
}

/// The metrics listener exists only when asked for: without `--metrics-listen` the process listens on its
/// HTTPS port alone; with it, on one more port that serves every tier of the process.
#[tokio::test(flavor = "multi_thread")]
async fn no_metrics_listener_unless_asked() -> anyhow::Result<()> {
    let plain = Portico::start()?;
    assert_eq!(
        listening_ports(plain.pid())?.len(),
        1,
        "listening sockets of a process without --metrics-listen"
    );
    assert!(!plain.log().contains("portico metrics listening"), "{}", plain.log());

    let with = Portico::start_with(Options {
        extra_env: vec![("PORTICO_METRICS_LISTEN".into(), "127.0.0.1:0".into())],
        ..Options::default()
    })?;
    let addr = wait_metrics_addr("the all-in-one process", || with.log())?;
    let ports = listening_ports(with.pid())?;
    assert_eq!(ports.len(), 2, "{ports:?}");
    let port: u16 = addr.rsplit(':').next().unwrap_or_default().parse()?;
    assert!(ports.contains(&port), "{ports:?} {addr}");
    let (status, _, body) = http_get(&addr, "/metrics", None).await?;
    assert_eq!(status, 200);
    for family in [
        "# TYPE portico_webapp_http_request_duration_seconds histogram",
        "# TYPE portico_bridge_sessions gauge",
        "# TYPE portico_process_resident_memory_bytes gauge",
        "# HELP portico_bridge_token_refusals_total ",
    ] {
        assert!(body.contains(family), "{family} in\n{body}");
    }
    let (status, _, _) = http_get(&addr, "/other", None).await?;
    assert_eq!(status, 404);
    Ok(())
}

/// Poll a metrics listener (every 200 ms, at most [`WITHIN`]) until `series` satisfies `pred`.
async fn until_sample(addr: &str, series: &str, pred: impl Fn(f64) -> bool) -> anyhow::Result<f64> {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let (_, _, body) = http_get(addr, "/metrics", None).await?;
        if let Some(v) = sample_value(&body, series).filter(|v| pred(*v)) {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{series} did not hold within {WITHIN:?}:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The display pipeline's aggregates follow a real VNC session (TigerVNC Xvnc): frames sent, their
/// acknowledgement round trips and quality levels, and the updates held back while the browser is behind.
#[tokio::test(flavor = "multi_thread")]
async fn display_metrics_follow_a_vnc_session() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(Some("pw-metrics"), 320, 200)?;
    xvnc.x("xsetroot", &["-solid", "#204060"])?;
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let mut opts = web.bridge_options("bridge-display-metrics");
    opts.extra_args
        .extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let bridge = Portico::start_with(opts)?;
    let addr = wait_metrics_addr("the bridge", || bridge.log())?;
    let api = Api::admin(&web).await?;
    let conn = vnc_connection(&api, xvnc.port, Some("pw-metrics")).await?;
    let created = api.create_session(&conn).await?;
    let id = created["session_id"].as_str().unwrap_or_default();
    let url = format!("{}/bridge/v1/ws?session={id}", bridge.ws_base());
    let ws = ws_with_token(&url, &bridge.cert_sha256, created["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
    let mut s = Screen::new(ws);
    s.until("the root colour", WITHIN, |c| c.pixel(10, 10) == [0x20, 0x40, 0x60])
        .await?;
    until_sample(&addr, "portico_bridge_sessions{protocol=\"vnc\"}", |v| v == 1.0).await?;
    until_sample(&addr, "portico_bridge_sessions_detached{protocol=\"vnc\"}", |v| {
        v == 0.0
    })
    .await?;
    until_sample(&addr, "portico_bridge_frames_sent_total{protocol=\"vnc\"}", |v| {
        v >= 1.0
    })
    .await?;
    until_sample(&addr, "portico_bridge_frame_ack_seconds_count{protocol=\"vnc\"}", |v| {
        v >= 1.0
    })
    .await?;
    until_sample(
        &addr,
        "portico_bridge_frame_quality_level_count{protocol=\"vnc\"}",
        |v| v >= 1.0,
    )
    .await?;
    // A browser that stops acknowledging: once MAX_FRAMES_IN_FLIGHT frames wait for it, the bridge holds
    // the next update request (the server merges meanwhile) and counts it.
    s.ack = false;
    let merged = "portico_bridge_frames_merged_total{protocol=\"vnc\"}";
    let deadline = std::time::Instant::now() + WITHIN;
    for colour in ["#a05010", "#10a050"].iter().cycle() {
        let (_, _, body) = http_get(&addr, "/metrics", None).await?;
        if sample_value(&body, merged).is_some_and(|v| v >= 1.0) {
            break;
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{merged} stayed 0 with a browser that acknowledges nothing:\n{body}");
        }
        xvnc.x("xsetroot", &["-solid", colour])?;
        s.pump(Duration::from_millis(300)).await?;
    }
    // The browser goes away: the session waits for a reattach.
    drop(s);
    until_sample(&addr, "portico_bridge_sessions_detached{protocol=\"vnc\"}", |v| {
        v == 1.0
    })
    .await?;
    Ok(())
}
