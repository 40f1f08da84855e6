//! The database layer against both engines: SQLite (file) and PostgreSQL 15 (real server).

use portico_tests::peers::Postgres;
use portico_tests::workspace_root;
use portico_webapp::db::{Connection, ContainerRow, ContainerUpdate, Db, SessionRow, container_state, state};

async fn exercise(db: &Db) -> anyhow::Result<()> {
    db.ping().await?;
    db.migrate().await?; // Idempotent.
    let now = 1_800_000_000;
    db.insert_user("u1", "alice", "hash", "admin", now).await?;
    assert!(
        db.insert_user("u2", "alice", "hash", "user", now).await.is_err(),
        "usernames are unique"
    );
    assert_eq!(db.count_users().await?, 1);
    let (u, hash) = db.user_with_hash("alice").await?.expect("user");
    assert_eq!((u.id.as_str(), hash.as_str(), u.role.as_str()), ("u1", "hash", "admin"));

    db.insert_login_session("sess-hash", "u1", "csrf", now, now + 10)
        .await?;
    assert_eq!(
        db.login_session("sess-hash", now).await?.map(|(u, c)| (u.username, c)),
        Some(("alice".into(), "csrf".into()))
    );
    assert!(
        db.login_session("sess-hash", now + 11).await?.is_none(),
        "expired login sessions are invisible"
    );

    for _ in 0..3 {
        db.record_login_failure("user:alice", now).await?;
    }
    assert_eq!(db.login_failures_since("user:alice", now - 1).await?, 3);
    db.clear_login_failures("user:alice").await?;
    assert_eq!(db.login_failures_since("user:alice", now - 1).await?, 0);

    let c = Connection {
        id: "c1".into(),
        name: "box".into(),
        protocol: "ssh".into(),
        host: "127.0.0.1".into(),
        port: 22,
        username: "root".into(),
        password_enc: Some("v1:sealed".into()),
        private_key_enc: None,
        host_key_fingerprint: None,
        settings: r#"{"domain":"CORP"}"#.into(),
        created_at: now,
        updated_at: now,
    };
    db.insert_connection(&c).await?;
    assert!(db.pin_host_key_if_unset("c1", "SHA256:first", now).await?);
    assert!(
        !db.pin_host_key_if_unset("c1", "SHA256:second", now).await?,
        "a pinned key is never replaced"
    );
    assert_eq!(
        db.connection("c1")
            .await?
            .and_then(|c| c.host_key_fingerprint)
            .as_deref(),
        Some("SHA256:first")
    );
    assert_eq!(db.list_connections().await?.len(), 1);

    db.insert_session(&pending("s1", "jti-1", now)).await?;
    assert!(!db.claim_session("s1", "wrong-jti", "b1", now).await?);
    assert!(db.claim_session("s1", "jti-1", "b1", now).await?, "first claim wins");
    assert!(!db.claim_session("s1", "jti-1", "b2", now).await?, "second claim loses");
    let row = db.session("s1").await?.expect("session");
    assert_eq!(
        (row.state.as_str(), row.bridge_id.as_deref()),
        (state::ACTIVE, Some("b1"))
    );

    let ids = vec!["s1".to_owned(), "ghost".to_owned()];
    let ended_ids = |v: Vec<(String, Option<String>)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(ended_ids(db.ended_among(&ids).await?), vec!["ghost".to_owned()]);
    assert!(db.end_session("s1", "test", now + 5).await?);
    assert!(!db.end_session("s1", "test", now + 6).await?, "ending twice is a no-op");
    assert_eq!(ended_ids(db.ended_among(&ids).await?), ids);
    assert_eq!(db.list_sessions(Some("u1"), false).await?.len(), 0);
    assert_eq!(db.list_sessions(None, true).await?.len(), 1);

    db.insert_api_key("k1", "u1", "ci", "keyhash", now).await?;
    assert_eq!(
        db.user_by_api_key("keyhash", now).await?.map(|u| u.id).as_deref(),
        Some("u1")
    );
    assert!(db.delete_user("u1").await?);
    assert!(
        db.user_by_api_key("keyhash", now).await?.is_none(),
        "keys go with their user"
    );
    workspaces(db, now).await?;
    db.prune(now + 100_000).await?;
    Ok(())
}

/// A new session `id` of user u1 on connection c1, its token not yet claimed.
fn pending(id: &str, jti: &str, now: i64) -> SessionRow {
    SessionRow {
        id: id.into(),
        user_id: "u1".into(),
        connection_id: "c1".into(),
        state: state::PENDING.into(),
        token_jti: jti.into(),
        token_expires_at: now + 60,
        claimed_at: None,
        bridge_id: None,
        created_at: now,
        ended_at: None,
        end_reason: None,
    }
}

