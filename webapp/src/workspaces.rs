//! Ephemeral workspace containers: validating a workspace spec, scheduling a session's container on an
//! agent, reconciling what agents report against what the database wants, and telling the bridge where a
//! ready container is.
//!
//! The database holds the wanted state (a `containers` row per session); agents pull it with a long-poll
//! sync and make their Docker engine match. Nothing here keeps state between requests: any webapp instance
//! answers any agent or bridge.

use std::net::IpAddr;
use std::time::Duration;

use portico_proto::Secret;
use portico_proto::codes::CloseCode;
use portico_proto::control::{
    AgentImage, AgentNetwork, AgentSync, AgentSyncResponse, ContainerState, ControlError, DesiredContainer,
    WorkspaceEndpoint, WorkspaceSpec,
};

use crate::db::{AgentRow, ContainerRow, ContainerUpdate, container_state, state};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::{AppState, now_unix};

/// The connection protocol of workspace containers (the bridge speaks VNC to them).
pub const PROTOCOL: &str = "container";
/// How long a container may stay `starting` before the session fails.
pub const START_TIMEOUT_SECS: i64 = 90;
/// How often waiting requests look at the database again.
const POLL: Duration = Duration::from_millis(100);
/// Longest an agent's sync is held.
const MAX_SYNC_WAIT: Duration = Duration::from_secs(8);
/// Longest a bridge's wait for a container is held (it asks again after that); below the internal HTTP
/// clients' 10 s timeout.
pub const WORKSPACE_WAIT: Duration = Duration::from_secs(8);

pub fn validate_spec(w: &WorkspaceSpec) -> Result<(), ApiError> {
    let image_ok = !w.image.is_empty()
        && w.image.len() <= 255
        && w.image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !w.image.starts_with(['-', '.', '/', ':']);
    if !image_ok {
        return Err(ApiError::bad_request(
            "settings.workspace.image must be a docker image reference like portico/workspace:latest",
        ));
    }
    if !(100..=64_000).contains(&w.cpu_millis) {
        return Err(ApiError::bad_request(
            "settings.workspace.cpu_millis must be between 100 and 64000 (thousandths of a core)",
        ));
    }
    if !(128..=262_144).contains(&w.memory_mb) {
        return Err(ApiError::bad_request(
            "settings.workspace.memory_mb must be between 128 and 262144",
        ));
    }
    if !(16..=65_536).contains(&w.pids_limit) {
        return Err(ApiError::bad_request(
            "settings.workspace.pids_limit must be between 16 and 65536",
        ));
    }
    if w.warm > MAX_WARM {
        return Err(ApiError::bad_request(format!(
            "settings.workspace.warm must be between 0 and {MAX_WARM} (spares kept started per agent)"
        )));
    }
    if w.vnc_port == 0 {
        return Err(ApiError::bad_request("settings.workspace.vnc_port must be a port"));
    }
    if let Some(g) = &w.geometry {
        let ok = g
            .split_once('x')
            .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
            .is_some_and(|(a, b)| (200..=8192).contains(&a) && (200..=8192).contains(&b));
        if !ok {
            return Err(ApiError::bad_request(
                "settings.workspace.geometry must look like 1280x720 (each side 200..=8192)",
            ));
        }
    }
    Ok(())
}

/// A random VNC password (VNC authentication uses the first 8 characters).
fn vnc_password() -> String {
    // 64 symbols: each random byte maps to one without bias (48 bits in all).
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    crate::crypto::random_bytes::<8>()
        .iter()
        .map(|b| ALPHABET[usize::from(b & 63)] as char)
        .collect()
}

/// The associated data of a container's sealed VNC password: bound to the container's key (a spare's
/// password stays valid when a session claims it).
fn aad(container_key: &str) -> String {
    format!("container:{container_key}:vnc_password")
}

/// Most spares per connection and agent an admin may ask for.
pub const MAX_WARM: u32 = 32;
/// A pool whose spares failed this many times in [`SPARE_BACKOFF_SECS`] on an agent starts no more
/// there until the window passes (a broken image is not started again and again).
const SPARE_FAILURES: i64 = 3;
const SPARE_BACKOFF_SECS: i64 = 60;

