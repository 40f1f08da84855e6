//! The reference deployment (RA3) under faults: the tiers apart (webapp, bridges), broken on purpose.

use portico_proto::codes::CloseCode;
use std::time::{Duration, Instant};

use portico_tests::client::{Term, ws_with_token};
use portico_tests::peers::{RdpServer, ShadowAuth, Sshd, VncServer, XDisplay};
use portico_tests::portico::{Options, Portico};
use serde_json::json;

use crate::ssh_connection;

/// Every webapp gone: a live SSH session keeps streaming through its bridge, and ends with the reason
/// only when the control plane has stayed away for the bridge's grace (`--control-plane-grace-secs`).
#[tokio::test(flavor = "multi_thread")]
async fn live_sessions_outlive_the_control_plane_until_the_grace() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let mut web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let mut opts = web.bridge_options("bridge-grace");
    opts.extra_args
        .extend(["--control-plane-grace-secs".into(), "6".into()]);
    let bridge = Portico::start_with(opts)?;
    let api = portico_tests::client::Api::admin(&web).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let (_, mut t) = portico_tests::client::open_via(&bridge, &api, &conn).await?;

    web.kill()?;
    let killed = Instant::now();
    // Streaming goes on without any webapp.
    t.input("echo after-kill-$((40+2))\r").await?;
    t.until("output with the control plane gone", Duration::from_secs(10), |t| {
        t.text().contains("after-kill-42")
    })
    .await?;
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "the check ran past the grace"
    );
    // Then the grace runs out: the session ends with the reason.
    let closed = t.closed_within(Duration::from_secs(30)).await?;
    let after = killed.elapsed();
    let closed =
        closed.ok_or_else(|| anyhow::anyhow!("still open {after:?} after the webapp died\n{}", bridge.log()))?;
    assert_eq!(closed.code, CloseCode::Ended);
    assert!(
        closed.reason.contains("control plane was unreachable"),
        "{}",
        closed.reason
    );
    // The grace counts from the last successful sync, at most one sync interval (0.75 s) before the kill.
    assert!(
        after >= Duration::from_secs(5),
        "ended after {after:?}, well before the grace"
    );
    Ok(())
}

/// Each desktop's root takes `colour` and the change reaches its screen (the sessions still stream).
async fn check_desktops(
    desktops: &mut [(portico_tests::client::Screen, &dyn XDisplay)],
    colour: &str,
) -> anyhow::Result<()> {
    let hex = u32::from_str_radix(colour.trim_start_matches('#'), 16)?;
    let want = [(hex >> 16) as u8, (hex >> 8) as u8, hex as u8];
    for (screen, x) in desktops.iter_mut() {
        x.x("xsetroot", &["-solid", colour])?;
        screen
            .until(&format!("the desktop in {colour}"), Duration::from_secs(20), |c| {
                c.pixel(20, 20) == want
            })
            .await?;
    }
    Ok(())
}

/// A command typed into the live session comes back.
async fn check_session(term: &mut Term, tag: &str) -> anyhow::Result<()> {
    term.check_echo(tag).await
}

/// One request of the steady load: when it was sent (since the start) and whether it succeeded.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    ok: bool,
    what: String,
}

