//! The database layer against both engines: SQLite (file) and PostgreSQL 15 (real server).

use portico_proto::codes::CloseCode;
use portico_tests::peers::Postgres;
use portico_tests::workspace_root;
use portico_webapp::db::{
    AgentRegisterOutcome, AgentRegistration, Change, Connection, ContainerRow, ContainerUpdate, Db, ExternalIdentity,
    Folder, Grants, GroupBody, IdentityProvider, Limits, ListQuery, OidcLogin, REVOKED, SessionRow, SessionStart,
    container_state, state,
};

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

    db.insert_login_session("sess-hash", "u1", "csrf", now, now + 10, false)
        .await?;
    assert_eq!(
        db.login_session("sess-hash", now)
            .await?
            .map(|(u, c, _)| (u.username, c)),
        Some(("alice".into(), "csrf".into()))
    );
    assert!(
        db.login_session("sess-hash", now + 11).await?.is_none(),
        "expired login sessions are invisible"
    );

    // Login attempts are recorded before verification: of 40 concurrent attempts at most the limit are
    // admitted, refused ones leave no row, and the retry time is when the oldest counted attempt expires.
    let subjects = |i: usize| vec![("user:alice".to_owned(), 5), (format!("ip:10.0.0.{i}"), 30)];
    let admitted = futures_util::future::try_join_all((0..40).map(|i| {
        let subjects = subjects(i);
        async move { db.begin_login_attempt(&format!("a{i}"), &subjects, now, 300).await }
    }))
    .await?;
    let refused: Vec<i64> = admitted.iter().flatten().copied().collect();
    assert!(
        40 - refused.len() <= 5,
        "{} of 40 concurrent attempts admitted",
        40 - refused.len()
    );
    assert!(refused.iter().all(|&r| r == 300), "{refused:?}");
    let admitted_ids: Vec<String> = (0..40)
        .filter(|&i| admitted[i].is_none())
        .map(|i| format!("a{i}"))
        .collect();
    // The admitted ones stay counted (failures); the limit now refuses the next attempt at once.
    assert_eq!(
        db.begin_login_attempt("next", &subjects(99), now + 10, 300).await?,
        (admitted_ids.len() == 5).then_some(290)
    );
    for id in &admitted_ids {
        db.end_login_attempt(id).await?;
    }
    assert_eq!(db.begin_login_attempt("after", &subjects(99), now, 300).await?, None);
    db.clear_login_failures("user:alice").await?;

    let c = Connection {
        username: "root".into(),
        password_enc: Some("v1:sealed".into()),
        settings: r#"{"domain":"CORP"}"#.into(),
        ..Connection::new("c1", "box", "ssh", "127.0.0.1", 22, now)
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
    assert_eq!(db.list_connections("u1", None, &page(None)).await?.1, 1);

    db.insert_session(&pending("s1", "jti-1", now)).await?;
    assert!(!db.claim_session("s1", "wrong-jti", "b1", now).await?);
    assert!(
        !db.claim_session("s1", "jti-1", "b1", now + 66).await?,
        "an expired token claims nothing"
    );
    assert!(db.claim_session("s1", "jti-1", "b1", now).await?, "first claim wins");
    assert!(!db.claim_session("s1", "jti-1", "b2", now).await?, "second claim loses");
    let row = db.session("s1").await?.expect("session");
    assert_eq!(
        (row.state.as_str(), row.bridge_id.as_deref()),
        (state::ACTIVE, Some("b1"))
    );

    let ids = vec!["s1".to_owned(), "ghost".to_owned()];
    let ended_ids =
        |v: Vec<(String, Option<String>, Option<CloseCode>)>| v.into_iter().map(|(id, ..)| id).collect::<Vec<_>>();
    assert_eq!(ended_ids(db.ended_among(&ids, "b1").await?), vec!["ghost".to_owned()]);
    assert_eq!(
        ended_ids(db.ended_among(&ids, "b2").await?),
        ids,
        "another bridge's session is over for b2"
    );
    shares(db, now).await?;
    bridges(db, now).await?;
    assert!(db.end_session("s1", CloseCode::IdleTimeout, "test", now + 5).await?);
    assert!(
        !db.end_session("s1", CloseCode::Ended, "test", now + 6).await?,
        "ending twice is a no-op"
    );
    assert_eq!(ended_ids(db.ended_among(&ids, "b1").await?), ids);
    // The code the session ended with is what its bridge hears; an unknown session has none.
    assert_eq!(
        db.ended_among(&ids, "b1").await?,
        vec![
            ("s1".to_owned(), Some("test".to_owned()), Some(CloseCode::IdleTimeout)),
            ("ghost".to_owned(), None, None)
        ]
    );
    assert_eq!(db.list_sessions(Some("u1"), false).await?.len(), 0);
    // s1, and the session the bridge tier's checks lost with its bridge.
    assert_eq!(db.list_sessions(None, true).await?.len(), 2);

    let key = |id: &str, expires_at: Option<i64>| portico_webapp::db::ApiKey {
        id: id.into(),
        user_id: "u1".into(),
        name: "ci".into(),
        created_at: now,
        last_used_at: None,
        scope: "sessions".into(),
        expires_at,
    };
    db.insert_api_key(&key("k1", Some(now + 10)), "keyhash").await?;
    db.insert_api_key(&key("k2", None), "legacy").await?;
    assert_eq!(
        db.user_by_api_key("keyhash", now).await?.map(|(u, s)| (u.id, s)),
        Some(("u1".into(), "sessions".into()))
    );
    assert!(
        db.user_by_api_key("keyhash", now + 10).await?.is_none(),
        "expired keys are invalid"
    );
    assert!(
        db.user_by_api_key("legacy", now + 10).await?.is_some(),
        "keys from before expiries"
    );
    assert!(db.delete_user("u1", now).await?);
    assert!(
        db.user_by_api_key("keyhash", now).await?.is_none(),
        "keys go with their user"
    );
    workspaces(db, now).await?;
    agent_identities(db, now).await?;
    access(db, now).await?;
    favourites(db, now).await?;
    second_factors(db, now).await?;
    identities(db, now).await?;
    events(db, now).await?;
    db.prune(now + 100_000).await?;
    Ok(())
}

