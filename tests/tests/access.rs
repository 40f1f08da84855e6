//! Who may reach what (issue 10), against the real binary: groups, nested folders, grants, roles, limits,
//! and revocation that closes live sessions. Every negative case is the attack: a user listing, reading or
//! opening a connection nobody granted them, or learning that it exists.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use portico_tests::client::{Api, Term, attach, unclaimed_token_is_refused};
use portico_tests::peers::Sshd;
use portico_tests::portico::Portico;
use reqwest::Method;
use serde_json::{Value, json};

async fn user(admin: &Api, p: &Portico, name: &str, role: &str) -> anyhow::Result<(String, Api)> {
    admin.user_api(p, name, role).await
}

async fn id_of(admin: &Api, path: &str, body: Value) -> anyhow::Result<String> {
    let v = admin.ok(Method::POST, path, Some(body)).await?;
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

async fn conn(admin: &Api, name: &str, host: &str, folder: Option<&str>) -> anyhow::Result<String> {
    admin
        .create_connection(json!({
            "name": name, "protocol": "ssh", "host": host, "port": 22, "username": "root",
            "password": "stored-secret", "folder_id": folder,
        }))
        .await
}

/// The names a caller's connection list shows (with a query string, if any).
async fn names(api: &Api, query: &str) -> anyhow::Result<BTreeSet<String>> {
    let v = api
        .ok(Method::GET, &format!("/api/v1/connections{query}"), None)
        .await?;
    Ok(v.as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Grants through nested folders, groups and users; everything else is indistinguishable from a
/// connection that does not exist, on read and on session start; admins see all, auditors read all and
/// start nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_sees_and_opens_exactly_what_is_granted() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let r = granted(&p).await;
    r.map_err(|e| anyhow::anyhow!("{e:#}\nportico log:\n{}", p.log()))
}

async fn granted(p: &Portico) -> anyhow::Result<()> {
    let admin = Api::admin(p).await?;
    let site_a = id_of(&admin, "/api/v1/folders", json!({ "name": "Site A" })).await?;
    let floor = id_of(
        &admin,
        "/api/v1/folders",
        json!({ "name": "Floor 1", "parent_id": site_a }),
    )
    .await?;
    let site_b = id_of(&admin, "/api/v1/folders", json!({ "name": "Site B" })).await?;
    let c_floor = conn(&admin, "a-floor-pc", "10.1.1.1", Some(&floor)).await?;
    let c_top = conn(&admin, "top-server", "10.9.9.9", None).await?;
    let c_b = conn(&admin, "b-secret-host", "10.2.2.2", Some(&site_b)).await?;
    let (bob_id, bob) = user(&admin, p, "bob", "user").await?;
    let (_, dave) = user(&admin, p, "dave", "user").await?;
    let (_, audrey) = user(&admin, p, "audrey", "auditor").await?;
    let helpdesk = id_of(&admin, "/api/v1/groups", json!({ "name": "helpdesk" })).await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/groups/{helpdesk}/members"),
            Some(json!({ "user_ids": [bob_id] })),
        )
        .await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/folders/{site_a}/grants"),
            Some(json!({ "user_ids": [], "group_ids": [helpdesk] })),
        )
        .await?;
    let dave_id = dave.ok(Method::GET, "/api/v1/auth/me", None).await?["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{c_top}/grants"),
            Some(json!({ "user_ids": [dave_id], "group_ids": [] })),
        )
        .await?;

    // Lists.
    assert_eq!(
        names(&bob, "").await?,
        set(&["a-floor-pc"]),
        "a grant on a folder covers its subfolders"
    );
    assert_eq!(names(&dave, "").await?, set(&["top-server"]));
    let all = set(&["a-floor-pc", "top-server", "b-secret-host"]);
    assert_eq!(names(&admin, "").await?, all);
    assert_eq!(names(&audrey, "").await?, all, "an auditor reads everything");

    // Reads and session starts on what is not granted answer exactly like a connection that never existed.
    let ghost = uuid::Uuid::new_v4().to_string();
    let absent = bob
        .request(Method::GET, &format!("/api/v1/connections/{ghost}"), None)
        .await?;
    assert_eq!(absent.0, 404);
    for id in [&c_top, &c_b] {
        let got = bob
            .request(Method::GET, &format!("/api/v1/connections/{id}"), None)
            .await?;
        assert_eq!(got, absent, "reading an ungranted connection");
        let started = bob
            .request(Method::POST, "/api/v1/sessions", Some(json!({ "connection_id": id })))
            .await?;
        let ghost_start = bob
            .request(
                Method::POST,
                "/api/v1/sessions",
                Some(json!({ "connection_id": ghost })),
            )
            .await?;
        assert_eq!(started, ghost_start, "starting a session on an ungranted connection");
        assert_eq!(started.0, 404);
    }
    let got = bob
        .ok(Method::GET, &format!("/api/v1/connections/{c_floor}"), None)
        .await?;
    assert_eq!(got["host"], "10.1.1.1");
    assert!(
        got.get("password").is_none(),
        "credentials never leave the webapp: {got}"
    );
    bob.create_session(&c_floor).await?;
    // Folders and grants are the admin's: a user learns no other folder's name.
    let folders = bob.request(Method::GET, "/api/v1/folders", None).await?;
    assert_eq!(folders.0, 403, "{folders:?}");
    for path in [
        format!("/api/v1/connections/{c_b}/grants"),
        format!("/api/v1/groups/{helpdesk}/members"),
    ] {
        let (s, _) = bob
            .request(
                Method::PUT,
                &path,
                Some(json!({ "user_ids": [bob_id], "group_ids": [] })),
            )
            .await?;
        assert_eq!(s, 403, "{path}");
    }

    // Search covers name, host and folder name, on the server, with paging and a total.
    assert_eq!(names(&admin, "?q=SECRET").await?, set(&["b-secret-host"]));
    assert_eq!(names(&admin, "?q=10.9.").await?, set(&["top-server"]));
    assert_eq!(names(&admin, "?q=floor%201").await?, set(&["a-floor-pc"]));
    assert_eq!(
        names(&bob, "?q=secret").await?,
        set(&[]),
        "search stays within the grants"
    );
    assert_eq!(
        names(&admin, "?q=%25").await?,
        set(&[]),
        "a % is a character, not a wildcard"
    );
    assert_eq!(
        names(&admin, &format!("?folder_id={site_a}")).await?,
        set(&["a-floor-pc"])
    );
    let res = admin
        .http
        .get(format!("{}/api/v1/connections?limit=2&offset=0", admin.base))
        .send()
        .await?;
    assert_eq!(
        res.headers().get("x-total-count").and_then(|v| v.to_str().ok()),
        Some("3")
    );
    assert_eq!(res.json::<Value>().await?.as_array().map(Vec::len), Some(2));

    // The auditor: reads every session, starts and ends none, changes nothing.
    let sessions = audrey.ok(Method::GET, "/api/v1/sessions", None).await?;
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    let sid = sessions[0]["id"].as_str().unwrap_or_default().to_owned();
    for (m, path, body) in [
        (
            Method::POST,
            "/api/v1/sessions".to_owned(),
            Some(json!({ "connection_id": c_floor })),
        ),
        (Method::DELETE, format!("/api/v1/sessions/{sid}"), None),
        (Method::DELETE, format!("/api/v1/connections/{c_b}"), None),
        (Method::POST, "/api/v1/groups".to_owned(), Some(json!({ "name": "x" }))),
    ] {
        let (s, v) = audrey.request(m.clone(), &path, body).await?;
        assert_eq!(s, 403, "auditor {m} {path}: {v}");
    }
    assert_eq!(
        dave.ok(Method::GET, "/api/v1/sessions", None)
            .await?
            .as_array()
            .map(Vec::len),
        Some(0),
        "a user sees only their own sessions"
    );
    Ok(())
}

