//! Session-token checks at the bridge, before the WebSocket upgrade: forged, tampered, expired, wrong
//! audience, wrong session, replayed (also on a second bridge process of the same fleet). None of them may
//! reach the target.

use portico_proto::codes::CloseCode;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use portico_proto::token::{SessionClaims, TokenSigner};
use portico_tests::client::{Api, Term, ws_connect, ws_with_token};
use portico_tests::peers::Sshd;
use portico_tests::portico::{Options, Portico};
use serde_json::{Value, json};

use crate::ssh_connection;

/// A TCP listener that only counts connection attempts: the "target" that must never be contacted.
struct Tripwire {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Tripwire {
    fn start() -> anyhow::Result<Tripwire> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if s.is_ok() {
                    h.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Ok(Tripwire { port, hits })
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn claims_of(token: &str) -> SessionClaims {
    let part = token.split('.').nth(1).expect("claims part");
    serde_json::from_slice(&B64.decode(part).expect("b64")).expect("claims json")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn expect_refused(ws_url: &str, cert: &str, token: &str, status: u16, needle: &str) -> anyhow::Result<()> {
    match ws_with_token(ws_url, cert, token).await? {
        Ok(_) => anyhow::bail!("upgrade accepted, expected {status} ({needle})"),
        Err(r) => {
            assert_eq!(r.status, status, "{needle}: {}", r.body);
            assert!(r.body.contains(needle), "expected {needle:?} in {}", r.body);
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_before_the_upgrade_and_never_reach_the_target() -> anyhow::Result<()> {
    let trip = Tripwire::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = api
        .create_connection(
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": trip.port, "username": "u", "password": "p" }),
        )
        .await?;
    let s = api.create_session(&conn).await?;
    let (ws_url, token) = (
        s["ws_url"].as_str().unwrap_or_default(),
        s["token"].as_str().unwrap_or_default(),
    );
    let real = claims_of(token);
    let key = TokenSigner::new(p.signing_key());

    // No token, garbage.
    match ws_connect(ws_url, &p.cert_sha256, &[]).await? {
        Err(r) => assert_eq!(r.status, 401),
        Ok(_) => anyhow::bail!("upgrade without a token"),
    }
    expect_refused(ws_url, &p.cert_sha256, "not.a.token", 401, "malformed token").await?;
    // Forged: signed by another key.
    let forger = TokenSigner::new(ed25519_dalek::SigningKey::from_bytes(&[42; 32]));
    expect_refused(ws_url, &p.cert_sha256, &forger.sign(&real), 401, "unknown key").await?;
    // Tampered: claims changed after signing.
    let mut other = real.clone();
    other.dst_port = 1;
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(serde_json::to_vec(&other)?), parts[2]);
    expect_refused(ws_url, &p.cert_sha256, &tampered, 401, "signature is invalid").await?;
    // Expired (signed with the real key).
    let mut expired = real.clone();
    (expired.iat, expired.nbf, expired.exp) = (now() - 200, now() - 200, now() - 150);
    expect_refused(ws_url, &p.cert_sha256, &key.sign(&expired), 401, "expired").await?;
    // Too long-lived.
    let mut long = real.clone();
    long.exp = now() + 3600;
    expect_refused(ws_url, &p.cert_sha256, &key.sign(&long), 401, "lifetime").await?;
    // Wrong audience (another bridge pool).
    let mut aud = real.clone();
    aud.aud = "zone:elsewhere".into();
    expect_refused(ws_url, &p.cert_sha256, &key.sign(&aud), 403, "another bridge pool").await?;
    // Session binding: the token of one session used for another session id.
    let s2 = api.create_session(&conn).await?;
    let other_url = s2["ws_url"].as_str().unwrap_or_default();
    expect_refused(other_url, &p.cert_sha256, token, 403, "another session").await?;

    assert_eq!(trip.hits(), 0, "a refused token reached the target");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_used_token_is_refused_by_every_bridge_of_the_fleet() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    // Split topology: one webapp, two bridge processes, one database.
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let bridge_a = Portico::start_with(web.bridge_options("bridge-a"))?;
    let bridge_b = Portico::start_with(web.bridge_options("bridge-b"))?;
    let api = Api::admin(&web).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    let s = api.create_session(&conn).await?;
    let id = s["session_id"].as_str().unwrap_or_default();
    let token = s["token"].as_str().unwrap_or_default();
    let url_a = format!("{}/bridge/v1/ws?session={id}", bridge_a.ws_base());
    let url_b = format!("{}/bridge/v1/ws?session={id}", bridge_b.ws_base());

    let ws = ws_with_token(&url_a, &bridge_a.cert_sha256, token)
        .await?
        .map_err(|r| anyhow::anyhow!("first use refused: {r:?}"))?;
    let mut t = Term::new(ws);
    t.connected().await?;
    t.input("echo split-ok-$((2+5))\r").await?;
    t.until("output via bridge a", Duration::from_secs(10), |t| {
        t.text().contains("split-ok-7")
    })
    .await?;

    expect_refused(&url_b, &bridge_b.cert_sha256, token, 403, "token already used").await?;
    expect_refused(&url_a, &bridge_a.cert_sha256, token, 403, "token already used").await?;

    // The session is owned by bridge A, and a DELETE on the webapp reaches it.
    let row: Value = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    let bridges: Value = api.ok(reqwest::Method::GET, "/api/v1/bridges", None).await?;
    let owner = bridges
        .as_array()
        .and_then(|b| b.iter().find(|b| b["id"] == row["bridge_id"]))
        .map(|b| b["name"].clone());
    assert_eq!(owner, Some(json!("bridge-a")), "{row} {bridges}");
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{id}"), None)
        .await?;
    let closed = t.closed_within(Duration::from_secs(3)).await?;
    assert_eq!(closed.map(|c| c.code), Some(CloseCode::Ended));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_with_a_wrong_node_credential_gets_nothing() -> anyhow::Result<()> {
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let mut opts = web.bridge_options("bridge-x");
    opts.node_secret = "wrong-node-secret-0000".into();
    let bridge = Portico::start_with(opts)?;
    let api = Api::admin(&web).await?;
    let conn = api
        .create_connection(
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "u", "password": "p" }),
        )
        .await?;
    let s = api.create_session(&conn).await?;
    let url = format!(
        "{}/bridge/v1/ws?session={}",
        bridge.ws_base(),
        s["session_id"].as_str().unwrap_or_default()
    );
    // Without the token keys it cannot verify anything.
    match ws_with_token(&url, &bridge.cert_sha256, s["token"].as_str().unwrap_or_default()).await? {
        Ok(_) => anyhow::bail!("bridge accepted a token without valid node credentials"),
        Err(r) => assert_eq!(r.status, 401, "{}", r.body),
    }
    // And the internal API refuses it directly.
    let mut raw = Api::new(&web)?;
    raw.bearer = Some("wrong-node-secret-0000".into());
    let (status, body) = raw
        .request(reqwest::Method::GET, "/internal/v1/token-keys", None)
        .await?;
    assert_eq!(status, 401, "{body}");
    Ok(())
}