/// Events: batch inserts, filters (type, user as subject or actor, connection, session, time) with paging
/// newest first and the total, pruning in bounded batches, and agents reported down once per outage.
async fn events(db: &Db, now: i64) -> anyhow::Result<()> {
    use std::sync::Arc;

    use portico_webapp::db::EventQuery;
    use portico_webapp::events::{Event, EventType};

    let base_ms = now * 1000;
    let all: Vec<Arc<Event>> = (0..2500_i64)
        .map(|i| {
            let mut e = Event::new(if i % 5 == 0 {
                EventType::LoginFailed
            } else {
                EventType::SessionCreated
            })
            .detail("i", i)
            .detail("note", "quote \" and 'apostrophe'");
            e.at = base_ms + i;
            e.id = format!("ev-{i:05}");
            if i % 10 == 0 {
                e = e.user("ev-user");
            }
            if i % 10 == 1 {
                e = e.actor("ev-user");
            }
            if i % 7 == 0 {
                e = e.connection("ev-conn").session(&format!("ev-sess-{}", i % 3));
            }
            Arc::new(e)
        })
        .collect();
    db.insert_events(&all, 100).await?;
    let q = |f: &dyn Fn(&mut EventQuery)| {
        let mut q = EventQuery {
            limit: 100,
            ..EventQuery::default()
        };
        f(&mut q);
        q
    };
    let (page, total) = db.events(&q(&|_| {})).await?;
    assert_eq!(total, 2500);
    assert_eq!(page.len(), 100);
    assert_eq!(page[0].id, "ev-02499", "newest first");
    assert_eq!(page[0].details["note"], "quote \" and 'apostrophe'");
    assert_eq!(page[0].event_type, "session_created");
    let (page2, _) = db.events(&q(&|q| q.offset = 100)).await?;
    assert_eq!(page2[0].id, "ev-02399", "pages follow each other");
    let (logins, total) = db.events(&q(&|q| q.types = vec!["login_failed".into()])).await?;
    assert_eq!(total, 500);
    assert!(logins.iter().all(|e| e.event_type == "login_failed"));
    let (_, both) = db
        .events(&q(&|q| q.types = vec!["login_failed".into(), "session_created".into()]))
        .await?;
    assert_eq!(both, 2500);
    let (mine, total) = db.events(&q(&|q| q.user_id = Some("ev-user".into()))).await?;
    assert_eq!(total, 500, "about the user or by them");
    assert!(
        mine.iter()
            .all(|e| e.user_id.as_deref() == Some("ev-user") || e.actor_id.as_deref() == Some("ev-user"))
    );
    let (_, total) = db.events(&q(&|q| q.connection_id = Some("ev-conn".into()))).await?;
    assert_eq!(total, 358);
    let (sess, total) = db
        .events(&q(&|q| {
            q.session_id = Some("ev-sess-1".into());
            q.connection_id = Some("ev-conn".into());
        }))
        .await?;
    assert_eq!(total, 119);
    assert!(sess.iter().all(|e| e.session_id.as_deref() == Some("ev-sess-1")));
    let (window, total) = db
        .events(&q(&|q| {
            q.since = Some(base_ms + 10);
            q.until = Some(base_ms + 20);
        }))
        .await?;
    assert_eq!(total, 10, "since inclusive, until exclusive");
    assert_eq!((window[0].at, window[9].at), (base_ms + 19, base_ms + 10));
    // Pruning: at most a batch per statement, the oldest first, never newer ones.
    assert_eq!(db.prune_events(base_ms + 2400, 1000).await?, 1000);
    assert_eq!(db.prune_events(base_ms + 2400, 1000).await?, 1000);
    assert_eq!(db.prune_events(base_ms + 2400, 1000).await?, 400);
    assert_eq!(db.prune_events(base_ms + 2400, 1000).await?, 0);
    let (left, total) = db.events(&q(&|_| {})).await?;
    assert_eq!(total, 100);
    assert_eq!(left.last().map(|e| e.id.as_str()), Some("ev-02400"));
    assert_eq!(db.prune_events(base_ms + 10_000, 1000).await?, 100);

    // An agent that stops responding is reported once; after a heartbeat, its next outage again.
    let id = id_of(register(db, "ev-agent", "ev-identity", "ev-cred", (2, 2048), now).await?)?;
    let down = |v: Vec<(String, String)>| v.into_iter().filter(|(i, _)| *i == id).count();
    assert_eq!(down(db.agents_newly_down(now, now + 1).await?), 0, "alive");
    assert_eq!(down(db.agents_newly_down(now + 1, now + 20).await?), 1, "down");
    assert_eq!(down(db.agents_newly_down(now + 1, now + 21).await?), 0, "reported once");
    db.agent_heartbeat(&id, 2, 2048, 0, "[]", now + 30).await?;
    assert_eq!(down(db.agents_newly_down(now + 30, now + 31).await?), 0);
    assert_eq!(
        down(db.agents_newly_down(now + 31, now + 50).await?),
        1,
        "the next outage"
    );
    Ok(())
}

/// TOTP state: a time step is used once, a challenge takes five attempts (also when they come at once),
/// recovery codes work once, a reset clears it all; settings replace their value.
async fn second_factors(db: &Db, now: i64) -> anyhow::Result<()> {
    db.insert_user("um", "mia", "hash", "user", now).await?;
    assert!(db.set_pending_totp("um", "sealed-1").await?);
    assert!(!db.use_totp_step("ghost", 10).await?);
    assert!(db.confirm_totp("um", 100, &["rc1".into(), "rc2".into()]).await?);
    assert!(
        !db.set_pending_totp("um", "sealed-2").await?,
        "a confirmed secret stays until a reset"
    );
    assert_eq!(db.totp_secret("um").await?.as_deref(), Some("sealed-1"));
    assert!(db.user("um").await?.is_some_and(|u| u.mfa_enabled));
    assert!(!db.use_totp_step("um", 100).await?, "the confirming step is used");
    assert!(db.use_totp_step("um", 101).await?);
    assert!(!db.use_totp_step("um", 101).await?, "once");
    assert!(!db.use_totp_step("um", 99).await?, "never an older step");
    db.insert_mfa_challenge("ch", "um", now + 300).await?;
    let attempts = futures_util::future::try_join_all((0..20).map(|_| db.mfa_attempt("ch", now))).await?;
    assert_eq!(attempts.iter().flatten().count(), 5, "{attempts:?}");
    assert!(attempts.iter().flatten().all(|u| u == "um"));
    db.insert_mfa_challenge("old", "um", now - 1).await?;
    assert_eq!(db.mfa_attempt("old", now).await?, None, "expired");
    assert!(db.use_recovery_code("um", "rc1", now).await?);
    assert!(!db.use_recovery_code("um", "rc1", now).await?);
    assert!(db.reset_totp("um").await?);
    assert!(db.user("um").await?.is_some_and(|u| !u.mfa_enabled));
    assert!(
        !db.use_recovery_code("um", "rc2", now).await?,
        "a reset removes the recovery codes"
    );
    assert_eq!(db.setting("mfa_required_roles").await?, None);
    db.set_setting("mfa_required_roles", "admin").await?;
    db.set_setting("mfa_required_roles", "admin,user").await?;
    assert_eq!(db.setting("mfa_required_roles").await?.as_deref(), Some("admin,user"));
    Ok(())
}

