//! Session recording, the bridge's side of [`portico_proto::recording`]: the session's task hands each
//! message to a bounded queue without waiting, and a writer task of its own appends whole chunks to
//! `<recording dir>/<session id>.portrec`, so a slow disk never slows the live session. A full queue drops
//! records (counted) and asks the session for a keyframe, which makes the recording whole again from there.
//!
//! The bridge keeps no state of its own on disk: it appends recordings to the recording storage (shared
//! with the webapps, which serve them) and never reads them back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portico_proto::metrics::Counter;
use portico_proto::recording::{Kind, Meta, Writer};
use portico_proto::wire::{ClientMsg, ServerMsg};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes a recording's queue may hold before records are dropped (the writer is behind the session).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// The writer closes the chunk being filled at least this often: a bridge that dies loses at most this
/// much of the recording.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// A keyframe at least this often while the session changes (playback seeks to within this much).
pub const KEYFRAME_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    #[error("the policy records this session but this bridge has no recording storage (--recording-dir)")]
    NoStorage,
    #[error("cannot create the recording {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
}

enum Item {
    Record {
        at_ms: u64,
        kind: Kind,
        data: Vec<u8>,
    },
    /// The records that follow start a keyframe.
    Keyframe,
}

/// One session's recording (held by its [`crate::lifecycle::Lifecycle`]).
pub struct Recorder {
    tx: mpsc::Sender<Item>,
    queued: Arc<AtomicUsize>,
    started: Instant,
    input: bool,
    /// Records were dropped since the last keyframe: the session should send one.
    gap: bool,
    last_keyframe: Option<Instant>,
    /// Output recorded since the last keyframe (a static session needs none).
    changed: bool,
    dropped: Counter,
    writer: Option<tokio::task::JoinHandle<()>>,
}

/// Where the recording of session `id` is stored in `dir`.
pub fn path_of(dir: &Path, id: &str) -> PathBuf {
    dir.join(portico_proto::recording::file_name(id))
}