/// Three webapps on PostgreSQL behind the shipped primary load balancer (and a bridge behind the shipped
/// private one), a steady API load through it and a live SSH session: one webapp is killed, then the two
/// others restart one after the other (SIGTERM: health 503 first, then stop; a new process on the same
/// address). Requests fail only within the load balancer's detection window of the kill; none fail during
/// the rolling restart; the session never stops.
#[tokio::test(flavor = "multi_thread")]
async fn webapps_killed_and_restarted_behind_haproxy() -> anyhow::Result<()> {
    use portico_tests::lb::{Haproxy, shared_certificate};
    use portico_tests::peers::{Postgres, free_port};
    let sshd = Sshd::start()?;
    let pg = Postgres::start()?;
    let dir = portico_tests::workspace_root()
        .join(".test-runs")
        .join(format!("ra3-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key, both) = shared_certificate(&dir)?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let bridge_port = free_port();
    let lb_port = free_port();
    let base = Options::default();
    let (master_key, node_secret) = (base.master_key.clone(), base.node_secret.clone());
    let public = format!("https://127.0.0.1:{lb_port}");
    let webapp = |port: u16| Options {
        subcommand: Some("webapp"),
        database_url: Some(pg.url()),
        master_key: master_key.clone(),
        node_secret: node_secret.clone(),
        extra_args: [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--public-url",
            &public,
            "--trusted-proxies",
            "127.0.0.1",
            "--shutdown-delay-secs",
            "2",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    };
    let mut webapps = Vec::new();
    for p in &ports {
        webapps.push(Portico::start_with(webapp(*p))?);
    }
    let env = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("PORTICO_WEBAPP_1", format!("127.0.0.1:{}", ports[0])),
            ("PORTICO_WEBAPP_2", format!("127.0.0.1:{}", ports[1])),
            ("PORTICO_WEBAPP_3", format!("127.0.0.1:{}", ports[2])),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let private = Haproxy::start("private.cfg", "PORTICO_PRIVATE", &env(&[]))?;
    let bridge = Portico::start_with(Options {
        subcommand: Some("bridge"),
        master_key: master_key.clone(),
        node_secret: node_secret.clone(),
        extra_args: [
            "--listen",
            &format!("127.0.0.1:{bridge_port}"),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
            "--webapp-url",
            &format!("https://127.0.0.1:{}", private.port),
            "--webapp-cert-sha256",
            &webapps[0].cert_sha256,
            "--bridge-id",
            "bridge-1",
            "--trusted-proxies",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec(),
        ..Options::default()
    })?;
    // The primary: its own address is the public URL; the second bridge slot points at a closed port.
    let lb = Haproxy::start_on(
        "primary.cfg",
        "PORTICO_LB",
        lb_port,
        &env(&[
            ("PORTICO_LB_CERT", both.display().to_string()),
            ("PORTICO_BACKEND_CA", cert.display().to_string()),
            ("PORTICO_BRIDGE_1", format!("127.0.0.1:{bridge_port}")),
            ("PORTICO_BRIDGE_2", format!("127.0.0.1:{}", free_port())),
        ]),
    )?;
    for s in ["webapp1", "webapp2", "webapp3"] {
        lb.wait_server("webapps", s, true, Duration::from_secs(20))?;
    }
    lb.wait_server("bridges", "bridge1", true, Duration::from_secs(20))?;

    let mut api = portico_tests::client::Api::admin(&webapps[0]).await?;
    api.base = public.clone();
    api.login("admin", &webapps[0].admin_password).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let s = api.create_session(&conn).await?;
    let ws_url = s["ws_url"].as_str().unwrap_or_default().to_owned();
    assert!(
        ws_url.starts_with(&format!("wss://127.0.0.1:{lb_port}/bridge/")),
        "{ws_url}"
    );
    let ws = ws_with_token(
        &ws_url,
        &webapps[0].cert_sha256,
        s["token"].as_str().unwrap_or_default(),
    )
    .await?
    .map_err(|r| anyhow::anyhow!("refused through the load balancer: {r:?}"))?;
    let mut term = Term::new(ws);
    term.connected().await?;
    // A VNC desktop (TigerVNC) and an RDP desktop (FreeRDP's shadow server) through the load balancer too.
    let xvnc = VncServer::xvnc(None, 640, 400)?;
    let shadow = RdpServer::shadow(ShadowAuth::None, 640, 480)?;
    let vnc_conn = crate::vnc::vnc_connection(&api, xvnc.port, None).await?;
    let rdp_conn = crate::rdp::rdp_connection(&api, &shadow, "any", json!({"width": 640, "height": 480})).await?;
    let mut desktops = vec![
        (
            crate::vnc::open_screen(&webapps[0], &api, &vnc_conn).await?.1,
            &xvnc as &dyn XDisplay,
        ),
        (
            crate::vnc::open_screen(&webapps[0], &api, &rdp_conn).await?.1,
            &shadow as &dyn XDisplay,
        ),
    ];
    check_desktops(&mut desktops, "#2060a0").await?;

    // Steady load: 25 requests/s through the load balancer until told to stop (bounded: 60 s).
    let started = Instant::now();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load_api = api.clone();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    let load = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(40));
        let mut inflight = tokio::task::JoinSet::new();
        while !*stop_rx.borrow() && started.elapsed() < Duration::from_secs(60) {
            tokio::select! {
                _ = tick.tick() => {
                    let (api, counter) = (load_api.clone(), counter.clone());
                    inflight.spawn(async move {
                        let at = started.elapsed();
                        match api.request(reqwest::Method::GET, "/api/v1/connections", None).await {
                            Ok((200, _)) => {
                                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                Sample { at, ok: true, what: String::new() }
                            }
                            Ok((s, v)) => Sample { at, ok: false, what: format!("{s} {v}") },
                            Err(e) => Sample { at, ok: false, what: format!("{e:#}") },
                        }
                    });
                }
                _ = stop_rx.changed() => {}
            }
            while let Some(Ok(s)) = inflight.try_join_next() {
                samples.push(s);
            }
        }
        while let Some(r) = inflight.join_next().await {
            samples.extend(r.ok());
        }
        samples
    });
    // The load runs before the first fault: 50 answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        anyhow::ensure!(Instant::now() < deadline, "the load got no 50 answers in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. A webapp killed.
    webapps[0].kill()?;
    let killed = started.elapsed();
    lb.wait_server("webapps", "webapp1", false, Duration::from_secs(10))?;
    let detected = started.elapsed() - killed;
    check_session(&mut term, "kill").await?;
    check_desktops(&mut desktops, "#a02060").await?;

    // 2. Rolling restart of the two others.
    let mut restarts = Vec::new();
    for (i, name) in [(1usize, "webapp2"), (2, "webapp3")] {
        let from = started.elapsed();
        webapps[i].sigterm()?;
        lb.wait_server("webapps", name, false, Duration::from_secs(10))?;
        webapps[i].wait_exit(Duration::from_secs(30))?;
        webapps[i] = Portico::start_with(webapp(ports[i]))?;
        lb.wait_server("webapps", name, true, Duration::from_secs(20))?;
        restarts.push((from, started.elapsed()));
        check_session(&mut term, name).await?;
        check_desktops(&mut desktops, if i == 1 { "#20a060" } else { "#6020a0" }).await?;
    }
    let _ = stop_tx.send(true);
    let samples = load.await?;
    let window = Duration::from_millis(1500);
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    let outside: Vec<&Sample> = failed
        .iter()
        .copied()
        .filter(|s| s.at < killed || s.at > killed + window.max(detected))
        .collect();
    println!(
        "{} requests, {} failed ({} within {:?} of the kill, detection took {detected:?}); restarts {restarts:?}",
        samples.len(),
        failed.len(),
        failed.len() - outside.len(),
        window.max(detected)
    );
    for f in &failed {
        println!("  failed at {:?}: {}", f.at, f.what);
    }
    assert!(samples.len() >= 100, "too few requests: {}", samples.len());
    assert!(
        outside.is_empty(),
        "requests failed outside the detection window: {outside:?}\n{}",
        lb.log()
    );
    drop((private, bridge));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// SIGTERM drains a bridge: its health check fails at once, its live session goes on (and it starts no new
/// one: the token stays unclaimed for another bridge); it stops as soon as its last session ends, long
/// before its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_drains_on_sigterm() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let mut opts = web.bridge_options("bridge-drain");
    opts.extra_args.extend(["--shutdown-delay-secs".into(), "120".into()]);
    let mut bridge = Portico::start_with(opts)?;
    let api = portico_tests::client::Api::admin(&web).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let s = api.create_session(&conn).await?;
    let id = s["session_id"].as_str().unwrap_or_default().to_owned();
    let url = |id: &str| format!("{}/bridge/v1/ws?session={id}", bridge.ws_base());
    let ws = ws_with_token(&url(&id), &bridge.cert_sha256, s["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
    let mut term = Term::new(ws);
    term.connected().await?;
    let health = portico_tests::client::Api::new(&bridge)?;
    let (status, _) = health.request(reqwest::Method::GET, "/bridge/v1/health", None).await?;
    assert_eq!(status, 200);

    let signalled = Instant::now();
    bridge.sigterm()?;
    loop {
        let (status, body) = health.request(reqwest::Method::GET, "/bridge/v1/health", None).await?;
        if status == 503 {
            assert_eq!(body["sessions"], 1, "{body}");
            break;
        }
        anyhow::ensure!(
            signalled.elapsed() < Duration::from_secs(10),
            "health still {status} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_session(&mut term, "sigterm").await?;
    // No new session here; the token is not used up.
    let other = api.create_session(&conn).await?;
    let other_id = other["session_id"].as_str().unwrap_or_default();
    let refused = ws_with_token(
        &url(other_id),
        &bridge.cert_sha256,
        other["token"].as_str().unwrap_or_default(),
    )
    .await?
    .err()
    .ok_or_else(|| anyhow::anyhow!("a draining bridge started a session"))?;
    assert_eq!(refused.status, 503, "{refused:?}");
    let row = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{other_id}"), None)
        .await?;
    assert_eq!(row["state"], "pending", "{row}");
    // The last session ends: the bridge stops, long before its 120 s deadline.
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    let closed = term
        .closed_within(Duration::from_secs(10))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the session did not close"))?;
    assert_eq!(closed.code, CloseCode::Ended);
    assert!(
        !closed.reason.contains("shutting down"),
        "closed by the shutdown, not the delete: {}",
        closed.reason
    );
    let ended = signalled.elapsed();
    let status = bridge.wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "{status}");
    println!(
        "last session ended {ended:?} after SIGTERM ({}), bridge stopped at {:?}",
        closed.reason,
        signalled.elapsed()
    );
    Ok(())
}

/// A webapp (SQLite), two bridges with routes (`bridge1`, `bridge2`: the server names of the shipped
/// primary load balancer) and that load balancer in front of them all.
pub(crate) struct BridgeTier {
    pub dir: std::path::PathBuf,
    pub webapp: Portico,
    pub bridges: Vec<Portico>,
    pub lb: portico_tests::lb::Haproxy,
    pub public: String,
    pub api: portico_tests::client::Api,
}

impl BridgeTier {
    pub(crate) async fn start() -> anyhow::Result<BridgeTier> {
        use portico_tests::lb::{Haproxy, shared_certificate};
        use portico_tests::peers::free_port;
        let dir = portico_tests::workspace_root()
            .join(".test-runs")
            .join(format!("tier-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let (cert, key, both) = shared_certificate(&dir)?;
        let (web_port, lb_port) = (free_port(), free_port());
        let bridge_ports = [free_port(), free_port()];
        let public = format!("https://127.0.0.1:{lb_port}");
        let tls = |port: u16| {
            [
                "--listen".to_owned(),
                format!("127.0.0.1:{port}"),
                "--tls-cert".into(),
                cert.display().to_string(),
                "--tls-key".into(),
                key.display().to_string(),
                "--trusted-proxies".into(),
                "127.0.0.1".into(),
            ]
        };
        let mut web_args = tls(web_port).to_vec();
        web_args.extend(["--public-url".into(), public.clone()]);
        let webapp = Portico::start_with(Options {
            subcommand: Some("webapp"),
            extra_args: web_args,
            ..Options::default()
        })?;
        let mut bridges = Vec::new();
        for (i, port) in bridge_ports.iter().enumerate() {
            let mut opts = webapp.bridge_options(&format!("bridge-{}", i + 1));
            opts.extra_args.extend(tls(*port));
            opts.extra_args
                .extend(["--bridge-route".into(), format!("bridge{}", i + 1)]);
            bridges.push(Portico::start_with(opts)?);
        }
        let web = format!("127.0.0.1:{web_port}");
        let lb = Haproxy::start_on(
            "primary.cfg",
            "PORTICO_LB",
            lb_port,
            &[
                ("PORTICO_WEBAPP_1", web.clone()),
                ("PORTICO_WEBAPP_2", web.clone()),
                ("PORTICO_WEBAPP_3", web),
                ("PORTICO_LB_CERT", both.display().to_string()),
                ("PORTICO_BACKEND_CA", cert.display().to_string()),
                ("PORTICO_BRIDGE_1", format!("127.0.0.1:{}", bridge_ports[0])),
                ("PORTICO_BRIDGE_2", format!("127.0.0.1:{}", bridge_ports[1])),
            ],
        )?;
        for b in ["bridge1", "bridge2"] {
            lb.wait_server("bridges", b, true, Duration::from_secs(20))?;
        }
        lb.wait_server("webapps", "webapp1", true, Duration::from_secs(20))?;
        let mut api = portico_tests::client::Api::admin(&webapp).await?;
        api.base = public.clone();
        api.login("admin", &webapp.admin_password).await?;
        let tier = BridgeTier {
            dir,
            webapp,
            bridges,
            lb,
            public,
            api,
        };
        for route in ["bridge1", "bridge2"] {
            tier.wait_bridge(route, "healthy", Duration::from_secs(20)).await?;
        }
        Ok(tier)
    }

    /// The live identity of the bridge with `route` (the newest registration).
    pub(crate) async fn bridge(&self, route: &str) -> anyhow::Result<serde_json::Value> {
        let all = self.api.ok(reqwest::Method::GET, "/api/v1/bridges", None).await?;
        all.as_array()
            .and_then(|a| a.iter().rev().find(|b| b["route"] == route).cloned())
            .ok_or_else(|| anyhow::anyhow!("no bridge with route {route}: {all}"))
    }

    /// Wait until the bridge with `route` is in `state`; returns how long it took.
    pub(crate) async fn wait_bridge(&self, route: &str, state: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let b = self.bridge(route).await.ok();
            if b.as_ref().is_some_and(|b| b["state"] == state) {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "bridge {route} not {state} within {timeout:?}: {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The route a created session's WebSocket URL names.
    pub(crate) fn route_of(created: &serde_json::Value) -> Option<String> {
        let url = created["ws_url"].as_str()?;
        let rest = url.split("/bridge/v1/at/").nth(1)?;
        Some(rest.split('/').next()?.to_owned())
    }

    /// A session started through the load balancer, its terminal connected.
    pub(crate) async fn open(&self, conn: &str) -> anyhow::Result<(serde_json::Value, Term)> {
        let s = self.api.create_session(conn).await?;
        let ws = ws_with_token(
            s["ws_url"].as_str().unwrap_or_default(),
            &self.webapp.cert_sha256,
            s["token"].as_str().unwrap_or_default(),
        )
        .await?
        .map_err(|r| anyhow::anyhow!("refused through the load balancer: {r:?}"))?;
        let mut term = Term::new(ws);
        term.connected().await?;
        Ok((s, term))
    }
}

impl Drop for BridgeTier {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bridge tier as a tier: new sessions go to the bridge with the fewest, through the load balancer by
/// the route their URL names (and nowhere else: another bridge refuses them, and cannot claim them); a
/// bridge killed takes its sessions with it, ended as lost within 15 s (a `bridge_down` event), while the
/// other bridge's sessions go on and new ones land there; an administrator's drain stops new sessions on a
/// bridge, lets the live one run to its end, and the bridge then stops by itself.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_spread_over_bridges_die_with_theirs_and_a_drain_empties_one() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let mut tier = BridgeTier::start().await?;
    let api = tier.api.clone();
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;

    // Four sessions, one after the other: two on each bridge (the fewest first).
    let mut open = Vec::new();
    for i in 0..4 {
        let (s, mut term) = tier.open(&conn).await?;
        check_session(&mut term, &format!("spread{i}")).await?;
        open.push((s, term));
    }
    let routes: Vec<String> = open
        .iter()
        .map(|(s, _)| BridgeTier::route_of(s).unwrap_or_default())
        .collect();
    for r in ["bridge1", "bridge2"] {
        assert_eq!(
            routes.iter().filter(|x| *x == r).count(),
            2,
            "sessions per bridge: {routes:?}"
        );
    }
    // The browser drops and reattaches through the load balancer: each session is found on its bridge.
    let mut reopened = Vec::new();
    for (i, (s, term)) in open.into_iter().enumerate() {
        let resume = term.hello.as_ref().map(|h| h.resume_token.clone()).unwrap_or_default();
        drop(term);
        let url = s["ws_url"].as_str().unwrap_or_default().to_owned();
        let resumed = [format!("{}{resume}", portico_proto::wire::RESUME_PREFIX)];
        let deadline = Instant::now() + Duration::from_secs(10);
        let ws = loop {
            match portico_tests::client::ws_connect(&url, &tier.webapp.cert_sha256, &resumed).await? {
                Ok(ws) => break ws,
                Err(r) => anyhow::ensure!(Instant::now() < deadline, "reattach refused: {r:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut term = Term::new(ws);
        check_session(&mut term, &format!("reattached{i}")).await?;
        assert!(
            term.hello.as_ref().is_some_and(|h| h.reattached),
            "not a reattach: {:?}",
            term.hello
        );
        reopened.push((s, term));
    }
    let mut open = reopened;
    let b1 = tier.bridge("bridge1").await?;
    for (s, _) in &open {
        let id = s["session_id"].as_str().unwrap_or_default();
        let row = api
            .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{id}"), None)
            .await?;
        let want = if BridgeTier::route_of(s).as_deref() == Some("bridge1") {
            b1["id"].clone()
        } else {
            tier.bridge("bridge2").await?["id"].clone()
        };
        assert_eq!(row["bridge_id"], want, "claimed by the assigned bridge: {row}");
    }

    // Abuse: a session's token sent to the other bridge. By its route: refused before anything (421);
    // unrouted: the claim is refused (the session is assigned elsewhere), and the token still works where
    // it belongs.
    let s = api.create_session(&conn).await?;
    let route = BridgeTier::route_of(&s).unwrap_or_default();
    let (other, other_route) = if route == "bridge1" {
        (&tier.bridges[1], "bridge2")
    } else {
        (&tier.bridges[0], "bridge1")
    };
    let id = s["session_id"].as_str().unwrap_or_default();
    let token = s["token"].as_str().unwrap_or_default();
    let misrouted = format!("{}/bridge/v1/at/{route}/ws?session={id}", other.ws_base());
    let r = ws_with_token(&misrouted, &other.cert_sha256, token).await?.err();
    assert_eq!(r.as_ref().map(|r| r.status), Some(421), "{r:?}");
    let unrouted = format!("{}/bridge/v1/ws?session={id}", other.ws_base());
    let r = ws_with_token(&unrouted, &other.cert_sha256, token).await?.err();
    assert!(
        r.as_ref()
            .is_some_and(|r| r.body.contains("assigned to another bridge")),
        "{r:?}"
    );
    let _ = other_route;
    let ws = ws_with_token(
        s["ws_url"].as_str().unwrap_or_default(),
        &tier.webapp.cert_sha256,
        token,
    )
    .await?
    .map_err(|r| anyhow::anyhow!("the right bridge refused it after the abuse: {r:?}"))?;
    let mut fifth = Term::new(ws);
    fifth.connected().await?;
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    fifth.closed_within(Duration::from_secs(10)).await?;

    // Bridge 1 killed: its two sessions end as lost within 15 s; bridge 2's go on.
    tier.bridges[0].kill()?;
    let killed = Instant::now();
    let lost: Vec<String> = open
        .iter()
        .filter(|(s, _)| BridgeTier::route_of(s).as_deref() == Some("bridge1"))
        .map(|(s, _)| s["session_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    for id in &lost {
        loop {
            let row = api
                .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{id}"), None)
                .await?;
            if row["state"] == "ended" {
                let reason = row["end_reason"].as_str().unwrap_or_default();
                assert!(reason.starts_with("lost: bridge bridge-1 stopped responding"), "{row}");
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(15),
                "not lost within 15 s: {row}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let detected = killed.elapsed();
    tier.wait_bridge("bridge1", "down", Duration::from_secs(5)).await?;
    let b1_id = b1["id"].as_str().unwrap_or("?").to_owned();
    wait_event(&api, "bridge_down", |text| text.contains(&b1_id)).await?;
    for (s, term) in open.iter_mut() {
        if BridgeTier::route_of(s).as_deref() == Some("bridge2") {
            check_session(term, "after-kill").await?;
        }
    }
    let (s, mut term) = tier.open(&conn).await?;
    assert_eq!(BridgeTier::route_of(&s).as_deref(), Some("bridge2"), "{s}");
    check_session(&mut term, "new-after-kill").await?;
    println!("bridge killed: its sessions lost after {detected:?}");

    // Bridge 2 drained by an administrator: no new session there, the live ones go on; once they end it
    // stops by itself (and is not reported down).
    let b2 = tier.bridge("bridge2").await?;
    let b2_id = b2["id"].as_str().unwrap_or_default();
    api.ok(reqwest::Method::POST, &format!("/api/v1/bridges/{b2_id}/drain"), None)
        .await?;
    tier.wait_bridge("bridge2", "draining", Duration::from_secs(5)).await?;
    let drained_at = Instant::now();
    // The bridge hears it at its next heartbeat: its health check fails (the load balancer takes it out).
    tier.lb
        .wait_server("bridges", "bridge2", false, Duration::from_secs(10))?;
    check_session(&mut term, "draining").await?;
    let refused = api.create_session(&conn).await?;
    assert_eq!(
        BridgeTier::route_of(&refused),
        None,
        "a draining bridge got a session: {refused}"
    );
    let r = ws_with_token(
        refused["ws_url"].as_str().unwrap_or_default(),
        &tier.webapp.cert_sha256,
        refused["token"].as_str().unwrap_or_default(),
    )
    .await?;
    assert!(r.is_err(), "a new session started with every bridge down or draining");
    let mut left = vec![s["session_id"].as_str().unwrap_or_default().to_owned()];
    left.extend(
        open.iter()
            .filter(|(s, _)| BridgeTier::route_of(s).as_deref() == Some("bridge2"))
            .map(|(s, _)| s["session_id"].as_str().unwrap_or_default().to_owned()),
    );
    for id in &left {
        api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
            .await?;
    }
    let status = tier.bridges[1].wait_exit(Duration::from_secs(30))?;
    assert!(status.success(), "{status}");
    tier.wait_bridge("bridge2", "stopped", Duration::from_secs(10)).await?;
    wait_event(&api, "bridge_drained", |text| {
        text.contains("administrator") && text.contains("stopped")
    })
    .await?;
    let down = api
        .ok(reqwest::Method::GET, "/api/v1/events?type=bridge_down", None)
        .await?;
    assert!(
        !down.to_string().contains(b2_id),
        "a drained bridge reported down: {down}"
    );
    println!("bridge drained: stopped {:?} after the drain", drained_at.elapsed());
    Ok(())
}

/// Wait (at most 10 s) until the events of `event_type` satisfy `pred` (events are written in batches).
async fn wait_event(
    api: &portico_tests::client::Api,
    event_type: &str,
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let events = api
            .ok(reqwest::Method::GET, &format!("/api/v1/events?type={event_type}"), None)
            .await?;
        if pred(&events.to_string()) {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no matching {event_type} event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bridge killed under a live RDP session in the browser (xrdp): the web client starts a new session by
/// itself, on the other bridge, and is back in the same xrdp logon session (a marker window opened before
/// is still there) within 10 s of the kill.
#[tokio::test(flavor = "multi_thread")]
async fn rdp_in_the_browser_survives_its_bridge() -> anyhow::Result<()> {
    use portico_tests::peers::{RdpServer, run_browser_script};
    let xrdp = RdpServer::xrdp()?;
    let tier = BridgeTier::start().await?;
    let pids = format!("bridge1:{},bridge2:{}", tier.bridges[0].pid(), tier.bridges[1].pid());
    let port = xrdp.port.to_string();
    let shots = std::env::var("PORTICO_SCREENSHOTS").unwrap_or_default();
    let out = run_browser_script(
        "bridge_loss_e2e.js",
        &[
            ("PORTICO_URL", tier.public.as_str()),
            ("ADMIN_PASSWORD", tier.webapp.admin_password.as_str()),
            ("RDP_PORT", port.as_str()),
            ("RDP_USER", xrdp.user.name.as_str()),
            ("RDP_PASSWORD", xrdp.user.password.as_str()),
            ("BRIDGE_PIDS", pids.as_str()),
            ("SCREENSHOT_DIR", shots.as_str()),
        ],
        Duration::from_secs(180),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\nwebapp log:\n{}\nbridge 1 log:\n{}\nbridge 2 log:\n{}\nxrdp log:\n{}",
            tier.webapp.log(),
            tier.bridges[0].log(),
            tier.bridges[1].log(),
            xrdp.log()
        )
    })?;
    let line = out
        .lines()
        .find(|l| l.starts_with("back in the same desktop"))
        .ok_or_else(|| anyhow::anyhow!("no result line: {out}"))?;
    for l in out.lines().filter(|l| l.starts_with('+')) {
        println!("  {l}");
    }
    println!("{line}");
    assert!(out.contains("bridges card: healthy, down, then draining"), "{out}");
    Ok(())
}

/// All-in-one: the in-process bridge heartbeats like any other, so its sessions outlive the window after
/// which a silent bridge is down (a bridge that calls the webapp in process must count as seen too).
#[tokio::test(flavor = "multi_thread")]
async fn the_all_in_one_bridge_heartbeats_and_keeps_its_sessions() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = portico_tests::client::Api::admin(&p).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let (s, ws) = portico_tests::client::attach(&p, &api, &conn).await?;
    let mut term = Term::new(ws);
    term.connected().await?;
    let id = s["session_id"].as_str().unwrap_or_default().to_owned();
    let started = portico_webapp::now_unix();
    // Past the window in which the webapp judges heartbeats (the down silence plus its own margin): the
    // bridge has been seen since, and the session is still live.
    let past = started + portico_webapp::BRIDGE_DOWN_SECS + 4;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bridges = api.ok(reqwest::Method::GET, "/api/v1/bridges", None).await?;
        let seen = bridges
            .as_array()
            .and_then(|l| l.iter().find(|b| b["state"] == "healthy"))
            .and_then(|b| b["last_seen_at"].as_i64());
        if seen.is_some_and(|t| t >= past) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the in-process bridge was not seen after {past}: {bridges}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    check_session(&mut term, "in-process").await?;
    let row = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    assert_eq!(row["state"], "active", "{row}");
    Ok(())
}
