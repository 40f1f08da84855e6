//! Live session sharing against real peers (docs/security.md, "Sharing"): an SSH session shared with a
//! user view-only (the viewer sees the owner's typing; its keystrokes never reach the shell), switched to
//! control (they do), revoked (the viewer is closed within 2 s, the owner goes on); the abuse of every
//! step (replayed, forged and foreign viewer tokens, shares that do not name the caller, a policy that
//! forbids sharing, a mode over the policy, a full session); a link share; an administrator shadowing with
//! the owner told; a VNC session shared to a viewer whose pointer is dropped until it is given control, and
//! a viewer that never acknowledges a frame while the owner's frames keep flowing.

use std::time::{Duration, Instant};

use portico_proto::codes::CloseCode;
use portico_proto::files::{FileEvent, FileOp};
use portico_proto::token::ShareMode;
use portico_proto::wire::ClientMsg;
use portico_tests::client::{Api, Screen, Term, ws_with_token};
use portico_tests::peers::{Sshd, VncServer, XDisplay as _};
use portico_tests::portico::Portico;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{marker_path, open_term, ssh_connection};

const WAIT: Duration = Duration::from_secs(20);

async fn user(admin: &Api, p: &Portico, name: &str, role: &str) -> anyhow::Result<(String, Api)> {
    admin.user_api(p, name, role).await
}

/// Join a shared session (`body`: a share, a link or a session to shadow) and open the viewer's socket.
async fn join(p: &Portico, api: &Api, body: Value) -> anyhow::Result<(Value, Term)> {
    let (j, ws) = api.join_session(&p.cert_sha256, body).await?;
    Ok((j, Term::new(ws)))
}

