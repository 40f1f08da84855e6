//! Docker agents against a real Docker engine (Debian's dockerd, overlay2, a private bridge): registration
//! through the webapp's public address with the registration token, heartbeats with the host's capacity,
//! `down` after missed heartbeats, and a wrong token that fails loudly (log lines, retries, `failed` in the
//! admin API). Attacks on the unauthenticated registration endpoint: a refused registration changes no
//! agent and is rate-limited per address; a second holder of the token cannot take over a registered
//! agent's name (and its workspaces' passwords) until an admin removes that agent.

use std::time::Duration;

use anyhow::Context as _;
use portico_tests::client::Api;
use portico_tests::peers::Dockerd;
use portico_tests::portico::{AgentProcess, Options, Portico};
use serde_json::{Value, json};

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
    // Events: registered, then down (reported once, within a heartbeat interval of the maintenance loop).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kinds = loop {
        let evs = api
            .ok(
                reqwest::Method::GET,
                "/api/v1/events?type=agent_registered,agent_down",
                None,
            )
            .await?;
        let kinds: Vec<String> = evs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["details"]["agent"] == "agent-a")
            .filter_map(|e| e["type"].as_str().map(str::to_owned))
            .collect();
        if kinds.iter().any(|k| k == "agent_down") || tokio::time::Instant::now() > deadline {
            break kinds;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(kinds, ["agent_down", "agent_registered"], "newest first");
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

/// The webapp's internal agent API spoken directly: what a misconfigured, second or lying agent sends.
pub struct FakeAgent {
    http: reqwest::Client,
    base: String,
}

impl FakeAgent {
    pub fn new(p: &Portico) -> anyhow::Result<FakeAgent> {
        let tls = portico_bridge::control::client_tls_config(Some(&p.cert_sha256), None)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(FakeAgent {
            http,
            base: p.url.clone(),
        })
    }

    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let res = req.send().await.with_context(|| format!("post {path}"))?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Register as `name` with `token` and the persistent `identity`, declaring `networks`.
    pub async fn register(
        &self,
        name: &str,
        token: &str,
        identity: &str,
        networks: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        self.post(
            "/internal/v1/agents/register",
            None,
            json!({
                "name": name,
                "registration_token": token,
                "identity": identity,
                "docker_version": "20.10.24",
                "capacity": { "cores": 8, "memory_mb": 8192, "running": 0 },
                "networks": networks,
            }),
        )
        .await
    }

    /// One sync (no long poll) reporting `containers` on `networks`.
    pub async fn sync(&self, credential: &str, containers: Value, networks: &Value) -> anyhow::Result<(u16, Value)> {
        self.sync_with(credential, containers, networks, json!({})).await
    }

    /// [`FakeAgent::sync`] with more fields in the body (e.g. an image catalog).
    pub async fn sync_with(
        &self,
        credential: &str,
        containers: Value,
        networks: &Value,
        extra: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut body = json!({
            "capacity": { "cores": 8, "memory_mb": 8192, "running": 0 },
            "containers": containers,
            "wait_ms": 0,
            "networks": networks,
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.post("/internal/v1/agents/sync", Some(credential), body).await
    }
}

/// How many refused registrations one address may make per window (webapp/src/internal.rs).
const REFUSED_PER_ADDRESS: usize = 10;

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_registration_changes_no_agent_and_is_rate_limited() -> anyhow::Result<()> {
    let dockerd = Dockerd::start()?;
    // A launch goes only to an agent holding the image (its catalog).
    let image = dockerd.with_workspace_image()?;
    let p = webapp()?;
    let api = Api::admin(&p).await?;
    let agent = AgentProcess::start(&p, &dockerd.socket, "agent-a", TOKEN)?;
    let before = wait_agent(&api, "agent-a", Duration::from_secs(30), |a| a["state"] == "healthy")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    let conn = crate::workspace::workspace_connection(&api, image, json!({})).await?;
    let fake = FakeAgent::new(&p)?;
    let mut problems = Vec::new();

    // A wrong token under the real agent's name: refused, and the real agent is untouched.
    let (status, body) = fake
        .register(
            "agent-a",
            "not-the-registration-token",
            "mallory-identity-0123456789",
            &json!([]),
        )
        .await?;
    if status != 403 {
        problems.push(format!("wrong token: http {status} {body}"));
    }
    let a = agent_named(&api, "agent-a").await?.context("agent-a listed")?;
    if a["state"] != "healthy" || a["id"] != before["id"] || !a["last_error"].is_null() {
        problems.push(format!("a refused registration changed the real agent: {a}"));
    }
    let (status, body) = api
        .request(
            reqwest::Method::POST,
            "/api/v1/sessions",
            Some(json!({ "connection_id": conn })),
        )
        .await?;
    if status != 201 {
        problems.push(format!(
            "a workspace after the refused registration: http {status} {body}"
        ));
    }
    // Admins still see it, next to the agent, without its state changing.
    if !a["refused"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("wrong registration token"))
    {
        problems.push(format!("the refusal is not shown on the agent's entry: {a}"));
    }

    // A flood of parallel refused registrations from one address: at most the limit is recorded.
    let n = 40;
    let statuses = futures_util::future::join_all((0..n).map(|i| {
        let fake = &fake;
        async move {
            fake.register(
                &format!("ghost-{i}"),
                "not-the-registration-token",
                "ghost-identity-0123456789",
                &json!([]),
            )
            .await
            .map(|(s, _)| s)
        }
    }))
    .await;
    let statuses: Vec<u16> = statuses.into_iter().collect::<anyhow::Result<_>>()?;
    let refused = statuses.iter().filter(|s| **s == 403).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    if refused > REFUSED_PER_ADDRESS - 1 || refused + limited != n {
        problems.push(format!(
            "{n} parallel refused registrations: {refused} refused (403), {limited} rate-limited (429): {statuses:?}"
        ));
    }
    let agents = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
    let ghosts = agents.as_array().map_or(0, |a| {
        a.iter()
            .filter(|x| x["name"].as_str().is_some_and(|n| n.starts_with("ghost-")))
            .count()
    });
    if ghosts > REFUSED_PER_ADDRESS {
        problems.push(format!(
            "{ghosts} refused registrations recorded (unauthenticated writes)"
        ));
    }
    let a = agent_named(&api, "agent-a").await?.context("agent-a listed")?;
    if a["state"] != "healthy" {
        problems.push(format!("after the flood: {a}"));
    }
    // The real agent still registers (its token is right): refusals of others never lock it out.
    assert!(agent.log().contains("Agent registered"), "{}", agent.log());
    anyhow::ensure!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_holder_of_the_token_cannot_take_over_a_registered_agent() -> anyhow::Result<()> {
    let dockerd = Dockerd::start()?;
    let image = dockerd.with_workspace_image()?;
    let p = webapp()?;
    let api = Api::admin(&p).await?;
    let agent = AgentProcess::start(&p, &dockerd.socket, "agent-a", TOKEN)?;
    let before = wait_agent(&api, "agent-a", Duration::from_secs(30), |a| a["state"] == "healthy")
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    let id = before["id"].as_str().unwrap_or_default().to_owned();
    // A workspace on agent-a: its container (and its VNC password) is what the agent's sync carries.
    let conn = crate::workspace::workspace_connection(&api, image, json!({})).await?;
    let s = api.create_session(&conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    let fake = FakeAgent::new(&p)?;
    let mut problems = Vec::new();

    // A second holder of the token registers the same name with another identity.
    let attacked_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (status, body) = fake
        .register("agent-a", TOKEN, "second-holder-identity-0123456789", &json!([]))
        .await?;
    if status == 200 {
        let cred = body["credential"].as_str().unwrap_or_default();
        let (_, answer) = fake.sync(cred, json!([]), &json!([])).await?;
        let passwords = answer["desired"]
            .as_array()
            .map_or(0, |d| d.iter().filter(|c| c["vnc_password"].is_string()).count());
        problems.push(format!(
            "the second holder took over agent-a (id {}) and received {passwords} vnc password(s)",
            body["agent_id"]
        ));
    } else if status != 403
        || !body["error"]
            .as_str()
            .is_some_and(|e| e.contains("agent-a") && e.contains("identity"))
    {
        problems.push(format!("takeover attempt: http {status} {body}"));
    }
    // Loudly in the agents list, and the real agent keeps its id, its state and its credential.
    let a = wait_agent(&api, "agent-a", Duration::from_secs(10), |a| {
        a["last_heartbeat_at"].as_u64().is_some_and(|t| t > attacked_at + 1) || a["id"] != before["id"]
    })
    .await?;
    if a["id"] != before["id"] || a["state"] != "healthy" {
        problems.push(format!("the real agent lost its identity: {a}"));
    }
    if !a["refused"]["reason"].as_str().is_some_and(|r| r.contains("identity")) {
        problems.push(format!("the refused takeover is not shown on the agent's entry: {a}"));
    }
    if agent.log().contains("no longer knows this agent") {
        problems.push("the real agent's credential stopped working (401)".to_owned());
    }

    // An admin removes the agent: its sessions end, and the name is free again (the agent, whose
    // credential the webapp no longer knows, registers anew).
    let (status, body) = api
        .request(reqwest::Method::DELETE, &format!("/api/v1/agents/{id}"), None)
        .await?;
    if status != 204 {
        problems.push(format!("DELETE /api/v1/agents/{{id}}: http {status} {body}"));
    } else {
        let s = api
            .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
        if s["state"] != "ended" || !s["end_reason"].as_str().is_some_and(|r| r.contains("removed")) {
            problems.push(format!("the removed agent's session: {s}"));
        }
        let again = wait_agent(&api, "agent-a", Duration::from_secs(30), |a| {
            a["state"] == "healthy" && a["id"] != before["id"]
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?;
        assert!(
            again["refused"].is_null(),
            "a removed agent's refusals go with it: {again}"
        );
    }
    anyhow::ensure!(problems.is_empty(), "{problems:#?}");
    Ok(())
}
