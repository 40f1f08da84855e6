//! The database under the webapps, broken on purpose (issue 11, topology tests 3 and 4): the PostgreSQL
//! primary of a Patroni cluster killed under a steady write load (synchronous replication, HAProxy with
//! the shipped `deploy/haproxy/postgres.cfg` in front), and a plain PostgreSQL stopped for a minute. In both,
//! health checks follow within the windows, webapps recover without a restart, nothing
//! acknowledged is lost, and a live SSH session keeps echoing through its bridge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_tests::client::{Api, Term};
use portico_tests::lb::Haproxy;
use portico_tests::patroni::PatroniCluster;
use portico_tests::peers::{Postgres, Sshd};
use portico_tests::portico::{Options, Portico};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::ssh_connection;

/// The bound: health checks 503 within 5 s of the database going away, 200 within 5 s of its
/// return (promotion).
const WINDOW: Duration = Duration::from_secs(5);

/// `/api/__healthcheck` of one webapp, polled every 100 ms from its own task: every answer with the time
/// it arrived (0 for no answer).
struct HealthMonitor {
    name: String,
    samples: Arc<Mutex<Vec<(Instant, u16)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthMonitor {
    fn start(name: &str, webapp: &Portico) -> anyhow::Result<HealthMonitor> {
        let api = Api::new(webapp)?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let status = match tokio::time::timeout(
                    Duration::from_secs(3),
                    api.request(Method::GET, "/api/__healthcheck", None),
                )
                .await
                {
                    Ok(Ok((s, _))) => s,
                    _ => 0,
                };
                if let Ok(mut s) = out.lock() {
                    s.push((Instant::now(), status));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(HealthMonitor {
            name: name.to_owned(),
            samples,
            task,
        })
    }

    /// The first answer `status` that arrived after `since`.
    fn first(&self, status: u16, since: Instant) -> Option<Instant> {
        self.samples
            .lock()
            .ok()?
            .iter()
            .find(|(at, s)| *at > since && *s == status)
            .map(|(at, _)| *at)
    }

    /// Wait until an answer `status` arrived after `since`; how long after `since` it came.
    async fn wait(&self, status: u16, since: Instant, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.first(status, since) {
                return Ok(at - since);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{}: no health answer {status} within {timeout:?}; last answers {:?}",
                self.name,
                self.recent()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The statuses answered between `from` and `to`.
    fn between(&self, from: Instant, to: Instant) -> Vec<u16> {
        self.samples
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(at, _)| *at > from && *at < to)
                    .map(|(_, st)| *st)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn recent(&self) -> Vec<u16> {
        self.samples
            .lock()
            .map(|s| s.iter().rev().take(10).map(|(_, st)| *st).collect())
            .unwrap_or_default()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A command typed into the live session comes back.
async fn check_session(term: &mut Term, tag: &str) -> anyhow::Result<()> {
    term.check_echo(tag).await
}

/// Start a session on `conn` through `api` and attach to it on `bridge`.
async fn open_session(api: &Api, bridge: &Portico, conn: &str) -> anyhow::Result<Term> {
    Ok(portico_tests::client::open_via(bridge, api, conn).await?.1)
}

/// Two webapps and a bridge on one database, with a live SSH session and a health monitor per webapp
/// (each seen healthy once).
struct Plane {
    webapps: Vec<Portico>,
    bridge: Portico,
    pids: Vec<u32>,
    apis: Vec<Api>,
    conn: String,
    term: Term,
    monitors: Vec<HealthMonitor>,
}

impl Plane {
    async fn start(database_url: &str, sshd: &Sshd) -> anyhow::Result<Plane> {
        let (webapps, bridge) = control_plane(database_url, 2)?;
        let pids: Vec<u32> = webapps.iter().map(Portico::pid).collect();
        let mut apis = Vec::new();
        for w in &webapps {
            apis.push(Api::admin(w).await?);
        }
        let conn = ssh_connection(&apis[0], sshd, json!({ "password": sshd.user.password })).await?;
        let term = open_session(&apis[0], &bridge, &conn).await?;
        let monitors = webapps
            .iter()
            .enumerate()
            .map(|(i, w)| HealthMonitor::start(&format!("webapp{}", i + 1), w))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for m in &monitors {
            m.wait(200, Instant::now() - Duration::from_secs(1), Duration::from_secs(10))
                .await?;
        }
        Ok(Plane {
            webapps,
            bridge,
            pids,
            apis,
            conn,
            term,
            monitors,
        })
    }
}

/// `n` webapps on `database_url` (sharing keys and the admin password) and one bridge on the first.
fn control_plane(database_url: &str, n: usize) -> anyhow::Result<(Vec<Portico>, Portico)> {
    let base = Options::default();
    let mut webapps = Vec::new();
    for _ in 0..n {
        webapps.push(Portico::start_with(Options {
            subcommand: Some("webapp"),
            database_url: Some(database_url.to_owned()),
            master_key: base.master_key.clone(),
            node_secret: base.node_secret.clone(),
            ..Options::default()
        })?);
    }
    let bridge = Portico::start_with(webapps[0].bridge_options("bridge-db"))?;
    Ok((webapps, bridge))
}

/// One acknowledged write of the steady load: the connection's id and name, and which webapp took it.
#[derive(Debug, Clone)]
struct Write {
    id: String,
    name: String,
    webapp: usize,
    at: Instant,
}

/// A write that was not acknowledged: when its answer (or error) came, and what it was.
type Failure = (Instant, String);

/// Steady writes (a connection created every 100 ms, round robin over `apis`) until `stop`: the
/// acknowledged ones (2xx with an id), and the failures with their time and reason.
fn steady_writes(
    apis: Vec<Api>,
    stop: tokio::sync::watch::Receiver<bool>,
    acks: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<(Vec<Write>, Vec<Failure>)> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut failed = Vec::new();
        let mut inflight = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut i = 0usize;
        // Bounded: no test here writes for more than 3 minutes.
        let started = Instant::now();
        while !*stop.borrow() && started.elapsed() < Duration::from_secs(180) {
            tick.tick().await;
            let webapp = i % apis.len();
            let (api, acks) = (apis[webapp].clone(), acks.clone());
            let name = format!("write-{i}");
            i += 1;
            inflight.spawn(async move {
                let body =
                    json!({ "name": name, "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "nobody" });
                let res = api.request(Method::POST, "/api/v1/connections", Some(body)).await;
                let at = Instant::now();
                match res {
                    Ok((s, v)) if (200..300).contains(&s) => match v["id"].as_str() {
                        Some(id) => {
                            acks.fetch_add(1, Ordering::SeqCst);
                            Ok(Write {
                                id: id.to_owned(),
                                name,
                                webapp,
                                at,
                            })
                        }
                        None => Err((at, format!("{s} without an id: {v}"))),
                    },
                    Ok((s, v)) => Err((at, format!("{name} on webapp {webapp}: {s} {v}"))),
                    Err(e) => Err((at, format!("{name} on webapp {webapp}: {e:#}"))),
                }
            });
            while let Some(Ok(r)) = inflight.try_join_next() {
                match r {
                    Ok(w) => acked.push(w),
                    Err(f) => failed.push(f),
                }
            }
        }
        while let Some(r) = inflight.join_next().await {
            match r {
                Ok(Ok(w)) => acked.push(w),
                Ok(Err(f)) => failed.push(f),
                Err(e) => failed.push((Instant::now(), format!("write task: {e}"))),
            }
        }
        (acked, failed)
    })
}

/// Issue 11, test 3. PostgreSQL primary and synchronous standby under Patroni (etcd), HAProxy in front
/// checking Patroni's `GET /primary`; two webapps through it, a bridge with a live SSH session, a write
/// every 100 ms. The primary's postmaster and its Patroni are killed (`kill -9`): the standby is promoted,
/// every webapp's health is 503 within 5 s of the kill and 200 within 5 s of the promotion, the same
/// processes serve writes again, every acknowledged write is there, and the session keeps echoing.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_primary_killed_patroni_promotes_the_standby() -> anyhow::Result<()> {
    let test_started = Instant::now();
    let sshd = Sshd::start()?;
    let mut cluster = tokio::task::spawn_blocking(|| PatroniCluster::start(2)).await??;
    let old = cluster.leader().ok_or_else(|| anyhow::anyhow!("no leader"))?;
    let new = 1 - old;
    let lb = Haproxy::start(
        "postgres.cfg",
        "PORTICO_PG",
        &[
            ("PORTICO_PG_1", format!("127.0.0.1:{}", cluster.nodes[0].pg_port)),
            ("PORTICO_PG_1_API", cluster.nodes[0].api_port.to_string()),
            ("PORTICO_PG_2", format!("127.0.0.1:{}", cluster.nodes[1].pg_port)),
            ("PORTICO_PG_2_API", cluster.nodes[1].api_port.to_string()),
        ],
    )?;
    let (old_srv, new_srv) = (format!("pg{}", old + 1), format!("pg{}", new + 1));
    lb.wait_server("postgres", &old_srv, true, Duration::from_secs(20))?;
    lb.wait_server("postgres", &new_srv, false, Duration::from_secs(20))?;

    let Plane {
        webapps,
        bridge,
        pids,
        apis,
        conn: _,
        mut term,
        monitors,
    } = Plane::start(&cluster.url(lb.port), &sshd).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let acks = Arc::new(AtomicUsize::new(0));
    let load = steady_writes(apis.clone(), stop_rx, acks.clone());
    // Writes acknowledged before the fault: one on each webapp, then the steady load's.
    let mut probe = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let body = json!({ "name": format!("probe-before-{i}"), "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "nobody" });
        probe.push((i, api.ok(Method::POST, "/api/v1/connections", Some(body)).await?));
    }
    // The steady load builds up a history first: 30 acknowledged writes.
    let load_started = Instant::now();
    while acks.load(Ordering::SeqCst) < 30 {
        anyhow::ensure!(
            load_started.elapsed() < Duration::from_secs(30),
            "the write load got {} acknowledgements in 30 s",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check_session(&mut term, "before-kill").await?;

    // The crash: the primary's postmaster and its Patroni, kill -9.
    let killed = Instant::now();
    cluster.nodes[old].kill9()?;
    let mut down = Vec::new();
    for m in &monitors {
        down.push(m.wait(503, killed, Duration::from_secs(30)).await?);
    }
    // The session streams while no database is there.
    check_session(&mut term, "while-no-primary").await?;

    // Promotion, as Patroni's REST API on the standby reports it (what HAProxy checks).
    let promoted = {
        let node = &cluster.nodes[new];
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let primary = tokio::task::block_in_place(|| node.is_primary());
            if primary {
                break Instant::now();
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the standby was not promoted within 90 s of the kill\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut up = Vec::new();
    for m in &monitors {
        up.push(m.wait(200, promoted, Duration::from_secs(30)).await?);
    }
    let state = tokio::task::block_in_place(|| cluster.nodes[new].state()).unwrap_or_default();
    assert!(matches!(state["role"].as_str(), Some("master" | "primary")), "{state}");
    assert!(state["timeline"].as_u64() >= Some(2), "{state}");
    tokio::task::block_in_place(|| lb.wait_server("postgres", &new_srv, true, Duration::from_secs(10)))?;
    check_session(&mut term, "after-promotion").await?;

    // The same processes write again: an acknowledged write on every webapp after the promotion.
    let mut after = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let body = json!({ "name": format!("probe-after-{i}"), "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "nobody" });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match api
                .request(Method::POST, "/api/v1/connections", Some(body.clone()))
                .await
            {
                Ok((s, v)) if (200..300).contains(&s) => {
                    after.push((i, promoted.elapsed()));
                    probe.push((i, v));
                    break;
                }
                r => anyhow::ensure!(
                    Instant::now() < deadline,
                    "webapp{} still cannot write 30 s after the promotion: {r:?}",
                    i + 1
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The steady load goes on after the failover: 20 more acknowledged writes.
    let resumed = acks.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.load(Ordering::SeqCst) < resumed + 20 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the write load did not resume after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let (mut acked, failed) = load.await?;
    acked.extend(probe.iter().filter_map(|(i, v)| {
        Some(Write {
            id: v["id"].as_str()?.to_owned(),
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            webapp: *i,
            at: Instant::now(),
        })
    }));

    // Every acknowledged write is in the promoted database.
    let mut lost = Vec::new();
    for w in &acked {
        let (s, v) = apis[1]
            .request(Method::GET, &format!("/api/v1/connections/{}", w.id), None)
            .await?;
        if s != 200 || v["name"] != Value::String(w.name.clone()) {
            lost.push((w.clone(), s, v));
        }
    }
    let acked_before_kill = acked.iter().filter(|w| w.at < killed).count();
    let acked_after_promotion = acked.iter().filter(|w| w.at > promoted).count();
    let per_webapp: Vec<usize> = (0..apis.len())
        .map(|i| acked.iter().filter(|w| w.webapp == i).count())
        .collect();
    println!(
        "patroni failover: leader {} killed; health 503 after {down:?} (webapp1, webapp2); promotion {:?} \
         after the kill; health 200 after {up:?} from the promotion; writes on every webapp within {after:?}; \
         {} acknowledged writes checked ({acked_before_kill} before the kill, {acked_after_promotion} after the promotion; per webapp {per_webapp:?}), {} failed during the failover",
        cluster.nodes[old].name,
        promoted - killed,
        acked.len(),
        failed.len(),
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    assert!(
        acked_before_kill >= 30,
        "too few writes before the kill: {acked_before_kill}"
    );
    for (i, d) in down.iter().enumerate() {
        assert!(*d <= WINDOW, "webapp{}: health 503 only {d:?} after the kill", i + 1);
    }
    for (i, d) in up.iter().enumerate() {
        assert!(
            *d <= WINDOW,
            "webapp{}: health 200 only {d:?} after the promotion",
            i + 1
        );
    }
    // No restart: the same processes.
    assert_eq!(webapps.iter().map(Portico::pid).collect::<Vec<_>>(), pids);
    // Writes failed only while there was no primary (from the kill until the webapps were healthy again).
    let healthy = promoted + up.iter().copied().max().unwrap_or_default();
    let stray: Vec<_> = failed
        .iter()
        .filter(|(at, _)| *at < killed || *at > healthy + Duration::from_secs(5))
        .collect();
    assert!(stray.is_empty(), "writes failed outside the failover: {stray:?}");
    check_session(&mut term, "end").await?;
    println!("patroni failover test: {:?} in all", test_started.elapsed());
    drop((monitors, bridge, webapps, lb));
    Ok(())
}

/// Issue 11, test 4. The database stopped for 60 s under two webapps and a bridge with a live SSH
/// session: every webapp's health is 503 within 5 s, a new session is refused with a clear message, the
/// session keeps streaming throughout, and when PostgreSQL is back everything works again (health, login,
/// a new session) without restarting anything, within a bound.
#[tokio::test(flavor = "multi_thread")]
async fn database_down_for_a_minute() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let pg = Postgres::start()?;
    let Plane {
        webapps,
        bridge,
        pids,
        apis,
        conn,
        mut term,
        monitors,
    } = Plane::start(&pg.url(), &sshd).await?;
    check_session(&mut term, "before").await?;

    let stopped = Instant::now();
    tokio::task::block_in_place(|| pg.stop())?;
    let mut down = Vec::new();
    for m in &monitors {
        down.push(m.wait(503, stopped, Duration::from_secs(30)).await?);
    }

    // A new session is refused, quickly and with a message that says why.
    let mut refusals = Vec::new();
    for api in &apis {
        let t = Instant::now();
        let (s, v) = api
            .request(Method::POST, "/api/v1/sessions", Some(json!({ "connection_id": conn })))
            .await?;
        refusals.push((s, v.clone(), t.elapsed()));
        assert_eq!(s, 503, "{v}");
        assert_eq!(v["error"], portico_webapp::error::DATABASE_UNAVAILABLE, "{v}");
        assert!(t.elapsed() < WINDOW, "the refusal took {:?}", t.elapsed());
    }
    // A new login too.
    let mut fresh = Api::new(&webapps[1])?;
    let refused_login = fresh.login("admin", &webapps[1].admin_password).await;
    let msg = format!(
        "{:#}",
        refused_login
            .err()
            .ok_or_else(|| anyhow::anyhow!("logged in without a database"))?
    );
    assert!(
        msg.contains("503") && msg.contains(portico_webapp::error::DATABASE_UNAVAILABLE),
        "{msg}"
    );

    // The live session streams through the whole minute (checked every 5 s).
    let outage = Duration::from_secs(60);
    let mut checks = 0;
    while stopped.elapsed() < outage {
        check_session(&mut term, &format!("outage-{checks}")).await?;
        checks += 1;
        let next = stopped + Duration::from_secs(5) * (checks + 1);
        tokio::time::sleep_until(next.min(stopped + outage).into()).await;
    }
    let back = {
        tokio::task::block_in_place(|| pg.start_again())?;
        Instant::now()
    };
    // Health stayed 503 (never a false 200) while the database was away.
    for m in &monitors {
        let during = m.between(stopped + down.iter().copied().max().unwrap_or_default(), back);
        assert!(
            !during.is_empty() && during.iter().all(|s| *s == 503),
            "{}: {during:?}",
            m.name
        );
    }

    // Recovery, without restarting anything: health, a fresh login, a new session through the bridge.
    let mut up = Vec::new();
    for m in &monitors {
        up.push(m.wait(200, back, Duration::from_secs(30)).await?);
    }
    let mut fresh = Api::new(&webapps[1])?;
    fresh.login("admin", &webapps[1].admin_password).await?;
    let mut second = open_session(&fresh, &bridge, &conn).await?;
    check_session(&mut second, "new-session").await?;
    let recovered = back.elapsed();
    check_session(&mut term, "after").await?;
    assert_eq!(webapps.iter().map(Portico::pid).collect::<Vec<_>>(), pids);
    println!(
        "database down {:?}: health 503 after {down:?} (webapp1, webapp2); sessions refused {:?}; the live \
         session echoed {checks} times during the outage; health 200 after {up:?} from PostgreSQL's return; \
         login and a new session worked {recovered:?} after it",
        back - stopped,
        refusals
            .iter()
            .map(|(s, v, t)| format!("{s} {v} in {t:?}"))
            .collect::<Vec<_>>(),
    );
    for (i, d) in down.iter().enumerate() {
        assert!(*d <= WINDOW, "webapp{}: health 503 only {d:?} after the stop", i + 1);
    }
    for (i, d) in up.iter().enumerate() {
        assert!(*d <= WINDOW, "webapp{}: health 200 only {d:?} after the restart", i + 1);
    }
    // Login (argon2) and a session start with an SSH login on a busy 2-core machine: 15 s in all.
    assert!(recovered < Duration::from_secs(15), "full recovery took {recovered:?}");
    drop((monitors, bridge, webapps));
    Ok(())
}