/// Removing a membership, a grant, or moving a connection out of a granted folder closes the live session in
/// under 2 s with a reason, and refuses the unclaimed token.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_access_closes_live_sessions_within_two_seconds() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let folder = id_of(&admin, "/api/v1/folders", json!({ "name": "Servers" })).await?;
    let c = crate::ssh_connection(
        &admin,
        &sshd,
        json!({ "password": sshd.user.password, "folder_id": folder }),
    )
    .await?;
    let (bob_id, bob) = user(&admin, &p, "bob", "user").await?;
    let ops = id_of(&admin, "/api/v1/groups", json!({ "name": "ops" })).await?;
    let put = |path: String, body: Value| {
        let admin = &admin;
        async move { admin.ok(Method::PUT, &path, Some(body)).await }
    };
    let grant_group = || {
        put(
            format!("/api/v1/folders/{folder}/grants"),
            json!({ "user_ids": [], "group_ids": [ops] }),
        )
    };
    grant_group().await?;
    put(format!("/api/v1/groups/{ops}/members"), json!({ "user_ids": [bob_id] })).await?;

    type Revoke<'a> =
        Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + 'a>> + 'a>;
    let revocations: Vec<(&str, Revoke<'_>)> = vec![
        (
            "membership removed",
            Box::new(|| Box::pin(put(format!("/api/v1/groups/{ops}/members"), json!({ "user_ids": [] })))),
        ),
        (
            "folder grant removed",
            Box::new(|| {
                Box::pin(put(
                    format!("/api/v1/folders/{folder}/grants"),
                    json!({ "user_ids": [], "group_ids": [] }),
                ))
            }),
        ),
        (
            "connection moved out of the folder",
            Box::new(|| {
                Box::pin(put(
                    format!("/api/v1/connections/{c}"),
                    json!({ "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user.name, "folder_id": null }),
                ))
            }),
        ),
    ];
    for (what, revoke) in revocations {
        // Restore access.
        grant_group().await?;
        put(format!("/api/v1/groups/{ops}/members"), json!({ "user_ids": [bob_id] })).await?;
        put(
            format!("/api/v1/connections/{c}"),
            json!({ "protocol": "ssh", "host": "127.0.0.1", "port": sshd.port, "username": sshd.user.name, "folder_id": folder }),
        )
        .await?;
        let (_, ws) = attach(&p, &bob, &c).await?;
        let mut live = Term::new(ws);
        live.connected().await?;
        let unclaimed = bob.create_session(&c).await?;
        revoke().await?;
        let t = Instant::now();
        let closed = live.closed_within(Duration::from_secs(2)).await?;
        assert!(
            closed.as_ref().is_some_and(|c| c.reason.contains("access was revoked")),
            "{what}: {closed:?} after {:?}",
            t.elapsed()
        );
        assert!(
            unclaimed_token_is_refused(&p, &unclaimed).await?,
            "{what}: the unclaimed token is refused"
        );
        let (s, _) = bob
            .request(Method::POST, "/api/v1/sessions", Some(json!({ "connection_id": c })))
            .await?;
        assert_eq!(s, 404, "{what}: no new session");
    }
    Ok(())
}

/// A group's limits: concurrent sessions hold under parallel requests (the attack: 20 at once), and a
/// group limited to some protocols cannot start others; the strictest of a user's limits applies.
#[tokio::test(flavor = "multi_thread")]
async fn session_limits_hold_under_parallel_requests() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let folder = id_of(&admin, "/api/v1/folders", json!({ "name": "Lab" })).await?;
    let ssh = conn(&admin, "lab-ssh", "10.3.3.3", Some(&folder)).await?;
    let vnc = admin
        .create_connection(
            json!({ "name": "lab-vnc", "protocol": "vnc", "host": "10.3.3.4", "port": 5900, "folder_id": folder }),
        )
        .await?;
    let (bob_id, bob) = user(&admin, &p, "bob", "user").await?;
    let lab = id_of(&admin, "/api/v1/groups", json!({ "name": "lab", "max_sessions": 2 })).await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/groups/{lab}/members"),
            Some(json!({ "user_ids": [bob_id] })),
        )
        .await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/folders/{folder}/grants"),
            Some(json!({ "user_ids": [], "group_ids": [lab] })),
        )
        .await?;
    let results = futures_util::future::join_all(
        (0..20).map(|_| bob.request(Method::POST, "/api/v1/sessions", Some(json!({ "connection_id": ssh })))),
    )
    .await;
    let statuses: Vec<u16> = results
        .iter()
        .map(|r| r.as_ref().map(|(s, _)| *s).unwrap_or(0))
        .collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 201).count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 403).count(), 18, "{statuses:?}");
    let refusal = results
        .iter()
        .flatten()
        .find(|(s, _)| *s == 403)
        .map(|(_, v)| v.clone());
    assert!(
        refusal
            .as_ref()
            .and_then(|v| v["error"].as_str())
            .is_some_and(|e| e.contains("2 concurrent sessions")),
        "{refusal:?}"
    );
    // Ending one frees a place.
    let mine = bob.ok(Method::GET, "/api/v1/sessions", None).await?;
    let first = mine[0]["id"].as_str().unwrap_or_default().to_owned();
    bob.ok(Method::DELETE, &format!("/api/v1/sessions/{first}"), None)
        .await?;
    bob.create_session(&ssh).await?;

    // A second group restricted to ssh: the strictest applies, so vnc is refused.
    let ssh_only = id_of(
        &admin,
        "/api/v1/groups",
        json!({ "name": "ssh-only", "protocols": ["ssh"] }),
    )
    .await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/groups/{ssh_only}/members"),
            Some(json!({ "user_ids": [bob_id] })),
        )
        .await?;
    for s in bob
        .ok(Method::GET, "/api/v1/sessions", None)
        .await?
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        bob.ok(
            Method::DELETE,
            &format!("/api/v1/sessions/{}", s["id"].as_str().unwrap_or_default()),
            None,
        )
        .await?;
    }
    let (s, v) = bob
        .request(Method::POST, "/api/v1/sessions", Some(json!({ "connection_id": vnc })))
        .await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            403,
            Some("you may not start vnc sessions (a limit of your account or your groups)")
        )
    );
    bob.create_session(&ssh).await?;
    // A user's own limit applies too.
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/users/{bob_id}"),
            Some(json!({ "max_sessions": 1 })),
        )
        .await?;
    let (s, v) = bob
        .request(Method::POST, "/api/v1/sessions", Some(json!({ "connection_id": ssh })))
        .await?;
    assert_eq!(s, 403, "{v}");
    Ok(())
}

