//! Ephemeral container workspaces against a real Docker engine (Debian's dockerd, overlay2, a private
//! bridge) with Portico's default workspace image (`scripts/build-workspace-image.sh`): launch to first
//! frame, limits and isolation on the container, destruction at session end, orphan reaping on agent
//! restart, a vanished container ending its session, a lost agent's sessions and a relaunch on another
//! agent, and clear errors (no agent, no such image, bad specs). The last two run split (webapp and bridge
//! processes), so the bridge reaches workspaces over the internal HTTPS API.

use portico_proto::codes::CloseCode;
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

/// A private engine with the workspace image, and an all-in-one Portico whose embedded agent runs on it
/// (what `cargo run` does with a Docker socket), once the agent is healthy.
async fn embedded_workspaces() -> anyhow::Result<(Dockerd, &'static str, Portico, Api)> {
    let engine = Dockerd::start()?;
    let image = engine.with_workspace_image()?;
    let socket = engine.socket.display().to_string();
    let p = webapp(1, &["--docker-socket", &socket, "--agent-name", "embedded"])?;
    let api = Api::admin(&p).await?;
    wait_json(&api, "/api/v1/agents", "embedded agent healthy", WAIT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == "embedded" && x["state"] == "healthy"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nportico log:\n{}", p.log()))?;
    Ok((engine, image, p, api))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_launches_with_its_limits_and_is_destroyed_when_the_session_ends() -> anyhow::Result<()> {
    let (engine, image, p, api) = embedded_workspaces().await?;
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
    assert_eq!(hc["NetworkMode"], "portico-workspaces", "on the managed network: {hc}");
    // The VNC server asks for the one-time password: a client without it is refused.
    let ip = c["NetworkSettings"]["Networks"]["portico-workspaces"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(security_types(&ip, 5901).await?, [2], "VNC authentication only");
    // So does its audio server: a wrong password, or none, gets no sound; the session's gets PCM.
    let password = c["Config"]["Env"]
        .as_array()
        .and_then(|e| e.iter().find_map(|v| v.as_str()?.strip_prefix("VNC_PASSWORD=")))
        .unwrap_or_default()
        .to_owned();
    assert_eq!(password.len(), 8, "{}", c["Config"]["Env"]);
    let token = portico_bridge::audio::audio_token(&password);
    assert_eq!(
        audio_bytes(&ip, Some("PORTICO-AUDIO wrong-pw")).await?,
        0,
        "a wrong token"
    );
    assert_eq!(audio_bytes(&ip, Some(&format!("PORTICO-AUDIO {token}x"))).await?, 0);
    assert_eq!(
        audio_bytes(&ip, Some(&format!("PORTICO-AUDIO {password}"))).await?,
        0,
        "the password itself is not the token"
    );
    assert_eq!(audio_bytes(&ip, None).await?, 0, "no token line");
    assert!(
        audio_bytes(&ip, Some(&format!("PORTICO-AUDIO {token}"))).await? >= 3840,
        "the session's token gets sound"
    );

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
            .is_some_and(|c| c.code == CloseCode::Ended && c.reason.contains("ended by the user")),
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

/// Bytes a workspace's audio server (port 4714) sends after `hello` (or after nothing), until it closes
/// or 8 KiB came (sound: raw PCM, silence while nothing plays). Bounded: 15 s.
async fn audio_bytes(ip: &str, hello: Option<&str>) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    // PulseAudio starts after the desktop: wait for the port.
    let mut tcp = loop {
        match tokio::net::TcpStream::connect((ip, 4714)).await {
            Ok(t) => break t,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("the audio server at {ip}:4714 did not answer: {e}"),
        }
    };
    if let Some(h) = hello {
        tcp.write_all(format!("{h}\n").as_bytes()).await?;
    }
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < 8192 {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => anyhow::bail!("the audio server neither sent sound nor closed within 15 s"),
        }
    }
    Ok(got)
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

    // The same agent again (its data directory, so its identity): its first sync reaps the orphans.
    agent.restart()?;
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

    // Drained, host-a takes no new workspace (though it has the most room); taken back, it does again.
    let agents = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
    let field = |name: &str, key: &str| {
        agents
            .as_array()
            .and_then(|l| l.iter().find(|x| x["name"] == name))
            .map(|x| x[key].clone())
            .unwrap_or(Value::Null)
    };
    let (a_id, b_id) = (field("host-a", "id"), field("host-b", "id"));
    let a_id = a_id.as_str().unwrap_or_default().to_owned();
    api.ok(reqwest::Method::POST, &format!("/api/v1/agents/{a_id}/drain"), None)
        .await?;
    let listed = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["name"] == "host-a" && x["state"] == "draining")),
        "{listed}"
    );
    let (status, drained) = start_session(&api, &conn).await?;
    assert_eq!(status, 201, "{drained}");
    let d_sid = drained["session_id"].as_str().unwrap_or_default().to_owned();
    let row = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{d_sid}"), None)
        .await?;
    assert_eq!(row["workspace"]["agent_id"], b_id, "placed on the drained agent: {row}");
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{d_sid}"), None)
        .await?;
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/agents/{a_id}/drain"), None)
        .await?;
    let (status, back) = start_session(&api, &conn).await?;
    assert_eq!(status, 201, "{back}");
    let b_sid = back["session_id"].as_str().unwrap_or_default().to_owned();
    let row = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{b_sid}"), None)
        .await?;
    assert_eq!(
        row["workspace"]["agent_id"].as_str(),
        Some(a_id.as_str()),
        "taken back: {row}"
    );
    api.ok(reqwest::Method::DELETE, &format!("/api/v1/sessions/{b_sid}"), None)
        .await?;

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
        (json!({ "image": image, "warm": 33 }), "warm"),
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

    // The catalog: the agent reports the images its engine holds, with their labels.
    let agent = AgentProcess::start_with(&p, &engine.socket, "big", TOKEN, &["--agent-memory-mb", "4096"])?;
    wait_agent_healthy(&api, "big", &agent).await?;
    engine.docker(&["tag", image, "portico/vanishing:1"])?;
    let catalog = wait_json(&api, "/api/v1/workspace-images", "the catalog", WAIT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|i| i["name"] == "portico/vanishing:1"))
    })
    .await?;
    let entry = catalog
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == image))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["agents"], json!(["big"]), "{catalog}");
    assert!(entry["size_mb"].as_u64().is_some_and(|m| m > 10), "{entry}");
    assert!(
        entry["labels"]["org.portico.workspace.hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64),
        "{entry}"
    );
    // An image no agent holds: refused at launch, saying so (no container is tried).
    let missing = workspace_connection(&api, "portico/no-such-image:1", json!({})).await?;
    let (status, body) = start_session(&api, &missing).await?;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("holds the image portico/no-such-image:1")),
        "{body}"
    );
    // An image gone from the engine after the catalog listed it: the session fails with Docker's reason,
    // in the browser.
    let vanishing = workspace_connection(&api, "portico/vanishing:1", json!({})).await?;
    engine.docker(&["rmi", "portico/vanishing:1"])?;
    let (sid, mut screen) = open_via(&bridge, &api, &vanishing).await?;
    let closed = screen
        .term
        .closed_within(Duration::from_secs(30))
        .await?
        .expect("a close message");
    assert!(
        closed.reason.contains("vanishing") || closed.reason.contains("no such image"),
        "{closed:?}"
    );
    let v = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    assert_eq!(v["state"], "ended", "{v}");
    assert_eq!(v["workspace"]["state"], "failed", "{v}");
    Ok(())
}