/// Single sign-on: providers with unique names, a provider's user created once and found again by their
/// id there (a name taken elsewhere gets `@provider`), memberships replaced at each login (unknown group
/// names ignored), OIDC states that work once even when presented at once, and a provider deleted with
/// its users.
async fn identities(db: &Db, now: i64) -> anyhow::Result<()> {
    let provider = |id: &str, name: &str| IdentityProvider {
        id: id.into(),
        kind: "oidc".into(),
        name: name.into(),
        config: "{}".into(),
        secret_enc: Some("sealed".into()),
        enabled: true,
        created_at: now,
    };
    let corp = provider("p1", "corp");
    assert!(db.save_provider(&corp).await?);
    assert!(!db.save_provider(&provider("p2", "corp")).await?, "names are unique");
    let other = provider("p2", "other");
    assert!(db.save_provider(&other).await?);
    let mut renamed = corp.clone();
    renamed.enabled = false;
    assert!(db.save_provider(&renamed).await?, "saving again updates");
    assert_eq!(db.provider("p1").await?.map(|p| p.enabled), Some(false));
    assert!(db.save_provider(&corp).await?);
    assert_eq!(db.list_providers().await?.len(), 2);

    for (id, name) in [("gi1", "desk"), ("gi2", "ops")] {
        db.create_group(
            id,
            &GroupBody {
                name: name.into(),
                max_sessions: None,
                protocols: None,
                recording: None,
            },
            now,
        )
        .await?;
    }
    let who = |sub: &str, name: &str, groups: &[&str]| ExternalIdentity {
        external_id: sub.into(),
        username: name.into(),
        role: "user".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let first = db
        .sync_external_user(&corp, &who("sub-1", "ida", &["desk", "nope"]), now)
        .await?;
    assert_eq!(
        (first.username.as_str(), first.provider_id.as_deref()),
        ("ida", Some("p1"))
    );
    assert_eq!(db.members("gi1").await?, std::slice::from_ref(&first.id));
    let again = db
        .sync_external_user(&corp, &who("sub-1", "ida", &["ops"]), now)
        .await?;
    assert_eq!(again.id, first.id, "found again by sub");
    assert!(db.members("gi1").await?.is_empty(), "left desk at the provider");
    assert_eq!(db.members("gi2").await?, std::slice::from_ref(&first.id));
    let twin = db.sync_external_user(&other, &who("sub-1", "ida", &[]), now).await?;
    assert_ne!(twin.id, first.id, "the same sub at another provider is another user");
    assert_eq!(twin.username, "ida@other");
    assert_eq!(
        db.external_user("p2", "sub-1").await?.map(|u| u.id),
        Some(twin.id.clone())
    );
    assert_eq!(db.count_provider_users("p1").await?, 1);

    let login = OidcLogin {
        provider_id: "p1".into(),
        nonce: "n".into(),
        verifier: "v".into(),
        binding_hash: "b".into(),
        next_path: "/".into(),
        expires_at: now + 600,
    };
    db.insert_oidc_login("state-hash", &login, now).await?;
    assert_eq!(db.count_oidc_logins(now).await?, 1);
    let takes = futures_util::future::try_join_all((0..10).map(|_| db.take_oidc_login("state-hash"))).await?;
    assert_eq!(
        takes.iter().flatten().count(),
        1,
        "a state works once, also when presented at once"
    );
    assert_eq!(takes.iter().flatten().next().map(|l| l.nonce.as_str()), Some("n"));
    db.insert_oidc_login(
        "stale",
        &OidcLogin {
            expires_at: now - 1,
            ..login.clone()
        },
        now,
    )
    .await?;
    db.insert_oidc_login("fresh", &login, now).await?;
    assert!(db.take_oidc_login("stale").await?.is_none(), "expired states are swept");

    assert!(db.delete_provider("p2", now).await?);
    assert!(db.user(&twin.id).await?.is_none(), "its users go with it");
    assert!(db.user(&first.id).await?.is_some());
    Ok(())
}

fn page(q: Option<&str>) -> ListQuery {
    ListQuery {
        q: q.map(str::to_owned),
        limit: 1000,
        ..ListQuery::default()
    }
}

/// Grants through nested folders and groups, the closure that follows folder moves, revocation that ends
/// exactly the sessions that lost access (in the same transaction), and the session limit under 40
/// concurrent starts.
async fn access(db: &Db, now: i64) -> anyhow::Result<()> {
    for (id, name, role) in [
        ("ua", "ann", "user"),
        ("ub", "ben", "user"),
        ("ud", "dan", "admin"),
        ("ux", "xia", "auditor"),
    ] {
        db.insert_user(id, name, "hash", role, now).await?;
    }
    let folder = |id: &str, parent: Option<&str>| Folder {
        id: id.into(),
        name: format!("folder {id}"),
        parent_id: parent.map(str::to_owned),
        created_at: now,
    };
    assert_eq!(db.create_folder(&folder("f1", None)).await?, Change::Done);
    assert_eq!(db.create_folder(&folder("f2", Some("f1"))).await?, Change::Done);
    assert_eq!(db.create_folder(&folder("f3", Some("f2"))).await?, Change::Done);
    assert_eq!(db.create_folder(&folder("g1", None)).await?, Change::Done);
    assert!(matches!(
        db.create_folder(&folder("f9", Some("nope"))).await?,
        Change::Refused(_)
    ));
    let conn = |id: &str, name: &str, folder: Option<&str>| Connection {
        username: "root".into(),
        folder_id: folder.map(str::to_owned),
        ..Connection::new(id, name, "ssh", format!("{id}.example.internal"), 22, now)
    };
    db.insert_connection(&conn("deep", "Deep 100%", Some("f3"))).await?;
    db.insert_connection(&conn("other", "Other_box", Some("g1"))).await?;
    db.insert_connection(&conn("top", "Top", None)).await?;
    assert!(
        db.create_group(
            "grp",
            &GroupBody {
                name: "helpdesk".into(),
                max_sessions: Some(3),
                protocols: None,
                recording: None,
            },
            now
        )
        .await?
    );
    assert!(
        !db.create_group(
            "grp2",
            &GroupBody {
                name: "helpdesk".into(),
                max_sessions: None,
                protocols: None,
                recording: None,
            },
            now
        )
        .await?,
        "group names are unique"
    );
    assert_eq!(
        db.set_members("grp", &["ua".into(), "ghost".into()], now).await?,
        Change::Refused("no user with id ghost".into())
    );
    assert_eq!(db.set_members("grp", &["ua".into()], now).await?, Change::Done);
    let grants = |users: &[&str], groups: &[&str]| Grants {
        user_ids: users.iter().map(|s| (*s).to_owned()).collect(),
        group_ids: groups.iter().map(|s| (*s).to_owned()).collect(),
    };
    assert_eq!(
        db.set_grants("folder", "f1", &grants(&[], &["grp"]), now).await?,
        Change::Done
    );
    assert_eq!(
        db.set_grants("connection", "top", &grants(&["ub"], &[]), now).await?,
        Change::Done
    );
    assert_eq!(db.grants("folder", "f1").await?, grants(&[], &["grp"]));
    let visible = |viewer: Option<&'static str>, q: Option<&'static str>| async move {
        let (rows, total) = db.list_connections("ud", viewer, &page(q)).await?;
        assert_eq!(rows.len() as i64, total);
        anyhow::Ok(rows.into_iter().map(|(c, _, _)| c.id).collect::<Vec<_>>())
    };
    assert_eq!(
        visible(Some("ua"), None).await?,
        vec!["deep"],
        "a folder grant covers its subfolders"
    );
    assert_eq!(visible(Some("ub"), None).await?, vec!["top"]);
    assert_eq!(visible(None, None).await?.len(), 4);
    assert_eq!(visible(None, Some("100%")).await?, vec!["deep"]);
    assert_eq!(visible(None, Some("R_B")).await?, vec!["other"], "_ is a character");
    assert_eq!(visible(None, Some("x_b")).await?, Vec::<String>::new());
    assert_eq!(
        visible(None, Some("FOLDER G1")).await?,
        vec!["other"],
        "folder names match"
    );
    assert_eq!(visible(Some("ua"), Some("other")).await?, Vec::<String>::new());
    assert!(db.connection_for(Some("ua"), "deep").await?.is_some());
    assert!(db.connection_for(Some("ua"), "top").await?.is_none());
    assert!(db.connection_for(Some("ub"), "deep").await?.is_none());

    // Limits: the strictest of own and groups'; 40 concurrent starts pass the limit of 3 exactly 3 times.
    let ann = db.user("ua").await?.expect("ann");
    assert_eq!(
        db.limits(&ann).await?,
        Limits {
            max_sessions: Some(3),
            protocols: None,
            recording: portico_proto::control::RecordingPolicy::Off,
        }
    );
    let row = |i: usize, user: &str, conn: &str| SessionRow {
        user_id: user.into(),
        connection_id: conn.into(),
        ..pending(&format!("acc-{user}-{i}"), &format!("acc-jti-{user}-{i}"), now)
    };
    let started = futures_util::future::try_join_all(
        (0..40).map(|i| async move { db.start_session(&row(i, "ua", "deep"), Some(3), now).await }),
    )
    .await?;
    assert_eq!(
        started.iter().filter(|s| **s == SessionStart::Started).count(),
        3,
        "{started:?}"
    );
    assert_eq!(
        db.start_session(&row(50, "ua", "deep"), Some(3), now + 120).await?,
        SessionStart::Started,
        "pending sessions whose tokens expired unclaimed are not live"
    );
    db.insert_session(&row(0, "ub", "top")).await?;
    db.insert_session(&row(0, "ud", "other")).await?;
    db.insert_session(&row(0, "ux", "top")).await?;
    let live = |id: String| async move { anyhow::Ok(db.session(&id).await?.is_some_and(|s| s.state != state::ENDED)) };
    // Moving f2 out of f1 takes deep out of the grant: ann's sessions end, nobody else's.
    assert_eq!(
        db.update_folder("f1", "loop", Some("f3"), now).await?,
        Change::Refused("a folder cannot move into itself or one of its subfolders".into())
    );
    assert_eq!(db.update_folder("f2", "moved", Some("g1"), now).await?, Change::Done);
    assert!(!live("acc-ua-50".into()).await?);
    assert!(
        !live("acc-ux-0".into()).await?,
        "nothing lets an auditor hold a session"
    );
    assert_eq!(
        db.session("acc-ua-50").await?.and_then(|s| s.end_reason).as_deref(),
        Some(REVOKED)
    );
    assert!(
        live("acc-ub-0".into()).await? && live("acc-ud-0".into()).await?,
        "admins and other grants are untouched"
    );
    assert_eq!(visible(Some("ua"), None).await?, Vec::<String>::new());
    assert_eq!(
        db.list_connections(
            "ud",
            None,
            &ListQuery {
                folder_id: Some("g1".into()),
                ..page(None)
            }
        )
        .await?
        .1,
        2,
        "g1 now holds f2/f3/deep and other"
    );
    // Removing ben's grant ends his session; deleting a group or a user removes their grants.
    assert_eq!(
        db.set_grants("connection", "top", &grants(&[], &[]), now).await?,
        Change::Done
    );
    assert!(!live("acc-ub-0".into()).await?);
    assert!(db.delete_group("grp", now).await?);
    assert_eq!(db.grants("folder", "f1").await?, Grants::default());
    assert_eq!(
        db.delete_folder("g1").await?,
        Change::Refused("the folder is not empty: move or delete its subfolders and connections first".into())
    );
    assert_eq!(db.delete_folder("f1").await?, Change::Done);
    Ok(())
}

/// Favourites and the last use of each connection, per user: the orders of the home page (favourites, then
/// the most recently used, then by folder and name), the filters, the access check of a star, and the
/// favourites that go with their connection or user.
async fn favourites(db: &Db, now: i64) -> anyhow::Result<()> {
    for (id, name, role) in [("fa", "fay", "user"), ("fb", "finn", "user"), ("fz", "zoe", "admin")] {
        db.insert_user(id, name, "hash", role, now).await?;
    }
    let f = Folder {
        id: "ff".into(),
        name: "favourites folder".into(),
        parent_id: None,
        created_at: now,
    };
    assert_eq!(db.create_folder(&f).await?, Change::Done);
    let connection = |id: &str, folder: Option<&str>| Connection {
        username: "root".into(),
        folder_id: folder.map(str::to_owned),
        ..Connection::new(id, id, "ssh", format!("{id}.example.internal"), 22, now)
    };
    for (id, folder) in [
        ("fav-a", Some("ff")),
        ("fav-b", Some("ff")),
        ("fav-c", Some("ff")),
        ("fav-d", Some("ff")),
        ("fav-x", None),
    ] {
        db.insert_connection(&connection(id, folder)).await?;
    }
    let to = |users: &[&str]| Grants {
        user_ids: users.iter().map(|s| (*s).to_owned()).collect(),
        group_ids: vec![],
    };
    assert_eq!(
        db.set_grants("folder", "ff", &to(&["fa", "fb"]), now).await?,
        Change::Done
    );

    // A star: idempotent both ways; on what the user may not use (or what does not exist) it is refused
    // and changes nothing.
    assert!(db.set_favourite("fa", Some("fa"), "fav-c", true).await?);
    assert!(db.set_favourite("fa", Some("fa"), "fav-c", true).await?);
    assert!(db.set_favourite("fa", Some("fa"), "fav-d", true).await?);
    assert!(db.set_favourite("fa", Some("fa"), "fav-d", false).await?);
    assert!(db.set_favourite("fa", Some("fa"), "fav-d", false).await?);
    for on in [true, false] {
        assert!(!db.set_favourite("fa", Some("fa"), "fav-x", on).await?);
        assert!(!db.set_favourite("fa", Some("fa"), "ghost", on).await?);
    }
    assert!(
        db.set_favourite("fz", None, "fav-x", true).await?,
        "an admin may star anything"
    );
    // Sessions: fay's latest on fav-b is at +3 (not its first, at +1), on fav-d at +5; finn's on fav-a.
    for (i, (user, conn, at)) in [
        ("fa", "fav-b", 1),
        ("fa", "fav-d", 5),
        ("fa", "fav-b", 3),
        ("fb", "fav-a", 9),
    ]
    .into_iter()
    .enumerate()
    {
        db.insert_session(&SessionRow {
            user_id: user.into(),
            connection_id: conn.into(),
            created_at: now + at,
            ..pending(&format!("fav-s{i}"), &format!("fav-jti{i}"), now)
        })
        .await?;
    }
    let list = |caller: &'static str, viewer: Option<&'static str>, q: ListQuery| async move {
        let (rows, total) = db.list_connections(caller, viewer, &q).await?;
        anyhow::Ok((
            rows.into_iter()
                .map(|(c, f, l)| (c.id, f, l.map(|t| t - now)))
                .collect::<Vec<_>>(),
            total,
        ))
    };
    let all = || ListQuery {
        limit: 100,
        ..ListQuery::default()
    };
    let recent = || ListQuery {
        favourites_first: true,
        recent_first: true,
        ..all()
    };
    let row = |id: &str, f: bool, l: Option<i64>| (id.to_owned(), f, l);
    assert_eq!(
        list("fa", Some("fa"), recent()).await?,
        (
            vec![
                row("fav-c", true, None),
                row("fav-d", false, Some(5)),
                row("fav-b", false, Some(3)),
                row("fav-a", false, None),
            ],
            4
        ),
        "favourites, then the most recently used, then by folder and name"
    );
    let ids = |(rows, total): (Vec<(String, bool, Option<i64>)>, i64)| {
        (rows.into_iter().map(|r| r.0).collect::<Vec<_>>(), total)
    };
    let v = |ids: &[&str], total: i64| (ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), total);
    assert_eq!(
        ids(list("fa", Some("fa"), all()).await?),
        v(&["fav-a", "fav-b", "fav-c", "fav-d"], 4)
    );
    let last_used = || ListQuery {
        recent_first: true,
        ..all()
    };
    assert_eq!(
        ids(list("fa", Some("fa"), last_used()).await?),
        v(&["fav-d", "fav-b", "fav-a", "fav-c"], 4)
    );
    let used = |limit| ListQuery {
        only_used: true,
        limit,
        ..last_used()
    };
    assert_eq!(ids(list("fa", Some("fa"), used(8)).await?), v(&["fav-d", "fav-b"], 2));
    assert_eq!(
        ids(list("fa", Some("fa"), used(1)).await?),
        v(&["fav-d"], 2),
        "paged, with the total"
    );
    let stars = || ListQuery {
        only_favourites: true,
        ..all()
    };
    assert_eq!(ids(list("fa", Some("fa"), stars()).await?), v(&["fav-c"], 1));
    let searched = ListQuery {
        q: Some("FAV-C".into()),
        ..recent()
    };
    assert_eq!(ids(list("fa", Some("fa"), searched).await?), v(&["fav-c"], 1));
    // Per user: finn (the second user of the folder's grant: SQLite 3.51 once let only the first one in) sees
    // his own use and no star; the admin's star covers what no grant does.
    assert_eq!(
        list("fb", Some("fb"), recent()).await?.0,
        vec![
            row("fav-a", false, Some(9)),
            row("fav-b", false, None),
            row("fav-c", false, None),
            row("fav-d", false, None),
        ]
    );
    assert_eq!(ids(list("fz", None, stars()).await?), v(&["fav-x"], 1));
    // Revoked: out of fay's stars and recent ones (the rows stay, and come back with the grant).
    assert_eq!(db.set_grants("folder", "ff", &to(&["fb"]), now).await?, Change::Done);
    assert_eq!(list("fa", Some("fa"), stars()).await?.1, 0);
    assert_eq!(list("fa", Some("fa"), used(8)).await?.1, 0);
    assert!(!db.set_favourite("fa", Some("fa"), "fav-c", false).await?);
    // Granted again: the star is back. Deleting a connection or a user removes their favourites (foreign
    // keys, on both engines): the same ids made again carry none.
    assert_eq!(
        db.set_grants("folder", "ff", &to(&["fa", "fb"]), now).await?,
        Change::Done
    );
    assert_eq!(ids(list("fa", Some("fa"), stars()).await?), v(&["fav-c"], 1));
    assert!(db.delete_connection("fav-c", now).await?);
    db.insert_connection(&connection("fav-c", Some("ff"))).await?;
    assert_eq!(list("fa", Some("fa"), stars()).await?.1, 0);
    assert!(db.delete_user("fz", now).await?);
    db.insert_user("fz", "zoe", "hash", "admin", now).await?;
    assert_eq!(list("fz", None, stars()).await?.1, 0);
    Ok(())
}

