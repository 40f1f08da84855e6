//! Attacks on the webapp's trust boundaries against the real binary: password guessing (in parallel, from
//! one address or many, directly or through a real HAProxy), lockouts of the owner, bursts of argon2,
//! stale logins and keys, deleted users and connections, hostile user names, slow and excess connections,
//! and files at rest.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use portico_tests::client::{Api, Term, attach, unclaimed_token_is_refused, ws_with_token};
use portico_tests::peers::{Haproxy, Sshd};
use portico_tests::portico::{Options, Portico};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An HTTP client trusting `p`'s certificate whose connections come from `source`.
fn client_from(p: &Portico, source: Option<IpAddr>) -> anyhow::Result<reqwest::Client> {
    let tls = portico_bridge::control::client_tls_config(Some(&p.cert_sha256), None)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .cookie_store(true)
        .local_address(source)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// One login attempt: the status, the `Retry-After` header and the body.
async fn login(
    http: &reqwest::Client,
    base: &str,
    user: impl AsRef<str>,
    password: impl AsRef<str>,
    xff: Option<&str>,
) -> anyhow::Result<(u16, Option<u64>, Value)> {
    let mut req = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": user.as_ref(), "password": password.as_ref() }));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    let res = req.send().await?;
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok((status, retry, res.json().await.unwrap_or(Value::Null)))
}

fn count(results: &[(u16, Option<u64>, Value)], status: u16) -> usize {
    results.iter().filter(|r| r.0 == status).count()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Item 1: the attempt is counted before the password is verified, so parallel guesses cannot all be
/// verified: from one address at most the per-address-and-user limit, from 40 at most the per-user limit.
#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_are_verified_only_up_to_the_limit() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    admin.create_user("bob", "user").await?;
    let http = client_from(&p, Some(ip("127.0.0.1")))?;
    let one = join_all((0..40).map(|i| login(&http, &p.url, "admin", format!("guess-{i}"), None))).await;
    let one: Vec<_> = one.into_iter().collect::<anyhow::Result<_>>()?;
    assert!(
        count(&one, 401) <= 5,
        "verified {} of 40 parallel guesses",
        count(&one, 401)
    );
    assert_eq!(count(&one, 401) + count(&one, 429), 40, "{one:?}");
    for r in one.iter().filter(|r| r.0 == 429) {
        assert!(r.1.is_some_and(|s| (1..=300).contains(&s)), "Retry-After {:?}", r.1);
        assert_eq!(r.2["error"], "too many attempts, try again later");
    }
    let clients: Vec<reqwest::Client> = (1..=40)
        .map(|i| client_from(&p, Some(ip(&format!("127.0.3.{i}")))))
        .collect::<anyhow::Result<_>>()?;
    let many = join_all(
        clients
            .iter()
            .enumerate()
            .map(|(i, c)| login(c, &p.url, "bob", format!("g{i}"), None)),
    )
    .await;
    let many: Vec<_> = many.into_iter().collect::<anyhow::Result<_>>()?;
    assert!(
        count(&many, 401) <= 10,
        "verified {} of 40 guesses from 40 addresses",
        count(&many, 401)
    );
    assert_eq!(count(&many, 401) + count(&many, 429), 40, "{many:?}");
    eprintln!(
        "40 parallel guesses: one address {} verified / {} refused; 40 addresses {} verified / {} refused",
        count(&one, 401),
        count(&one, 429),
        count(&many, 401),
        count(&many, 429)
    );
    Ok(())
}

/// Item 2: other people's failures never lock the owner out: 100 failures from one address leave her
/// login from another address alone, and a browser she logged in with before keeps working even when
/// failures from many addresses have filled her user name's bucket.
#[tokio::test(flavor = "multi_thread")]
async fn the_owner_is_not_locked_out_by_others() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    admin.create_user("alice", "user").await?;
    let attacker = client_from(&p, Some(ip("127.0.0.3")))?;
    let mut results = Vec::new();
    for batch in 0..5 {
        let r = join_all((0..20).map(|i| login(&attacker, &p.url, "alice", format!("x{batch}-{i}"), None))).await;
        results.extend(r.into_iter().collect::<anyhow::Result<Vec<_>>>()?);
    }
    assert!(count(&results, 429) >= 95, "{} of 100 refused", count(&results, 429));
    let owner = client_from(&p, Some(ip("127.0.0.4")))?;
    let (s, _, v) = login(&owner, &p.url, "alice", "alice-password-1", None).await?;
    assert_eq!(s, 200, "the owner from another address: {v}");
    // Failures from ten more addresses fill the user name's own bucket...
    for i in 1..=12 {
        let c = client_from(&p, Some(ip(&format!("127.0.5.{i}"))))?;
        login(&c, &p.url, "alice", "wrong", None).await?;
    }
    let fresh = client_from(&p, Some(ip("127.0.0.6")))?;
    assert_eq!(
        login(&fresh, &p.url, "alice", "alice-password-1", None).await?.0,
        429,
        "a browser never seen before waits for the distributed guessing to stop"
    );
    // ...but the browser she logged in with before has a bucket of its own (its device cookie).
    let (s, _, v) = login(&owner, &p.url, "alice", "alice-password-1", None).await?;
    assert_eq!(s, 200, "the owner's known browser: {v}");
    Ok(())
}

