//! Session recording against real peers: an SSH session recorded with keystrokes (searched, read, checked,
//! seeked from a keyframe, exported as asciicast v2 that `asciinema` plays, tampered with, deleted), a VNC
//! session replayed to the pixels that were live, who may read recordings, a bridge without recording
//! storage refusing a recorded session, and a recording that outlives the bridge that made it.

use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::recording::{Kind, Reader, index};
use portico_proto::wire::{ClientMsg, ServerMsg};
use portico_tests::client::{Api, Canvas, Term, open_via};
use portico_tests::peers::{Sshd, VncServer, XDisplay as _};
use portico_tests::portico::{Options, Portico};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{open_term, ssh_connection};

const WAIT: Duration = Duration::from_secs(30);

/// Poll `GET /api/v1/recordings/{id}` until `pred` holds (bounded by [`WAIT`]).
pub async fn recording_until(api: &Api, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v) = api
            .request(Method::GET, &format!("/api/v1/recordings/{id}"), None)
            .await?;
        if status == 200 && pred(&v) {
            return Ok(v);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "recording {id}: not {what} within {WAIT:?}: http {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The records of a recording from `offset` (a keyframe's, with the chain's hash before it), checked.
fn records_from(
    bytes: &[u8],
    offset: u64,
    prev: &str,
    meta: &portico_proto::recording::Meta,
) -> anyhow::Result<Vec<portico_proto::recording::Record>> {
    let mut prev_hash = [0u8; 32];
    hex::decode_to_slice(prev, &mut prev_hash)?;
    let mut r = Reader::resume(offset, prev_hash, meta.clone());
    r.push(&bytes[usize::try_from(offset)?..]);
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk()? {
        out.extend(c.records);
    }
    r.finish()?;
    Ok(out)
}

/// Type `first` (until `first_out` shows), then output lines (`tick-N`) until the recording of session `sid`
/// has a second keyframe (one every 10 s while the screen changes), then type `last` (until `last_out`
/// shows): what was on screen at that keyframe is known. Returns the number of ticks.
pub async fn record_until_second_keyframe(
    api: &Api,
    sid: &str,
    t: &mut Term,
    first: &str,
    first_out: &str,
    last: &str,
    last_out: &str,
) -> anyhow::Result<usize> {
    t.input(first).await?;
    t.until("the first output", WAIT, |t| t.text().contains(first_out))
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 0;
    loop {
        n += 1;
        t.input(&format!("echo tick-{n}\r")).await?;
        t.until("the tick", WAIT, |t| t.text().contains(&format!("tick-{n}\r\n")))
            .await?;
        let (_, v) = api
            .request(Method::GET, &format!("/api/v1/recordings/{sid}"), None)
            .await?;
        if v["stored"]["keyframes"].as_array().is_some_and(|k| k.len() >= 2) {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no second keyframe: {v}");
        t.pump(Duration::from_millis(500)).await?;
    }
    t.input(last).await?;
    t.until("the last output", WAIT, |t| t.text().contains(last_out))
        .await?;
    Ok(n)
}

/// The last `tick-N` the recording's output holds at or before `at_ms`.
pub fn last_tick_before(bytes: &[u8], at_ms: u64, n: usize) -> anyhow::Result<usize> {
    let mut r = Reader::new();
    r.push(bytes);
    let mut text = String::new();
    while let Some(c) = r.next_chunk()? {
        for rec in c.records.iter().filter(|r| r.kind == Kind::Output && r.at_ms <= at_ms) {
            if let Ok(ServerMsg::TermOutput(b)) = ServerMsg::decode(&rec.data) {
                text.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    (1..=n)
        .rev()
        .find(|k| text.contains(&format!("tick-{k}\r\n")))
        .ok_or_else(|| anyhow::anyhow!("no tick before {at_ms} ms"))
}

pub fn session_id(s: &Value) -> String {
    s["session_id"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ssh_session_recorded_with_keystrokes_is_searched_checked_seeked_and_exported() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let conn = ssh_connection(
        &admin,
        &sshd,
        json!({ "password": sshd.user.password, "settings": { "recording": "keystrokes" } }),
    )
    .await?;
    let plain = crate::ssh_connection(&admin, &sshd, json!({ "password": sshd.user.password })).await?;
    let (s, mut t) = open_term(&p, &admin, &conn).await?;
    let sid = session_id(&s);
    t.connected().await?;
    assert_eq!(t.hello.as_ref().map(|h| h.recording), Some(true), "the user is told");
    t.send(ClientMsg::Resize {
        cols: 100,
        rows: 30,
        width_px: 0,
        height_px: 0,
    })
    .await?;
    let n = record_until_second_keyframe(
        &admin,
        &sid,
        &mut t,
        "echo rec-$((6*7))\r",
        "rec-42",
        "echo after-$((50+5))\r",
        "after-55",
    )
    .await?;
    admin
        .ok(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
        .await?;
    t.closed_within(Duration::from_secs(5)).await?;
    let rec = recording_until(&admin, &sid, "closed and intact", |v| {
        v["stored"]["intact"] == true && !v["completed_at"].is_null()
    })
    .await?;
    assert_eq!(rec["username"], "admin");
    assert_eq!(rec["protocol"], "ssh");
    assert_eq!(rec["input"], true);

    // Only admins and auditors read recordings; a user reads none of others' (403 whether it exists or not).
    let auditor_id = admin.create_user("rec-auditor", "auditor").await?;
    admin.create_user("rec-user", "user").await?;
    let mut auditor = Api::new(&p)?;
    auditor.login("rec-auditor", "rec-auditor-password-1").await?;
    let mut user = Api::new(&p)?;
    user.login("rec-user", "rec-user-password-1").await?;
    let listed = user.ok(Method::GET, "/api/v1/recordings", None).await?;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(0),
        "a user lists only their own: {listed}"
    );
    for path in [
        format!("/api/v1/recordings/{sid}"),
        format!("/api/v1/recordings/{sid}/asciicast"),
        format!("/api/v1/recordings/{sid}/file"),
    ] {
        let (status, _, _) = user.get_bytes(&path, None).await?;
        assert_eq!(status, 403, "{path}");
    }
    // Search by user, connection, name and time.
    let found = auditor
        .ok(Method::GET, &format!("/api/v1/recordings?connection_id={conn}"), None)
        .await?;
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    let by_name = auditor.ok(Method::GET, "/api/v1/recordings?q=ADM", None).await?;
    assert_eq!(by_name[0]["id"], sid.as_str());
    let other = auditor
        .ok(Method::GET, &format!("/api/v1/recordings?connection_id={plain}"), None)
        .await?;
    assert_eq!(
        other.as_array().map(Vec::len),
        Some(0),
        "a connection without the policy records nothing"
    );
    let later = auditor
        .ok(
            Method::GET,
            &format!(
                "/api/v1/recordings?since={}",
                rec["created_at"].as_i64().unwrap_or(0) + 3600
            ),
            None,
        )
        .await?;
    assert_eq!(later.as_array().map(Vec::len), Some(0));
    let (status, v) = auditor.request(Method::GET, "/api/v1/recordings?limit=0", None).await?;
    assert_eq!(status, 400, "{v}");

    // The file, checked from the start and from the last keyframe (a seek): the picture there shows what
    // the terminal showed then.
    let (status, headers, bytes) = auditor
        .get_bytes(&format!("/api/v1/recordings/{sid}/file"), None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(headers["accept-ranges"], "bytes");
    let idx = index(&bytes)?;
    assert_eq!(idx.meta.session_id, sid);
    assert!(idx.meta.input);
    let keyframes = rec["stored"]["keyframes"].as_array().cloned().unwrap_or_default();
    assert_eq!(keyframes.len(), idx.keyframes.len());
    let last = keyframes.last().cloned().unwrap_or_default();
    let offset = last["offset"].as_u64().unwrap_or_default();
    let (status, headers, tail) = auditor
        .get_bytes(
            &format!("/api/v1/recordings/{sid}/file"),
            Some(&format!("bytes={offset}-")),
        )
        .await?;
    assert_eq!(status, 206);
    assert_eq!(
        headers["content-range"].to_str()?,
        format!("bytes {offset}-{}/{}", bytes.len() - 1, bytes.len())
    );
    let mut whole = vec![0u8; usize::try_from(offset)?];
    whole.extend_from_slice(&tail);
    let from_key = records_from(&whole, offset, last["prev"].as_str().unwrap_or_default(), &idx.meta)?;
    let state: String = from_key
        .iter()
        .take_while(|r| r.kind != Kind::Output)
        .filter(|r| r.kind == Kind::State)
        .filter_map(|r| match ServerMsg::decode(&r.data) {
            Ok(ServerMsg::TermOutput(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        })
        .collect();
    // The picture shows the last line output before the keyframe, as the live terminal did: the output of
    // the chunks before the keyframe's (by position, not time: output of the same millisecond may come
    // after the keyframe).
    let want = last_tick_before(&bytes[..usize::try_from(offset)?], u64::MAX, n)?;
    assert!(
        state.contains(&format!("tick-{want}\r\n")),
        "the keyframe's picture shows the earlier output (tick-{want}): {state:?}"
    );
    assert!(t.text().contains(&format!("tick-{want}\r\n")));
    assert!(!state.contains("after-55"), "and not what came after it");
    assert!(
        from_key.iter().any(|r| matches!(ServerMsg::decode(&r.data), Ok(ServerMsg::TermOutput(b)) if String::from_utf8_lossy(&b).contains("after-55"))),
        "what came after is played from there"
    );
    let (status, _, _) = auditor
        .get_bytes(
            &format!("/api/v1/recordings/{sid}/file"),
            Some(&format!("bytes={}-", bytes.len())),
        )
        .await?;
    assert_eq!(status, 416);

    // asciicast v2, with the keystrokes; asciinema itself reads it.
    let (status, headers, cast) = auditor
        .get_bytes(&format!("/api/v1/recordings/{sid}/asciicast"), None)
        .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&cast));
    assert_eq!(headers["x-portico-recording-intact"], "true");
    let cast = String::from_utf8(cast)?;
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap_or_default())?;
    assert_eq!(header["version"], 2);
    let events: Vec<Value> = lines.map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!(
        events
            .iter()
            .all(|e| e[0].is_number() && ["o", "i", "r"].contains(&e[1].as_str().unwrap_or("")))
    );
    let typed: String = events
        .iter()
        .filter(|e| e[1] == "i")
        .filter_map(|e| e[2].as_str())
        .collect();
    assert!(typed.contains("echo rec-$((6*7))"), "{typed:?}");
    assert!(
        events.iter().any(|e| e[1] == "r" && e[2] == "100x30") || header["width"] == 100,
        "{header} {events:?}"
    );
    let file = std::env::temp_dir().join(format!("portico-{sid}.cast"));
    std::fs::write(&file, &cast)?;
    // asciinema reads its controlling terminal: run it on a pseudo-terminal of its own (util-linux script).
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("asciinema cat {}", file.display()), "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "asciinema (Debian package asciinema, installed by scripts/install-test-deps.sh) cannot run: {e}"
            )
        })?;
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let played = String::from_utf8_lossy(&out.stdout);
    assert!(played.contains("rec-42") && played.contains("after-55"), "{played}");

    // Every search and reading is in the audit trail.
    let events = admin
        .ok(
            Method::GET,
            "/api/v1/events?type=recording_started,recordings_listed,recording_viewed&limit=100",
            None,
        )
        .await?;
    let types: Vec<&str> = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for want in ["recording_started", "recordings_listed", "recording_viewed"] {
        assert!(types.contains(&want), "{want} in {types:?}");
    }
    assert!(
        events
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "recording_viewed" && e["actor_id"] == auditor_id.as_str()),
        "{events}"
    );

    // One altered byte: refused, from the start and from before the altered chunk.
    let path = p.data_dir.join("recordings").join(format!("{sid}.portrec"));
    let mut stored = std::fs::read(&path)?;
    let at = stored.len() / 2;
    stored[at] ^= 0x40;
    std::fs::write(&path, &stored)?;
    for what in ["", "/asciicast"] {
        let (status, _, body) = auditor
            .get_bytes(&format!("/api/v1/recordings/{sid}{what}"), None)
            .await?;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 409, "{what}: {body}");
        assert!(body.contains("integrity"), "{body}");
    }

    // Auditors change nothing; an admin deletes, row and file, and that is an event too.
    let (status, _) = auditor
        .request(Method::DELETE, &format!("/api/v1/recordings/{sid}"), None)
        .await?;
    assert_eq!(status, 403);
    let (status, v) = admin
        .request(Method::DELETE, &format!("/api/v1/recordings/{sid}"), None)
        .await?;
    assert_eq!(status, 204, "{v}");
    assert!(!path.exists());
    let (status, _) = admin
        .request(Method::GET, &format!("/api/v1/recordings/{sid}"), None)
        .await?;
    assert_eq!(status, 404);
    let deleted = admin
        .ok(Method::GET, "/api/v1/events?type=recording_deleted", None)
        .await?;
    assert_eq!(deleted[0]["session_id"], sid.as_str(), "{deleted}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_recording_replays_to_the_pixels_that_were_live() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(Some("pw-rec"), 320, 200)?;
    xvnc.x("xsetroot", &["-solid", "#204060"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = api
        .create_connection(
            json!({ "name": "vnc rec", "protocol": "vnc", "host": "127.0.0.1", "port": xvnc.port,
            "password": "pw-rec", "settings": { "recording": "on" } }),
        )
        .await?;
    let (s, mut screen) = crate::vnc::open_screen(&p, &api, &conn).await?;
    let sid = session_id(&s);
    screen
        .until("the first colour", WAIT, |c| c.pixel(5, 5) == [0x20, 0x40, 0x60])
        .await?;
    assert_eq!(screen.term.hello.as_ref().map(|h| h.recording), Some(true));
    xvnc.x("xsetroot", &["-solid", "#a05010"])?;
    screen
        .until("the second colour", WAIT, |c| c.pixel(300, 190) == [0xa0, 0x50, 0x10])
        .await?;
    api.ok(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None).await?;
    let rec = recording_until(&api, &sid, "closed and intact", |v| {
        v["stored"]["intact"] == true && !v["completed_at"].is_null()
    })
    .await?;
    assert_eq!(rec["input"], false);
    let (status, _, bytes) = api.get_bytes(&format!("/api/v1/recordings/{sid}/file"), None).await?;
    assert_eq!(status, 200);
    let idx = index(&bytes)?;
    let mut r = Reader::new();
    r.push(&bytes);
    let mut chunks = Vec::new();
    while let Some(c) = r.next_chunk()? {
        chunks.push((
            c.keyframe,
            c.records
                .iter()
                .map(|r| (r.kind, r.data.get(1).copied()))
                .collect::<Vec<_>>(),
        ));
    }
    assert!(
        !idx.keyframes.is_empty(),
        "a keyframe after the first frame: {chunks:?}\n{}",
        p.log()
            .lines()
            .filter(|l| l.contains(&sid) || l.contains("ecord"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Played from the start: the end shows the second colour.
    let mut r = Reader::new();
    r.push(&bytes);
    let mut all = Vec::new();
    while let Some(c) = r.next_chunk()? {
        all.extend(c.records);
    }
    assert!(all.iter().all(|r| r.kind != Kind::Input), "no input without the policy");
    let mut canvas = Canvas::default();
    for rec in all.iter().filter(|r| r.kind == Kind::Output) {
        canvas.apply(&ServerMsg::decode(&rec.data)?)?;
    }
    assert_eq!((canvas.width, canvas.height), (320, 200));
    assert_eq!(canvas.pixel(300, 190), [0xa0, 0x50, 0x10]);
    // Started at the first keyframe (its picture, then what followed): the same end.
    let k = &idx.keyframes[0];
    let from_key = records_from(&bytes, k.offset, &hex::encode(k.prev), &idx.meta)?;
    let mut seeked = Canvas::default();
    let state: Vec<_> = from_key.iter().take_while(|r| r.kind == Kind::State).collect();
    assert!(!state.is_empty(), "the keyframe starts with its picture");
    for rec in from_key.iter().filter(|r| r.kind != Kind::Input) {
        seeked.apply(&ServerMsg::decode(&rec.data)?)?;
        if rec.kind == Kind::State {
            assert_eq!((seeked.width, seeked.height), (320, 200), "the size comes first");
        }
    }
    assert_eq!(seeked.pixel(5, 5), canvas.pixel(5, 5));
    assert_eq!(seeked.pixel(300, 190), [0xa0, 0x50, 0x10]);
    let (status, v) = api
        .request(Method::GET, &format!("/api/v1/recordings/{sid}/asciicast"), None)
        .await?;
    assert_eq!(status, 400, "only terminals export as asciicast: {v}");
    Ok(())
}

/// A split deployment: the webapp and a bridge share the recording storage; a bridge without any refuses a
/// session whose connection must be recorded, and a recording survives the bridge that wrote it.
#[tokio::test(flavor = "multi_thread")]
async fn recordings_outlive_their_bridge_and_no_storage_means_no_session() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let web = Portico::start_with(Options {
        subcommand: Some("webapp"),
        ..Options::default()
    })?;
    let admin = Api::admin(&web).await?;
    let conn = ssh_connection(
        &admin,
        &sshd,
        json!({ "password": sshd.user.password, "settings": { "recording": "on" } }),
    )
    .await?;

    // Fail closed: no storage, no session (and nothing connected).
    let mut bare = Portico::start_with(web.bridge_options("bridge-bare"))?;
    let s = admin.create_session(&conn).await?;
    let url = format!("{}/bridge/v1/ws?session={}", bare.ws_base(), session_id(&s));
    let ws = portico_tests::client::ws_with_token(&url, &bare.cert_sha256, s["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
    let mut t = Term::new(ws);
    let closed = t.closed_within(WAIT).await?.expect("a CLOSED message");
    assert_eq!(closed.code, CloseCode::RecordingUnavailable);
    assert!(
        t.errors
            .iter()
            .any(|e| e.fatal && e.message.contains("--recording-dir")),
        "{:?}",
        t.errors
    );
    assert!(!t.statuses.iter().any(|s| s.state == "connected"), "{:?}", t.statuses);
    bare.terminate(Duration::from_secs(10))?;

    let mut opts = web.bridge_options("bridge-rec");
    opts.extra_args.push("--recording-dir".into());
    opts.extra_args
        .push(web.data_dir.join("recordings").display().to_string());
    let mut bridge = Portico::start_with(opts)?;
    let (s, mut t) = open_via(&bridge, &admin, &conn).await?;
    let sid = session_id(&s);
    t.input("echo survives-$((20+3))\r").await?;
    t.until("the output", WAIT, |t| t.text().contains("survives-23"))
        .await?;
    // Written within a second (a chunk closes at least every second).
    recording_until(&admin, &sid, "holding the output", |v| {
        v["stored"]["records"].as_u64().unwrap_or(0) >= 3
    })
    .await?;
    bridge.kill()?;
    // Served by the webapp, the bridge gone: whole chunks up to its death.
    let deadline = tokio::time::Instant::now() + WAIT;
    let cast = loop {
        let (status, _, cast) = admin
            .get_bytes(&format!("/api/v1/recordings/{sid}/asciicast"), None)
            .await?;
        let cast = String::from_utf8_lossy(&cast).into_owned();
        if status == 200 && cast.contains("survives-23") {
            break cast;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "http {status}: {cast}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        cast.starts_with("{\"version\":2") || cast.contains("\"version\":2"),
        "{cast}"
    );
    let rec = admin
        .ok(Method::GET, &format!("/api/v1/recordings/{sid}"), None)
        .await?;
    assert_eq!(rec["bridge_id"].as_str().map(|b| !b.is_empty()), Some(true), "{rec}");
    assert!(
        rec["completed_at"].is_null(),
        "never completed: cut short by its bridge's death: {rec}"
    );
    Ok(())
}

/// Who else reads recordings, by policy: a connection may let a session's owner play their own recordings
/// (only theirs, only of that connection); a group records its members' sessions at least as it says, even on
/// a connection that records nothing (the stricter policy wins).
#[tokio::test(flavor = "multi_thread")]
async fn owners_play_their_recordings_where_allowed_and_groups_record_more() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let admin = Api::admin(&p).await?;
    let shared = ssh_connection(
        &admin,
        &sshd,
        json!({ "name": "owner plays", "password": sshd.user.password,
                "settings": { "recording": "on", "recording_owner_access": true } }),
    )
    .await?;
    let plain = ssh_connection(
        &admin,
        &sshd,
        json!({ "name": "not recorded", "password": sshd.user.password }),
    )
    .await?;
    let (owner_id, owner) = admin.user_api(&p, "rec-owner", "user").await?;
    let (_, other) = admin.user_api(&p, "rec-other", "user").await?;
    for c in [&shared, &plain] {
        admin
            .ok(
                Method::PUT,
                &format!("/api/v1/connections/{c}/grants"),
                Some(json!({ "user_ids": [owner_id], "group_ids": [] })),
            )
            .await?;
    }
    let (status, v) = admin
        .request(
            Method::POST,
            "/api/v1/groups",
            Some(json!({ "name": "bad", "recording": "sometimes" })),
        )
        .await?;
    assert_eq!(status, 400, "{v}");
    let group = admin
        .ok(
            Method::POST,
            "/api/v1/groups",
            Some(json!({ "name": "audited", "recording": "keystrokes" })),
        )
        .await?;
    let gid = group["id"].as_str().unwrap_or_default();
    admin
        .ok(
            Method::PUT,
            &format!("/api/v1/groups/{gid}/members"),
            Some(json!({ "user_ids": [owner_id] })),
        )
        .await?;
    let mut ids = Vec::new();
    for (c, tag) in [(&shared, "one"), (&plain, "two")] {
        let (s, mut t) = crate::open_term(&p, &owner, c).await?;
        t.connected().await?;
        assert_eq!(
            t.hello.as_ref().map(|h| h.recording),
            Some(true),
            "{tag}: the user is told"
        );
        t.input(&format!("echo rec-{tag}-$((6*7))\r")).await?;
        t.until("the output", WAIT, |t| t.text().contains(&format!("rec-{tag}-42")))
            .await?;
        let sid = session_id(&s);
        owner
            .ok(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
            .await?;
        t.closed_within(Duration::from_secs(5)).await?;
        recording_until(&admin, &sid, "complete", |v| !v["completed_at"].is_null()).await?;
        ids.push(sid);
    }
    let (one, two) = (&ids[0], &ids[1]);
    let second = admin
        .ok(Method::GET, &format!("/api/v1/recordings/{two}"), None)
        .await?;
    assert_eq!(second["input"], true, "the group's keystrokes policy: {second}");
    assert_eq!(second["owner_access"], false);

    // The owner lists and plays the recording the connection lets them play, and no other.
    let mine = owner.ok(Method::GET, "/api/v1/recordings", None).await?;
    let listed: Vec<&str> = mine
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [one.as_str()]);
    let (status, _, bytes) = owner.get_bytes(&format!("/api/v1/recordings/{one}/file"), None).await?;
    assert_eq!(status, 200);
    let mut r = Reader::new();
    r.push(&bytes);
    let mut text = String::new();
    while let Some(c) = r.next_chunk()? {
        for rec in c.records.iter().filter(|r| r.kind == Kind::Output) {
            if let Ok(ServerMsg::TermOutput(b)) = ServerMsg::decode(&rec.data) {
                text.push_str(&String::from_utf8_lossy(&b));
            }
        }
    }
    assert!(text.contains("rec-one-42"), "{text}");
    let (status, _) = owner
        .request(Method::GET, &format!("/api/v1/recordings/{one}"), None)
        .await?;
    assert_eq!(status, 200);
    for path in [
        format!("/api/v1/recordings/{two}"),
        format!("/api/v1/recordings/{two}/file"),
        "/api/v1/recordings/00000000-0000-0000-0000-000000000000".to_owned(),
    ] {
        let (status, _, _) = owner.get_bytes(&path, None).await?;
        assert_eq!(status, 403, "{path}");
    }
    let (status, _) = owner
        .request(Method::DELETE, &format!("/api/v1/recordings/{one}"), None)
        .await?;
    assert_eq!(status, 403, "owners never delete");
    // Another user gets nothing of it.
    let (status, _, _) = other.get_bytes(&format!("/api/v1/recordings/{one}/file"), None).await?;
    assert_eq!(status, 403);
    let none = other.ok(Method::GET, "/api/v1/recordings", None).await?;
    assert_eq!(none.as_array().map(Vec::len), Some(0));
    Ok(())
}

/// An RDP session on the graphics pipeline (FreeRDP's shadow server, H.264 passed through) is recorded with
/// keyframes a player can start at: the stream since the last H.264 key frame, which starts with a key frame.
#[tokio::test(flavor = "multi_thread")]
async fn an_h264_session_is_recorded_with_keyframes_that_start_at_a_key_frame() -> anyhow::Result<()> {
    use portico_proto::wire::CAPS_H264;
    use portico_tests::peers::{RdpServer, ShadowAuth};
    let shadow = RdpServer::shadow(ShadowAuth::None, 640, 480)?;
    shadow.x("xsetroot", &["-solid", "#203040"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = crate::rdp::rdp_connection(
        &api,
        &shadow,
        "any",
        json!({ "width": 640, "height": 480, "h264": true, "recording": "on" }),
    )
    .await?;
    let (s, ws) = portico_tests::client::attach(&p, &api, &conn).await?;
    let sid = session_id(&s);
    let mut screen = portico_tests::client::Screen::new(ws);
    screen.term.send(ClientMsg::Caps { flags: CAPS_H264 }).await?;
    screen.until("the first H.264 frame", WAIT, |c| c.videos >= 1).await?;
    // The screen keeps changing (H.264 frames), and keyframes come every 10 s while it does: wait for one
    // whose stream holds video, and check that it starts at a key frame (each keyframe's picture starts with
    // the size).
    let _painter = shadow.painter(900)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let first_video = loop {
        screen.pump(Duration::from_millis(200)).await?;
        let (_, _, bytes) = api.get_bytes(&format!("/api/v1/recordings/{sid}/file"), None).await?;
        let idx = index(&bytes)?;
        let mut found = None;
        for k in &idx.keyframes {
            let from = records_from(&bytes, k.offset, &hex::encode(k.prev), &idx.meta)?;
            let state: Vec<ServerMsg> = from
                .iter()
                .take_while(|r| r.kind == Kind::State)
                .map(|r| ServerMsg::decode(&r.data))
                .collect::<Result<_, _>>()?;
            assert!(
                matches!(
                    state.first(),
                    Some(ServerMsg::DisplaySize {
                        width: 640,
                        height: 480
                    })
                ),
                "a keyframe starts with the size: {:?}",
                state.first()
            );
            assert!(state.len() > 2, "a keyframe holds a picture: {} messages", state.len());
            if let Some(key) = state.iter().find_map(|m| match m {
                ServerMsg::Video { key, .. } => Some(*key),
                _ => None,
            }) {
                found = Some(key);
            }
        }
        if let Some(key) = found {
            break key;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no keyframe with H.264 in {} keyframes",
            idx.keyframes.len()
        );
    };
    api.ok(Method::DELETE, &format!("/api/v1/sessions/{sid}"), None).await?;
    assert!(first_video, "the keyframe's stream starts at an H.264 key frame");
    Ok(())
}