/// The JSON a container row keeps of its spec (what a spare must equal to serve a launch).
fn spec_json(spec: &WorkspaceSpec) -> Result<String, ApiError> {
    serde_json::to_string(&spec.container()).map_err(|e| ApiError::Internal(e.into()))
}

/// A new wanted container row (not yet placed on an agent), with a fresh sealed VNC password.
fn new_row(
    st: &AppState,
    key: &str,
    spare_for: Option<&str>,
    spec: &WorkspaceSpec,
    now: i64,
) -> Result<ContainerRow, ApiError> {
    Ok(ContainerRow {
        session_id: key.into(),
        container_key: key.into(),
        spare_for: spare_for.map(Into::into),
        agent_id: String::new(),
        spec: spec_json(spec)?,
        vnc_password_enc: st.keys.seal(&vnc_password(), &aad(key))?,
        state: container_state::STARTING.into(),
        container_id: None,
        host: None,
        port: None,
        error: None,
        memory_mb: i64::from(spec.memory_mb),
        cpu_millis: i64::from(spec.cpu_millis),
        created_at: now,
        ready_at: None,
        removed_at: None,
    })
}

/// Schedule the container of a new session of `connection_id`: a ready spare of the connection's warm
/// pool when there is one (the pool then starts its replacement), else a new container on the healthy
/// agent with the most free memory that has room for the spec's memory and cores. Returns the agent's
/// name.
pub async fn schedule(
    st: &AppState,
    session_id: &str,
    connection_id: &str,
    spec: &WorkspaceSpec,
) -> Result<String, ApiError> {
    let now = now_unix();
    st.sweep_lost(now).await?;
    let mut loads = st.db.agent_loads(st.agents_alive_since(now)).await?;
    if spec.warm > 0
        && let Some(row) = st
            .db
            .claim_spare(connection_id, &spec_json(spec)?, session_id, st.agents_alive_since(now))
            .await?
    {
        let agent = loads
            .iter()
            .find(|a| a.id == row.agent_id)
            .map_or_else(|| row.agent_id.clone(), |a| a.name.clone());
        tracing::info!(%session_id, agent = %agent, container_key = %row.container_key, image = %spec.image, "Workspace scheduled on a warm spare");
        st.events.emit(
            Event::new(EventType::WorkspaceScheduled)
                .session(session_id)
                .connection(connection_id)
                .detail("agent", &agent)
                .detail("agent_id", &row.agent_id)
                .detail("image", &spec.image)
                .detail("memory_mb", spec.memory_mb)
                .detail("cpu_millis", spec.cpu_millis)
                .detail("warm", true),
        );
        // The pool starts the taken spare's replacement now (the agent's held sync sees it at once).
        let load = loads.iter().find(|a| a.id == row.agent_id);
        let images: Option<Vec<AgentImage>> = load
            .and_then(|a| a.images.as_deref())
            .and_then(|j| serde_json::from_str(j).ok());
        if let Err(e) = top_up(st, &row.agent_id, load.is_some(), images.as_deref(), now).await {
            tracing::warn!(agent = %agent, error = %e, "Could not replace a claimed spare");
        }
        return Ok(agent);
    }
    let need_mem = i64::from(spec.memory_mb);
    let need_cpu = i64::from(spec.cpu_millis);
    // Most free memory first; the placement itself re-checks under a lock (another webapp may have
    // taken the room meanwhile), so the next candidate is tried.
    loads.sort_by_key(|a| std::cmp::Reverse(a.memory_mb - a.used_memory_mb));
    let mut row = new_row(st, session_id, None, spec, now)?;
    // Only agents whose engine holds the image (the catalog they report).
    let holders = loads.iter().filter(|a| a.holds(&spec.image)).count();
    if !loads.is_empty() && holders == 0 {
        return Err(ApiError::NoCapacity(format!(
            "no healthy docker agent holds the image {} (build or load it on an agent's engine)",
            spec.image
        )));
    }
    let mut placed = None;
    for a in loads.iter().filter(|a| {
        a.holds(&spec.image)
            && a.memory_mb - a.used_memory_mb >= need_mem
            && a.cores * 1000 - a.used_cpu_millis >= need_cpu
    }) {
        row.agent_id = a.id.clone();
        if st.db.place_container(&row, None).await? {
            placed = Some(a);
            break;
        }
    }
    if placed.is_none() {
        placed = make_room(st, &loads, spec, &mut row, now).await?;
    }
    let Some(agent) = placed else {
        let why = if loads.is_empty() {
            "no healthy docker agent is registered (or every one is drained)".to_owned()
        } else {
            format!(
                "no healthy docker agent has room for this workspace ({} MiB, {:.1} cores) right now",
                spec.memory_mb,
                f64::from(spec.cpu_millis) / 1000.0
            )
        };
        return Err(ApiError::NoCapacity(why));
    };
    tracing::info!(%session_id, agent = %agent.name, agent_id = %agent.id, image = %spec.image, "Workspace scheduled");
    st.events.emit(
        Event::new(EventType::WorkspaceScheduled)
            .session(session_id)
            .connection(connection_id)
            .detail("agent", &agent.name)
            .detail("agent_id", &agent.id)
            .detail("image", &spec.image)
            .detail("memory_mb", spec.memory_mb)
            .detail("cpu_millis", spec.cpu_millis)
            .detail("warm", false),
    );
    Ok(agent.name.clone())
}