/// Item 2 behind a load balancer: a real HAProxy sends the client's address with the PROXY protocol v2,
/// and X-Forwarded-For counts only from a trusted proxy (an untrusted client cannot rotate it to escape).
#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_name_the_real_client() -> anyhow::Result<()> {
    let p = Portico::start_with(Options {
        extra_args: vec!["--trusted-proxies".into(), "127.0.0.1/32".into()],
        ..Options::default()
    })?;
    let admin = Api::admin(&p).await?;
    admin.create_user("alice", "user").await?;
    let backend: SocketAddr = p.url.trim_start_matches("https://").parse()?;
    let lb = Haproxy::send_proxy_v2(backend)?;
    let via_lb = format!("https://127.0.0.1:{}", lb.port);
    let attacker = client_from(&p, Some(ip("127.0.0.3")))?;
    let owner = client_from(&p, Some(ip("127.0.0.4")))?;
    let mut refused = 0;
    for i in 0..20 {
        if login(&attacker, &via_lb, "alice", &format!("x{i}"), None).await?.0 == 429 {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 15,
        "the attacker behind the load balancer is limited by its own address"
    );
    let (s, _, v) = login(&owner, &via_lb, "alice", "alice-password-1", None).await?;
    assert_eq!(s, 200, "the owner behind the same load balancer: {v}");
    // X-Forwarded-For from the trusted proxy address names the client.
    let direct = client_from(&p, Some(ip("127.0.0.1")))?;
    for i in 0..5 {
        let r = login(&direct, &p.url, "alice", &format!("y{i}"), Some("198.51.100.1")).await?;
        assert_eq!(r.0, 401);
    }
    assert_eq!(login(&direct, &p.url, "alice", "z", Some("198.51.100.1")).await?.0, 429);
    let r = login(&direct, &p.url, "alice", "alice-password-1", Some("198.51.100.2")).await?;
    assert_eq!(r.0, 200, "{r:?}");
    // An untrusted client cannot pick its address with X-Forwarded-For.
    let spoofer = client_from(&p, Some(ip("127.0.0.2")))?;
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            login(&spoofer, &p.url, "alice", "w", Some(&format!("203.0.113.{i}")))
                .await?
                .0,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    Ok(())
}