/// A wanted container row of session `sid` on `agent`.
fn starting(sid: &str, agent: &str, memory_mb: i64, cpu_millis: i64, now: i64) -> ContainerRow {
    ContainerRow {
        session_id: sid.into(),
        agent_id: agent.into(),
        spec: "{}".into(),
        vnc_password_enc: "sealed".into(),
        state: container_state::STARTING.into(),
        container_id: None,
        host: None,
        port: None,
        error: None,
        memory_mb,
        cpu_millis,
        created_at: now,
        ready_at: None,
        removed_at: None,
    }
}

/// Agents and workspace containers: scheduling loads, the wanted set, agent reports, lost agents.
async fn workspaces(db: &Db, now: i64) -> anyhow::Result<()> {
    let a = db
        .register_agent("host-a", "cred-a", "20.10.24", 4, 8192, 0, "127.0.0.1", now)
        .await?;
    let b = db
        .register_agent("host-b", "cred-b", "20.10.24", 2, 4096, 0, "127.0.0.1", now - 100)
        .await?;
    db.agent_registration_failed("host-c", "wrong registration token", "127.0.0.2", now)
        .await?;
    for (sid, agent) in [("w1", &a), ("w2", &a), ("w3", &b)] {
        db.insert_session(&pending(sid, &format!("jti-{sid}"), now)).await?;
        assert!(
            db.place_container(&starting(sid, agent, 512, 1500, now)).await?,
            "room for {sid}"
        );
    }
    // Only agents alive since the cut-off count; sums come back as integers on both engines.
    let loads = db.agent_loads(now - 10).await?;
    assert_eq!(loads.len(), 1, "host-b is stale, host-c never registered");
    assert_eq!(
        (
            loads[0].name.as_str(),
            loads[0].used_memory_mb,
            loads[0].used_cpu_millis
        ),
        ("host-a", 1024, 3000)
    );
    let want: Vec<String> = db
        .desired_containers(&a)
        .await?
        .into_iter()
        .map(|c| c.session_id)
        .collect();
    assert_eq!(want, ["w1", "w2"]);
    let ready = ContainerUpdate {
        session_id: "w1",
        container_id: "abc",
        state: container_state::READY,
        host: Some("172.31.0.2"),
        port: Some(5901),
        error: None,
    };
    assert!(db.update_container(&a, &ready, now + 1).await?);
    assert!(
        !db.update_container(&b, &ready, now + 1).await?,
        "not host-b's container"
    );
    let w1 = db.container("w1").await?.expect("row");
    assert_eq!(
        (w1.state.as_str(), w1.ready_at, w1.port),
        ("ready", Some(now + 1), Some(5901))
    );
    let unreported: Vec<String> = db
        .live_containers(&a)
        .await?
        .into_iter()
        .map(|c| c.session_id)
        .filter(|sid| sid != "w1")
        .collect();
    assert_eq!(unreported, ["w2"]);
    // An ended session's container is no longer wanted, and its reports change nothing.
    db.end_session("w2", "ended by the user", now + 2).await?;
    assert_eq!(db.desired_containers(&a).await?.len(), 1);
    let late = ContainerUpdate {
        session_id: "w2",
        state: container_state::READY,
        ..ready
    };
    assert!(!db.update_container(&a, &late, now + 3).await?);
    assert!(
        db.close_container("w2", container_state::REMOVED, None, now + 3)
            .await?
    );
    // host-b has been silent: its session is lost, once.
    let lost = db.sweep_lost(now + 5, now - 10).await?;
    assert_eq!(lost, ["w3"]);
    assert!(db.sweep_lost(now + 6, now - 10).await?.is_empty());
    let w3 = db.session("w3").await?.expect("row");
    assert!(
        w3.end_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("lost:") && r.contains("host-b")),
        "{w3:?}"
    );
    assert_eq!(db.container("w3").await?.map(|c| c.state).as_deref(), Some("lost"));

    // Placement is atomic: 20 concurrent placements of 256 MiB on 2048 MiB, exactly 8 fit.
    let d = db
        .register_agent("host-d", "cred-d", "20.10.24", 64, 2048, 0, "127.0.0.1", now)
        .await?;
    let rows: Vec<ContainerRow> = (0..20).map(|i| starting(&format!("p{i}"), &d, 256, 100, now)).collect();
    let placed = futures_util::future::join_all(rows.iter().map(|r| db.place_container(r))).await;
    let ok = placed.iter().filter(|r| matches!(r, Ok(true))).count();
    let errors: Vec<String> = placed
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(ok, 8, "placed {ok} of 20 in a budget of 8");
    assert_eq!(
        db.agent_loads(now - 10)
            .await?
            .iter()
            .find(|l| l.id == d)
            .map(|l| l.used_memory_mb),
        Some(2048)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn database_layer_on_sqlite() -> anyhow::Result<()> {
    let dir = workspace_root()
        .join(".test-runs")
        .join(format!("sqlite-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let db = Db::connect(&format!("sqlite://{}", dir.join("t.db").display())).await?;
    let res = exercise(&db).await;
    db.pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    res
}

#[tokio::test(flavor = "multi_thread")]
async fn database_layer_on_postgres() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let db = Db::connect(&pg.url()).await?;
    let res = exercise(&db).await;
    db.pool.close().await;
    res
}