/// Bridge identities: registration, credentials, revocation (which ends the bridge's sessions) and the
/// revoked name that cannot register again until it is forgotten.
async fn bridges(db: &Db, now: i64) -> anyhow::Result<()> {
    let row = |id: &str, name: &str| portico_webapp::db::BridgeRow {
        id: id.into(),
        name: name.into(),
        remote_addr: "127.0.0.1".into(),
        registered_at: now,
        last_seen_at: now,
        revoked_at: None,
        route: None,
        draining_at: None,
        drain_deadline_at: None,
        live_sessions: 0,
    };
    assert!(db.register_bridge(&row("b1", "bridge-a"), "cred-1").await?);
    assert!(
        db.register_bridge(&row("b1x", "bridge-a"), "cred-1x").await?,
        "a restart is a new identity"
    );
    assert_eq!(
        db.bridge_by_credential("cred-1", now + 40).await?.as_deref(),
        Some("b1")
    );
    assert_eq!(db.bridge_by_credential("nope", now).await?, None);
    let listed = db.list_bridges().await?;
    assert_eq!(
        listed
            .iter()
            .map(|b| (b.id.as_str(), b.live_sessions))
            .collect::<Vec<_>>(),
        [("b1", 1), ("b1x", 0)]
    );
    assert!(db.revoke_bridge("b1x", false, now).await?);
    assert_eq!(db.bridge_by_credential("cred-1x", now).await?, None, "revoked");
    assert!(
        !db.register_bridge(&row("b1y", "bridge-a"), "cred-1y").await?,
        "a revoked name"
    );
    assert!(db.revoke_bridge("b1x", true, now).await?, "forget");
    assert!(db.register_bridge(&row("b1y", "bridge-a"), "cred-1y").await?);

    // The tier: candidates are alive, not draining, not revoked, with their session counts (assigned
    // sessions count); a session assigned to one bridge cannot be claimed by another.
    let routed = |id: &str, route: &str| portico_webapp::db::BridgeRow {
        route: Some(route.into()),
        ..row(id, id)
    };
    assert!(db.register_bridge(&routed("r1", "route-1"), "cred-r1").await?);
    assert!(db.register_bridge(&routed("r2", "route-2"), "cred-r2").await?);
    let mut assigned = pending("sr1", "jti-r1", now);
    assigned.bridge_id = Some("r1".into());
    db.insert_session(&assigned).await?;
    let count = |c: &[portico_webapp::db::BridgeCandidate], id: &str| {
        c.iter()
            .find(|b| b.id == id)
            .map(|b| (b.route.clone(), b.live_sessions))
    };
    let live = db.count_live_sessions().await?;
    assert!(live.iter().any(|(st, _, n)| st == "pending" && *n >= 1), "{live:?}");
    db.count_live_containers().await?;
    let c = db.bridge_candidates(now - 5).await?;
    assert_eq!(count(&c, "r1"), Some((Some("route-1".into()), 1)));
    assert_eq!(count(&c, "r2"), Some((Some("route-2".into()), 0)));
    assert!(
        !db.claim_session("sr1", "jti-r1", "r2", now).await?,
        "claimed by another bridge"
    );
    assert!(db.claim_session("sr1", "jti-r1", "r1", now).await?);
    // Drained: no candidate; a second order keeps the start and takes the new deadline.
    assert_eq!(db.drain_bridge("r2", None, now).await?.as_deref(), Some("r2"));
    assert_eq!(
        db.drain_bridge("r2", Some(now + 60), now + 5).await?.as_deref(),
        Some("r2")
    );
    assert_eq!(db.bridge_drain("r2").await?, Some(Some(now + 60)));
    assert_eq!(db.bridge_drain("r1").await?, None);
    assert!(count(&db.bridge_candidates(now - 5).await?, "r2").is_none());
    assert_eq!(db.drain_bridge("nope", None, now).await?, None);
    // Silent for longer than the window: r1's session is lost (once), r1 is reported down (once), and
    // r2, which said it stopped, is not.
    db.mark_bridge_stopped("r2", now).await?;
    let later = now + 100;
    // b1 (which holds s1) is still alive then.
    assert_eq!(db.bridge_by_credential("cred-1", later).await?.as_deref(), Some("b1"));
    let lost = db.sweep_lost_bridges(later, later - 5).await?;
    assert!(
        lost.iter()
            .any(|(sid, reason)| sid == "sr1" && reason.starts_with("lost: bridge r1 ")),
        "{lost:?}"
    );
    assert!(
        db.sweep_lost_bridges(later, later - 5)
            .await?
            .iter()
            .all(|(sid, _)| sid != "sr1")
    );
    let down = db.bridges_newly_down(later - 5, later).await?;
    assert!(down.iter().any(|(id, _)| id == "r1"), "{down:?}");
    assert!(
        !down.iter().any(|(id, _)| id == "r2"),
        "a stopped bridge reported down: {down:?}"
    );
    assert!(
        db.bridges_newly_down(later - 5, later + 1)
            .await?
            .iter()
            .all(|(id, _)| id != "r1"),
        "reported twice"
    );
    Ok(())
}