/// Item 3: password hashing is bounded: 200 parallel logins (each verified: distinct names, distinct
/// addresses) raise memory by less than 100 MiB, the database stays available, and what does not fit the
/// queue gets 503 with Retry-After. Changing a password is throttled like a login.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_logins_is_bounded() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    // Warm up: the dummy hash for unknown users is computed once.
    login(&client_from(&p, None)?, &p.url, "nobody", "x", None).await?;
    // Reset the peak (VmHWM) so that it measures the burst alone.
    std::fs::write(format!("/proc/{}/clear_refs", p.pid()), "5")?;
    let (rss_before, hwm_before) = p.memory_kib()?;
    let clients: Vec<reqwest::Client> = (0..200)
        .map(|i| client_from(&p, Some(ip(&format!("127.0.{}.{}", 10 + i / 200, 1 + i % 200)))))
        .collect::<anyhow::Result<_>>()?;
    let base = p.url.clone();
    let burst = tokio::spawn(async move {
        join_all(
            clients
                .iter()
                .enumerate()
                .map(|(i, c)| login(c, &base, format!("u{i}"), "pw", None)),
        )
        .await
    });
    // The health check (a database round trip) answers all through the burst.
    let mut checks = 0;
    while !burst.is_finished() {
        let (s, v) = admin.request(Method::GET, "/api/__healthcheck", None).await?;
        assert_eq!(s, 200, "the database stays available: {v}");
        checks += 1;
    }
    let results: Vec<_> = burst.await?.into_iter().collect::<anyhow::Result<_>>()?;
    assert!(checks > 0);
    let (rss_after, peak) = p.memory_kib()?;
    let grew_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "200 parallel logins: {} verified (401), {} busy (503); RSS {rss_before} KiB (peak {hwm_before}) -> {rss_after} KiB, peak {peak} KiB: grew {grew_mib} MiB",
        count(&results, 401),
        count(&results, 503)
    );
    assert!(grew_mib < 100, "peak RSS grew {grew_mib} MiB");
    assert_eq!(count(&results, 401) + count(&results, 503), 200, "{results:?}");
    assert!(count(&results, 401) >= 2, "some were verified");
    for r in results.iter().filter(|r| r.0 == 503) {
        assert_eq!(
            (r.1, r.2["error"].as_str()),
            (Some(1), Some("server busy, try again later"))
        );
    }
    assert!(!p.log().contains(portico_webapp::error::DATABASE_UNAVAILABLE));
    // POST /api/v1/auth/password checks the current password under the same throttle.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let body = json!({ "current_password": "wrong-wrong", "new_password": "new-pass-123" });
        statuses.push(
            admin
                .request(Method::POST, "/api/v1/auth/password", Some(body))
                .await?
                .0,
        );
    }
    assert_eq!(statuses, [403, 403, 403, 403, 403, 429]);
    Ok(())
}

/// Item 4: a password change ends the user's other logins; API keys have a scope and an expiry, and a key
/// without the admin scope cannot mint keys.
#[tokio::test(flavor = "multi_thread")]
async fn password_change_ends_other_logins_and_keys_are_scoped() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let a = Api::admin(&p).await?;
    let b = Api::admin(&p).await?;
    let body = json!({ "current_password": p.admin_password, "new_password": "brand-new-pass" });
    let v = a.ok(Method::POST, "/api/v1/auth/password", Some(body)).await?;
    assert_eq!(v["other_logins_ended"], 1);
    assert_eq!(
        b.request(Method::GET, "/api/v1/auth/me", None).await?.0,
        401,
        "the other login ended"
    );
    assert_eq!(
        a.request(Method::GET, "/api/v1/auth/me", None).await?.0,
        200,
        "this one stays"
    );

    let conn = a
        .create_connection(
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": 1, "username": "x", "password": "p" }),
        )
        .await?;
    let mut keys = Vec::new();
    for scope in [None, Some("read"), Some("admin")] {
        let mut body = json!({ "name": format!("k-{scope:?}") });
        if let Some(s) = scope {
            body["scope"] = json!(s);
        }
        let v = a.ok(Method::POST, "/api/v1/api-keys", Some(body)).await?;
        let expires = v["expires_at"].as_i64().unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
        assert!((expires - now - 90 * 86_400).abs() < 120, "default expiry 90 days: {v}");
        let mut api = Api::new(&p)?;
        api.bearer = v["key"].as_str().map(str::to_owned);
        keys.push((v["scope"].as_str().unwrap_or_default().to_owned(), api));
    }
    let mint = json!({ "name": "minted" });
    let start = json!({ "connection_id": conn });
    let (sessions, read, full) = (&keys[0], &keys[1], &keys[2]);
    assert_eq!(sessions.0, "sessions", "the default scope");
    assert_eq!(
        sessions.1.request(Method::GET, "/api/v1/connections", None).await?.0,
        200
    );
    assert_eq!(
        sessions
            .1
            .request(Method::POST, "/api/v1/sessions", Some(start.clone()))
            .await?
            .0,
        201
    );
    let (s, v) = sessions
        .1
        .request(Method::POST, "/api/v1/api-keys", Some(mint.clone()))
        .await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("this api key's scope (sessions) does not allow this request"))
    );
    assert_eq!(
        sessions
            .1
            .request(Method::DELETE, &format!("/api/v1/connections/{conn}"), None)
            .await?
            .0,
        403
    );
    assert_eq!(read.1.request(Method::GET, "/api/v1/sessions", None).await?.0, 200);
    assert_eq!(
        read.1.request(Method::POST, "/api/v1/sessions", Some(start)).await?.0,
        403
    );
    assert_eq!(
        full.1.request(Method::POST, "/api/v1/api-keys", Some(mint)).await?.0,
        201
    );
    for bad in [
        json!({ "name": "x", "scope": "root" }),
        json!({ "name": "x", "expires_in_days": 0 }),
    ] {
        assert_eq!(a.request(Method::POST, "/api/v1/api-keys", Some(bad)).await?.0, 400);
    }
    Ok(())
}