/// Spares yield to launches: when no agent has room, let go as few idle spares as make room on one agent
/// that holds the image, and place `row` there. The pools refill when room comes back.
async fn make_room<'a>(
    st: &AppState,
    loads: &'a [crate::db::AgentLoad],
    spec: &WorkspaceSpec,
    row: &mut ContainerRow,
    now: i64,
) -> Result<Option<&'a crate::db::AgentLoad>, ApiError> {
    let spares = st.db.live_spares().await?;
    for a in loads.iter().filter(|a| a.holds(&spec.image)) {
        let mut mem = a.memory_mb - a.used_memory_mb;
        let mut cpu = a.cores * 1000 - a.used_cpu_millis;
        let mut mine: Vec<&ContainerRow> = spares.iter().filter(|c| c.agent_id == a.id).collect();
        // The largest first: the fewest spares go.
        mine.sort_by_key(|c| std::cmp::Reverse(c.memory_mb));
        let mut take = Vec::new();
        for c in mine {
            if mem >= row.memory_mb && cpu >= row.cpu_millis {
                break;
            }
            mem += c.memory_mb;
            cpu += c.cpu_millis;
            take.push(c);
        }
        if take.is_empty() || mem < row.memory_mb || cpu < row.cpu_millis {
            continue;
        }
        for c in take {
            // Only while still a spare (a launch may claim it meanwhile: then the placement may fail).
            if st
                .db
                .close_spare(&c.container_key, container_state::REMOVED, None, now)
                .await?
            {
                tracing::info!(agent = %a.name, container_key = %c.container_key, "A spare made room for a launch");
            }
        }
        row.agent_id = a.id.clone();
        if st.db.place_container(row, None).await? {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// The warm pools of the connections that want one: connection id → its spec.
async fn warm_pools(st: &AppState) -> Result<Vec<(String, WorkspaceSpec)>, sqlx::Error> {
    let rows = st.db.connection_settings_of(PROTOCOL).await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, settings)| {
            let s: portico_proto::control::ConnectionSettings = serde_json::from_str(&settings).ok()?;
            s.workspace.filter(|w| w.warm > 0).map(|w| (id, w))
        })
        .collect())
}