/// A new session `id` of user u1 on connection c1, its token not yet claimed.
/// Sharing of the live session `s1` (owned by `u1`, claimed by bridge `b1`): shares by link and by user,
/// the viewer limit under concurrent joins, viewer claims (once, by the holding bridge only), modes and
/// revocation as the heartbeat sees them, departures.
async fn shares(db: &Db, now: i64) -> anyhow::Result<()> {
    use portico_webapp::db::{ShareRow, ViewerClaim, ViewerRow, ViewerState};
    db.insert_user("u-bob", "bob-viewer", "hash", "user", now).await?;
    let share = |id: &str, kind: &str, subject: Option<&str>, link: Option<&str>| ShareRow {
        id: id.into(),
        session_id: "s1".into(),
        created_by: "u1".into(),
        kind: kind.into(),
        subject_id: subject.map(Into::into),
        link_hash: link.map(Into::into),
        mode: "view".into(),
        created_at: now,
        expires_at: now + 100,
        revoked_at: None,
    };
    db.insert_share(&share("sh-link", "link", None, Some("hash-1"))).await?;
    db.insert_share(&share("sh-bob", "user", Some("u-bob"), None)).await?;
    assert_eq!(db.share_by_link("hash-1").await?.map(|s| s.id), Some("sh-link".into()));
    assert!(db.share_by_link("hash-2").await?.is_none());
    let mine = db.shared_with("u-bob", now).await?;
    assert_eq!(
        mine.iter()
            .map(|s| (s.share_id.as_str(), s.owner.as_str()))
            .collect::<Vec<_>>(),
        [("sh-bob", "alice")]
    );
    assert!(
        db.shared_with("u1", now).await?.is_empty(),
        "the owner's own session is not shared with them"
    );
    assert!(
        db.shared_with("u-bob", now + 100).await?.is_empty(),
        "an expired share lists nothing"
    );

    let viewer = |id: &str| ViewerRow {
        id: id.into(),
        share_id: "sh-link".into(),
        session_id: "s1".into(),
        user_id: "u-bob".into(),
        username: "bob-viewer".into(),
        token_jti: format!("jti-{id}"),
        token_expires_at: now + 60,
        created_at: now,
        claimed_at: None,
        bridge_id: None,
        left_at: None,
    };
    // At most 2 viewers, whatever the concurrency.
    let joined = futures_util::future::try_join_all(
        (0..6).map(|i| async move { db.insert_viewer(&viewer(&format!("v{i}")), 2, now).await }),
    )
    .await?;
    assert_eq!(joined.iter().filter(|j| **j).count(), 2, "{joined:?}");
    let v = (0..6)
        .map(|i| format!("v{i}"))
        .zip(&joined)
        .find(|(_, j)| **j)
        .map(|(v, _)| v)
        .unwrap_or_default();
    let jti = format!("jti-{v}");
    assert!(
        matches!(
            db.claim_viewer(&v, "s1", &jti, "b2", now).await?,
            ViewerClaim::Refused(_)
        ),
        "not the holding bridge"
    );
    assert!(matches!(
        db.claim_viewer(&v, "s1", "jti-wrong", "b1", now).await?,
        ViewerClaim::Refused(_)
    ));
    assert!(
        matches!(
            db.claim_viewer(&v, "s1", &jti, "b1", now + 66).await?,
            ViewerClaim::Refused(_)
        ),
        "an expired viewer token"
    );
    assert_eq!(
        db.claim_viewer(&v, "s1", &jti, "b1", now).await?,
        ViewerClaim::Claimed("view".into())
    );
    assert!(
        matches!(
            db.claim_viewer(&v, "s1", &jti, "b1", now).await?,
            ViewerClaim::Refused(_)
        ),
        "once"
    );
    let states = |s: Vec<(String, ViewerState)>| s.into_iter().map(|(_, st)| st).collect::<Vec<_>>();
    assert_eq!(
        states(db.viewer_states(&[v.clone(), "ghost".into()], "b1", now).await?),
        [
            ViewerState::Allowed("view".into()),
            ViewerState::Revoked("unknown viewer".into())
        ]
    );
    assert!(db.set_share_mode("s1", "sh-link", "control").await?);
    assert_eq!(
        states(db.viewer_states(std::slice::from_ref(&v), "b1", now).await?),
        [ViewerState::Allowed("control".into())]
    );
    assert_eq!(
        states(db.viewer_states(std::slice::from_ref(&v), "b2", now).await?),
        [ViewerState::Revoked("unknown viewer".into())],
        "another bridge's viewer"
    );
    assert_eq!(db.live_viewers("s1", now).await?.len(), 2);
    assert_eq!(db.revoke_shares("s1", Some("sh-link"), now + 1).await?, 1);
    assert_eq!(
        db.revoke_shares("s1", Some("sh-link"), now + 2).await?,
        0,
        "revoked once"
    );
    assert!(
        !db.set_share_mode("s1", "sh-link", "view").await?,
        "a revoked share keeps its mode"
    );
    assert_eq!(
        states(db.viewer_states(std::slice::from_ref(&v), "b1", now).await?),
        [ViewerState::Revoked("the owner stopped sharing the session".into())]
    );
    assert!(db.viewer_left(&v, "b1", now + 3).await?);
    assert!(!db.viewer_left(&v, "b1", now + 4).await?);
    assert_eq!(db.revoke_shares("s1", None, now + 5).await?, 1, "the other share");
    Ok(())
}

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
        container_key: sid.into(),
        spare_for: None,
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

