//! The upgrade benchmark (`portico-bench upgrades`): N WebSocket upgrades started at once against one bridge
//! (all-in-one), each with its own fresh session token, from N distinct loopback addresses (so the
//! per-client connection cap does not apply). Reports the time from the TCP connect to the `101 Switching
//! Protocols` of every upgrade: TCP, TLS, token verification, the fleet-wide claim in the database and the
//! upgrade itself. The sessions' target is a closed port, so nothing is relayed after the upgrade.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_proto::wire;
use portico_tests::client::Api;
use portico_tests::portico::Portico;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::Args;

pub const HEADER: &str = "| concurrent upgrades | p50 to 101 (ms) | p99 (ms) | max (ms) | all done (ms) | refused |\n|---|---|---|---|---|---|";

/// The i-th client address: 127.0.(20 + i / 250).(1 + i % 250).
fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 20 + (i / 250) as u8, 1 + (i % 250) as u8])
}

async fn upgrade(p: &Portico, url: &str, token: &str, from: IpAddr) -> anyhow::Result<Duration> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("{}, {}{token}", wire::SUBPROTOCOL, wire::TOKEN_PREFIX))?,
    );
    let addr: SocketAddr = p.url.trim_start_matches("https://").parse()?;
    let tls = portico_bridge::control::client_tls_config(Some(&p.cert_sha256), None)?;
    let started = Instant::now();
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    let tcp = sock.connect(addr).await?;
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(req, tcp, None, Some(connector)).await?;
    let took = started.elapsed();
    drop(ws);
    Ok(took)
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = api
        .create_connection(
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": 1, "username": "u", "password": "p" }),
        )
        .await?;
    let mut rows = Vec::new();
    for &n in &args.upgrades {
        for repeat in 0..args.repeats {
            // Tokens live 60 s: mint them all first, then start every upgrade at once.
            let mut sessions = Vec::with_capacity(n);
            for _ in 0..n {
                let s = api.create_session(&conn).await?;
                let url = format!(
                    "{}/bridge/v1/ws?session={}",
                    p.ws_base(),
                    s["session_id"].as_str().unwrap_or_default()
                );
                sessions.push((url, s["token"].as_str().unwrap_or_default().to_owned()));
            }
            let started = Instant::now();
            let results = futures_util::future::join_all(sessions.iter().enumerate().map(|(i, (url, token))| {
                tokio::time::timeout(Duration::from_secs(60), upgrade(&p, url, token, source(i)))
            }))
            .await;
            let all_done = started.elapsed();
            let mut times: Vec<Duration> = Vec::new();
            let mut refused = 0;
            for r in results {
                match r {
                    Ok(Ok(t)) => times.push(t),
                    Ok(Err(e)) => {
                        refused += 1;
                        if refused == 1 {
                            eprintln!("first refused upgrade: {e:#}");
                        }
                    }
                    Err(_) => refused += 1,
                }
            }
            times.sort();
            let pct = |q: f64| -> f64 {
                times
                    .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
                    .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
            };
            eprintln!(
                "upgrades n={n} repeat {repeat}: p50 {:.1} ms, p99 {:.1} ms",
                pct(0.5),
                pct(0.99)
            );
            rows.push(format!(
                "| {n} | {:.1} | {:.1} | {:.1} | {:.0} | {refused} |",
                pct(0.5),
                pct(0.99),
                pct(1.0),
                all_done.as_secs_f64() * 1000.0
            ));
        }
    }
    Ok(rows)
}