/// Item 5: deleting a user or a connection ends its live sessions within 2 s and its unclaimed tokens no
/// longer open anything.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_or_connection_ends_its_sessions() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let conn = crate::ssh_connection(&admin, &sshd, json!({ "password": sshd.user.password })).await?;
    let uid = admin.create_user("carol", "user").await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{conn}/grants"),
            Some(json!({ "user_ids": [uid] })),
        )
        .await?;
    let mut carol = Api::new(&p)?;
    carol.login("carol", "carol-password-1").await?;
    let (_, ws) = attach(&p, &carol, &conn).await?;
    let mut live = Term::new(ws);
    live.connected().await?;
    let unclaimed = carol.create_session(&conn).await?;
    admin.ok(Method::DELETE, &format!("/api/v1/users/{uid}"), None).await?;
    let t = Instant::now();
    let closed = live.closed_within(Duration::from_secs(2)).await?;
    assert!(
        closed.is_some_and(|c| c.reason.contains("user was deleted")),
        "closed in {:?}",
        t.elapsed()
    );
    assert!(
        unclaimed_token_is_refused(&p, &unclaimed).await?,
        "a deleted user's unclaimed token is refused"
    );

    let (_, ws) = attach(&p, &admin, &conn).await?;
    let mut live = Term::new(ws);
    live.connected().await?;
    let unclaimed = admin.create_session(&conn).await?;
    admin
        .ok(Method::DELETE, &format!("/api/v1/connections/{conn}"), None)
        .await?;
    let closed = live.closed_within(Duration::from_secs(2)).await?;
    assert!(closed.is_some_and(|c| c.reason.contains("connection was deleted")));
    assert!(
        unclaimed_token_is_refused(&p, &unclaimed).await?,
        "a deleted connection's unclaimed token is refused"
    );
    Ok(())
}

/// Item 6: user names are capped, and what a client types never forges a log line.
#[tokio::test(flavor = "multi_thread")]
async fn user_names_are_capped_and_never_forge_log_lines() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let http = client_from(&p, None)?;
    let (s, _, v) = login(&http, &p.url, &"a".repeat(257), "x", None).await?;
    assert_eq!((s, v["error"].as_str()), (400, Some("username longer than 256 bytes")));
    let forged = "mallory\nFORGED-LINE level=info admin logged in\x1b[2J";
    assert_eq!(login(&http, &p.url, forged, "x", None).await?.0, 401);
    let api = Api::new(&p)?;
    // The failure is logged (wait for it), escaped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log().contains("Login failed") {
        anyhow::ensure!(Instant::now() < deadline, "no login failure logged:\n{}", p.log());
        api.request(Method::GET, "/api/__healthcheck", None).await?;
    }
    let log = p.log();
    assert!(!log.lines().any(|l| l.starts_with("FORGED-LINE")), "{log}");
    assert!(!log.contains('\x1b'), "raw escape sequences in the log");
    assert!(log.contains(r"mallory\nFORGED-LINE"), "{log}");
    Ok(())
}

