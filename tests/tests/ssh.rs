//! SSH through the bridge against a real OpenSSH sshd: auth modes, host-key policy, errors, session end,
//! reattach, limits.

use portico_proto::codes::CloseCode;
use std::time::{Duration, Instant};

use portico_proto::wire::{self, ClientMsg};
use portico_tests::client::{Api, Term, ws_connect};
use portico_tests::peers::{Sshd, free_port};
use portico_tests::portico::{Options, Portico};
use serde_json::json;

use crate::{marker_path, open_term, password_fixture, ssh_connection};

#[tokio::test(flavor = "multi_thread")]
async fn password_login_runs_a_command_on_the_machine() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = ssh_connection(
        &api,
        &sshd,
        json!({ "password": sshd.user.password, "host_key_fingerprint": sshd.host_key_fingerprint }),
    )
    .await?;
    let (_, mut t) = open_term(&p, &api, &conn).await?;
    t.connected().await?;
    let file = marker_path("pw");
    t.input(&format!("echo written-by-$(whoami) > {file}; echo done-$((40+2))\r"))
        .await?;
    t.until("command output", Duration::from_secs(15), |t| {
        t.text().contains("done-42")
    })
    .await?;
    let content = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_file(&file);
    assert_eq!(content.trim(), format!("written-by-{}", sshd.user.name));
    // UTF-8 both ways.
    t.input("echo 'grüße ✓'\r").await?;
    t.until("utf-8 echo", Duration::from_secs(10), |t| {
        t.text().matches("grüße ✓").count() >= 2
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn key_login_and_resize_reach_the_pty() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "private_key": sshd.client_private_key })).await?;
    let (_, mut t) = open_term(&p, &api, &conn).await?;
    t.connected().await?;
    t.send(ClientMsg::Resize {
        cols: 132,
        rows: 43,
        width_px: 1000,
        height_px: 700,
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.input("echo size=$(stty size | tr ' ' x)\r").await?;
    t.until("stty size", Duration::from_secs(15), |t| {
        t.text().contains("size=43x132")
    })
    .await?;
    // Trust on first use: the connection had no pinned key, now it has the server's.
    let c = api
        .ok(reqwest::Method::GET, &format!("/api/v1/connections/{conn}"), None)
        .await?;
    assert_eq!(
        c["host_key_fingerprint"].as_str(),
        Some(sshd.host_key_fingerprint.as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_a_clear_error() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": "not-the-password" })).await?;
    let (_, mut t) = open_term(&p, &api, &conn).await?;
    let closed = t
        .closed_within(Duration::from_secs(30))
        .await?
        .expect("a CLOSED message");
    assert_eq!(closed.code, CloseCode::AuthFailed);
    let err = t.errors.first().expect("an ERROR message");
    assert!(err.fatal && err.message.contains("authentication failed"), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_host_key_is_refused() -> anyhow::Result<()> {
    let mut sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let pinned = sshd.host_key_fingerprint.clone();
    let conn = ssh_connection(
        &api,
        &sshd,
        json!({ "password": sshd.user.password, "host_key_fingerprint": pinned }),
    )
    .await?;
    sshd.restart_with_new_host_key()?;
    assert_ne!(sshd.host_key_fingerprint, pinned);
    let (_, mut t) = open_term(&p, &api, &conn).await?;
    let closed = t
        .closed_within(Duration::from_secs(20))
        .await?
        .expect("a CLOSED message");
    assert_eq!(closed.code, CloseCode::HostKeyMismatch);
    let err = &t.errors[0];
    assert!(
        err.message.contains("host key changed") && err.message.contains(&sshd.host_key_fingerprint),
        "{err:?}"
    );
    // No login happened: the session never reported "connected".
    assert!(!t.statuses.iter().any(|s| s.state == "connected"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_target_is_a_clear_error() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let port = free_port();
    let conn = api
        .create_connection(
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": port, "username": "nobody", "password": "x" }),
        )
        .await?;
    let (_, mut t) = open_term(&p, &api, &conn).await?;
    let closed = t
        .closed_within(Duration::from_secs(20))
        .await?
        .expect("a CLOSED message");
    assert_eq!(closed.code, CloseCode::Unreachable);
    assert!(
        t.errors[0].message.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{:?}",
        t.errors
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_closes_the_terminal_within_two_seconds() -> anyhow::Result<()> {
    let (_sshd, p, api, conn) = password_fixture().await?;
    let (s, mut t) = open_term(&p, &api, &conn).await?;
    t.connected().await?;
    let id = s["session_id"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    let closed = t.closed_within(Duration::from_secs(5)).await?;
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(closed.map(|c| c.code), Some(CloseCode::Ended));
    let row = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    assert_eq!(row["state"], "ended");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reattach_within_grace_gets_the_screen_and_the_same_shell() -> anyhow::Result<()> {
    let (_sshd, p, api, conn) = password_fixture().await?;
    let (s, mut t) = open_term(&p, &api, &conn).await?;
    t.connected().await?;
    t.input("echo pid=$$; echo before-$((3*3))-drop\r").await?;
    t.until("marker", Duration::from_secs(10), |t| {
        t.text().contains("before-9-drop")
    })
    .await?;
    // The output holds escape sequences (bracketed paste); take the digits after the last "pid=".
    let pid_of = |text: &str| {
        text.rsplit("pid=")
            .next()
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
            .filter(|p| !p.is_empty())
    };
    let pid = pid_of(&t.text()).expect("pid line");
    let resume = t.hello.as_ref().expect("hello").resume_token.clone();
    drop(t); // The browser vanishes without a DISCONNECT.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ws_url = s["ws_url"].as_str().unwrap_or_default();
    let ws = ws_connect(ws_url, &p.cert_sha256, &[format!("{}{resume}", wire::RESUME_PREFIX)])
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    let mut t = Term::new(ws);
    t.until("repaint", Duration::from_secs(10), |t| {
        t.text().contains("before-9-drop")
    })
    .await?;
    assert!(t.hello.as_ref().is_some_and(|h| h.reattached));
    t.input("echo again-pid=$$\r").await?;
    t.until("pid again", Duration::from_secs(10), |t| {
        t.text().contains(&format!("again-pid={pid}"))
    })
    .await?;
    // The old resume token was rotated away.
    let stale = ws_connect(ws_url, &p.cert_sha256, &[format!("{}{resume}", wire::RESUME_PREFIX)]).await?;
    assert_eq!(stale.err().map(|r| r.status), Some(401));
    // The session ends while the browser is away: coming back with its token, it hears why (a stale or
    // forged token still gets nothing).
    let current = t.hello.as_ref().expect("hello").resume_token.clone();
    drop(t);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sid = s["session_id"].as_str().unwrap_or_default();
    api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stale = ws_connect(ws_url, &p.cert_sha256, &[format!("{}{resume}", wire::RESUME_PREFIX)]).await?;
    assert_eq!(stale.err().map(|r| r.status), Some(401));
    let ws = ws_connect(ws_url, &p.cert_sha256, &[format!("{}{current}", wire::RESUME_PREFIX)])
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    let mut t = Term::new(ws);
    let closed = t.closed_within(Duration::from_secs(5)).await?.expect("a close message");
    assert_eq!(closed.code, CloseCode::Ended, "{closed:?}");
    assert!(closed.reason.contains("ended by the user"), "{closed:?}");
    assert!(t.hello.is_none(), "no session to attach to");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_limit_and_remote_exit_end_the_session() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start_with(Options {
        extra_env: vec![("PORTICO_SESSION_IDLE_SECS".into(), "3".into())],
        ..Options::default()
    })?;
    let api = Api::admin(&p).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let (_, mut idle) = open_term(&p, &api, &conn).await?;
    idle.connected().await?;
    let closed = idle.closed_within(Duration::from_secs(10)).await?;
    assert_eq!(closed.map(|c| c.code), Some(CloseCode::IdleTimeout));

    let (_, mut t) = open_term(&p, &api, &conn).await?;
    t.connected().await?;
    t.input("exit 3\r").await?;
    let closed = t.closed_within(Duration::from_secs(10)).await?.expect("closed");
    assert_eq!(closed.code, CloseCode::RemoteClosed);
    assert!(closed.reason.contains("status 3"), "{closed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn maximum_duration_ends_even_a_busy_session() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start_with(Options {
        extra_env: vec![
            ("PORTICO_SESSION_MAX_SECS".into(), "4".into()),
            ("PORTICO_SESSION_IDLE_SECS".into(), "0".into()),
        ],
        ..Options::default()
    })?;
    let api = Api::admin(&p).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let (_, mut t) = open_term(&p, &api, &conn).await?;
    let started = Instant::now();
    t.connected().await?;
    // Keep typing: the limit is on duration, not on idleness. Typing stops a second before the limit:
    // a write that meets the closed socket makes the kernel drop the CLOSED message not yet read.
    while t.closed.is_none() && started.elapsed() < Duration::from_secs(12) {
        if started.elapsed() < Duration::from_secs(3) {
            let _ = t.input("true\r").await;
        }
        // The bridge closes the socket right after CLOSED; typing into it then may read as a reset.
        if !matches!(t.pump(Duration::from_millis(500)).await, Ok(true)) {
            break;
        }
    }
    let closed = t.closed.clone().expect("the session was closed");
    assert_eq!(closed.code, CloseCode::MaxDuration, "{closed:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}