/// Make `agent_id`'s spares match what the connections want: spares of a connection that no longer wants
/// them (deleted, fewer spares, another spec, the agent drained) are let go (the agent removes them), and
/// missing ones are placed (within the agent's room; a pool whose spares keep failing waits
/// [`SPARE_BACKOFF_SECS`]). `usable`: the agent is healthy and not drained; `images`: its catalog (a pool
/// of an image it does not hold gets no spares there). Idempotent; any webapp may run it.
pub async fn top_up(
    st: &AppState,
    agent_id: &str,
    usable: bool,
    images: Option<&[AgentImage]>,
    now: i64,
) -> Result<(), ApiError> {
    let pools = warm_pools(st).await?;
    // This agent's live rows (what its sync reads anyway), the spares among them.
    let spares: Vec<ContainerRow> = st
        .db
        .live_containers(agent_id)
        .await?
        .into_iter()
        .filter(|c| c.spare_for.is_some())
        .collect();
    let mut kept: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    for c in &spares {
        let conn = c.spare_for.as_deref().unwrap_or_default();
        let wanted = pools
            .iter()
            .find(|(id, _)| id == conn)
            .filter(|(_, spec)| usable && AgentImage::held(images, &spec.image))
            .and_then(|(_, spec)| Some((spec.warm, spec_json(spec).ok()?)));
        let keep = match wanted {
            Some((warm, json)) if json == c.spec => {
                let n = kept.entry(conn).or_default();
                *n += 1;
                *n <= warm
            }
            _ => false,
        };
        // Only while still a spare: a launch may have claimed it since it was read.
        if !keep
            && st
                .db
                .close_spare(&c.container_key, container_state::REMOVED, None, now)
                .await?
        {
            tracing::info!(agent_id = %agent_id, connection_id = %conn, container_key = %c.container_key, "Warm spare let go");
        }
    }
    if !usable {
        return Ok(());
    }
    for (conn, spec) in &pools {
        let have = kept.get(conn.as_str()).copied().unwrap_or(0).min(spec.warm);
        if have >= spec.warm || !AgentImage::held(images, &spec.image) {
            continue;
        }
        if st.db.spare_failures(agent_id, conn, now - SPARE_BACKOFF_SECS).await? >= SPARE_FAILURES {
            continue;
        }
        for _ in have..spec.warm {
            let key = format!("spare-{}", uuid::Uuid::new_v4());
            let mut row = new_row(st, &key, Some(conn), spec, now)?;
            row.agent_id = agent_id.to_owned();
            if !st.db.place_container(&row, Some(i64::from(spec.warm))).await? {
                break; // No room (or another webapp filled the pool meanwhile).
            }
            tracing::info!(agent_id = %agent_id, connection_id = %conn, container_key = %key, image = %spec.image, "Warm spare wanted");
        }
    }
    Ok(())
}

fn db_err(e: sqlx::Error) -> ControlError {
    tracing::error!(error = %e, "Workspace database error");
    ControlError::Unavailable("database error".into())
}

/// A workspace that failed: its container row says why (unless the agent's report already did) and its
/// session ends with `workspace failed: <why>`. An unclaimed spare has no session: only its row closes
/// (the pool backs off when spares keep failing).
async fn fail(st: &AppState, c: &ContainerRow, why: &str, now: i64) -> Result<(), ControlError> {
    // A spare read earlier may have been claimed since: then it is a session's container, and its
    // session ends below.
    let still_spare = c.spare_for.is_some()
        && st
            .db
            .close_spare(&c.container_key, container_state::FAILED, Some(why), now)
            .await
            .map_err(db_err)?;
    let claimed;
    let c = if c.spare_for.is_some() && !still_spare {
        match st.db.container_by_key(&c.container_key).await.map_err(db_err)? {
            Some(row) if row.spare_for.is_none() => {
                claimed = row;
                &claimed
            }
            // Still a spare, whose state was final already: nothing more to do.
            _ => return Ok(()),
        }
    } else {
        c
    };
    if !still_spare {
        st.db
            .close_container(&c.container_key, container_state::FAILED, Some(why), now)
            .await
            .map_err(db_err)?;
    }
    if let (true, Some(conn)) = (still_spare, &c.spare_for) {
        tracing::warn!(container_key = %c.container_key, connection_id = %conn, error = %why, "Warm spare failed");
        st.events.emit(
            Event::new(EventType::WorkspaceFailed)
                .connection(conn)
                .detail("reason", why)
                .detail("spare", &c.container_key),
        );
        return Ok(());
    }
    let session_id = c.session_id.as_str();
    let reason = format!("workspace failed: {why}");
    st.events.emit(
        Event::new(EventType::WorkspaceFailed)
            .session(session_id)
            .detail("reason", why),
    );
    if st
        .db
        .end_session(session_id, CloseCode::TargetError, &reason, now)
        .await
        .map_err(db_err)?
    {
        st.events.emit(
            Event::new(EventType::SessionEnded)
                .session(session_id)
                .detail("reason", &reason),
        );
    }
    Ok(())
}

