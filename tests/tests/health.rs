//! `/api/__healthcheck` follows the database: 503 while PostgreSQL is down (every answer within its
//! budget, so a load balancer checking with a 1 s timeout sees answers, not hangs), 200 again when it is
//! back, without restarting Portico; `/api/__livez` does not depend on the database; on SIGTERM the health
//! check fails first while requests are still served, then the process stops.

use std::time::{Duration, Instant};

use portico_tests::client::Api;
use portico_tests::peers::Postgres;
use portico_tests::portico::{Options, Portico};
use reqwest::Method;

async fn wait_status(api: &Api, want: u16, within: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let (s, body) = api.request(Method::GET, "/api/__healthcheck", None).await?;
        if s == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            anyhow::bail!("healthcheck still {s} ({body}) after {within:?}, wanted {want}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_follows_postgres() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let p = Portico::start_with(Options {
        database_url: Some(pg.url()),
        ..Options::default()
    })?;
    let pid = p.pid();
    let admin = Api::admin(&p).await?;
    wait_status(&admin, 200, Duration::from_secs(5)).await?;
    pg.stop()?;
    let down = wait_status(&admin, 503, Duration::from_secs(15)).await?;
    // Every answer while the database is down comes within the check's budget (0.8 s; the pool's acquire
    // timeout is 3 s): a second of slack for a busy machine.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let (s, body) = admin.request(Method::GET, "/api/__healthcheck", None).await?;
        slowest = slowest.max(t.elapsed());
        assert_eq!(s, 503, "{body}");
        let (s, _) = admin.request(Method::GET, "/api/__livez", None).await?;
        assert_eq!(s, 200, "liveness does not depend on the database");
    }
    println!("database down: health 503 after {down:?}, slowest answer {slowest:?}");
    assert!(
        slowest < Duration::from_millis(1800),
        "a health answer took {slowest:?}"
    );
    let (s, v) = admin.request(Method::GET, "/api/v1/connections", None).await?;
    assert!(s >= 500, "{s} {v}");
    pg.start_again()?;
    wait_status(&admin, 200, Duration::from_secs(20)).await?;
    // Same process, and it works again (the login session survived in the database).
    assert_eq!(p.pid(), pid);
    admin.ok(Method::GET, "/api/v1/connections", None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_fails_the_health_check_first_then_stops() -> anyhow::Result<()> {
    let mut p = Portico::start_with(Options {
        extra_args: vec!["--shutdown-delay-secs".into(), "3".into()],
        ..Options::default()
    })?;
    let admin = Api::admin(&p).await?;
    wait_status(&admin, 200, Duration::from_secs(5)).await?;
    let signalled = Instant::now();
    p.sigterm()?;
    let (s, body) = loop {
        let (s, body) = admin.request(Method::GET, "/api/__healthcheck", None).await?;
        if s != 200 || signalled.elapsed() > Duration::from_secs(2) {
            break (s, body);
        }
    };
    assert_eq!((s, body["error"].as_str()), (503, Some("shutting down")), "{body}");
    // Still serving during the delay: a load balancer has time to notice.
    admin.ok(Method::GET, "/api/v1/connections", None).await?;
    let status = p.wait_exit(Duration::from_secs(20))?;
    let stopped = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        stopped >= Duration::from_secs(3),
        "stopped after {stopped:?}, before its delay"
    );
    Ok(())
}