/// A caller's connection list (with a query string): each row's name, whether it is one of the caller's
/// favourites and when the caller last used it, in the order listed; and the total that matched.
async fn listed(api: &Api, query: &str) -> anyhow::Result<(Vec<(String, bool, Option<i64>)>, i64)> {
    let res = api
        .http
        .get(format!("{}/api/v1/connections{query}", api.base))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "{query}: http {}", res.status());
    let total = res
        .headers()
        .get("x-total-count")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(-1);
    let rows = res.json::<Value>().await?;
    let mut out = Vec::new();
    for c in rows.as_array().into_iter().flatten() {
        let favourite = c["favourite"].as_bool();
        anyhow::ensure!(favourite.is_some(), "{query}: a row without favourite: {c}");
        let last = &c["last_used_at"];
        anyhow::ensure!(last.is_null() || last.is_i64(), "{query}: last_used_at {last}");
        out.push((
            c["name"].as_str().unwrap_or_default().to_owned(),
            favourite == Some(true),
            last.as_i64(),
        ));
    }
    Ok((out, total))
}

/// Star (`PUT`) or unstar (`DELETE`) a connection.
async fn fav(api: &Api, method: Method, id: &str) -> anyhow::Result<(u16, Value)> {
    api.request(method, &format!("/api/v1/connections/{id}/favourite"), None)
        .await
}