/// A local address of this machine other than loopback (the route to a public address), if any.
fn local_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.255:9").or_else(|_| s.connect("8.8.8.8:53")).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_agent_cannot_send_the_bridge_to_an_address_outside_its_networks() -> anyhow::Result<()> {
    let p = webapp(5, &[])?;
    let api = Api::admin(&p).await?;
    let fake = crate::agent::FakeAgent::new(&p)?;
    // The lying agent declares a network of its own, and (to try the control plane's own address) one
    // holding this machine's address.
    let own = local_address();
    let mut networks =
        vec![json!({ "name": "portico-workspaces", "subnet": "10.123.0.0/24", "gateway": "10.123.0.1" })];
    if let Some(ip) = own {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        networks.push(json!({ "name": "host-net", "subnet": format!("{ip}/{prefix}") }));
    }
    let networks = Value::Array(networks);
    let (status, reg) = fake
        .register("liar", TOKEN, "liar-identity-0123456789abcdef", &networks)
        .await?;
    anyhow::ensure!(status == 200, "registration: http {status} {reg}");
    let cred = reg["credential"].as_str().unwrap_or_default().to_owned();
    let conn = workspace_connection(&api, "portico/workspace:latest", json!({})).await?;
    // A listener on loopback, where the lying agent says the container is.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trap = listener.local_addr()?.port();
    let webapp_port: u16 = p.url.rsplit(':').next().and_then(|s| s.parse().ok()).unwrap_or(443);
    let mut cases = vec![
        ("127.0.0.1".to_owned(), trap, "loopback"),
        ("10.9.9.9".to_owned(), 5901, "outside"),
        ("10.123.0.1".to_owned(), 5901, "gateway"),
        ("10.123.0.7".to_owned(), 22, "vnc port"),
    ];
    if let Some(ip) = own {
        cases.push((ip.to_string(), webapp_port, "control plane"));
    }
    let mut problems = Vec::new();
    for (host, port, needle) in cases {
        // A heartbeat first: the lying agent must look healthy to be scheduled.
        let (status, body) = fake.sync(&cred, json!([]), &networks).await?;
        anyhow::ensure!(status == 200, "heartbeat: http {status} {body}");
        let (sid, mut screen) = open_via(&p, &api, &conn).await?;
        let report =
            json!([{ "session_id": sid, "container_id": "c0ffee", "state": "ready", "host": host, "port": port }]);
        let (status, body) = fake.sync(&cred, report, &networks).await?;
        anyhow::ensure!(status == 200, "sync: http {status} {body}");
        // The bridge must never connect there: the session ends with the reason instead.
        tokio::select! {
            accepted = listener.accept() => {
                problems.push(format!("{host}:{port}: the bridge connected to the reported address ({:?})", accepted.map(|a| a.1)));
                let _ = screen.term.closed_within(Duration::from_secs(10)).await;
            }
            closed = screen.term.closed_within(Duration::from_secs(15)) => {
                let closed = closed?;
                if !closed.as_ref().is_some_and(|c| c.reason.contains(needle)) {
                    problems.push(format!("{host}:{port}: the browser was told {closed:?}"));
                }
            }
        }
        let s = api
            .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
        if s["workspace"]["state"] != "failed" || !s["workspace"]["error"].as_str().is_some_and(|e| e.contains(needle))
        {
            problems.push(format!("{host}:{port}: {}", s["workspace"]));
        }
    }
    // Its image catalog is bounded: too many images, or an oversized name or label, is refused and not
    // stored (admins see the catalog).
    let image = |name: String| json!({ "name": name, "size_mb": 1, "labels": {} });
    let many: Vec<Value> = (0..257).map(|i| image(format!("junk/{i}:1"))).collect();
    let long = vec![image("x".repeat(300))];
    let labelled = vec![json!({ "name": "ok:1", "size_mb": 1, "labels": { "org.portico.x": "y".repeat(600) } })];
    for (what, images) in [
        ("257 images", many),
        ("a 300-byte name", long),
        ("a 600-byte label", labelled),
    ] {
        let (status, body) = fake
            .sync_with(&cred, json!([]), &networks, json!({ "images": images }))
            .await?;
        if status != 403 || !body["error"].as_str().is_some_and(|e| e.contains("at most 256 images")) {
            problems.push(format!("{what}: http {status} {body}"));
        }
    }
    let catalog = api.ok(reqwest::Method::GET, "/api/v1/workspace-images", None).await?;
    if catalog
        .as_array()
        .is_some_and(|a| a.iter().any(|i| i["agents"] == json!(["liar"])))
    {
        problems.push(format!("a refused catalog was stored: {catalog}"));
    }
    anyhow::ensure!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_run_as_the_configured_user_on_a_managed_network_whatever_the_image_says() -> anyhow::Result<()> {
    let engine = Dockerd::start()?;
    let image = engine.with_workspace_image()?;
    // The same image (its own command), told to run as root.
    let tmp = engine.docker(&["create", image])?;
    const ROOT_IMAGE: &str = "portico/workspace:root-user";
    engine.docker(&["commit", "--change", "USER 0:0", tmp.trim(), ROOT_IMAGE])?;
    engine.docker(&["rm", tmp.trim()])?;
    assert_eq!(
        engine
            .docker(&["image", "inspect", "--format", "{{.Config.User}}", ROOT_IMAGE])?
            .trim(),
        "0:0"
    );
    let p = webapp(1, &[])?;
    let api = Api::admin(&p).await?;
    let agent = AgentProcess::start(&p, &engine.socket, "netagent", TOKEN)?;
    wait_agent_healthy(&api, "netagent", &agent).await?;
    let conn = workspace_connection(&api, ROOT_IMAGE, json!({})).await?;
    let (sid, _screen) = launch_via(&p, &api, &conn)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nagent log:\n{}", agent.log()))?;
    let ids = containers_of(&engine, &sid)?;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let inspect: Value = serde_json::from_str(&engine.docker(&["inspect", &ids[0]])?)?;
    let c = &inspect[0];
    let mut problems = Vec::new();
    if c["Config"]["User"] != "1000:1000" {
        problems.push(format!("container user {} (the image says 0:0)", c["Config"]["User"]));
    }
    let uid = engine.docker(&["exec", &ids[0], "id", "-u"]).unwrap_or_default();
    if uid.trim() != "1000" {
        problems.push(format!("processes run as uid {uid:?}"));
    }
    if c["HostConfig"]["NetworkMode"] != "portico-workspaces"
        || c["NetworkSettings"]["Networks"]["portico-workspaces"]["IPAddress"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        problems.push(format!(
            "not on the managed network: {} {}",
            c["HostConfig"]["NetworkMode"], c["NetworkSettings"]["Networks"]
        ));
    }
    // The managed network: a user-defined bridge without inter-container traffic (enforced by Docker's
    // iptables rules; the test engines run without them, so only the setting is checked here).
    match engine.docker(&["network", "inspect", "portico-workspaces"]) {
        Ok(n) => {
            let n: Value = serde_json::from_str(&n)?;
            let n = &n[0];
            if n["Driver"] != "bridge" || n["Options"]["com.docker.network.bridge.enable_icc"] != "false" {
                problems.push(format!("managed network: {n}"));
            }
        }
        Err(e) => problems.push(format!("no managed network: {e}")),
    }
    // The agent's declared networks are listed for admins.
    let agents = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
    let declared = agents
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "netagent"))
        .map(|a| a["networks"].clone())
        .unwrap_or_default();
    if !declared
        .as_array()
        .is_some_and(|n| n.iter().any(|x| x["name"] == "portico-workspaces"))
    {
        problems.push(format!("declared networks: {declared}"));
    }
    // Root is refused as the configured user.
    let mut rooty = AgentProcess::start_with(&p, &engine.socket, "rooty", TOKEN, &["--agent-user", "0:0"])?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while rooty.running() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if rooty.running() || !rooty.log().contains("non-root") {
        problems.push(format!("--agent-user 0:0 was not refused:\n{}", rooty.log()));
    }
    anyhow::ensure!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