/// Item 13: a connection that sends no complete request head is closed after the header timeout; one
/// client cannot hold more than its share of connections; SIGTERM lets requests finish and tells live
/// sessions before the process exits.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_excess_connections_are_cut() -> anyhow::Result<()> {
    let p = Portico::start_with(Options {
        extra_args: ["--header-timeout-secs", "2", "--max-connections-per-client", "8"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    })?;
    let addr: SocketAddr = p.url.trim_start_matches("https://").parse()?;
    let tls = portico_bridge::control::client_tls_config(Some(&p.cert_sha256), None)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let open = |source: &'static str| {
        let connector = connector.clone();
        async move {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip(source), 0))?;
            let tcp = sock.connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            anyhow::Ok(connector.connect(name, tcp).await?)
        }
    };
    // Half a request head, then silence; and a connection that sends nothing at all.
    let mut half = open("127.0.0.1").await?;
    half.write_all(b"GET /api/__healthcheck HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut silent = open("127.0.0.1").await?;
    let started = Instant::now();
    for (what, conn) in [("half a head", &mut half), ("nothing", &mut silent)] {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
        let closed = matches!(n, Ok(Ok(0)) | Ok(Err(_)))
            || matches!(n, Ok(Ok(n)) if String::from_utf8_lossy(&buf[..n]).contains("408"));
        assert!(closed, "a connection that sent {what} is still open: {n:?}");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "closed by the timeout, not at once: {took:?}"
    );

    // Eight connections from one address are its share; the ninth is closed at once, others still served.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(open("127.0.0.7").await?);
    }
    let refused = open("127.0.0.7").await;
    assert!(
        refused.is_err(),
        "the ninth connection of one client completes its TLS handshake"
    );
    let other = client_from(&p, Some(ip("127.0.0.8")))?;
    assert_eq!(
        other
            .get(format!("{}/api/__healthcheck", p.url))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_tells_live_sessions() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let mut p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let conn = crate::ssh_connection(&admin, &sshd, json!({ "password": sshd.user.password })).await?;
    let (_, ws) = attach(&p, &admin, &conn).await?;
    let mut live = Term::new(ws);
    live.connected().await?;
    // Sessions are told before the listener drains, so the process does not sit out the 10 s drain limit
    // waiting for WebSockets that nobody closes.
    let status = tokio::task::spawn_blocking(move || {
        let status = p.terminate(Duration::from_secs(8));
        (p, status)
    });
    let closed = live.closed_within(Duration::from_secs(20)).await?;
    let (p, status) = status.await?;
    assert!(status?.success(), "{}", p.log());
    assert!(
        closed
            .as_ref()
            .is_some_and(|c| c.reason == "the bridge is shutting down"),
        "{closed:?}"
    );
    Ok(())
}