/// Wait until the events `query` selects are at least `n` distinct types (events are written in batches).
async fn events_until(admin: &Api, query: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = admin
            .ok(Method::GET, &format!("/api/v1/events?{query}&limit=200"), None)
            .await?;
        let mut types: Vec<&str> = events
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["type"].as_str()).collect())
            .unwrap_or_default();
        types.sort_unstable();
        types.dedup();
        if types.len() >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "events {query}: only {types:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn viewers(t: &Term) -> Vec<(String, ShareMode)> {
    t.share
        .as_ref()
        .map(|s| s.viewers.iter().map(|v| (v.name.clone(), v.mode)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_session_is_shared_view_only_then_in_control_then_revoked() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let conn = ssh_connection(
        &admin,
        &sshd,
        json!({ "password": sshd.user.password, "settings": { "sharing": "control", "files": "both" } }),
    )
    .await?;
    let closed_conn = ssh_connection(&admin, &sshd, json!({ "password": sshd.user.password })).await?;
    let (viewer_id, viewer) = user(&admin, &p, "share-viewer", "user").await?;
    let (_, stranger) = user(&admin, &p, "share-stranger", "user").await?;

    let (s, mut owner) = open_term(&p, &admin, &conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    owner.connected().await?;
    owner.input("echo before-$((3*4))\r").await?;
    owner
        .until("the output before sharing", WAIT, |t| t.text().contains("before-12"))
        .await?;

    // A connection whose policy does not allow sharing: refused, whatever the mode.
    let (s2, mut other) = open_term(&p, &admin, &closed_conn).await?;
    other.connected().await?;
    let sid2 = s2["session_id"].as_str().unwrap_or_default();
    let (status, v) = admin
        .request(
            Method::POST,
            &format!("/api/v1/sessions/{sid2}/shares"),
            Some(json!({ "mode": "view", "user_id": viewer_id })),
        )
        .await?;
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("policy"), "{v}");
    // Only its owner (or an administrator) shares a session.
    let (status, _) = stranger
        .request(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "view", "link": true })),
        )
        .await?;
    assert_eq!(status, 404, "another user's session does not exist for a user");

    let share = admin
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "view", "user_id": viewer_id, "expires_in_secs": 600 })),
        )
        .await?;
    let share_id = share["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(share["mode"], "view");
    assert!(share.get("link_url").is_none(), "{share}");

    // The viewer sees it in their list; a stranger does not, and cannot join by its id.
    let mine = viewer.ok(Method::GET, "/api/v1/shared", None).await?;
    assert_eq!(mine[0]["session_id"], sid.as_str(), "{mine}");
    assert_eq!(mine[0]["owner"], "admin");
    let theirs = stranger.ok(Method::GET, "/api/v1/shared", None).await?;
    assert_eq!(theirs.as_array().map(Vec::len), Some(0), "{theirs}");
    let (status, _) = stranger
        .request(Method::POST, "/api/v1/join", Some(json!({ "share_id": share_id })))
        .await?;
    assert_eq!(status, 404, "a share that does not name the caller is not found");

    let (j, mut v) = join(&p, &viewer, json!({ "share_id": share_id })).await?;
    assert_eq!(j["mode"], "view");
    // The viewer gets the screen as it is (a repaint from the bridge's terminal model), and its mode.
    v.until("the viewer's first screen", WAIT, |t| t.text().contains("before-12"))
        .await?;
    v.until("the viewer's mode", WAIT, |t| {
        t.share.as_ref().is_some_and(|s| s.mode == Some(ShareMode::View))
    })
    .await?;
    assert_eq!(
        v.hello.as_ref().map(|h| h.resume_token.as_str()),
        Some(""),
        "a viewer does not reattach"
    );
    // The owner is told who watches.
    owner
        .until("the owner told of the viewer", WAIT, |t| {
            viewers(t) == [("share-viewer".to_owned(), ShareMode::View)]
        })
        .await?;

    // A viewer token is used once; a forged one is refused; one for another session is refused.
    let token = j["token"].as_str().unwrap_or_default();
    let ws_url = j["ws_url"].as_str().unwrap_or_default();
    let replay = ws_with_token(ws_url, &p.cert_sha256, token).await?;
    assert_eq!(replay.err().map(|r| r.status), Some(403), "a replayed viewer token");
    let mut forged = token.to_owned();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let refused = ws_with_token(ws_url, &p.cert_sha256, &forged).await?;
    assert_eq!(refused.err().map(|r| r.status), Some(401), "a forged viewer token");
    let other_url = ws_url.replace(&sid, sid2);
    let refused = ws_with_token(&other_url, &p.cert_sha256, token).await?;
    assert_eq!(
        refused.err().map(|r| r.status),
        Some(403),
        "a viewer token for another session"
    );

    // The owner types: the viewer sees it.
    owner.input("echo owner-$((6*7))\r").await?;
    v.until("the owner's typing", WAIT, |t| t.text().contains("owner-42"))
        .await?;

    // View-only: the viewer's keystrokes are dropped at the bridge (the barrier proves they were handled).
    let marker = marker_path("share-view");
    v.input(&format!("touch {marker}; echo viewer-$((5*5))\r")).await?;
    v.barrier(1).await?;
    owner.input("echo mark-$((7*7))\r").await?;
    owner
        .until("the owner's mark", WAIT, |t| t.text().contains("mark-49"))
        .await?;
    assert!(!owner.text().contains("viewer-25"), "view-only input reached the shell");
    assert!(!std::path::Path::new(&marker).exists(), "view-only input ran a command");

    // Switched to control: the viewer is told within a heartbeat, and its keystrokes reach the shell.
    let changed = admin
        .ok(
            Method::PATCH,
            &format!("/api/v1/sessions/{sid}/shares/{share_id}"),
            Some(json!({ "mode": "control" })),
        )
        .await?;
    assert_eq!(changed["mode"], "control");
    v.until("control", Duration::from_secs(5), |t| {
        t.share.as_ref().is_some_and(|s| s.mode == Some(ShareMode::Control))
    })
    .await?;
    v.input("echo viewer-$((5*5))\r").await?;
    owner
        .until("the viewer's typing on the owner's screen", WAIT, |t| {
            t.text().contains("viewer-25")
        })
        .await?;
    // A viewer never resizes the owner's terminal.
    v.send(ClientMsg::Resize {
        cols: 40,
        rows: 10,
        width_px: 0,
        height_px: 0,
    })
    .await?;
    v.barrier(2).await?;
    owner.input("stty size\r").await?;
    owner
        .until("the owner's size", WAIT, |t| t.text().contains("24 80"))
        .await?;
    // Nor moves files, even in control: its requests never reach the session (the connection allows
    // files: the owner's same request works after them, in the same order).
    let dir = marker_path("share-files");
    v.file_request(1, FileOp::Mkdir { path: dir.clone() }).await?;
    v.send(ClientMsg::FileChunk {
        id: 1,
        data: vec![1; 8],
    })
    .await?;
    v.barrier(3).await?;
    assert!(v.file_replies.is_empty(), "{:?}", v.file_replies);
    let made = owner.ask(1, FileOp::Mkdir { path: dir.clone() }).await?;
    assert_eq!(
        made,
        FileEvent::Done { bytes: 0 },
        "a viewer's file request reached the server first"
    );
    let _ = std::fs::remove_dir(&dir);

    // Revoked: the viewer is closed with the reason within 2 s; the owner goes on.
    let revoked_at = Instant::now();
    admin
        .ok(
            Method::DELETE,
            &format!("/api/v1/sessions/{sid}/shares/{share_id}"),
            None,
        )
        .await?;
    let closed = v.closed_within(Duration::from_secs(5)).await?;
    let took = revoked_at.elapsed();
    assert_eq!(
        closed.as_ref().map(|c| c.code),
        Some(CloseCode::ShareRevoked),
        "{closed:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the viewer closed {took:?} after the revocation"
    );
    owner.check_echo("after-revoke").await?;
    owner
        .until("the owner told the viewer left", WAIT, |t| viewers(t).is_empty())
        .await?;
    // A revoked share lets nobody in.
    let (status, _) = viewer
        .request(Method::POST, "/api/v1/join", Some(json!({ "share_id": share_id })))
        .await?;
    assert_eq!(status, 409);

    // Events: the whole story is in the audit trail.
    let types = "share_created,viewer_joined,viewer_claimed,share_changed,share_revoked,viewer_left";
    events_until(&admin, &format!("type={types}&session_id={sid}"), 6).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn links_shadowing_and_limits_of_sharing() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let conn = ssh_connection(
        &admin,
        &sshd,
        json!({ "password": sshd.user.password, "settings": { "sharing": "view", "shadowing": "view" } }),
    )
    .await?;
    let (owner_id, owner_api) = user(&admin, &p, "link-owner", "user").await?;
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/connections/{conn}/grants"),
            Some(json!({ "user_ids": [owner_id], "group_ids": [] })),
        )
        .await?;
    let (_, guest) = user(&admin, &p, "link-guest", "user").await?;
    let (_, auditor) = user(&admin, &p, "link-auditor", "auditor").await?;
    let (s, mut owner) = open_term(&p, &owner_api, &conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    owner.connected().await?;

    // The policy allows view-only: control is refused, at creation.
    let (status, v) = owner_api
        .request(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "control", "link": true })),
        )
        .await?;
    assert_eq!(status, 403, "{v}");
    let (status, _) = owner_api
        .request(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "view", "link": true, "user_id": owner_id })),
        )
        .await?;
    assert_eq!(status, 400, "one subject per share");
    let link = owner_api
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "view", "link": true })),
        )
        .await?;
    let url = link["link_url"].as_str().unwrap_or_default().to_owned();
    let secret = url.split("#join=").nth(1).unwrap_or_default().to_owned();
    assert!(secret.len() >= 32, "{url}");
    // …and switching it to control is refused too.
    let (status, _) = owner_api
        .request(
            Method::PATCH,
            &format!(
                "/api/v1/sessions/{sid}/shares/{}",
                link["id"].as_str().unwrap_or_default()
            ),
            Some(json!({ "mode": "control" })),
        )
        .await?;
    assert_eq!(status, 403);
    // A wrong or truncated link is not found; the owner cannot join their own session.
    for bad in [&secret[..secret.len() - 1], "", "x"] {
        let (status, _) = guest
            .request(Method::POST, "/api/v1/join", Some(json!({ "link": bad })))
            .await?;
        assert_eq!(status, 404, "link {bad:?}");
    }
    let (status, _) = owner_api
        .request(Method::POST, "/api/v1/join", Some(json!({ "link": secret })))
        .await?;
    assert_eq!(status, 400, "the owner joining their own session");
    // An unauthenticated caller gets nothing.
    let anonymous = Api::new(&p)?;
    let (status, _) = anonymous
        .request(Method::POST, "/api/v1/join", Some(json!({ "link": secret })))
        .await?;
    assert_eq!(status, 401);

    // Anyone logged in with the link joins, view-only.
    let (_, mut g) = join(&p, &guest, json!({ "link": secret })).await?;
    owner.input("echo link-$((8*8))\r").await?;
    g.until("the owner's output through the link", WAIT, |t| {
        t.text().contains("link-64")
    })
    .await?;

    // A group share: its members see it and join by its id; others do not.
    let guest_id = guest.ok(Method::GET, "/api/v1/auth/me", None).await?["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let group = admin
        .ok(
            Method::POST,
            "/api/v1/groups",
            Some(json!({ "name": "share-helpdesk" })),
        )
        .await?;
    let group_id = group["id"].as_str().unwrap_or_default();
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/groups/{group_id}/members"),
            Some(json!({ "user_ids": [guest_id] })),
        )
        .await?;
    let by_group = owner_api
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "view", "group_id": group_id })),
        )
        .await?;
    let listed = guest.ok(Method::GET, "/api/v1/shared", None).await?;
    assert!(
        listed.to_string().contains(by_group["id"].as_str().unwrap_or("?")),
        "{listed}"
    );
    let others = auditor.ok(Method::GET, "/api/v1/shared", None).await?;
    assert_eq!(others.as_array().map(Vec::len), Some(0), "not a member: {others}");
    let (_, mut member) = join(&p, &guest, json!({ "share_id": by_group["id"] })).await?;
    member
        .until("the group member's screen", WAIT, |t| t.text().contains("link-64"))
        .await?;
    drop(member);

    // Shadowing: only administrators, up to the policy's mode; the owner is told, and it is an event.
    let (status, _) = auditor
        .request(Method::POST, "/api/v1/join", Some(json!({ "session_id": sid })))
        .await?;
    assert_eq!(status, 403, "an auditor does not shadow (the role is read-only)");
    let (status, _) = admin
        .request(
            Method::POST,
            "/api/v1/join",
            Some(json!({ "session_id": sid, "mode": "control" })),
        )
        .await?;
    assert_eq!(status, 403, "shadowing in control over a view-only policy");
    let (j, mut a) = join(&p, &admin, json!({ "session_id": sid })).await?;
    assert_eq!(j["mode"], "view");
    a.until("the shadow's screen", WAIT, |t| t.text().contains("link-64"))
        .await?;
    owner
        .until("the owner told of the shadow", WAIT, |t| {
            t.share
                .as_ref()
                .is_some_and(|s| s.viewers.iter().any(|v| v.name == "admin" && v.shadow))
        })
        .await?;
    events_until(&admin, &format!("type=session_shadowed&session_id={sid}"), 1).await?;
    // The owner sees both viewers in the API too, and revokes all at once: both close.
    // The link viewer and the shadow (the group member left: its departure is reported by the bridge).
    let deadline = Instant::now() + WAIT;
    loop {
        let shares = owner_api
            .ok(Method::GET, &format!("/api/v1/sessions/{sid}/shares"), None)
            .await?;
        if shares["viewers"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "viewers: {shares}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    owner_api
        .ok(Method::DELETE, &format!("/api/v1/sessions/{sid}/shares"), None)
        .await?;
    for t in [&mut g, &mut a] {
        let closed = t.closed_within(Duration::from_secs(5)).await?;
        assert_eq!(closed.map(|c| c.code), Some(CloseCode::ShareRevoked));
    }

    // At most 16 viewers at once, even when they join concurrently.
    let (_, secret) = owner_api.share_link(&sid, "view").await?;
    let joins = (0..24).map(|_| guest.request(Method::POST, "/api/v1/join", Some(json!({ "link": secret }))));
    let results = futures_util::future::join_all(joins).await;
    let ok = results.iter().filter(|r| matches!(r, Ok((201, _)))).count();
    let full = results.iter().filter(|r| matches!(r, Ok((409, _)))).count();
    assert_eq!((ok, full), (16, 8), "{results:?}");

    // The session's end closes its viewers with the session's code.
    let (_, mut last) = {
        let j = results
            .iter()
            .find_map(|r| r.as_ref().ok().filter(|(s, _)| *s == 201).map(|(_, v)| v.clone()))
            .ok_or_else(|| anyhow::anyhow!("no join"))?;
        let ws = ws_with_token(
            j["ws_url"].as_str().unwrap_or_default(),
            &p.cert_sha256,
            j["token"].as_str().unwrap_or_default(),
        )
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
        (j, Term::new(ws))
    };
    last.until("the last viewer's hello", WAIT, |t| t.hello.is_some())
        .await?;
    owner_api
        .ok(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    let closed = last.closed_within(Duration::from_secs(5)).await?;
    assert_eq!(closed.map(|c| c.code), Some(CloseCode::Ended));
    let (status, _) = owner_api
        .request(
            Method::POST,
            &format!("/api/v1/sessions/{sid}/shares"),
            Some(json!({ "mode": "view", "link": true })),
        )
        .await?;
    assert_eq!(status, 409, "an ended session is not shared");
    Ok(())
}

/// Where the X server's pointer is.
fn pointer(x: &VncServer) -> anyhow::Result<(u16, u16)> {
    let out = x.x("xdotool", &["getmouselocation", "--shell"])?;
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(u16::MAX)
    };
    Ok((get("X="), get("Y=")))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_session_is_shared_and_a_slow_viewer_never_slows_the_owner() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(Some("pw-share"), 320, 200)?;
    xvnc.x("xsetroot", &["-solid", "#204060"])?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let conn = admin
        .create_connection(json!({ "name": "vnc shared", "protocol": "vnc", "host": "127.0.0.1",
            "port": xvnc.port, "password": "pw-share", "settings": { "sharing": "control" } }))
        .await?;
    let (_, viewer_api) = user(&admin, &p, "vnc-viewer", "user").await?;
    let (s, mut owner) = crate::vnc::open_screen(&p, &admin, &conn).await?;
    let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
    owner
        .until("the owner's first picture", WAIT, |c| {
            c.pixel(5, 5) == [0x20, 0x40, 0x60]
        })
        .await?;
    let (link, secret) = admin.share_link(&sid, "view").await?;
    let (_, t) = join(&p, &viewer_api, json!({ "link": secret })).await?;
    let mut v = Screen::of(t);
    // The whole current picture at once.
    v.until("the viewer's first picture", WAIT, |c| {
        (c.width, c.height) == (320, 200) && c.pixel(300, 190) == [0x20, 0x40, 0x60]
    })
    .await?;
    xvnc.x("xsetroot", &["-solid", "#a05010"])?;
    for s in [&mut owner, &mut v] {
        s.until("the new colour", WAIT, |c| c.pixel(160, 100) == [0xa0, 0x50, 0x10])
            .await?;
    }

    // View-only: the viewer's pointer is dropped at the bridge.
    xvnc.x("xdotool", &["mousemove", "10", "10"])?;
    v.term
        .send(ClientMsg::Pointer {
            x: 200,
            y: 150,
            buttons: 0,
        })
        .await?;
    v.term.barrier(1).await?;
    owner.term.barrier(1).await?;
    assert_eq!(pointer(&xvnc)?, (10, 10), "a view-only pointer moved the server's");

    // A viewer that stops drawing (no acknowledgements) is left behind; the owner's frames keep flowing.
    v.ack = false;
    let owner_frames = owner.canvas.frames;
    // More changes than the most frames a viewer may have in flight (16).
    let colours = 24u8;
    for i in 0..colours {
        let want = [i * 8, 0x40, 0xff - i * 8];
        let c = format!("#{:02x}{:02x}{:02x}", want[0], want[1], want[2]);
        xvnc.x("xsetroot", &["-solid", &c])?;
        owner
            .until(&format!("colour {i} on the owner's screen"), WAIT, |c| {
                c.pixel(100, 100) == want
            })
            .await?;
        v.pump(Duration::from_millis(1)).await?;
    }
    assert!(owner.canvas.frames >= owner_frames + u32::from(colours));
    let drawn = v.canvas.frames;
    // Once it acknowledges what it drew, it gets the current picture (merged: not every change).
    v.ack = true;
    v.term
        .send(ClientMsg::FrameAck {
            frame_id: v.canvas.last_frame,
        })
        .await?;
    let last = [(colours - 1) * 8, 0x40, 0xff - (colours - 1) * 8];
    v.until("the viewer caught up", WAIT, |c| c.pixel(100, 100) == last)
        .await?;
    assert!(
        v.canvas.frames < drawn + u32::from(colours),
        "the viewer drew every change ({} frames after {drawn}): it was never behind",
        v.canvas.frames
    );

    // In control, its pointer moves the server's.
    let share_id = link["id"].as_str().unwrap_or_default();
    admin
        .ok(
            Method::PATCH,
            &format!("/api/v1/sessions/{sid}/shares/{share_id}"),
            Some(json!({ "mode": "control" })),
        )
        .await?;
    v.term
        .until("control", Duration::from_secs(5), |t| {
            t.share.as_ref().is_some_and(|s| s.mode == Some(ShareMode::Control))
        })
        .await?;
    v.term
        .send(ClientMsg::Pointer {
            x: 200,
            y: 150,
            buttons: 0,
        })
        .await?;
    v.term.barrier(2).await?;
    let deadline = Instant::now() + WAIT;
    while pointer(&xvnc)? != (200, 150) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the viewer's pointer never reached the server"
        );
        owner.pump(Duration::from_millis(100)).await?;
    }
    Ok(())
}