/// A container workspace shared live (docs/security.md "Sharing"): a view-only viewer gets the container's
/// desktop at once and sees what the owner types; its own keys never reach the container.
#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_is_shared_with_a_view_only_viewer() -> anyhow::Result<()> {
    let (engine, image, p, api) = embedded_workspaces().await?;
    let conn = api
        .create_connection(json!({
            "name": "shared workspace",
            "protocol": "container",
            "settings": { "sharing": "view", "workspace":
                { "image": image, "cpu_millis": 500, "memory_mb": 256, "pids_limit": 200, "geometry": "800x600" } },
        }))
        .await?;
    let (sid, mut owner) = launch_via(&p, &api, &conn).await?;
    let (_, viewer_api) = api.user_api(&p, "ws-viewer", "user").await?;
    let (_, link) = api.share_link(&sid, "view").await?;
    let (_, ws) = viewer_api.join_session(&p.cert_sha256, json!({ "link": link })).await?;
    let mut viewer = Screen::new(ws);
    viewer
        .until("the viewer's desktop", WAIT, |c| {
            (c.width, c.height) == (800, 600) && c.pixel(795, 595) == ROOT && c.pixel(200, 120) != ROOT
        })
        .await?;
    type_text(&mut owner, "xsetroot -solid '#10a040'\n").await?;
    let green = [0x10, 0xa0, 0x40];
    viewer
        .until("the owner's command, seen by the viewer", WAIT, |c| {
            c.pixel(795, 595) == green
        })
        .await?;
    // The viewer's keys are dropped at the bridge; the owner's next command runs.
    type_text(&mut viewer, "echo viewer > /tmp/viewer\n").await?;
    viewer.term.barrier(1).await?;
    type_text(&mut owner, "echo owner > /tmp/owner\n").await?;
    let id = containers_of(&engine, &sid)?.into_iter().next().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while engine
        .docker(&["exec", &id, "cat", "/tmp/owner"])
        .unwrap_or_default()
        .trim()
        != "owner"
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the owner's command did not run"
        );
        owner.pump(Duration::from_millis(200)).await?;
    }
    assert!(
        engine.docker(&["exec", &id, "cat", "/tmp/viewer"]).is_err(),
        "a view-only viewer's keys reached the container"
    );
    Ok(())
}

