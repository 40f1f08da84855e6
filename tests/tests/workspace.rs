//! Ephemeral container workspaces against a real Docker engine (Debian's dockerd, overlay2, a private
//! bridge) with Portico's default workspace image (`scripts/build-workspace-image.sh`): launch to first
//! frame, limits and isolation on the container, destruction at session end, orphan reaping on agent
//! restart, a vanished container ending its session, a lost agent's sessions and a relaunch on another
//! agent, and clear errors (no agent, no such image, bad specs). The last two run split (webapp and bridge
//! processes), so the bridge reaches workspaces over the internal HTTPS API.

use std::time::Duration;

use portico_tests::client::{Api, Screen, ws_with_token};
use portico_tests::peers::Dockerd;
use portico_tests::portico::{AgentProcess, Options, Portico};
use serde_json::{Value, json};

const TOKEN: &str = "agent-registration-token-for-workspaces";
/// The default workspace image's root colour (scripts/workspace/start-vnc).
const ROOT: [u8; 3] = [0x2d, 0x5a, 0x7b];
const WAIT: Duration = Duration::from_secs(30);

fn webapp(heartbeat_secs: u32, extra: &[&str]) -> anyhow::Result<Portico> {
    let mut extra_args = vec![
        "--agent-registration-token".to_owned(),
        TOKEN.to_owned(),
        "--agent-heartbeat-secs".to_owned(),
        heartbeat_secs.to_string(),
    ];
    extra_args.extend(extra.iter().map(|s| (*s).to_owned()));
    Portico::start_with(Options {
        extra_args,
        ..Options::default()
    })
}

/// Split topology: a webapp and a separate bridge (the bridge asks for workspaces over HTTPS).
fn split(heartbeat_secs: u32) -> anyhow::Result<(Portico, Portico)> {
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        extra_args: vec![
            "--agent-registration-token".to_owned(),
            TOKEN.to_owned(),
            "--agent-heartbeat-secs".to_owned(),
            heartbeat_secs.to_string(),
        ],
        ..Options::default()
    })?;
    let bridge = Portico::start_with(web.bridge_options("bridge-w"))?;
    Ok((web, bridge))
}

/// Start a session on the webapp and open it on `bridge` (split topology; all-in-one: the same process).
async fn open_via(bridge: &Portico, api: &Api, conn: &str) -> anyhow::Result<(String, Screen)> {
    let s = api.create_session(conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    let url = format!("{}/bridge/v1/ws?session={sid}", bridge.ws_base());
    let ws = ws_with_token(&url, &bridge.cert_sha256, s["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("upgrade refused: {} {}", r.status, r.body))?;
    Ok((sid, Screen::new(ws)))
}

/// [`open_via`], then wait for the desktop.
async fn launch_via(bridge: &Portico, api: &Api, conn: &str) -> anyhow::Result<(String, Screen)> {
    let (sid, mut screen) = open_via(bridge, api, conn).await?;
    screen
        .until("the workspace desktop", Duration::from_secs(60), |c| {
            c.width > 0 && c.pixel(c.width - 5, c.height - 5) == ROOT
        })
        .await?;
    Ok((sid, screen))
}

pub async fn workspace_connection(api: &Api, image: &str, extra: Value) -> anyhow::Result<String> {
    let mut workspace =
        json!({ "image": image, "cpu_millis": 500, "memory_mb": 256, "pids_limit": 200, "geometry": "800x600" });
    if let (Some(w), Some(e)) = (workspace.as_object_mut(), extra.as_object()) {
        w.extend(e.clone());
    }
    api.create_connection(json!({
        "name": format!("workspace {}", uuid::Uuid::new_v4()),
        "protocol": "container",
        "settings": { "workspace": workspace },
    }))
    .await
}

async fn wait_json(
    api: &Api,
    path: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let v = api.ok(reqwest::Method::GET, path, None).await?;
        if pred(&v) {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what} not within {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_agent_healthy(api: &Api, name: &str, agent: &AgentProcess) -> anyhow::Result<()> {
    wait_json(api, "/api/v1/agents", &format!("agent {name} healthy"), WAIT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == name && x["state"] == "healthy"))
    })
    .await
    .map(|_| ())
    .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))
}

