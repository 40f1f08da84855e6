//! `/api/__healthcheck` follows the database: 503 while PostgreSQL is down, 200 again when it is back,
//! without restarting Portico.

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
    wait_status(&admin, 503, Duration::from_secs(15)).await?;
    let (s, v) = admin.request(Method::GET, "/api/v1/connections", None).await?;
    assert!(s >= 500, "{s} {v}");
    pg.start_again()?;
    wait_status(&admin, 200, Duration::from_secs(20)).await?;
    // Same process, and it works again (the login session survived in the database).
    assert_eq!(p.pid(), pid);
    admin.ok(Method::GET, "/api/v1/connections", None).await?;
    Ok(())
}