/// Refuse a catalog beyond the bounds an agent may report (it is stored and shown to admins).
fn check_images(images: &[AgentImage]) -> Result<(), ControlError> {
    let bad = images.len() > AgentSync::MAX_IMAGES
        || images.iter().any(|i| {
            i.name.is_empty()
                || i.name.len() > 255
                || i.labels.len() > 32
                || i.labels.iter().any(|(k, v)| k.len() > 128 || v.len() > 512)
        });
    if bad {
        return Err(ControlError::Refused(format!(
            "an agent may report at most {} images, each named in at most 255 bytes with at most 32 short labels",
            AgentSync::MAX_IMAGES
        )));
    }
    Ok(())
}

/// Take an agent's report, then answer with the containers it should run (held while nothing changed).
pub async fn agent_sync(st: &AppState, agent: &AgentRow, req: &AgentSync) -> Result<AgentSyncResponse, ControlError> {
    let now = now_unix();
    let db = &st.db;
    let c = &req.capacity;
    if req.networks.len() > crate::internal::MAX_NETWORKS {
        return Err(ControlError::Refused(format!(
            "an agent may declare at most {} networks",
            crate::internal::MAX_NETWORKS
        )));
    }
    let networks = serde_json::to_string(&req.networks).unwrap_or_else(|_| "[]".into());
    if let Some(images) = &req.images {
        check_images(images)?;
        let json = serde_json::to_string(images).unwrap_or_else(|_| "[]".into());
        db.set_agent_images(&agent.id, &json).await.map_err(db_err)?;
    }
    // The catalog the pools go by: this sync's, else the last one stored (an agent lists its images
    // every few syncs).
    let images: Option<Vec<AgentImage>> = match &req.images {
        Some(i) => Some(i.clone()),
        None => db
            .agent_images_of(&agent.id)
            .await
            .map_err(db_err)?
            .and_then(|j| serde_json::from_str(&j).ok()),
    };
    db.agent_heartbeat(
        &agent.id,
        i64::from(c.cores),
        i64::try_from(c.memory_mb).unwrap_or(i64::MAX),
        i64::try_from(req.containers.len()).unwrap_or(i64::MAX),
        &networks,
        now,
    )
    .await
    .map_err(db_err)?;
    st.sweep_lost(now).await.map_err(db_err)?;
    // What the database holds of this agent's live containers, read once: reports that change nothing
    // write nothing (most syncs), and rows no report mentions are the agent's missing containers.
    let live = db.live_containers(&agent.id).await.map_err(db_err)?;
    for r in &req.containers {
        // A report for a row that is not live (an orphan, an ended session) changes nothing: the agent
        // removes the container because nobody wants it.
        let Some(row) = live.iter().find(|c| c.container_key == r.session_id) else {
            continue;
        };
        // A spare still starting long after its creation (its agent restarted and reports it unchecked):
        // let it go; the pool starts a fresh one.
        if row.spare_for.is_some() && r.state == ContainerState::Starting && now - row.created_at > START_TIMEOUT_SECS {
            if db
                .close_spare(&row.container_key, container_state::REMOVED, None, now)
                .await
                .map_err(db_err)?
            {
                tracing::warn!(container_key = %row.container_key, agent = %agent.name, "A spare never became ready; let go");
            }
            continue;
        }
        let (mut row_state, mut error) = match r.state {
            ContainerState::Starting => (container_state::STARTING, None),
            ContainerState::Ready => (container_state::READY, None),
            ContainerState::Failed => (
                container_state::FAILED,
                Some(
                    r.error
                        .clone()
                        .unwrap_or_else(|| "the workspace container stopped".into()),
                ),
            ),
        };
        let (mut host, mut port) = (r.host.as_deref(), r.port.map(i64::from));
        let unchanged = row.state == row_state
            && row.container_id.as_deref().unwrap_or("") == r.container_id
            && row.host.as_deref() == host
            && row.port == port;
        if unchanged {
            continue;
        }
        // The bridge connects where a ready container is: only inside the agent's declared networks,
        // never to loopback, the Docker host or the control plane itself.
        if r.state == ContainerState::Ready {
            let vnc_port = serde_json::from_str::<WorkspaceSpec>(&row.spec)
                .ok()
                .map(|s| s.vnc_port);
            let why = match (r.host.as_deref(), r.port) {
                (Some(h), Some(p)) => refuse_address(h, p, vnc_port, &req.networks, &host_addresses()),
                _ => Some("the agent reported a ready container without an address".to_owned()),
            };
            if let Some(why) = why {
                tracing::warn!(session_id = %r.session_id, agent = ?agent.name, host = ?r.host, port = ?r.port, reason = %why, "Refused a container address");
                (row_state, error, host, port) = (container_state::FAILED, Some(why), None, None);
            }
        }
        let error = error.as_deref();
        let update = ContainerUpdate {
            container_key: &r.session_id,
            container_id: &r.container_id,
            state: row_state,
            host,
            port,
            error,
        };
        if db.update_container(&agent.id, &update, now).await.map_err(db_err)? {
            if let Some(why) = error {
                tracing::warn!(container_key = %r.session_id, session_id = %row.session_id, agent = %agent.name, error = ?why, "Workspace container failed");
                fail(st, row, why, now).await?;
            } else if r.state == ContainerState::Ready && row.spare_for.is_some() {
                tracing::info!(container_key = %r.session_id, agent = %agent.name, container_id = %r.container_id, "Warm spare ready");
            } else if r.state == ContainerState::Ready {
                tracing::info!(session_id = %r.session_id, agent = %agent.name, container_id = %r.container_id, "Workspace ready");
                st.events.emit(
                    Event::new(EventType::WorkspaceReady)
                        .session(&row.session_id)
                        .detail("agent", &agent.name)
                        .detail("container_id", &r.container_id),
                );
            }
        }
    }
    // Rows the agent did not mention: a ready container that vanished ends its session; a wanted one the
    // agent has not created yet is fine for a while; an ended session's container is gone as it should be.
    for c in live
        .iter()
        .filter(|c| !req.containers.iter().any(|r| r.session_id == c.container_key))
    {
        if c.spare_for.is_some() {
            // A spare nobody uses: one that vanished is let go (the pool replaces it).
            if c.state == container_state::READY {
                db.close_spare(&c.container_key, container_state::REMOVED, None, now)
                    .await
                    .map_err(db_err)?;
            } else if now - c.created_at > START_TIMEOUT_SECS {
                let why = format!(
                    "agent {} did not start the spare within {START_TIMEOUT_SECS} s",
                    agent.name
                );
                fail(st, c, &why, now).await?;
            }
            continue;
        }
        let session = db.session(&c.session_id).await.map_err(db_err)?;
        let ended = session.as_ref().is_none_or(|s| s.state == state::ENDED);
        if ended {
            db.close_container(&c.container_key, container_state::REMOVED, None, now)
                .await
                .map_err(db_err)?;
            st.events.emit(
                Event::new(EventType::WorkspaceRemoved)
                    .session(&c.session_id)
                    .detail("agent", &agent.name)
                    .detail("container_id", &c.container_id),
            );
        } else if c.state == container_state::READY {
            tracing::warn!(session_id = %c.session_id, agent = %agent.name, "Workspace container vanished");
            fail(st, c, "the workspace container vanished", now).await?;
        } else if now - c.created_at > START_TIMEOUT_SECS {
            let why = format!(
                "agent {} did not start the workspace within {START_TIMEOUT_SECS} s",
                agent.name
            );
            fail(st, c, &why, now).await?;
        }
    }
    // The warm pools of this agent: spares let go or wanted (what the answer below then carries).
    if let Err(e) = top_up(st, &agent.id, agent.draining_at.is_none(), images.as_deref(), now).await {
        tracing::warn!(agent = %agent.name, error = %e, "Could not top up the warm pools");
    }
    // Long poll: answer as soon as the wanted set differs from what the agent has.
    let mut have: Vec<&str> = req
        .containers
        .iter()
        .filter(|r| r.state != ContainerState::Failed)
        .map(|r| r.session_id.as_str())
        .collect();
    have.sort_unstable();
    // Held at most one heartbeat interval: a held sync must not make its agent look down.
    let wait = Duration::from_millis(req.wait_ms.into())
        .min(MAX_SYNC_WAIT)
        .min(st.config.agent_heartbeat);
    let deadline = tokio::time::Instant::now() + wait;
    let desired = loop {
        let desired = db.desired_containers(&agent.id).await.map_err(db_err)?;
        let mut want: Vec<&str> = desired.iter().map(|c| c.container_key.as_str()).collect();
        want.sort_unstable();
        if want != have || tokio::time::Instant::now() >= deadline {
            break desired;
        }
        tokio::time::sleep(POLL).await;
    };
    let mut out = Vec::with_capacity(desired.len());
    for c in desired {
        let spec: WorkspaceSpec = serde_json::from_str(&c.spec)
            .map_err(|e| ControlError::Unavailable(format!("bad workspace spec in the database: {e}")))?;
        let password = st.keys.open(&c.vnc_password_enc, &aad(&c.container_key)).map_err(|e| {
            tracing::error!(error = format!("{e:#}"), container_key = %c.container_key, "Cannot decrypt a workspace password");
            ControlError::Unavailable("cannot decrypt the workspace password".into())
        })?;
        out.push(DesiredContainer {
            session_id: c.container_key,
            spec,
            vnc_password: Secret::new(password),
        });
    }
    Ok(AgentSyncResponse {
        heartbeat_secs: st.agent_heartbeat_secs(),
        desired: out,
    })
}