impl Recorder {
    /// Start recording `meta.session_id` into `dir` (the file must not exist yet: a session is recorded
    /// once); `input` records the user's keystrokes and pointer too.
    pub async fn start(
        dir: &Path,
        meta: &Meta,
        recorded: Counter,
        dropped: Counter,
    ) -> Result<Recorder, RecorderError> {
        let path = path_of(dir, &meta.session_id);
        let create = || async {
            let mut o = tokio::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            o.mode(0o640);
            o.open(&path).await
        };
        let file = match create().await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| RecorderError::Create {
                        path: dir.to_owned(),
                        source,
                    })?;
                create().await.map_err(|source| RecorderError::Create {
                    path: path.clone(),
                    source,
                })?
            }
            Err(source) => return Err(RecorderError::Create { path, source }),
        };
        let (tx, rx) = mpsc::channel(4096);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer::new(meta);
        let task = tokio::spawn(write_loop(rx, file, writer, queued.clone(), recorded, path));
        Ok(Recorder {
            tx,
            queued,
            started: Instant::now(),
            input: meta.input,
            gap: false,
            last_keyframe: None,
            changed: false,
            dropped,
            writer: Some(task),
        })
    }

    fn at_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn push(&mut self, kind: Kind, data: Vec<u8>) {
        let len = data.len();
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.dropped.inc();
            self.gap = true;
            return;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        let at_ms = self.at_ms();
        if let Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) =
            self.tx.try_send(Item::Record { at_ms, kind, data })
        {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.inc();
            self.gap = true;
        }
    }

    /// A message the bridge sent to the browser (or, for a terminal, output as the server produced it).
    pub fn output(&mut self, msg: &ServerMsg) {
        self.changed = true;
        self.push(Kind::Output, msg.encode());
    }

    /// A message from the browser: the terminal's size always (playback needs it); keystrokes, pointer and
    /// typed text only when the policy records input. Never credentials, clipboard or protocol upkeep.
    pub fn input(&mut self, msg: &ClientMsg) {
        let keep = match msg {
            ClientMsg::Resize { .. } => true,
            ClientMsg::TermInput(_) | ClientMsg::Key { .. } | ClientMsg::Pointer { .. } => self.input,
            _ => false,
        };
        if keep {
            self.push(Kind::Input, msg.encode());
        }
    }

    /// Whether the session should record a keyframe now: never yet, after a gap, or when it changed and
    /// the last keyframe is [`KEYFRAME_EVERY`] old.
    pub fn wants_keyframe(&self) -> bool {
        match self.last_keyframe {
            None => true,
            Some(at) => self.gap || (self.changed && at.elapsed() >= KEYFRAME_EVERY),
        }
    }

    /// Record a keyframe: `size` (a terminal's `RESIZE`, as input) and `state` (the full picture or the
    /// terminal's repaint), which a player starting here draws.
    pub fn keyframe(&mut self, size: Option<&ClientMsg>, state: &[ServerMsg]) {
        if self.tx.try_send(Item::Keyframe).is_err() {
            self.gap = true;
            return;
        }
        self.gap = false;
        self.changed = false;
        self.last_keyframe = Some(Instant::now());
        if let Some(s) = size {
            self.push(Kind::Input, s.encode());
        }
        for m in state {
            self.push(Kind::State, m.encode());
        }
    }

    /// Close the recording: the writer writes what is queued and syncs the file (bounded: a storage that
    /// does not answer within 5 s is left behind, the recording cut short there).
    pub async fn finish(mut self) {
        let Some(task) = self.writer.take() else { return };
        drop(self.tx);
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("The recording's storage did not finish writing within 5 s");
        }
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<Item>,
    mut file: tokio::fs::File,
    mut w: Writer,
    queued: Arc<AtomicUsize>,
    recorded: Counter,
    path: PathBuf,
) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        let open = tokio::select! {
            item = rx.recv() => match item {
                Some(Item::Record { at_ms, kind, data }) => {
                    queued.fetch_sub(data.len(), Ordering::Relaxed);
                    w.record(at_ms, kind, &data);
                    true
                }
                Some(Item::Keyframe) => {
                    w.keyframe();
                    true
                }
                None => false,
            },
            _ = tick.tick() => {
                w.flush();
                true
            }
        };
        if !open {
            w.flush();
        }
        let bytes = w.take();
        if !bytes.is_empty() && !failed {
            match file.write_all(&bytes).await {
                Ok(()) => recorded.add(bytes.len() as u64),
                Err(e) => {
                    // The rest of the session is not recorded; what was written stays checkable.
                    tracing::error!(error = %e, path = %path.display(), "Writing the recording failed");
                    failed = true;
                }
            }
        }
        if !open {
            break;
        }
    }
    if let Err(e) = file.sync_all().await {
        tracing::warn!(error = %e, path = %path.display(), "Syncing the recording failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_proto::recording::{Reader, index};

    fn meta(id: &str, input: bool) -> Meta {
        Meta {
            session_id: id.into(),
            connection_id: "c".into(),
            protocol: "ssh".into(),
            user: "alice".into(),
            started_unix_ms: 0,
            input,
        }
    }

    #[tokio::test]
    async fn a_recording_holds_output_size_and_keyframes_but_input_only_when_asked() {
        let dir = std::env::temp_dir().join(format!("portico-recorder-{}", std::process::id()));
        let m = meta("s1", false);
        let mut r = Recorder::start(&dir, &m, Counter::default(), Counter::default())
            .await
            .unwrap();
        assert!(
            Recorder::start(&dir, &m, Counter::default(), Counter::default())
                .await
                .is_err(),
            "a session is recorded once"
        );
        assert!(r.wants_keyframe());
        let size = ClientMsg::Resize {
            cols: 100,
            rows: 30,
            width_px: 0,
            height_px: 0,
        };
        r.keyframe(Some(&size), &[ServerMsg::TermOutput(b"\x1bc$ ".to_vec())]);
        assert!(!r.wants_keyframe());
        r.output(&ServerMsg::TermOutput(b"ls\r\n".to_vec()));
        r.input(&ClientMsg::TermInput(b"secret typed".to_vec()));
        r.input(&ClientMsg::Credentials(portico_proto::wire::Credentials {
            username: "u".into(),
            password: "p".into(),
            domain: None,
        }));
        r.input(&size);
        r.finish().await;
        let bytes = std::fs::read(path_of(&dir, "s1")).unwrap();
        let idx = index(&bytes).unwrap();
        assert_eq!(idx.keyframes.len(), 1);
        let mut rd = Reader::new();
        rd.push(&bytes);
        let mut kinds = Vec::new();
        while let Some(c) = rd.next_chunk().unwrap() {
            kinds.extend(c.records.iter().map(|r| (r.kind, r.data.clone())));
        }
        assert_eq!(
            kinds,
            vec![
                (Kind::Input, size.encode()),
                (Kind::State, ServerMsg::TermOutput(b"\x1bc$ ".to_vec()).encode()),
                (Kind::Output, ServerMsg::TermOutput(b"ls\r\n".to_vec()).encode()),
                (Kind::Input, size.encode()),
            ],
            "no keystrokes without the policy, never credentials"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
