//! The reference deployment (RA3) under faults: the tiers apart (webapp, bridges), broken on purpose.

use std::time::{Duration, Instant};

use portico_tests::client::{Term, ws_with_token};
use portico_tests::peers::Sshd;
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
    let s = api.create_session(&conn).await?;
    let id = s["session_id"].as_str().unwrap_or_default();
    let url = format!("{}/bridge/v1/ws?session={id}", bridge.ws_base());
    let ws = ws_with_token(&url, &bridge.cert_sha256, s["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
    let mut t = Term::new(ws);
    t.connected().await?;

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
    assert_eq!(closed.code, "ended");
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

/// A command typed into the live session comes back.
async fn check_session(term: &mut Term, tag: &str) -> anyhow::Result<()> {
    term.input(&format!("echo alive-{tag}-$((6*7))\r")).await?;
    let want = format!("alive-{tag}-42");
    term.until(&format!("the session after {tag}"), Duration::from_secs(10), |t| {
        t.text().contains(&want)
    })
    .await
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
    assert_eq!(closed.code, "ended");
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
