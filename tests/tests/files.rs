//! Files in and out of SSH sessions (SFTP on the session's own connection, through the bridge), driven over
//! the wire protocol against a real sshd: the connection's policy and size limit enforced at the bridge
//! whatever the client sends, both windows of flow control, cancel, and the audit events.

use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use portico_proto::files::{FILE_CHUNK, FILE_WINDOW, FileEvent, FileOp};
use portico_proto::wire::ClientMsg;
use portico_tests::client::{Api, Term};
use portico_tests::peers::Sshd;
use portico_tests::portico::Portico;
use serde_json::{Value, json};

use crate::{open_term, ssh_connection};

const WAIT: Duration = Duration::from_secs(20);

/// Bytes that differ at every offset (a lost, doubled or reordered chunk changes them).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 251) as u8) ^ seed).collect()
}

fn failure(e: &FileEvent) -> &str {
    match e {
        FileEvent::Failed { message } => message,
        _ => "",
    }
}

async fn open(p: &Portico, api: &Api, conn: &str) -> anyhow::Result<Term> {
    let (_, mut t) = open_term(p, api, conn).await?;
    t.until("connected", WAIT, |t| t.statuses.iter().any(|s| s.state == "connected"))
        .await?;
    Ok(t)
}

pub async fn transfer_events(api: &Api, path_part: &str, want: usize) -> anyhow::Result<Vec<Value>> {
    let start = Instant::now();
    loop {
        let all = api
            .ok(
                reqwest::Method::GET,
                "/api/v1/events?type=file_transferred,file_changed&limit=200",
                None,
            )
            .await?;
        let items: Vec<Value> = all
            .as_array()
            .or_else(|| all["items"].as_array())
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["details"]["path"].as_str().is_some_and(|p| p.contains(path_part)))
            .collect();
        if items.len() >= want {
            return Ok(items);
        }
        if start.elapsed() > WAIT {
            bail!(
                "{} of {want} file_transferred events for {path_part}: {all:#}",
                items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sftp_transfers_enforce_policy_limits_and_windows() -> anyhow::Result<()> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let pw = sshd.user.password.clone();
    let none = ssh_connection(&api, &sshd, json!({"name": "files off", "password": pw})).await?;
    let down = ssh_connection(
        &api,
        &sshd,
        json!({"name": "files down", "password": pw, "settings": {"files": "download", "files_max_mb": 1}}),
    )
    .await?;
    let both = ssh_connection(
        &api,
        &sshd,
        json!({"name": "files both", "password": pw, "settings": {"files": "both", "files_max_mb": 2}}),
    )
    .await?;
    let dir = format!("/tmp/portico-files-{}", uuid::Uuid::new_v4());

    // Off (the default): no file panel, and the bridge refuses what a client sends anyway.
    let mut t = open(&p, &api, &none).await?;
    assert!(t.statuses.iter().all(|s| s.files.is_none()), "{:?}", t.statuses);
    let e = t.ask(1, FileOp::List { path: String::new() }).await?;
    assert_eq!(failure(&e), "file transfer is off for this connection");
    drop(t);

    // Both: the panel's whole life.
    let mut t = open(&p, &api, &both).await?;
    assert!(
        t.statuses
            .iter()
            .any(|s| s.files == Some(portico_proto::files::FilePolicy::Both)),
        "{:?}",
        t.statuses
    );
    assert!(matches!(
        t.ask(1, FileOp::Mkdir { path: dir.clone() }).await?,
        FileEvent::Done { .. }
    ));
    match t.ask(2, FileOp::List { path: dir.clone() }).await? {
        FileEvent::Entries { path, entries, .. } => assert!(path == dir && entries.is_empty(), "{path} {entries:?}"),
        other => bail!("list: {other:?}"),
    }
    // The home directory by default, as an absolute path.
    match t.ask(3, FileOp::List { path: String::new() }).await? {
        FileEvent::Entries { path, .. } => assert_eq!(path, sshd.user.home.display().to_string()),
        other => bail!("list home: {other:?}"),
    }
    // Upload 300 KiB (more than a window): on disk byte for byte, owned by the session's user.
    let data = pattern(300 * 1024, 7);
    let up = format!("{dir}/up load é.bin");
    let end = t.upload(4, &up, &data).await?;
    assert_eq!(
        end,
        FileEvent::Done {
            bytes: data.len() as u64
        }
    );
    let on_disk = std::fs::read(&up).with_context(|| format!("read {up}"))?;
    assert!(
        on_disk == data,
        "the uploaded file differs ({} bytes on disk)",
        on_disk.len()
    );
    let owner = std::fs::metadata(&up)?.uid();
    let user_uid = std::fs::metadata(&sshd.user.home)?.uid();
    assert_eq!(owner, user_uid, "the file belongs to the session's user");
    // And back.
    let (end, got) = t.download(5, &up).await?;
    assert_eq!(
        end,
        FileEvent::Done {
            bytes: data.len() as u64
        }
    );
    assert!(got == data, "the downloaded bytes differ ({} bytes)", got.len());

    // A client that never acknowledges gets one window, not a byte more.
    let big = format!("{dir}/big.bin");
    std::fs::write(&big, pattern(1536 * 1024, 3))?;
    t.file_request(6, FileOp::Download { path: big.clone() }).await?;
    t.until("a window of data", WAIT, |t| t.downloaded(6) >= FILE_WINDOW as usize)
        .await?;
    // Whatever the bridge would send next is behind this pong (the actor answers in order, the file task
    // sends only after acks).
    t.barrier(1).await?;
    assert_eq!(
        t.downloaded(6),
        FILE_WINDOW as usize,
        "the bridge sent beyond the window"
    );
    // Another transfer while one is under way is refused; then cancel the first.
    let e = t.ask(7, FileOp::Download { path: up.clone() }).await?;
    assert_eq!(failure(&e), "another transfer is under way: wait for it or cancel it");
    t.file_request(6, FileOp::Cancel).await?;

    // Over the size limit (2 MiB here): refused before a byte moves, nothing created.
    let over = format!("{dir}/over.bin");
    let e = t
        .ask(
            8,
            FileOp::Upload {
                path: over.clone(),
                size: 2 * 1024 * 1024 + 1,
            },
        )
        .await?;
    assert_eq!(failure(&e), "the file is larger than this connection's limit of 2 MiB");
    assert!(!std::path::Path::new(&over).exists());
    std::fs::write(&over, pattern(2 * 1024 * 1024 + 1, 1))?;
    let e = t.ask(9, FileOp::Download { path: over.clone() }).await?;
    assert_eq!(failure(&e), "the file is larger than this connection's limit of 2 MiB");

    // More bytes than announced: refused, and the partial file removed.
    let liar = format!("{dir}/liar.bin");
    t.file_request(
        10,
        FileOp::Upload {
            path: liar.clone(),
            size: 10,
        },
    )
    .await?;
    t.until("the upload to start", WAIT, |t| !t.replies(10).is_empty())
        .await?;
    t.send(ClientMsg::FileChunk {
        id: 10,
        data: vec![1; 20],
    })
    .await?;
    t.until("the liar's upload to fail", WAIT, |t| {
        t.replies(10).iter().any(|e| !failure(e).is_empty())
    })
    .await?;
    assert_eq!(
        failure(t.replies(10).last().unwrap()),
        "more bytes than the upload announced"
    );

    // Cancel an upload half way over a file that exists: the file stays as it was, the part goes.
    let half = format!("{dir}/half.bin");
    std::fs::write(&half, "the original\n")?;
    let d = pattern(200 * 1024, 9);
    t.file_request(
        11,
        FileOp::Upload {
            path: half.clone(),
            size: d.len() as u64,
        },
    )
    .await?;
    t.until("the upload to start", WAIT, |t| !t.replies(11).is_empty())
        .await?;
    t.send(ClientMsg::FileChunk {
        id: 11,
        data: d[..FILE_CHUNK].to_vec(),
    })
    .await?;
    t.until("progress", WAIT, |t| {
        t.replies(11).contains(&FileEvent::Progress {
            bytes: FILE_CHUNK as u64,
        })
    })
    .await?;
    t.file_request(11, FileOp::Cancel).await?;

    // Malformed and misdirected requests get a clear answer and break nothing.
    let e = t
        .ask(
            12,
            FileOp::List {
                path: format!("{dir}\0/x"),
            },
        )
        .await?;
    assert_eq!(failure(&e), "the path contains a NUL character");
    t.send(ClientMsg::FileChunk {
        id: 999,
        data: vec![0; 8],
    })
    .await?;
    t.until("a stray chunk's answer", WAIT, |t| !t.replies(999).is_empty())
        .await?;
    assert_eq!(failure(&t.replies(999)[0]), "no upload under way with this id");
    let e = t
        .ask(
            13,
            FileOp::List {
                path: format!("{dir}/missing"),
            },
        )
        .await?;
    assert!(!failure(&e).is_empty(), "{e:?}");
    let e = t.ask(14, FileOp::Download { path: dir.clone() }).await?;
    assert_eq!(failure(&e), "a directory cannot be downloaded");

    // The events say what moved, cancelled or not (the cancelled upload's file is gone by then).
    let events = transfer_events(&api, &dir, 6).await?;
    let has = |direction: &str, name: &str, outcome: &str| {
        events.iter().any(|e| {
            let d = &e["details"];
            d["direction"] == direction
                && d["outcome"] == outcome
                && d["path"].as_str().is_some_and(|p| p.ends_with(name))
        })
    };
    assert!(has("upload", "up load é.bin", "done"), "{events:#?}");
    assert!(has("download", "up load é.bin", "done"), "{events:#?}");
    assert!(has("download", "big.bin", "cancelled"), "{events:#?}");
    assert!(has("upload", "half.bin", "cancelled"), "{events:#?}");
    assert!(has("upload", "liar.bin", "failed"), "{events:#?}");
    assert!(has("mkdir", &dir, "done"), "{events:#?}");
    let parts: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "parts left behind: {parts:?}");
    assert_eq!(
        std::fs::read_to_string(&half)?,
        "the original\n",
        "a cancelled upload touched the file it was to replace"
    );
    assert!(
        !std::path::Path::new(&liar).exists(),
        "a refused upload left its partial file"
    );
    let done = events
        .iter()
        .find(|e| e["details"]["direction"] == "upload" && e["details"]["outcome"] == "done")
        .context("upload event")?;
    assert_eq!(done["details"]["bytes"], data.len() as u64);
    assert!(
        done["user_id"].is_string() && done["connection_id"].is_string(),
        "{done:#}"
    );

    // The terminal still works, and delete works.
    t.input("echo still-$((40+2))\n").await?;
    t.until("the shell", WAIT, |t| t.text().contains("still-42")).await?;
    assert!(matches!(
        t.ask(15, FileOp::Remove { path: up.clone() }).await?,
        FileEvent::Done { .. }
    ));
    assert!(!std::path::Path::new(&up).exists());
    let removed = transfer_events(&api, "up load é.bin", 3).await?;
    assert!(
        removed
            .iter()
            .any(|e| e["type"] == "file_changed" && e["details"]["direction"] == "remove"),
        "{removed:#?}"
    );
    // A session that ends in the middle of an upload removes its part (the connection is still up then).
    let ended = format!("{dir}/ended.bin");
    t.file_request(
        16,
        FileOp::Upload {
            path: ended.clone(),
            size: 200 * 1024,
        },
    )
    .await?;
    t.until("the upload to start", WAIT, |t| !t.replies(16).is_empty())
        .await?;
    t.send(ClientMsg::FileChunk {
        id: 16,
        data: vec![7; FILE_CHUNK],
    })
    .await?;
    t.until("progress", WAIT, |t| t.replies(16).len() > 1).await?;
    t.send(ClientMsg::Disconnect).await?;
    let events = transfer_events(&api, "ended.bin", 1).await?;
    assert_eq!(events[0]["details"]["outcome"], "cancelled", "{events:#?}");
    assert!(
        std::fs::read_dir(&dir)?.all(|e| e.is_ok_and(|e| !e.file_name().to_string_lossy().contains("ended.bin"))),
        "the ended session's upload left its part"
    );
    drop(t);

    // Download only, 1 MiB: no upload, folder or delete, whatever the client sends.
    let mut t = open(&p, &api, &down).await?;
    for (id, op) in [
        (
            1,
            FileOp::Upload {
                path: format!("{dir}/nope"),
                size: 1,
            },
        ),
        (
            2,
            FileOp::Mkdir {
                path: format!("{dir}/nope"),
            },
        ),
        (3, FileOp::Remove { path: big.clone() }),
    ] {
        let e = t.ask(id, op).await?;
        assert_eq!(failure(&e), "this connection allows downloads only");
    }
    assert!(std::path::Path::new(&big).exists() && !std::path::Path::new(&format!("{dir}/nope")).exists());
    let e = t.ask(4, FileOp::Download { path: big.clone() }).await?;
    assert_eq!(failure(&e), "the file is larger than this connection's limit of 1 MiB");
    let small = format!("{dir}/small.txt");
    std::fs::write(&small, "small file\n")?;
    let (end, got) = t.download(5, &small).await?;
    assert_eq!(
        (end, got.as_slice()),
        (FileEvent::Done { bytes: 11 }, b"small file\n".as_slice())
    );
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);

    // The policy and the limit are checked when the connection is saved too.
    let (status, v) = api
        .request(
            reqwest::Method::POST,
            "/api/v1/connections",
            Some(
                json!({"name": "bad files", "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "u",
                "settings": {"files": "everything"}}),
            ),
        )
        .await?;
    assert_eq!(status, 400, "{v}");
    let (status, v) = api
        .request(
            reqwest::Method::POST,
            "/api/v1/connections",
            Some(
                json!({"name": "bad limit", "protocol": "ssh", "host": "127.0.0.1", "port": 22, "username": "u",
                "settings": {"files": "both", "files_max_mb": 0}}),
            ),
        )
        .await?;
    assert_eq!(status, 400, "{v}");
    Ok(())
}