/// Behind the shipped load balancer with two routed bridges: a viewer of each bridge's session reaches the
/// bridge that holds it (the join names its route); a viewer token sent to the other bridge is refused
/// there without being used up, and then works where it belongs.
#[tokio::test(flavor = "multi_thread")]
async fn viewers_reach_the_bridge_that_holds_the_session() -> anyhow::Result<()> {
    use crate::ra3::BridgeTier;
    let sshd = Sshd::start()?;
    let tier = BridgeTier::start().await?;
    let api = tier.api.clone();
    let conn = ssh_connection(
        &api,
        &sshd,
        json!({ "password": sshd.user.password, "settings": { "sharing": "view" } }),
    )
    .await?;
    let (_, viewer) = api.user_api(&tier.webapp, "tier-viewer", "user").await?;
    let mut routes = Vec::new();
    for i in 0..2 {
        let (s, mut owner) = tier.open(&conn).await?;
        let route = BridgeTier::route_of(&s).unwrap_or_default();
        routes.push(route.clone());
        let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
        let (share, link) = api.share_link(&sid, "view").await?;
        assert!(
            share["link_url"].as_str().is_some_and(|u| u.starts_with(&tier.public)),
            "the link names the public address: {share}"
        );
        let j = viewer
            .ok(Method::POST, "/api/v1/join", Some(json!({ "link": link })))
            .await?;
        let ws_url = j["ws_url"].as_str().unwrap_or_default().to_owned();
        assert!(ws_url.contains(&format!("/bridge/v1/at/{route}/ws")), "{ws_url}");
        let token = j["token"].as_str().unwrap_or_default();
        // The other bridge, directly: the session does not live there (404), and the token is not used up.
        let other = if route == "bridge1" {
            &tier.bridges[1]
        } else {
            &tier.bridges[0]
        };
        let elsewhere = format!("{}/bridge/v1/ws?session={sid}", other.ws_base());
        let r = ws_with_token(&elsewhere, &other.cert_sha256, token).await?.err();
        assert_eq!(r.as_ref().map(|r| r.status), Some(404), "{r:?}");
        let ws = ws_with_token(&ws_url, &tier.webapp.cert_sha256, token)
            .await?
            .map_err(|r| anyhow::anyhow!("viewer refused through the load balancer: {r:?}"))?;
        let mut v = Term::new(ws);
        owner.input(&format!("echo tier-{i}-$((6*7))\r")).await?;
        v.until("the owner's output through the load balancer", WAIT, |t| {
            t.text().contains(&format!("tier-{i}-42"))
        })
        .await?;
    }
    routes.sort();
    assert_eq!(routes, ["bridge1", "bridge2"], "one session on each bridge");
    Ok(())
}

