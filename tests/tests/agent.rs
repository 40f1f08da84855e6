//! Docker agents against a real Docker engine (Debian's dockerd, overlay2, a private bridge): registration
//! through the webapp's public address with the registration token, heartbeats with the host's capacity,
//! `down` after missed heartbeats, and a wrong token that fails loudly (log lines, retries, `failed` in the
//! admin API).

use std::time::Duration;

use portico_tests::client::Api;
use portico_tests::peers::Dockerd;
use portico_tests::portico::{AgentProcess, Options, Portico};
use serde_json::Value;

const TOKEN: &str = "agent-registration-token-for-tests";

fn webapp() -> anyhow::Result<Portico> {
    Portico::start_with(Options {
        extra_args: vec![
            "--agent-registration-token".into(),
            TOKEN.into(),
            "--agent-heartbeat-secs".into(),
            "1".into(),
        ],
        ..Options::default()
    })
}

async fn agent_named(api: &Api, name: &str) -> anyhow::Result<Option<Value>> {
    let agents = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
    Ok(agents
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned()))
}

async fn wait_agent(api: &Api, name: &str, within: Duration, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let a = agent_named(api, name).await?;
        if let Some(a) = &a
            && pred(a)
        {
            return Ok(a.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "agent {name} not as expected within {within:?}: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_registers_heartbeats_and_is_marked_down_when_lost() -> anyhow::Result<()> {
    let dockerd = Dockerd::start()?;
    let p = webapp()?;
    let api = Api::admin(&p).await?;
    let mut agent = AgentProcess::start(&p, &dockerd.socket, "agent-a", TOKEN)?;
    let a = wait_agent(&api, "agent-a", Duration::from_secs(30), |a| a["state"] == "healthy")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    assert!(a["cores"].as_i64().unwrap_or(0) > 0, "{a}");
    assert!(a["memory_mb"].as_i64().unwrap_or(0) > 0, "{a}");
    assert!(a["docker_version"].as_str().is_some_and(|v| !v.is_empty()), "{a}");
    assert!(
        a.get("credential_hash").is_none(),
        "the credential never leaves the database: {a}"
    );
    assert!(agent.log().contains("Agent registered"), "{}", agent.log());
    // Heartbeats keep it healthy past three intervals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        agent_named(&api, "agent-a").await?.map(|a| a["state"].clone()),
        Some("healthy".into())
    );
    // Lost (killed, no goodbye): down after three missed heartbeats.
    agent.kill();
    let lost_at = tokio::time::Instant::now();
    wait_agent(&api, "agent-a", Duration::from_secs(10), |a| a["state"] == "down").await?;
    // The agent's last sync may have been held by the webapp up to one interval before it was killed:
    // down comes two to three intervals after the kill, never sooner.
    assert!(lost_at.elapsed() >= Duration::from_secs(1), "marked down too early");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_registration_token_fails_loudly() -> anyhow::Result<()> {
    let dockerd = Dockerd::start()?;
    let p = webapp()?;
    let api = Api::admin(&p).await?;
    let mut agent = AgentProcess::start(&p, &dockerd.socket, "agent-b", "not-the-registration-token")?;
    let a = wait_agent(&api, "agent-b", Duration::from_secs(30), |a| a["state"] == "failed").await?;
    assert!(
        a["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("wrong registration token")),
        "{a}"
    );
    // It keeps trying, and says so each time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while agent.log().matches("Agent registration failed").count() < 2 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no retry logged:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.running(), "the agent gave up:\n{}", agent.log());
    assert!(agent.log().contains("wrong registration token"), "{}", agent.log());
    assert!(agent.log().contains("retry_in_s"), "{}", agent.log());
    Ok(())
}