/// Register agent `name` with `identity` and a fresh credential `cred`.
async fn register(
    db: &Db,
    name: &str,
    identity: &str,
    cred: &str,
    (cores, memory_mb): (i64, i64),
    now: i64,
) -> anyhow::Result<AgentRegisterOutcome> {
    Ok(db
        .register_agent(&AgentRegistration {
            name,
            identity_hash: identity,
            credential_hash: cred,
            docker_version: "20.10.24",
            cores,
            memory_mb,
            running: 0,
            networks: "[]",
            addr: "127.0.0.1",
            now,
        })
        .await?)
}

/// The id of a successful registration.
fn id_of(o: AgentRegisterOutcome) -> anyhow::Result<String> {
    match o {
        AgentRegisterOutcome::New(id) | AgentRegisterOutcome::Again(id) => Ok(id),
        AgentRegisterOutcome::NameTaken(id) => anyhow::bail!("name taken by {id}"),
    }
}

/// Agents: a name is bound to its first identity; refusals live apart and never change an agent; an
/// admin's removal frees the name and fails the agent's workspaces.
async fn agent_identities(db: &Db, now: i64) -> anyhow::Result<()> {
    let first = register(db, "bound", "identity-1", "cred-b1", (4, 4096), now).await?;
    let AgentRegisterOutcome::New(id) = first else {
        anyhow::bail!("{first:?}")
    };
    assert_eq!(
        register(db, "bound", "identity-1", "cred-b2", (4, 4096), now + 1).await?,
        AgentRegisterOutcome::Again(id.clone()),
        "the same identity registers again"
    );
    assert_eq!(
        register(db, "bound", "identity-2", "cred-b3", (4, 4096), now + 2).await?,
        AgentRegisterOutcome::NameTaken(id.clone()),
        "another identity is refused"
    );
    let row = db
        .agent_by_credential("cred-b2")
        .await?
        .expect("the agent keeps its credential");
    assert_eq!((row.id.as_str(), row.state.as_str()), (id.as_str(), "healthy"));
    assert!(db.agent_by_credential("cred-b3").await?.is_none());
    // Refusals: one row per name, counting attempts; they change no agent.
    for i in 0..3 {
        assert!(
            db.record_agent_refusal("bound", "another identity", "10.0.0.9", now + 3 + i)
                .await?
        );
    }
    assert!(
        db.record_agent_refusal("ghost", "wrong registration token", "10.0.0.9", now)
            .await?
    );
    let refusals = db.agent_refusals().await?;
    let names: Vec<(&str, i64, i64)> = refusals
        .iter()
        .filter(|r| ["bound", "ghost"].contains(&r.name.as_str()))
        .map(|r| (r.name.as_str(), r.attempts, r.last_at))
        .collect();
    assert_eq!(names, [("bound", 3, now + 5), ("ghost", 1, now)]);
    assert_eq!(
        db.agent_by_credential("cred-b2").await?.map(|a| a.state).as_deref(),
        Some("healthy")
    );
    // Concurrent registrations of a new name: exactly one identity gets it.
    let outcomes = futures_util::future::join_all((0..8).map(|i| {
        let (identity, cred) = (format!("racer-{i}"), format!("cred-race-{i}"));
        async move { register(db, "raced", &identity, &cred, (1, 1024), now).await }
    }))
    .await;
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(AgentRegisterOutcome::New(_) | AgentRegisterOutcome::Again(_))))
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    // Removal: the name is free for another identity, the agent's workspaces fail, its refusals go.
    db.insert_session(&pending("on-bound", "jti-on-bound", now)).await?;
    assert!(
        db.place_container(&starting("on-bound", &id, 256, 100, now), None)
            .await?
    );
    assert_eq!(db.delete_agent(&id, now + 10).await?.as_deref(), Some("bound"));
    assert_eq!(db.delete_agent(&id, now + 10).await?, None);
    assert_eq!(
        db.container("on-bound").await?.map(|c| c.state).as_deref(),
        Some("failed")
    );
    let s = db.session("on-bound").await?.expect("row");
    assert!(
        s.end_reason
            .as_deref()
            .is_some_and(|r| r.contains("removed by an admin")),
        "{s:?}"
    );
    assert!(db.agent_refusals().await?.iter().all(|r| r.name != "bound"));
    assert!(
        !db.place_container(&starting("late", &id, 256, 100, now), None).await?,
        "no placement on a removed agent"
    );
    assert!(matches!(
        register(db, "bound", "identity-2", "cred-b4", (4, 4096), now + 11).await?,
        AgentRegisterOutcome::New(_)
    ));
    // Refusals older than a day are pruned.
    db.prune(now + 2 * 24 * 3600).await?;
    assert!(db.agent_refusals().await?.is_empty());
    Ok(())
}