/// The keys (`org.portico.session` labels) of the warm pool's containers on `engine`.
fn spare_keys(engine: &Dockerd) -> anyhow::Result<Vec<String>> {
    let out = engine.docker(&[
        "ps",
        "-a",
        "--filter",
        "label=org.portico.session",
        "--format",
        "{{.Label \"org.portico.session\"}}",
    ])?;
    Ok(out
        .lines()
        .filter(|k| k.starts_with("spare-"))
        .map(str::to_owned)
        .collect())
}

/// Wait until the embedded agent lists `ready` ready spares and none starting.
async fn wait_spares(api: &Api, ready: u64, p: &Portico) -> anyhow::Result<()> {
    wait_json(api, "/api/v1/agents", &format!("{ready} ready spares"), WAIT, |v| {
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["name"] == "embedded" && x["spares"]["ready"] == ready && x["spares"]["starting"] == 0)
        })
    })
    .await
    .map(|_| ())
    .map_err(|e| anyhow::anyhow!("{e}\nportico log:\n{}", p.log()))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_pool_serves_launches_at_once_and_never_reuses_a_container() -> anyhow::Result<()> {
    let (engine, image, p, api) = embedded_workspaces().await?;

    // A tenth of a core each: the 2-core machine has room for 3 sessions and 2 spares.
    let conn = workspace_connection(&api, image, json!({ "warm": 2, "cpu_millis": 100 })).await?;
    wait_spares(&api, 2, &p).await?;
    let first: Vec<String> = spare_keys(&engine)?;
    assert_eq!(first.len(), 2, "{first:?}");

    // Three launches race for the two spares: each gets its own container, two of them the spares.
    let launches = futures_util::future::join_all((0..3).map(|_| start_session(&api, &conn))).await;
    let mut sessions = Vec::new();
    for l in launches {
        let (status, s) = l?;
        assert_eq!(status, 201, "{s}");
        sessions.push(s["session_id"].as_str().unwrap_or_default().to_owned());
    }
    let mut keys = Vec::new();
    for sid in &sessions {
        let s = api
            .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
        let key = s["workspace"]["container_key"].as_str().unwrap_or_default().to_owned();
        assert!(
            s["workspace"]["spare_for"].is_null(),
            "a claimed spare is the session's: {s}"
        );
        keys.push(key);
    }
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "one container per session: {keys:?}");
    let warm: Vec<&String> = keys.iter().filter(|k| first.contains(k)).collect();
    assert_eq!(warm.len(), 2, "both spares taken: {keys:?} of {first:?}");
    assert!(
        keys.iter().zip(&sessions).any(|(k, s)| k == s),
        "the third launch started its own container: {keys:?}"
    );

    // A warm session shows its desktop through the bridge: its container was ready before the launch.
    let warm_sid = sessions[keys.iter().position(|k| first.contains(k)).unwrap_or(0)].clone();
    let sess = api
        .ok(reqwest::Method::GET, &format!("/api/v1/sessions/{warm_sid}"), None)
        .await?;
    assert_eq!(sess["workspace"]["state"], "ready", "claimed ready: {sess}");
    // Audited: two launches on warm spares, one cold (events are written behind the request: wait).
    wait_json(
        &api,
        "/api/v1/events?type=workspace_scheduled",
        "3 scheduling events",
        WAIT,
        |v| {
            let of = |warm: bool| {
                v.as_array().map_or(0, |a| {
                    a.iter()
                        .filter(|e| {
                            e["details"]["warm"] == warm && sessions.iter().any(|s| e["session_id"] == s.as_str())
                        })
                        .count()
                })
            };
            of(true) == 2 && of(false) == 1
        },
    )
    .await?;

    // The pool starts replacements: two ready spares again, none of them a container a session had.
    wait_spares(&api, 2, &p).await?;
    let refilled = spare_keys(&engine)?;
    let unclaimed: Vec<&String> = refilled.iter().filter(|k| !keys.contains(k)).collect();
    assert_eq!(unclaimed.len(), 2, "fresh spares: {refilled:?}, sessions had {keys:?}");

    // The sessions end: their containers (the claimed spares too) are destroyed, never returned to the pool.
    for sid in &sessions {
        api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
    }
    for k in &keys {
        wait_containers(&engine, k, 0, WAIT).await?;
    }
    let after = spare_keys(&engine)?;
    assert!(after.iter().all(|k| !keys.contains(k)), "{after:?}");

    // Spares yield to launches: a workspace that needs the room of one spare gets it (the spare goes),
    // and the pool refills once that session ends.
    let agents = api.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
    let cores = agents[0]["cores"].as_i64().unwrap_or(2);
    let big = workspace_connection(&api, image, json!({ "cpu_millis": cores * 1000 - 150 })).await?;
    let (status, s) = start_session(&api, &big).await?;
    assert_eq!(status, 201, "a launch that needs a spare's room: {s}");
    let big_sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    wait_spares(&api, 1, &p).await?;
    assert!(p.log().contains("A spare made room for a launch"));
    api.request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{big_sid}"), None)
        .await?;
    wait_spares(&api, 2, &p).await?;

    // No pool wanted: the spares go.
    let c = api
        .ok(reqwest::Method::GET, &format!("/api/v1/connections/{conn}"), None)
        .await?;
    let mut settings = c["settings"].clone();
    settings["workspace"]["warm"] = json!(0);
    api.ok(
        reqwest::Method::PUT,
        &format!("/api/v1/connections/{conn}"),
        Some(json!({ "name": c["name"], "protocol": "container", "settings": settings })),
    )
    .await?;
    wait_spares(&api, 0, &p).await?;
    for k in &after {
        wait_containers(&engine, k, 0, WAIT).await?;
    }
    Ok(())
}