/// Containers of `engine` labelled with session `sid`.
fn containers_of(engine: &Dockerd, sid: &str) -> anyhow::Result<Vec<String>> {
    let out = engine.docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=org.portico.session={sid}"),
    ])?;
    Ok(out.lines().map(str::to_owned).filter(|l| !l.is_empty()).collect())
}

async fn wait_containers(engine: &Dockerd, sid: &str, n: usize, within: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let c = containers_of(engine, sid)?;
        if c.len() == n {
            return Ok(c);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "session {sid}: {} containers, wanted {n}, after {within:?}",
            c.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_launches_with_its_limits_and_is_destroyed_when_the_session_ends() -> anyhow::Result<()> {
    let engine = Dockerd::start()?;
    let image = engine.with_workspace_image()?;
    // All-in-one with its embedded agent on this engine (what `cargo run` does with a Docker socket).
    let socket = engine.socket.display().to_string();
    let p = webapp(1, &["--docker-socket", &socket, "--agent-name", "embedded"])?;
    let api = Api::admin(&p).await?;
    wait_json(&api, "/api/v1/agents", "embedded agent healthy", WAIT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == "embedded" && x["state"] == "healthy"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nportico log:\n{}", p.log()))?;
    let conn = workspace_connection(&api, image, json!({})).await?;

    let t0 = tokio::time::Instant::now();
    let (sid, mut screen) = launch_via(&p, &api, &conn)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nportico log:\n{}", p.log()))?;
    eprintln!("launch to first frame: {:?}", t0.elapsed());
    assert_eq!((screen.canvas.width, screen.canvas.height), (800, 600));
    let session = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    assert_eq!(session["workspace"]["state"], "ready", "{session}");
    assert!(session["workspace"].get("vnc_password_enc").is_none(), "{session}");

    // The container: limits, no privileges, nothing published, labelled with the session.
    let ids = containers_of(&engine, &sid)?;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let inspect: Value = serde_json::from_str(&engine.docker(&["inspect", &ids[0]])?)?;
    let c = &inspect[0];
    let hc = &c["HostConfig"];
    assert_eq!(hc["Memory"], 256 * 1024 * 1024, "{hc}");
    assert_eq!(hc["MemorySwap"], 256 * 1024 * 1024, "no swap on top: {hc}");
    assert_eq!(hc["NanoCpus"], 500_000_000_i64, "{hc}");
    assert_eq!(hc["PidsLimit"], 200, "{hc}");
    assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
    assert_eq!(hc["SecurityOpt"], json!(["no-new-privileges"]), "{hc}");
    assert_eq!(hc["Privileged"], false);
    assert!(
        hc["PortBindings"].as_object().is_none_or(|m| m.is_empty()),
        "nothing is published: {hc}"
    );
    assert!(
        c["NetworkSettings"]["Ports"]
            .as_object()
            .is_none_or(|m| m.values().all(Value::is_null)),
        "no host port: {}",
        c["NetworkSettings"]
    );
    assert_eq!(c["Config"]["Labels"]["org.portico.session"], sid.as_str());
    assert_eq!(c["Config"]["Labels"]["org.portico.agent"], "embedded");
    assert_eq!(c["Config"]["User"], "1000:1000", "the desktop does not run as root");
    // The VNC server asks for the one-time password: a client without it is refused.
    let ip = c["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(security_types(&ip, 5901).await?, [2], "VNC authentication only");

    // Input reaches the container: the xterm runs a command whose file appears inside it.
    type_text(&mut screen, "echo launched-$((6*7)) > /tmp/proof\n").await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = engine
            .docker(&["exec", &ids[0], "cat", "/tmp/proof"])
            .unwrap_or_default();
        if out.trim() == "launched-42" {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "typed command did not run: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The end of the session destroys the container; the next session starts from the clean image.
    api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    let closed = screen.term.closed_within(Duration::from_secs(10)).await?;
    // The container goes at once, before the bridge's sync: the browser still hears the real reason.
    assert!(
        closed
            .as_ref()
            .is_some_and(|c| c.code == "ended" && c.reason.contains("ended by the user")),
        "{closed:?}"
    );
    wait_containers(&engine, &sid, 0, Duration::from_secs(10)).await?;
    wait_json(
        &api,
        &format!("/api/v1/sessions/{sid}"),
        "container removed",
        Duration::from_secs(10),
        |v| v["workspace"]["state"] == "removed",
    )
    .await?;
    let (sid2, _screen2) = launch_via(&p, &api, &conn).await?;
    let ids2 = containers_of(&engine, &sid2)?;
    assert_eq!(ids2.len(), 1);
    assert!(
        engine.docker(&["exec", &ids2[0], "cat", "/tmp/proof"]).is_err(),
        "a fresh container does not have the last session's file"
    );
    // Logging out ends the user's workspaces too.
    api.ok(reqwest::Method::POST, "/api/v1/auth/logout", None).await?;
    wait_containers(&engine, &sid2, 0, Duration::from_secs(10)).await?;
    Ok(())
}

/// The RFB security types a VNC server offers (RFB 3.8 handshake, then hang up).
async fn security_types(ip: &str, port: u16) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect((ip, port)).await?;
    let mut banner = [0u8; 12];
    tcp.read_exact(&mut banner).await?;
    tcp.write_all(b"RFB 003.008\n").await?;
    let n = tcp.read_u8().await?;
    let mut types = vec![0u8; usize::from(n)];
    tcp.read_exact(&mut types).await?;
    Ok(types)
}

/// Type ASCII text as keysyms.
async fn type_text(screen: &mut Screen, text: &str) -> anyhow::Result<()> {
    use portico_proto::wire::ClientMsg;
    // Focus follows the pointer under twm: point into the xterm (at 40,40, 100x30 characters), once it
    // is mapped.
    screen
        .until("the xterm", Duration::from_secs(15), |c| c.pixel(200, 120) != ROOT)
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    screen
        .term
        .send(ClientMsg::Pointer {
            x: 200,
            y: 120,
            buttons: 0,
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ch in text.chars() {
        let keysym = match ch {
            '\n' => 0xff0d,
            c => u32::from(c),
        };
        let shift = "~!@#$%^&*()_+{}|:\"<>?".contains(ch) || ch.is_ascii_uppercase();
        if shift {
            screen.term.send(key(0xffe1, true)).await?;
        }
        screen.term.send(key(keysym, true)).await?;
        screen.term.send(key(keysym, false)).await?;
        if shift {
            screen.term.send(key(0xffe1, false)).await?;
        }
    }
    Ok(())
}

fn key(keysym: u32, down: bool) -> portico_proto::wire::ClientMsg {
    portico_proto::wire::ClientMsg::Key {
        keysym,
        down,
        scancode: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restart_reaps_orphans_and_a_vanished_container_ends_its_session() -> anyhow::Result<()> {
    let engine = Dockerd::start()?;
    let image = engine.with_workspace_image()?;
    let p = webapp(1, &[])?;
    let api = Api::admin(&p).await?;
    let mut agent = AgentProcess::start(&p, &engine.socket, "reaper", TOKEN)?;
    wait_agent_healthy(&api, "reaper", &agent).await?;
    let conn = workspace_connection(&api, image, json!({})).await?;

    // A session whose agent dies; the session ends meanwhile: its container is an orphan.
    let (sid, _screen) = launch_via(&p, &api, &conn).await?;
    agent.kill();
    api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    // And a stray container with this agent's label from a crashed run.
    let stray = engine.docker(&[
        "create",
        "--label",
        "org.portico.agent=reaper",
        "--label",
        "org.portico.session=00000000-0000-0000-0000-000000000000",
        image,
        "/usr/local/bin/start-vnc",
    ])?;
    // Another agent's container on the same engine is not this agent's to remove.
    let foreign = engine.docker(&[
        "create",
        "--label",
        "org.portico.agent=someone-else",
        "--label",
        "org.portico.session=11111111-1111-1111-1111-111111111111",
        image,
        "/usr/local/bin/start-vnc",
    ])?;
    assert_eq!(
        containers_of(&engine, &sid)?.len(),
        1,
        "the agent is dead: nothing removed it yet"
    );

    let agent = AgentProcess::start(&p, &engine.socket, "reaper", TOKEN)?;
    wait_agent_healthy(&api, "reaper", &agent).await?;
    wait_containers(&engine, &sid, 0, Duration::from_secs(15))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    wait_containers(
        &engine,
        "00000000-0000-0000-0000-000000000000",
        0,
        Duration::from_secs(15),
    )
    .await?;
    assert!(
        engine.docker(&["inspect", stray.trim()]).is_err(),
        "the stray container is gone"
    );
    assert!(
        engine.docker(&["inspect", foreign.trim()]).is_ok(),
        "another agent's container is left alone"
    );

    // A container that vanishes under a live session ends the session, and the browser hears why.
    let (sid, mut screen) = launch_via(&p, &api, &conn).await?;
    let ids = containers_of(&engine, &sid)?;
    engine.docker(&["rm", "-f", &ids[0]])?;
    let s = wait_json(
        &api,
        &format!("/api/v1/sessions/{sid}"),
        "session ended after its container vanished",
        Duration::from_secs(15),
        |v| v["state"] == "ended",
    )
    .await?;
    let reason = s["end_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("workspace") || reason.contains("vnc server closed"),
        "{s}"
    );
    let closed = screen.term.closed_within(Duration::from_secs(10)).await?;
    assert!(closed.is_some(), "the browser is told why");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_agent_s_sessions_are_lost_within_15_s_and_a_relaunch_lands_on_another_agent() -> anyhow::Result<()> {
    let engine_a = Dockerd::start()?;
    let engine_b = Dockerd::start()?;
    let image = engine_a.with_workspace_image()?;
    engine_b.with_workspace_image()?;
    // The default heartbeat (5 s; three missed = down), split webapp and bridge.
    let (p, bridge) = split(5)?;
    let api = Api::admin(&p).await?;
    // The scheduler takes the agent with the most free memory: A first.
    let mut a = AgentProcess::start_with(&p, &engine_a.socket, "host-a", TOKEN, &["--agent-memory-mb", "8192"])?;
    let b = AgentProcess::start_with(&p, &engine_b.socket, "host-b", TOKEN, &["--agent-memory-mb", "4096"])?;
    wait_agent_healthy(&api, "host-a", &a).await?;
    wait_agent_healthy(&api, "host-b", &b).await?;
    let conn = workspace_connection(&api, image, json!({})).await?;
    let (sid, mut screen) = launch_via(&bridge, &api, &conn).await?;
    assert_eq!(containers_of(&engine_a, &sid)?.len(), 1, "scheduled on host-a");

    a.kill();
    let killed = tokio::time::Instant::now();
    let s = wait_json(
        &api,
        &format!("/api/v1/sessions/{sid}"),
        "session lost",
        Duration::from_secs(20),
        |v| v["state"] == "ended",
    )
    .await?;
    let lost_after = killed.elapsed();
    eprintln!("session marked lost {lost_after:?} after the agent was killed");
    // Three missed 5 s heartbeats, plus the test's own 200 ms polling.
    assert!(
        lost_after <= Duration::from_millis(15_300),
        "lost after {lost_after:?}: {s}"
    );
    assert!(
        s["end_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("lost:") && r.contains("host-a")),
        "{s}"
    );
    assert_eq!(s["workspace"]["state"], "lost", "{s}");
    let closed = screen
        .term
        .closed_within(Duration::from_secs(5))
        .await?
        .expect("the browser is told");
    assert!(closed.reason.contains("lost"), "{closed:?}");

    // The user relaunches: a fresh container on the surviving agent.
    let (sid2, _screen2) = launch_via(&bridge, &api, &conn).await?;
    assert_eq!(containers_of(&engine_b, &sid2)?.len(), 1, "relaunched on host-b");
    let s2 = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid2}"), None)
        .await?;
    assert_eq!(s2["workspace"]["state"], "ready", "{s2}");
    Ok(())
}

async fn start_session(api: &Api, conn: &str) -> anyhow::Result<(u16, Value)> {
    api.request(
        reqwest::Method::POST,
        "/api/v1/sessions",
        Some(json!({ "connection_id": conn })),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_errors_are_clear() -> anyhow::Result<()> {
    let engine = Dockerd::start()?;
    let image = engine.with_workspace_image()?;
    let (p, bridge) = split(1)?;
    let api = Api::admin(&p).await?;

    // Bad specs are refused with the field named.
    for (spec, needle) in [
        (json!({ "image": "" }), "image"),
        (json!({ "image": "-rf /" }), "image"),
        (json!({ "image": image, "memory_mb": 1 }), "memory_mb"),
        (json!({ "image": image, "cpu_millis": 0 }), "cpu_millis"),
        (json!({ "image": image, "pids_limit": 1 }), "pids_limit"),
        (json!({ "image": image, "geometry": "huge" }), "geometry"),
        (json!({ "image": image, "privileged": true }), "privileged"),
    ] {
        let (status, body) = api
            .request(
                reqwest::Method::POST,
                "/api/v1/connections",
                Some(json!({ "protocol": "container", "settings": { "workspace": spec } })),
            )
            .await?;
        assert_eq!(status, 400, "{spec} → {body}");
        assert!(body.to_string().contains(needle), "{spec} → {body}");
    }
    let (status, body) = api
        .request(
            reqwest::Method::POST,
            "/api/v1/connections",
            Some(
                json!({ "protocol": "container", "host": "10.0.0.1", "settings": { "workspace": { "image": image } } }),
            ),
        )
        .await?;
    assert_eq!(status, 400, "{body}");

    // No agent yet: a clear 503, and nothing is left pending.
    let conn = workspace_connection(&api, image, json!({})).await?;
    let (status, body) = start_session(&api, &conn).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("no healthy docker agent"), "{body}");

    // An agent too small for the workspace: 503 that says so.
    let agent = AgentProcess::start_with(&p, &engine.socket, "small", TOKEN, &["--agent-memory-mb", "200"])?;
    wait_agent_healthy(&api, "small", &agent).await?;
    let (status, body) = start_session(&api, &conn).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("room"), "{body}");
    drop(agent);

    // An image that does not exist: the session fails with Docker's reason, in the browser.
    let agent = AgentProcess::start_with(&p, &engine.socket, "big", TOKEN, &["--agent-memory-mb", "4096"])?;
    wait_agent_healthy(&api, "big", &agent).await?;
    let missing = workspace_connection(&api, "portico/no-such-image:1", json!({})).await?;
    let (sid, mut screen) = open_via(&bridge, &api, &missing).await?;
    let closed = screen
        .term
        .closed_within(Duration::from_secs(30))
        .await?
        .expect("a close message");
    assert!(
        closed.reason.contains("no-such-image") || closed.reason.contains("no such image"),
        "{closed:?}"
    );
    let v = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    assert_eq!(v["state"], "ended", "{v}");
    assert_eq!(v["workspace"]["state"], "failed", "{v}");
    Ok(())
}
