//! The event pipeline benchmark (`portico-bench events`): session starts at a steady rate (`--rate` per
//! minute, default 200, for `--minutes`, default 10) against the all-in-one binary, once with the events'
//! retention at 0 and once at 14 days, both forwarding to a syslog receiver over TCP (in this process:
//! octet-counted frames, the event's `at` against the arrival time). Each start is `POST /api/v1/sessions`
//! and the WebSocket upgrade (the bridge claims the token); the target is a closed port, so the session
//! ends at once with a target error: created, claimed, ended and closed, four events per start.
//! Reports the API's latency for the starts, the forwarding lag, and the database's growth.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_tests::client::{Api, ws_with_token};
use portico_tests::portico::{Options, Portico};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::Args;

pub const HEADER: &str = "| retention (days) | session starts | start p50 (ms) | start p99 (ms) | events forwarded | forwarding lag p50 / p99 / max (ms) | events stored | database growth (MiB) | dropped |\n|---|---|---|---|---|---|---|---|---|";

fn now_ms() -> i64 {
    portico_webapp::events::now_ms()
}

/// Accept syslog connections and record, for every event, how long after its `at` it arrived.
async fn receiver(listener: tokio::net::TcpListener, lags: Arc<Mutex<Vec<i64>>>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let lags = lags.clone();
        tokio::spawn(async move {
            let mut r = BufReader::new(tcp);
            loop {
                let mut len = Vec::new();
                match r.read_until(b' ', &mut len).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let Some(n) = std::str::from_utf8(&len)
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                else {
                    return;
                };
                let mut msg = vec![0; n];
                if r.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let arrived = now_ms();
                let text = String::from_utf8_lossy(&msg);
                let at = text
                    .find('\u{feff}')
                    .and_then(|i| serde_json::from_str::<Value>(&text[i + '\u{feff}'.len_utf8()..]).ok())
                    .and_then(|ev| ev["at"].as_i64());
                if let (Some(at), Ok(mut l)) = (at, lags.lock()) {
                    l.push(arrived - at);
                }
            }
        });
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The SQLite database's size (with its write-ahead log), bytes.
fn db_size(p: &Portico) -> u64 {
    ["portico.db", "portico.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(p.data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

async fn one(args: &Args, retention_days: u64) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let lags = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(receiver(listener, lags.clone()));
    let p = Portico::start_with(Options {
        extra_args: vec![
            "--event-retention-days".into(),
            retention_days.to_string(),
            "--event-forward".into(),
            format!("syslog+tcp://127.0.0.1:{port}"),
        ],
        ..Options::default()
    })?;
    let api = Arc::new(Api::admin(&p).await?);
    let closed = portico_tests::peers::free_port();
    let conn = api
        .create_connection(
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": closed, "username": "u", "password": "p" }),
        )
        .await?;
    let size_before = db_size(&p);
    let every = Duration::from_secs_f64(60.0 / f64::from(args.rate.max(1)));
    let total = args.rate as usize * args.minutes as usize;
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    eprintln!("  retention {retention_days}: {total} session starts, one every {every:?}");
    for i in 0..total {
        tick.tick().await;
        let (api, conn, latencies, cert) = (api.clone(), conn.clone(), latencies.clone(), p.cert_sha256.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let s = api.create_session(&conn).await?;
            let took = t0.elapsed();
            if let Ok(mut l) = latencies.lock() {
                l.push(took.as_secs_f64() * 1000.0);
            }
            let upgraded = ws_with_token(
                s["ws_url"].as_str().unwrap_or_default(),
                &cert,
                s["token"].as_str().unwrap_or_default(),
            )
            .await?;
            drop(upgraded);
            anyhow::Ok(())
        }));
        if i % 200 == 199 {
            eprintln!("    {} starts", i + 1);
        }
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    // Let the last sessions end and their events drain (bounded).
    let expected = total * 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    while lags.lock().map(|l| l.len()).unwrap_or(0) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let size_after = db_size(&p);
    let stored = api
        .http
        .get(format!("{}/api/v1/events?limit=1", api.base))
        .send()
        .await?
        .headers()
        .get("x-total-count")
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(-1);
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let mut lag: Vec<f64> = lags
        .lock()
        .map(|l| l.iter().map(|x| *x as f64).collect())
        .unwrap_or_default();
    lag.sort_by(f64::total_cmp);
    let dropped = p.log().lines().filter(|l| l.contains("Events dropped")).count();
    Ok(format!(
        "| {retention_days} | {total} ({failed} failed) | {:.1} | {:.1} | {} | {:.0} / {:.0} / {:.0} | {stored} | {:.1} | {} |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lag.len(),
        percentile(&lag, 0.5),
        percentile(&lag, 0.99),
        lag.last().copied().unwrap_or(0.0),
        (size_after as f64 - size_before as f64) / (1024.0 * 1024.0),
        if dropped == 0 {
            "none".to_owned()
        } else {
            format!("{dropped} log lines")
        },
    ))
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for retention in [0, 14] {
        rows.push(one(args, retention).await?);
    }
    Ok(rows)
}