/// RDP (FreeRDP's shadow server): a viewer of a bitmap session gets the whole desktop and follows its
/// changes; a viewer of a session on the graphics pipeline starts at an H.264 key frame.
#[tokio::test(flavor = "multi_thread")]
async fn rdp_viewers_on_bitmaps_and_on_h264() -> anyhow::Result<()> {
    use portico_proto::wire::{CAPS_H264, ServerMsg};
    use portico_tests::peers::{RdpServer, ShadowAuth};
    let shadow = RdpServer::shadow(ShadowAuth::None, 800, 600)?;
    shadow.x("xsetroot", &["-solid", "#800080"])?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let (_, viewer_api) = user(&admin, &p, "rdp-viewer", "user").await?;

    let conn = crate::rdp::rdp_connection(
        &admin,
        &shadow,
        "any",
        json!({ "width": 800, "height": 600, "sharing": "view" }),
    )
    .await?;
    let (s, mut owner) = crate::vnc::open_screen(&p, &admin, &conn).await?;
    owner
        .until("the owner's desktop", WAIT, |c| c.pixel(10, 10) == [0x80, 0, 0x80])
        .await?;
    let (_, link) = admin
        .share_link(s["session_id"].as_str().unwrap_or_default(), "view")
        .await?;
    let (_, t) = join(&p, &viewer_api, json!({ "link": link })).await?;
    let mut v = Screen::of(t);
    v.until("the viewer's whole desktop", WAIT, |c| {
        (c.width, c.height) == (800, 600) && c.pixel(10, 10) == [0x80, 0, 0x80] && c.pixel(799, 599) == [0x80, 0, 0x80]
    })
    .await?;
    shadow.x("xsetroot", &["-solid", "#10a050"])?;
    for s in [&mut owner, &mut v] {
        s.until("the new colour", WAIT, |c| c.pixel(400, 300) == [0x10, 0xa0, 0x50])
            .await?;
    }
    admin
        .ok(
            Method::DELETE,
            &format!("/api/v1/sessions/{}", s["session_id"].as_str().unwrap_or_default()),
            None,
        )
        .await?;

    let conn = crate::rdp::rdp_connection(
        &admin,
        &shadow,
        "any",
        json!({ "width": 800, "height": 600, "h264": true, "sharing": "view" }),
    )
    .await?;
    let (s, ws) = portico_tests::client::attach(&p, &admin, &conn).await?;
    let mut owner = Screen::new(ws);
    owner.term.send(ClientMsg::Caps { flags: CAPS_H264 }).await?;
    owner
        .until("the owner's first H.264 frame", WAIT, |c| c.videos >= 1)
        .await?;
    let (_, link) = admin
        .share_link(s["session_id"].as_str().unwrap_or_default(), "view")
        .await?;
    let (_, mut t) = join(&p, &viewer_api, json!({ "link": link })).await?;
    // The screen changes while the viewer watches.
    let _painter = shadow.painter(600)?;
    let deadline = Instant::now() + WAIT;
    let mut videos = Vec::new();
    while videos.len() < 5 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the viewer got {} H.264 frames",
            videos.len()
        );
        t.pump(Duration::from_millis(100)).await?;
        for m in std::mem::take(&mut t.display) {
            match m {
                ServerMsg::Video { key, .. } => videos.push(key),
                ServerMsg::FrameEnd { frame_id } => t.send(ClientMsg::FrameAck { frame_id }).await?,
                _ => {}
            }
        }
        owner.pump(Duration::from_millis(1)).await?;
    }
    assert!(videos[0], "the viewer's first H.264 frame is a key frame: {videos:?}");
    Ok(())
}