/// Wait (at most [`WORKSPACE_WAIT`]) until the session's container is ready; `Ok(None)` if it is still
/// starting (ask again).
pub async fn wait_ready(st: &AppState, session_id: &str) -> Result<Option<WorkspaceEndpoint>, ControlError> {
    let deadline = tokio::time::Instant::now() + WORKSPACE_WAIT;
    // Once per call: the bridge asks again every few seconds, and its session sync sweeps too.
    st.sweep_lost(now_unix()).await.map_err(db_err)?;
    loop {
        let c = st
            .db
            .container(session_id)
            .await
            .map_err(db_err)?
            .ok_or(ControlError::NotFound)?;
        match c.state.as_str() {
            container_state::READY => {
                let (Some(host), Some(port)) = (c.host.clone(), c.port.and_then(|p| u16::try_from(p).ok())) else {
                    return Err(ControlError::Unavailable("the agent reported no address".into()));
                };
                let password = st
                    .keys
                    .open(&c.vnc_password_enc, &aad(&c.container_key))
                    .map_err(|_| ControlError::Unavailable("cannot decrypt the workspace password".into()))?;
                return Ok(Some(WorkspaceEndpoint {
                    host,
                    port,
                    password: Secret::new(password),
                }));
            }
            container_state::STARTING => {
                let s = st.db.session(session_id).await.map_err(db_err)?;
                if let Some(s) = s.filter(|s| s.state == state::ENDED) {
                    return Err(ControlError::Refused(
                        s.end_reason.unwrap_or_else(|| "the session ended".into()),
                    ));
                }
            }
            _ => {
                return Err(ControlError::Refused(
                    c.error.unwrap_or_else(|| "the workspace container is gone".into()),
                ));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An IP network (`address/prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Option<Net> {
        let (a, p) = s.split_once('/')?;
        let addr: IpAddr = a.trim().parse().ok()?;
        let prefix: u8 = p.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Net { addr, prefix })
    }

    fn bits(ip: IpAddr) -> (u128, u8) {
        match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ((net, fam), (x, fam2)) = (Self::bits(self.addr), Self::bits(ip));
        if fam != fam2 {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == x & mask
    }

    fn overlaps(&self, other: &Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

/// Ranges no container address may be in, nor a declared network overlap (such a network is ignored).
const FORBIDDEN: &[(&str, &str)] = &[
    ("0.0.0.0/8", "the unspecified network"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("fe80::/10", "a link-local address"),
    ("ff00::/8", "a multicast address"),
];

/// Why the bridge must not be sent to `host:port`, which an agent reported for a container: `None` if it
/// may. `own` are the addresses of the control plane's host; `vnc_port` the workspace's VNC port.
pub fn refuse_address(
    host: &str,
    port: u16,
    vnc_port: Option<u16>,
    networks: &[AgentNetwork],
    own: &[IpAddr],
) -> Option<String> {
    let refused = |why: String| Some(format!("refused container address {host}:{port}: {why}"));
    let Ok(ip) = host.parse::<IpAddr>() else {
        return refused("not an ip address".into());
    };
    let ip = ip.to_canonical();
    for (net, what) in FORBIDDEN {
        if Net::parse(net).is_some_and(|n| n.contains(ip)) {
            return refused((*what).into());
        }
    }
    if own.iter().any(|o| o.to_canonical() == ip) {
        return refused("an address of the control plane's own host".into());
    }
    if let Some(n) = networks.iter().find(|n| {
        n.gateway
            .as_deref()
            .and_then(|g| g.parse::<IpAddr>().ok())
            .map(|g| g.to_canonical())
            == Some(ip)
    }) {
        return refused(format!("the gateway of network {} (the docker host itself)", n.name));
    }
    let usable = |n: &&AgentNetwork| {
        Net::parse(&n.subnet).is_some_and(|net| {
            net.contains(ip)
                && !FORBIDDEN
                    .iter()
                    .filter_map(|(f, _)| Net::parse(f))
                    .any(|f| f.overlaps(&net))
        })
    };
    if !networks.iter().any(|n| usable(&n)) {
        let declared: Vec<&str> = networks.iter().map(|n| n.subnet.as_str()).collect();
        return refused(format!("outside the agent's networks ({})", declared.join(", ")));
    }
    if let Some(v) = vnc_port
        && v != port
    {
        return refused(format!("port {port} is not the workspace's vnc port {v}"));
    }
    None
}

/// The addresses of this host (Linux: `/proc/net/fib_trie` for IPv4, `/proc/net/if_inet6` for IPv6); an
/// agent may never send the bridge to one of them.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<IpAddr> = None;
        for line in trie.lines().map(str::trim) {
            if let Some(a) = line.strip_prefix("|-- ") {
                last = a.trim().parse().ok();
            } else if line.contains("host LOCAL")
                && let Some(ip) = last
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for hex in v6.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Ok(n) = u128::from_str_radix(hex, 16)
                && hex.len() == 32
            {
                out.push(IpAddr::V6(n.into()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str, gateway: Option<&str>) -> AgentNetwork {
        AgentNetwork {
            name: name.into(),
            subnet: subnet.into(),
            gateway: gateway.map(Into::into),
        }
    }

    #[test]
    fn container_addresses_must_be_inside_the_declared_networks() {
        let nets = [
            net("portico-workspaces", "172.18.0.0/16", Some("172.18.0.1")),
            net("all", "0.0.0.0/0", None),
        ];
        let own: [IpAddr; 1] = ["10.0.0.5".parse().unwrap()];
        let check = |h: &str, p: u16| refuse_address(h, p, Some(5901), &nets, &own);
        assert_eq!(check("172.18.0.2", 5901), None);
        for (host, needle) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("169.254.169.254", "link-local"),
            ("fe80::1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("10.0.0.5", "control plane"),
            ("172.18.0.1", "gateway"),
            ("10.0.0.6", "outside"),
            ("portico.example", "not an ip"),
        ] {
            let why = check(host, 5901).unwrap_or_default();
            assert!(why.contains(needle), "{host}: {why:?}");
        }
        assert!(check("172.18.0.2", 22).is_some_and(|w| w.contains("vnc port")));
        assert!(refuse_address("172.18.0.2", 22, None, &nets, &own).is_none());
    }

    #[test]
    fn this_host_has_addresses() {
        let own = host_addresses();
        assert!(own.iter().any(IpAddr::is_loopback), "{own:?}");
    }
}