fn order(rows: &[(String, bool, Option<i64>)]) -> Vec<&str> {
    rows.iter().map(|(n, _, _)| n.as_str()).collect()
}

/// Favourites and recent connections (the home page's first sections): per user, toggled idempotently,
/// listed first (favourites, then the most recently used, then by folder and name), and only while the
/// user may use them. Starring a connection the user may not use answers exactly like one that does not
/// exist; another user's favourites and sessions show nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn favourites_and_recent_connections_come_first() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let desk = id_of(&admin, "/api/v1/folders", json!({ "name": "Desk" })).await?;
    let mut ids = Vec::new();
    for (i, name) in ["a-alpha", "b-bravo", "c-charlie", "d-delta"].into_iter().enumerate() {
        ids.push(conn(&admin, name, &format!("10.4.0.{}", i + 1), Some(&desk)).await?);
    }
    let [_, b, c, d] = [&ids[0], &ids[1], &ids[2], &ids[3]];
    let secret = conn(&admin, "e-secret", "10.4.0.9", None).await?;
    let (bob_id, bob) = user(&admin, &p, "bob", "user").await?;
    let (dave_id, dave) = user(&admin, &p, "dave", "user").await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/folders/{desk}/grants"),
            Some(json!({ "user_ids": [bob_id, dave_id], "group_ids": [] })),
        )
        .await?;

    // Nothing yet: no favourite, nothing used; the recent order is the folder order.
    let (rows, _) = listed(&bob, "?sort=recent").await?;
    assert_eq!(order(&rows), ["a-alpha", "b-bravo", "c-charlie", "d-delta"]);
    assert!(rows.iter().all(|(_, f, l)| !f && l.is_none()), "{rows:?}");

    // Toggling is idempotent both ways.
    for _ in 0..2 {
        assert_eq!(fav(&bob, Method::PUT, c).await?.0, 204);
    }
    assert_eq!(fav(&bob, Method::PUT, d).await?.0, 204);
    for _ in 0..2 {
        assert_eq!(fav(&bob, Method::DELETE, d).await?.0, 204);
    }
    // Sessions on b, then (a clock second later, so the order is the time's and not the names') on d.
    bob.create_session(b).await?;
    let (rows, _) = listed(&bob, "?used=true").await?;
    let b_used = rows
        .iter()
        .find_map(|(n, _, l)| (n == "b-bravo").then_some(*l).flatten())
        .ok_or_else(|| anyhow::anyhow!("b-bravo not listed as used: {rows:?}"))?;
    let t = Instant::now();
    while portico_webapp::now_unix() <= b_used {
        anyhow::ensure!(t.elapsed() < Duration::from_secs(3), "the clock did not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bob.create_session(d).await?;

    // Favourites first, then the most recently used, then the others by folder and name.
    let (rows, total) = listed(&bob, "?sort=recent").await?;
    assert_eq!(total, 4);
    assert_eq!(order(&rows), ["c-charlie", "d-delta", "b-bravo", "a-alpha"], "{rows:?}");
    let get = |name: &str| rows.iter().find(|(n, _, _)| n == name).cloned();
    assert!(get("c-charlie").is_some_and(|(_, f, l)| f && l.is_none()));
    assert!(get("a-alpha").is_some_and(|(_, f, l)| !f && l.is_none()));
    let (d_used, b_used) = (get("d-delta").and_then(|r| r.2), get("b-bravo").and_then(|r| r.2));
    assert!(d_used > b_used && b_used.is_some(), "{rows:?}");
    // The default order is unchanged (folder, name), with the same marks.
    let (rows, _) = listed(&bob, "").await?;
    assert_eq!(order(&rows), ["a-alpha", "b-bravo", "c-charlie", "d-delta"]);
    assert_eq!(rows.iter().filter(|(_, f, _)| *f).count(), 1);
    // The home page's sections: favourites, and the recent ones, most recent first, with paging.
    let (rows, total) = listed(&bob, "?favourite=true").await?;
    assert_eq!((order(&rows), total), (vec!["c-charlie"], 1));
    let (rows, total) = listed(&bob, "?used=true&sort=last_used&limit=8").await?;
    assert_eq!((order(&rows), total), (vec!["d-delta", "b-bravo"], 2));
    let (rows, total) = listed(&bob, "?used=true&sort=last_used&limit=1").await?;
    assert_eq!((order(&rows), total), (vec!["d-delta"], 2));
    let (rows, _) = listed(&bob, "?sort=last_used").await?;
    assert_eq!(order(&rows), ["d-delta", "b-bravo", "a-alpha", "c-charlie"]);
    let (s, v) = bob
        .request(Method::GET, "/api/v1/connections?sort=popular", None)
        .await?;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("sort must be name, recent or last_used"))
    );

    // Another user sees none of it.
    let (rows, _) = listed(&dave, "?sort=recent").await?;
    assert_eq!(order(&rows), ["a-alpha", "b-bravo", "c-charlie", "d-delta"]);
    assert!(rows.iter().all(|(_, f, l)| !f && l.is_none()), "{rows:?}");
    assert_eq!(listed(&dave, "?favourite=true").await?.1, 0);
    assert_eq!(listed(&dave, "?used=true").await?.1, 0);

    // A connection the user may not use: starring it answers exactly like one that does not exist, and
    // changes nothing. An admin (who sees everything) may star it: their own favourite only.
    let ghost = uuid::Uuid::new_v4().to_string();
    for m in [Method::PUT, Method::DELETE] {
        let absent = fav(&bob, m.clone(), &ghost).await?;
        assert_eq!(absent.0, 404, "{absent:?}");
        assert_eq!(
            fav(&bob, m.clone(), &secret).await?,
            absent,
            "{m} on an ungranted connection"
        );
    }
    assert_eq!(fav(&admin, Method::PUT, &secret).await?.0, 204);
    let (rows, _) = listed(&admin, "?favourite=true").await?;
    assert_eq!(order(&rows), ["e-secret"]);
    assert_eq!(listed(&bob, "?favourite=true").await?.1, 1, "bob's own favourite only");

    // Revoking access takes the connections out of the user's favourites and recent ones (d stays: it is
    // granted to bob on its own); starring a revoked one is "not found".
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{d}/grants"),
            Some(json!({ "user_ids": [bob_id], "group_ids": [] })),
        )
        .await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/folders/{desk}/grants"),
            Some(json!({ "user_ids": [dave_id], "group_ids": [] })),
        )
        .await?;
    assert_eq!(listed(&bob, "?favourite=true").await?.1, 0);
    let (rows, total) = listed(&bob, "?used=true&sort=last_used&limit=8").await?;
    assert_eq!((order(&rows), total), (vec!["d-delta"], 1));
    let (rows, _) = listed(&bob, "?sort=recent").await?;
    assert_eq!(order(&rows), ["d-delta"]);
    assert_eq!(fav(&bob, Method::PUT, c).await?.0, 404);
    assert_eq!(fav(&bob, Method::DELETE, b).await?.0, 404);
    Ok(())
}