/// Agents and workspace containers: scheduling loads, the wanted set, agent reports, lost agents.
async fn workspaces(db: &Db, now: i64) -> anyhow::Result<()> {
    let a = id_of(register(db, "host-a", "identity-a", "cred-a", (4, 8192), now).await?)?;
    let b = id_of(register(db, "host-b", "identity-b", "cred-b", (2, 4096), now - 100).await?)?;
    db.record_agent_refusal("host-c", "wrong registration token", "127.0.0.2", now)
        .await?;
    for (sid, agent) in [("w1", &a), ("w2", &a), ("w3", &b)] {
        db.insert_session(&pending(sid, &format!("jti-{sid}"), now)).await?;
        assert!(
            db.place_container(&starting(sid, agent, 512, 1500, now), None).await?,
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
        container_key: "w1",
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
    db.end_session("w2", CloseCode::Ended, "ended by the user", now + 2)
        .await?;
    assert_eq!(db.desired_containers(&a).await?.len(), 1);
    let late = ContainerUpdate {
        container_key: "w2",
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
    let d = id_of(register(db, "host-d", "identity-d", "cred-d", (64, 2048), now).await?)?;
    let rows: Vec<ContainerRow> = (0..20).map(|i| starting(&format!("p{i}"), &d, 256, 100, now)).collect();
    let placed = futures_util::future::join_all(rows.iter().map(|r| db.place_container(r, None))).await;
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

    // Warm pool. 10 concurrent spare placements for a pool of 3 on one agent: exactly 3.
    let e = id_of(register(db, "host-e", "identity-e", "cred-e", (64, 65536), now).await?)?;
    let spare = |k: &str, conn: &str| ContainerRow {
        spare_for: Some(conn.into()),
        spec: r#"{"image":"i"}"#.into(),
        ..starting(k, &e, 256, 100, now)
    };
    let rows: Vec<ContainerRow> = (0..10).map(|i| spare(&format!("spare-{i}"), "conn-1")).collect();
    let placed = futures_util::future::join_all(rows.iter().map(|r| db.place_container(r, Some(3)))).await;
    assert_eq!(placed.iter().filter(|r| matches!(r, Ok(true))).count(), 3, "{placed:?}");
    // Unclaimed spares are wanted although no session has them.
    let keys: Vec<String> = db
        .live_spares()
        .await?
        .into_iter()
        .filter(|c| c.agent_id == e)
        .map(|c| c.container_key)
        .collect();
    assert_eq!(keys.len(), 3);
    assert_eq!(db.desired_containers(&e).await?.len(), 3);
    // Only a ready spare is claimed; the agent reports by key.
    assert!(
        db.claim_spare("conn-1", r#"{"image":"i"}"#, "s-0", now - 10)
            .await?
            .is_none()
    );
    for k in &keys {
        let up = ContainerUpdate {
            container_key: k,
            container_id: "c",
            state: container_state::READY,
            host: Some("172.31.0.9"),
            port: Some(5901),
            error: None,
        };
        assert!(db.update_container(&e, &up, now + 1).await?, "{k}");
    }
    // Another connection's or another spec's launch takes none.
    assert!(
        db.claim_spare("conn-2", r#"{"image":"i"}"#, "s-0", now - 10)
            .await?
            .is_none()
    );
    assert!(
        db.claim_spare("conn-1", r#"{"image":"j"}"#, "s-0", now - 10)
            .await?
            .is_none()
    );
    // 8 launches race for 3 spares: 3 win, each a different container, now keyed by its session.
    let sids: Vec<String> = (0..8).map(|i| format!("s-{i}")).collect();
    for sid in &sids {
        db.insert_session(&pending(sid, &format!("jti-{sid}"), now)).await?;
    }
    let claims = futures_util::future::join_all(
        sids.iter()
            .map(|sid| db.claim_spare("conn-1", r#"{"image":"i"}"#, sid, now - 10)),
    )
    .await;
    let won: Vec<ContainerRow> = claims
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(won.len(), 3, "{won:?}");
    let mut taken: Vec<&str> = won.iter().map(|c| c.container_key.as_str()).collect();
    taken.sort_unstable();
    taken.dedup();
    assert_eq!(taken.len(), 3, "a spare went to two sessions: {won:?}");
    for c in &won {
        assert!(c.spare_for.is_none() && sids.contains(&c.session_id), "{c:?}");
    }
    assert!(db.live_spares().await?.iter().all(|c| c.agent_id != e));
    // The session's end lets its (claimed) container go like any other.
    db.end_session(&won[0].session_id, CloseCode::Ended, "ended by the user", now + 2)
        .await?;
    assert_eq!(db.desired_containers(&e).await?.len(), 2);
    // Failures of a pool's spares are counted for its back-off.
    db.place_container(&spare("spare-x", "conn-1"), Some(3)).await?;
    let failed = ContainerUpdate {
        container_key: "spare-x",
        container_id: "",
        state: container_state::FAILED,
        host: None,
        port: None,
        error: Some("no such image"),
    };
    assert!(db.update_container(&e, &failed, now + 3).await?);
    assert_eq!(db.spare_failures(&e, "conn-1", now - 60).await?, 1);
    assert_eq!(db.spare_failures(&e, "conn-2", now - 60).await?, 0);
    // A day later the rows of spares that never served are pruned; the sessions' containers stay.
    db.prune(now + 2 * 24 * 3600).await?;
    assert!(db.container("spare-x").await?.is_none());
    assert!(db.container(&won[0].session_id).await?.is_some());
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
