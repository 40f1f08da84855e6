//! Events against the real binary: logins (failed, succeeded, throttled), changes, a session's lifecycle
//! through the bridge, the API's filters, paging and roles, retention 0, no secret in any event, and
//! forwarding to a real rsyslog over TCP and TLS while it goes away and comes back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portico_proto::wire::ClientMsg;
use portico_tests::client::Api;
use portico_tests::peers::Sshd;
use portico_tests::portico::{Options, Portico};
use portico_tests::rsyslog::{Received, Rsyslog};
use portico_tests::workspace_root;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{open_term, ssh_connection};

/// `GET /api/v1/events{query}`: status, items and `X-Total-Count`.
async fn events(api: &Api, query: &str) -> anyhow::Result<(u16, Vec<Value>, i64)> {
    let mut req = api.http.get(format!("{}/api/v1/events{query}", api.base));
    if let Some(b) = &api.bearer {
        req = req.bearer_auth(b);
    }
    let res = req.send().await.context("list events")?;
    let status = res.status().as_u16();
    let total = res
        .headers()
        .get("x-total-count")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(-1);
    let body: Value = res.json().await.unwrap_or(Value::Null);
    Ok((status, body.as_array().cloned().unwrap_or_default(), total))
}

/// Poll `GET /api/v1/events{query}` (events are stored in the background) until `pred` holds for the
/// items, at most `timeout`.
async fn wait_events(
    api: &Api,
    query: &str,
    timeout: Duration,
    mut pred: impl FnMut(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let start = Instant::now();
    loop {
        let (status, items, _) = events(api, query).await?;
        anyhow::ensure!(status == 200, "events{query}: http {status}");
        if pred(&items) {
            return Ok(items);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for events{query}; got {items:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn types(items: &[Value]) -> Vec<&str> {
    items.iter().filter_map(|e| e["type"].as_str()).collect()
}

async fn failed_login(api: &Api, username: &str) -> anyhow::Result<u16> {
    let (status, _) = api
        .request(
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({ "username": username, "password": "wrong-password-0" })),
        )
        .await?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread")]
async fn logins_changes_and_a_session_are_recorded_filtered_and_free_of_secrets() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let me = admin.ok(Method::GET, "/api/v1/auth/me", None).await?;
    let admin_id = me["user"]["id"].as_str().context("admin id")?.to_owned();
    let eve_id = admin.create_user("eve", "user").await?;
    admin.create_user("audrey", "auditor").await?;
    let conn = ssh_connection(&admin, &sshd, json!({ "password": sshd.user.password })).await?;

    // A wrong password, then the right one; five wrong ones for another name, and the sixth is refused
    // before it is verified.
    let anon = Api::new(&p)?;
    assert_eq!(failed_login(&anon, "eve").await?, 401);
    let mut eve = Api::new(&p)?;
    eve.login("eve", "eve-password-1").await?;
    for _ in 0..5 {
        assert_eq!(failed_login(&anon, "mallory").await?, 401);
    }
    assert_eq!(failed_login(&anon, "mallory").await?, 429);

    // Changes: a grant, a connection's password, an API key, an identity provider with a client secret.
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{conn}/grants"),
            Some(json!({ "user_ids": [eve_id], "group_ids": [] })),
        )
        .await?;
    let conn_password = format!("new-conn-password-{}", uuid::Uuid::new_v4().simple());
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{conn}"),
            Some(
                json!({ "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user.name,
                         "name": "renamed", "password": sshd.user.password }),
            ),
        )
        .await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{conn}"),
            Some(
                json!({ "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user.name,
                         "name": "renamed", "password": conn_password }),
            ),
        )
        .await?;
    let key = admin
        .ok(Method::POST, "/api/v1/api-keys", Some(json!({ "name": "ci" })))
        .await?;
    let api_key = key["key"].as_str().context("api key")?.to_owned();
    let client_secret = format!("s3cret-{}", uuid::Uuid::new_v4().simple());
    let issuer = format!("https://127.0.0.1:{}", portico_tests::peers::free_port());
    admin
        .ok(
            Method::POST,
            "/api/v1/identity-providers",
            Some(
                json!({ "kind": "oidc", "name": "Corp", "oidc": { "issuer": issuer, "client_id": "portico" },
                         "client_secret": client_secret }),
            ),
        )
        .await?;
    // The password back, so that the session below logs in.
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{conn}"),
            Some(
                json!({ "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user.name,
                         "password": sshd.user.password }),
            ),
        )
        .await?;

    // A session: created by eve, claimed by the bridge, some traffic, closed by the user.
    let (created, mut t) = open_term(&p, &eve, &conn).await?;
    let sid = created["session_id"].as_str().context("session id")?.to_owned();
    let token = created["token"].as_str().context("token")?.to_owned();
    t.connected().await?;
    t.input("echo events-$((6*7))\r").await?;
    t.until("output", Duration::from_secs(15), |t| t.text().contains("events-42"))
        .await?;
    t.send(ClientMsg::Disconnect).await?;
    t.closed_within(Duration::from_secs(10)).await?;

    let lifecycle = wait_events(
        &admin,
        &format!("?session_id={sid}"),
        Duration::from_secs(15),
        |items| {
            let t = types(items);
            ["session_created", "session_claimed", "session_ended", "session_closed"]
                .iter()
                .all(|x| t.contains(x))
        },
    )
    .await?;
    let by_type: HashMap<&str, &Value> = lifecycle
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or(""), e))
        .collect();
    let created_ev = by_type["session_created"];
    assert_eq!(created_ev["actor_id"], eve_id.as_str());
    assert_eq!(created_ev["user_id"], eve_id.as_str());
    assert_eq!(created_ev["connection_id"], conn.as_str());
    assert_eq!(created_ev["client_addr"], "127.0.0.1");
    assert_eq!(created_ev["details"]["protocol"], "ssh");
    let claimed = by_type["session_claimed"];
    assert!(
        !claimed["details"]["bridge_id"].as_str().unwrap_or("").is_empty(),
        "{claimed}"
    );
    assert_eq!(claimed["details"]["target"], format!("127.0.0.1:{}", sshd.port));
    let closed = by_type["session_closed"];
    let details = &closed["details"];
    assert!(
        details["reason"].as_str().unwrap_or("").contains("closed by the user"),
        "{closed}"
    );
    assert!(details["bytes_to_browser"].as_u64().unwrap_or(0) > 0, "{closed}");
    assert!(details["bytes_from_browser"].as_u64().unwrap_or(0) > 0, "{closed}");
    assert!(details["duration_secs"].is_u64(), "{closed}");
    assert!(
        by_type["session_ended"]["details"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("closed by the user")
    );
    // Newest first, in pages.
    let ats: Vec<i64> = lifecycle.iter().filter_map(|e| e["at"].as_i64()).collect();
    assert!(ats.windows(2).all(|w| w[0] >= w[1]), "{ats:?}");
    let (_, first, total) = events(&admin, &format!("?session_id={sid}&limit=1")).await?;
    let (_, second, _) = events(&admin, &format!("?session_id={sid}&limit=1&offset=1")).await?;
    assert_eq!((first.len(), second.len(), total), (1, 1, lifecycle.len() as i64));
    assert_ne!(first[0]["id"], second[0]["id"]);
    let at = created_ev["at"].as_i64().context("at")?;
    let (_, window, _) = events(&admin, &format!("?session_id={sid}&type=session_created&since={at}")).await?;
    assert_eq!(window.len(), 1, "since is inclusive");
    let (_, window, _) = events(&admin, &format!("?session_id={sid}&type=session_created&until={at}")).await?;
    assert_eq!(window.len(), 0, "until is exclusive");

    // Logins, with the client address and the method.
    let failed = wait_events(
        &admin,
        &format!("?type=login_failed&user_id={eve_id}"),
        Duration::from_secs(10),
        |i| !i.is_empty(),
    )
    .await?;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["client_addr"], "127.0.0.1");
    assert_eq!(failed[0]["details"]["username"], "eve");
    let ok = wait_events(
        &admin,
        &format!("?type=login_succeeded&user_id={eve_id}"),
        Duration::from_secs(10),
        |i| !i.is_empty(),
    )
    .await?;
    assert_eq!(ok[0]["details"]["method"], "password");
    assert_eq!(ok[0]["actor_id"], eve_id.as_str());
    let throttled = wait_events(&admin, "?type=login_throttled", Duration::from_secs(10), |i| {
        !i.is_empty()
    })
    .await?;
    assert_eq!(throttled[0]["details"]["username"], "mallory");
    assert!(throttled[0]["details"]["retry_after"].as_i64().unwrap_or(0) > 0);
    let (_, mallory, _) = events(&admin, "?type=login_failed,login_throttled").await?;
    assert_eq!(
        mallory.iter().filter(|e| e["details"]["username"] == "mallory").count(),
        6,
        "five failures and one throttled"
    );

    // A grant change: who, what, before and after.
    let grants = wait_events(
        &admin,
        &format!("?type=grants_changed&connection_id={conn}"),
        Duration::from_secs(10),
        |i| !i.is_empty(),
    )
    .await?;
    assert_eq!(grants[0]["actor_id"], admin_id.as_str());
    assert_eq!(grants[0]["details"]["before"]["user_ids"], json!([]));
    assert_eq!(grants[0]["details"]["after"]["user_ids"], json!([eve_id]));
    let updated = wait_events(
        &admin,
        &format!("?type=connection_updated&connection_id={conn}"),
        Duration::from_secs(10),
        |i| i.len() >= 3,
    )
    .await?;
    assert!(updated.iter().any(|e| e["details"]["password_changed"] == true));
    assert!(
        updated
            .iter()
            .any(|e| e["details"]["before"]["name"] != e["details"]["after"]["name"]),
        "{updated:#?}"
    );

    // Who may read them: admins and auditors; a user is refused, and bad filters are told so.
    assert_eq!(events(&eve, "").await?.0, 403);
    let mut audrey = Api::new(&p)?;
    audrey.login("audrey", "audrey-password-1").await?;
    let (status, items, _) = events(&audrey, &format!("?user_id={eve_id}")).await?;
    assert_eq!(status, 200);
    assert!(
        items
            .iter()
            .all(|e| e["user_id"] == eve_id.as_str() || e["actor_id"] == eve_id.as_str())
    );
    let known = audrey.ok(Method::GET, "/api/v1/events/types", None).await?;
    assert!(
        known["types"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("token_refused")))
    );
    assert_eq!(known["retention_days"], 14);
    assert_eq!(events(&admin, "?type=nonsense").await?.0, 400);
    assert_eq!(events(&admin, "?limit=0").await?.0, 400);
    assert_eq!(events(&admin, "?surprise=1").await?.0, 400);

    // No secret in any event: passwords (wrong and right), the connection's, the API key, the client
    // secret, the session token, the CSRF token.
    wait_events(
        &admin,
        "?type=identity_provider_created,api_key_created",
        Duration::from_secs(10),
        |i| i.len() == 2,
    )
    .await?;
    let (_, all, total) = events(&admin, "?limit=1000").await?;
    assert!(total > 20 && all.len() as i64 == total, "{total}");
    let text = serde_json::to_string(&all)?;
    for secret in [
        "wrong-password-0",
        "eve-password-1",
        "audrey-password-1",
        p.admin_password.as_str(),
        sshd.user.password.as_str(),
        conn_password.as_str(),
        api_key.as_str(),
        client_secret.as_str(),
        token.as_str(),
        eve.csrf.as_deref().unwrap_or("no-csrf"),
    ] {
        assert!(!text.contains(secret), "an event holds the secret {secret:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_zero_stores_nothing_but_still_forwards() -> anyhow::Result<()> {
    let file = workspace_root()
        .join(".test-runs")
        .join(format!("events-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(file.parent().context("parent")?)?;
    let p = Portico::start_with(Options {
        extra_args: vec![
            "--event-retention-days".into(),
            "0".into(),
            "--event-forward".into(),
            format!("jsonl://{}", file.display()),
        ],
        ..Options::default()
    })?;
    let admin = Api::admin(&p).await?;
    let name = format!("nobody-{}", uuid::Uuid::new_v4().simple());
    assert_eq!(failed_login(&Api::new(&p)?, &name).await?, 401);
    let start = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(&name)) {
            break l.to_owned();
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no event in {}: {text}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ev: Value = serde_json::from_str(&line)?;
    assert_eq!(ev["type"], "login_failed");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "the events file is private");
    let (status, items, total) = events(&admin, "").await?;
    assert_eq!((status, items.len(), total), (200, 0, 0), "retention 0 stores nothing");
    assert_eq!(
        admin.ok(Method::GET, "/api/v1/events/types", None).await?["retention_days"],
        0
    );
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// The machine's host name as syslog messages carry it.
fn hostname() -> String {
    portico_webapp::events::syslog_hostname(&std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default())
}

/// Every message of `input` is well-formed (RFC 5424 fields as rsyslog parsed them, the JSON event in
/// MSG with the same type and id) and was sent by `pid`; returns them by event id.
fn check_framing(received: &[Received], input: &str, pid: u32) -> anyhow::Result<HashMap<String, Value>> {
    let mut by_id = HashMap::new();
    for r in received.iter().filter(|r| r.input == input) {
        let ev: Value = serde_json::from_str(&r.msg).with_context(|| format!("MSG is not the JSON event: {r:?}"))?;
        let id = ev["id"].as_str().context("event id")?.to_owned();
        assert_eq!(r.pri / 8, 13, "facility log audit: {r:?}");
        let severity = match ev["type"].as_str() {
            Some("login_failed" | "login_throttled") => 4,
            Some("login_succeeded") => 5,
            _ => r.pri % 8,
        };
        assert_eq!(r.pri % 8, severity, "{r:?}");
        assert_eq!(r.app_name, "portico");
        assert_eq!(r.procid, pid.to_string());
        assert_eq!(r.hostname, hostname());
        assert_eq!(r.msgid, ev["type"].as_str().unwrap_or(""), "MSGID is the event type");
        assert!(
            r.structured_data.starts_with(&format!("[portico@32473 id=\"{id}\"")),
            "{r:?}"
        );
        if let Some(client) = ev["client_addr"].as_str() {
            assert!(r.structured_data.contains(&format!("client=\"{client}\"")), "{r:?}");
        }
        anyhow::ensure!(
            by_id.insert(id.clone(), ev).is_none(),
            "event {id} received twice over {input}"
        );
    }
    Ok(by_id)
}

/// The ids of every stored event.
async fn stored_ids(api: &Api) -> anyhow::Result<Vec<String>> {
    let (_, items, _) = events(api, "?limit=1000").await?;
    Ok(items
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect())
}

/// Wait until every stored event arrived over both listeners, exactly once each, and nothing else did.
async fn wait_forwarded(rs: &Rsyslog, api: &Api, pid: u32, what: &str) -> anyhow::Result<Vec<String>> {
    let start = Instant::now();
    loop {
        let stored = stored_ids(api).await?;
        let received = rs.received();
        let tcp = check_framing(&received, "tcp", pid)?;
        let tls = check_framing(&received, "tls", pid)?;
        let complete =
            |m: &HashMap<String, Value>| m.len() == stored.len() && stored.iter().all(|id| m.contains_key(id));
        if complete(&tcp) && complete(&tls) {
            return Ok(stored);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "{what}: {} events stored, {} received over tcp, {} over tls; rsyslogd log:\n{}",
                stored.len(),
                tcp.len(),
                tls.len(),
                rs.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_to_rsyslog_over_tcp_and_tls_while_it_goes_away_and_comes_back() -> anyhow::Result<()> {
    let mut rs = Rsyslog::start()?;
    let file = workspace_root()
        .join(".test-runs")
        .join(format!("events-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(file.parent().context("parent")?)?;
    let tcp_target = format!("syslog+tcp://127.0.0.1:{}", rs.tcp_port);
    let tls_target = format!("syslog+tls://127.0.0.1:{}", rs.tls_port);
    let p = Portico::start_with(Options {
        extra_args: vec![
            "--event-forward".into(),
            format!("{tcp_target},{tls_target},jsonl://{}", file.display()),
            "--event-forward-ca".into(),
            rs.ca_path.display().to_string(),
        ],
        ..Options::default()
    })?;
    let admin = Api::admin(&p).await?;
    let anon = Api::new(&p)?;
    assert_eq!(failed_login(&anon, "before-the-outage").await?, 401);
    let before = wait_forwarded(&rs, &admin, p.pid(), "before the outage").await?;
    assert!(before.len() >= 2, "the admin's login and the failed one: {before:?}");

    // The receiver goes away: both forwarders notice at once (it closes their connections).
    rs.stop();
    let start = Instant::now();
    while !(p
        .log()
        .lines()
        .any(|l| l.contains("Event receiver connection lost") && l.contains(&tcp_target))
        && p.log()
            .lines()
            .any(|l| l.contains("Event receiver connection lost") && l.contains(&tls_target)))
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the forwarders did not notice the receiver going away:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Requests are never held up by forwarding: the events wait in the forwarders' queues. (Changes that
    // emit an event and need no password hashing, which takes its own time in a debug build.)
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        admin
            .ok(
                Method::POST,
                "/api/v1/folders",
                Some(json!({ "name": format!("during-the-outage-{i}") })),
            )
            .await?;
        slowest = slowest.max(t0.elapsed());
        let t0 = Instant::now();
        events(&admin, "?limit=10").await?;
        slowest = slowest.max(t0.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?} while the receiver was down"
    );

    // It comes back on the same ports: the forwarders reconnect (backoff) and deliver what waited.
    rs.launch()?;
    assert_eq!(failed_login(&anon, "after-the-outage").await?, 401);
    let all = wait_forwarded(&rs, &admin, p.pid(), "after the outage").await?;
    let received = rs.received();
    for name in (0..20)
        .map(|i| format!("during-the-outage-{i}"))
        .chain(["after-the-outage".to_owned()])
    {
        for input in ["tcp", "tls"] {
            assert_eq!(
                received
                    .iter()
                    .filter(|r| r.input == input && r.msg.contains(&format!("\"{name}\"")))
                    .count(),
                1,
                "{name} over {input}"
            );
        }
    }
    assert!(
        !p.log().contains("Events dropped"),
        "nothing was dropped (the queues hold 10000 events):\n{}",
        p.log()
    );
    // The JSON lines got every event too.
    let text = std::fs::read_to_string(&file)?;
    let lines: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    for id in &all {
        assert_eq!(
            lines.iter().filter(|l| l["id"] == id.as_str()).count(),
            1,
            "{id} in the JSON lines"
        );
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}