/// Item 15: the data directory and everything secret in it are readable by the owner only.
#[tokio::test(flavor = "multi_thread")]
async fn data_at_rest_is_private() -> anyhow::Result<()> {
    let p = Portico::start()?;
    Api::admin(&p).await?; // Writes (a login session), so the WAL exists.
    let mode = |f: &str| -> anyhow::Result<u32> {
        let meta = std::fs::metadata(p.data_dir.join(f));
        Ok(anyhow::Context::with_context(meta, || {
            format!(
                "{f} in {:?}",
                std::fs::read_dir(&p.data_dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            )
        })?
        .permissions()
        .mode()
            & 0o777)
    };
    assert_eq!(mode("")?, 0o700, "data directory");
    for f in [
        "portico.db",
        "portico.db-wal",
        "portico.db-shm",
        "agent-registration.token",
        "tls/key.pem",
    ] {
        assert_eq!(mode(f)?, 0o600, "{f}");
    }
    Ok(())
}

/// Item 16: an update that omits the host-key fingerprint keeps the pin; clearing it is explicit.
#[tokio::test(flavor = "multi_thread")]
async fn omitting_the_fingerprint_keeps_the_pin() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let pin = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let base = json!({ "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "u" });
    let mut with_pin = base.clone();
    with_pin["host_key_fingerprint"] = json!(pin);
    let id = admin.create_connection(with_pin).await?;
    let path = format!("/api/v1/connections/{id}");
    let mut renamed = base.clone();
    renamed["name"] = json!("renamed");
    admin.ok(Method::PUT, &path, Some(renamed)).await?;
    let c = admin.ok(Method::GET, &path, None).await?;
    assert_eq!(
        (c["name"].as_str(), c["host_key_fingerprint"].as_str()),
        (Some("renamed"), Some(pin))
    );
    let mut cleared = base;
    cleared["host_key_fingerprint"] = Value::Null;
    admin.ok(Method::PUT, &path, Some(cleared)).await?;
    assert_eq!(
        admin.ok(Method::GET, &path, None).await?["host_key_fingerprint"],
        Value::Null
    );
    Ok(())
}

/// Item 11: the node secret only registers bridges; each bridge acts with its own credential and only on
/// the sessions it claimed, and an administrator can revoke one (its sessions end, its name cannot rejoin).
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_acts_only_on_its_own_sessions() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let bridge_a = Portico::start_with(web.bridge_options("bridge-a"))?;
    let admin = Api::admin(&web).await?;
    let conn = crate::ssh_connection(&admin, &sshd, json!({ "password": sshd.user.password })).await?;
    let s = admin.create_session(&conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    let url = format!("{}/bridge/v1/ws?session={sid}", bridge_a.ws_base());
    let ws = ws_with_token(&url, &bridge_a.cert_sha256, s["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
    let mut live = Term::new(ws);
    live.connected().await?;

    // The node secret alone no longer opens the bridge API.
    let mut raw = Api::new(&web)?;
    raw.bearer = Some(web.node_secret.clone());
    let end = json!({ "reason": "hijacked" });
    assert_eq!(
        raw.request(
            Method::POST,
            &format!("/internal/v1/sessions/{sid}/end"),
            Some(end.clone())
        )
        .await?
        .0,
        401
    );
    assert_eq!(raw.request(Method::GET, "/internal/v1/token-keys", None).await?.0, 401);
    // A second bridge registered with it gets an identity of its own, which owns none of bridge A's sessions.
    let (s, reg) = raw
        .request(
            Method::POST,
            "/internal/v1/bridges/register",
            Some(json!({ "name": "evil" })),
        )
        .await?;
    assert_eq!(s, 200, "{reg}");
    let mut evil = Api::new(&web)?;
    evil.bearer = reg["credential"].as_str().map(str::to_owned);
    assert_eq!(evil.request(Method::GET, "/internal/v1/token-keys", None).await?.0, 200);
    for (method, path, body) in [
        (
            Method::POST,
            format!("/internal/v1/sessions/{sid}/end"),
            Some(end.clone()),
        ),
        (
            Method::POST,
            format!("/internal/v1/sessions/{sid}/host-key"),
            Some(json!({ "fingerprint": "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU" })),
        ),
        (Method::GET, format!("/internal/v1/sessions/{sid}/workspace"), None),
    ] {
        let (status, v) = evil.request(method, &path, body).await?;
        assert_eq!(status, 404, "{path}: {v}");
    }
    let (_, synced) = evil
        .request(
            Method::POST,
            "/internal/v1/bridge/sync",
            Some(json!({ "bridge_id": "evil", "sessions": [sid] })),
        )
        .await?;
    assert_eq!(
        synced["ended"],
        json!([sid]),
        "another bridge's session does not exist for it"
    );
    let listed = admin.ok(Method::GET, "/api/v1/sessions", None).await?;
    assert!(listed.to_string().contains(&sid), "bridge A's session is still live");
    let mut guesser = Api::new(&web)?;
    guesser.bearer = Some("not-the-node-secret".into());
    let (s, _) = guesser
        .request(
            Method::POST,
            "/internal/v1/bridges/register",
            Some(json!({ "name": "guess" })),
        )
        .await?;
    assert_eq!(s, 401);

    // Revoking bridge A ends its session at once and keeps its name out.
    let bridges = admin.ok(Method::GET, "/api/v1/bridges", None).await?;
    let a = bridges
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "bridge-a" && b["live_sessions"] == 1))
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .ok_or_else(|| anyhow::anyhow!("bridge-a not listed: {bridges}"))?;
    admin.ok(Method::DELETE, &format!("/api/v1/bridges/{a}"), None).await?;
    let closed = live.closed_within(Duration::from_secs(5)).await?;
    assert!(closed.is_some(), "the revoked bridge's session is closed");
    let mut again = Api::new(&web)?;
    again.bearer = Some(web.node_secret.clone());
    let (s, v) = again
        .request(
            Method::POST,
            "/internal/v1/bridges/register",
            Some(json!({ "name": "bridge-a" })),
        )
        .await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("bridge \"bridge-a\" was revoked by an administrator"))
    );
    Ok(())
}
