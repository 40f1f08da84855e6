//! File transfer in SSH sessions: SFTP on a second channel of the session's own SSH connection, driven by
//! the browser's `FILE_REQUEST`s (`portico_proto::files`).
//!
//! One task per session owns the SFTP session, started at the first request. The terminal actor hands it
//! requests and chunks and never waits for it; the task answers the browser on the session's queue, at
//! most [`FILE_WINDOW`] bytes of a download ahead of the browser's acknowledgements, so a transfer never
//! fills the queue that the terminal's output shares. The connection's policy is checked here, on every
//! request, whatever the browser shows.

use std::sync::Arc;
use std::time::Duration;

use portico_proto::files::{
    FILE_CHUNK, FILE_WINDOW, FileEntry, FileEvent, FileOp, FilePolicy, FileReply, FileRequest, MAX_ENTRIES,
    TransferDirection, TransferReport, path_problem,
};
use portico_proto::wire::ServerMsg;
use russh_sftp::client::SftpSession;
use russh_sftp::client::fs::File;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::control::ControlPlane;
use crate::lifecycle::ClientTx;

/// Requests and chunks queued for the task (a browser keeps at most a window of chunks in flight).
const QUEUE: usize = 64;

/// How long a message to the browser may wait for room before the transfer is given up.
const SEND_LIMIT: Duration = Duration::from_secs(30);

/// Bytes of a download read with one SFTP request (sent as chunks of `FILE_CHUNK`): a read is a round
/// trip to the server, so the larger, the fewer (OpenSSH's sftp-server serves up to 256 KiB).
const READ: usize = 4 * FILE_CHUNK;

/// How long one SFTP request may take.
const SFTP_TIMEOUT_SECS: u64 = 30;

/// What the terminal actor hands the task.
pub enum FileCmd {
    Request(FileRequest),
    Chunk {
        id: u32,
        data: Vec<u8>,
    },
    /// The browser reattached (or went): a transfer under way is abandoned; replies go to the new one.
    Client(Option<ClientTx>),
}

/// What the task needs besides the SFTP channel.
pub struct FilesContext {
    pub policy: FilePolicy,
    pub max_bytes: u64,
    pub control: Arc<dyn ControlPlane>,
    pub session_id: String,
}

/// The session's file task, once started.
pub struct Files {
    tx: mpsc::Sender<FileCmd>,
}

impl Files {
    /// Start the task on an SFTP channel (`stream`: the channel after its `sftp` subsystem request).
    pub fn start<S>(stream: S, client: Option<ClientTx>, ctx: FilesContext) -> Files
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            let sftp = match SftpSession::new(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "SFTP did not start");
                    return refuse_all(rx, client, format!("the server's sftp did not start: {}", lower(&e))).await;
                }
            };
            sftp.set_timeout(SFTP_TIMEOUT_SECS);
            Task {
                sftp,
                client,
                ctx,
                transfer: None,
            }
            .run(rx)
            .await;
        });
        Files { tx }
    }

    /// A task that refuses every request with `why` (the server has no SFTP).
    pub fn refusing(client: Option<ClientTx>, why: String) -> Files {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(refuse_all(rx, client, why));
        Files { tx }
    }

    /// Hand the task a command; `false` when its queue is full (a browser beyond its window).
    pub fn send(&self, cmd: FileCmd) -> bool {
        self.tx.try_send(cmd).is_ok()
    }
}

async fn refuse_all(mut rx: mpsc::Receiver<FileCmd>, mut client: Option<ClientTx>, why: String) {
    while let Some(cmd) = rx.recv().await {
        match cmd {
            FileCmd::Request(r) if !matches!(r.op, FileOp::Ack { .. } | FileOp::Cancel) => {
                if let Some(c) = &client {
                    let _ = c.try_send(failed(r.id, why.clone()));
                }
            }
            FileCmd::Client(c) => client = c,
            _ => {}
        }
    }
}

fn lower(e: &impl std::fmt::Display) -> String {
    e.to_string().to_lowercase()
}

fn failed(id: u32, message: String) -> ServerMsg {
    ServerMsg::FileReply(FileReply {
        id,
        event: FileEvent::Failed { message },
    })
}

enum Transfer {
    Down {
        id: u32,
        path: String,
        file: File,
        sent: u64,
        acked: u64,
    },
    Up {
        id: u32,
        path: String,
        file: File,
        size: u64,
        written: u64,
    },
}

impl Transfer {
    fn id(&self) -> u32 {
        match self {
            Transfer::Down { id, .. } | Transfer::Up { id, .. } => *id,
        }
    }
}

struct Task {
    sftp: SftpSession,
    client: Option<ClientTx>,
    ctx: FilesContext,
    transfer: Option<Transfer>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<FileCmd>) {
        loop {
            // A download with room in its window reads on between commands; otherwise wait for one.
            let cmd = if self.download_has_room() {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv().await {
                    Some(c) => Some(c),
                    None => break,
                }
            };
            match cmd {
                Some(FileCmd::Request(r)) => self.request(r).await,
                Some(FileCmd::Chunk { id, data }) => self.chunk(id, data).await,
                Some(FileCmd::Client(c)) => {
                    self.abandon("failed", "the browser reconnected").await;
                    self.client = c;
                }
                None => self.pump().await,
            }
        }
        // The session ended.
        self.abandon("cancelled", "the session ended").await;
        let _ = self.sftp.close().await;
    }

    fn download_has_room(&self) -> bool {
        matches!(&self.transfer, Some(Transfer::Down { sent, acked, .. }) if sent - acked + READ as u64 <= FILE_WINDOW)
    }

    /// Send to the browser, waiting for room (bounded); `false` when it is gone or stuck.
    async fn send(&self, msg: ServerMsg) -> bool {
        let Some(c) = &self.client else { return false };
        matches!(tokio::time::timeout(SEND_LIMIT, c.send(msg)).await, Ok(Ok(())))
    }

    async fn reply(&self, id: u32, event: FileEvent) {
        self.send(ServerMsg::FileReply(FileReply { id, event })).await;
    }

    async fn request(&mut self, r: FileRequest) {
        let id = r.id;
        if let Err(why) = self.ctx.policy.check(&r.op) {
            tracing::info!(id, op = ?r.op, "File request refused by the connection's policy");
            return self.reply(id, FileEvent::Failed { message: why.into() }).await;
        }
        if let Some(why) = r.op.path().and_then(path_problem) {
            return self.reply(id, FileEvent::Failed { message: why.into() }).await;
        }
        match r.op {
            FileOp::Ack { bytes } => {
                if let Some(Transfer::Down { id: t, sent, acked, .. }) = &mut self.transfer
                    && *t == id
                {
                    // An acknowledgement never counts bytes that were not sent, nor goes back.
                    *acked = bytes.min(*sent).max(*acked);
                }
            }
            FileOp::Cancel => {
                if self.transfer.as_ref().is_some_and(|t| t.id() == id) {
                    self.abandon("cancelled", "cancelled").await;
                }
            }
            FileOp::List { path } => {
                let event = self
                    .list(&path)
                    .await
                    .unwrap_or_else(|message| FileEvent::Failed { message });
                self.reply(id, event).await;
            }
            FileOp::Mkdir { path } => {
                let event = match self.sftp.create_dir(path).await {
                    Ok(()) => FileEvent::Done { bytes: 0 },
                    Err(e) => FileEvent::Failed { message: lower(&e) },
                };
                self.reply(id, event).await;
            }
            FileOp::Remove { path } => {
                let removed = match self.sftp.symlink_metadata(path.clone()).await {
                    Ok(m) if m.is_dir() => self.sftp.remove_dir(path).await,
                    Ok(_) => self.sftp.remove_file(path).await,
                    Err(e) => Err(e),
                };
                let event = match removed {
                    Ok(()) => FileEvent::Done { bytes: 0 },
                    Err(e) => FileEvent::Failed { message: lower(&e) },
                };
                self.reply(id, event).await;
            }
            FileOp::Download { path } | FileOp::Upload { path, .. } if self.transfer.is_some() => {
                let _ = path;
                let message = "another transfer is under way: wait for it or cancel it".into();
                self.reply(id, FileEvent::Failed { message }).await;
            }
            FileOp::Download { path } => match self.open_download(&path).await {
                Ok((file, size)) => {
                    tracing::info!(id, path = %path, size, "Download started");
                    self.transfer = Some(Transfer::Down {
                        id,
                        path,
                        file,
                        sent: 0,
                        acked: 0,
                    });
                    self.reply(id, FileEvent::Started { size }).await;
                }
                Err(message) => self.reply(id, FileEvent::Failed { message }).await,
            },
            FileOp::Upload { path, size } => {
                if size > self.ctx.max_bytes {
                    let message = format!(
                        "the file is larger than this connection's limit of {} MiB",
                        self.ctx.max_bytes >> 20
                    );
                    return self.reply(id, FileEvent::Failed { message }).await;
                }
                match self.sftp.create(path.clone()).await {
                    Ok(file) => {
                        tracing::info!(id, path = %path, size, "Upload started");
                        self.transfer = Some(Transfer::Up {
                            id,
                            path,
                            file,
                            size,
                            written: 0,
                        });
                        self.reply(id, FileEvent::Started { size }).await;
                        if size == 0 {
                            self.finish_upload().await;
                        }
                    }
                    Err(e) => self.reply(id, FileEvent::Failed { message: lower(&e) }).await,
                }
            }
        }
    }

    async fn list(&self, path: &str) -> Result<FileEvent, String> {
        let dir = self
            .sftp
            .canonicalize(if path.is_empty() { "." } else { path })
            .await
            .map_err(|e| lower(&e))?;
        let read = self.sftp.read_dir(dir.clone()).await.map_err(|e| lower(&e))?;
        let mut entries: Vec<FileEntry> = read
            .map(|e| {
                let m = e.metadata();
                FileEntry {
                    name: e.file_name(),
                    dir: m.is_dir(),
                    size: m.size.unwrap_or(0),
                    mtime: m.mtime.map(u64::from).unwrap_or(0),
                }
            })
            .filter(|e| e.name != "." && e.name != "..")
            .collect();
        entries.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));
        let truncated = u32::try_from(entries.len().saturating_sub(MAX_ENTRIES)).unwrap_or(u32::MAX);
        entries.truncate(MAX_ENTRIES);
        Ok(FileEvent::Entries {
            path: dir,
            entries,
            truncated,
        })
    }

    async fn open_download(&self, path: &str) -> Result<(File, u64), String> {
        let meta = self.sftp.metadata(path).await.map_err(|e| lower(&e))?;
        if meta.is_dir() {
            return Err("a directory cannot be downloaded".into());
        }
        let size = meta.size.unwrap_or(0);
        if size > self.ctx.max_bytes {
            return Err(format!(
                "the file is larger than this connection's limit of {} MiB",
                self.ctx.max_bytes >> 20
            ));
        }
        let file = self.sftp.open(path).await.map_err(|e| lower(&e))?;
        Ok((file, size))
    }

    /// Send the download's next chunk.
    async fn pump(&mut self) {
        let Some(Transfer::Down { id, file, sent, .. }) = &mut self.transfer else {
            return;
        };
        let id = *id;
        let mut buf = vec![0u8; READ];
        let mut n = 0;
        // Fill the buffer (a read may return less), up to the end of the file.
        while n < READ {
            match file.read(&mut buf[n..]).await {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return self.fail(&lower(&e)).await,
            }
        }
        let total = *sent + n as u64;
        if total > self.ctx.max_bytes {
            // The file grew past the limit while it was read.
            return self.fail("the file grew beyond this connection's limit").await;
        }
        *sent = total;
        buf.truncate(n);
        if n == 0 {
            let Some(Transfer::Down { path, .. }) = self.transfer.take() else {
                return;
            };
            self.reply(id, FileEvent::Done { bytes: total }).await;
            tracing::info!(id, path = %path, bytes = total, "Download done");
            return self.report(TransferDirection::Download, path, total, "done").await;
        }
        for chunk in buf.chunks(FILE_CHUNK) {
            if !self
                .send(ServerMsg::FileData {
                    id,
                    data: chunk.to_vec(),
                })
                .await
            {
                return self.abandon("failed", "the browser stopped reading").await;
            }
        }
    }

    async fn chunk(&mut self, id: u32, data: Vec<u8>) {
        let Some(Transfer::Up {
            file, size, written, ..
        }) = self
            .transfer
            .as_mut()
            .filter(|t| matches!(t, Transfer::Up { id: t, .. } if *t == id))
        else {
            let message = "no upload under way with this id".into();
            return self.reply(id, FileEvent::Failed { message }).await;
        };
        let total = *written + data.len() as u64;
        if total > *size {
            return self.fail("more bytes than the upload announced").await;
        }
        if let Err(e) = file.write_all(&data).await {
            return self.fail(&lower(&e)).await;
        }
        *written = total;
        let done = total == *size;
        self.reply(id, FileEvent::Progress { bytes: total }).await;
        if done {
            self.finish_upload().await;
        }
    }

    async fn finish_upload(&mut self) {
        let Some(Transfer::Up {
            id,
            path,
            file,
            written,
            ..
        }) = self.transfer.take()
        else {
            return;
        };
        match file.close().await {
            Ok(()) => {
                self.reply(id, FileEvent::Done { bytes: written }).await;
                tracing::info!(id, path = %path, bytes = written, "Upload done");
                self.report(TransferDirection::Upload, path, written, "done").await;
            }
            Err(e) => {
                let _ = self.sftp.remove_file(path.clone()).await;
                self.reply(id, FileEvent::Failed { message: lower(&e) }).await;
                self.report(TransferDirection::Upload, path, written, "failed").await;
            }
        }
    }

    /// The transfer under way failed: tell the browser why.
    async fn fail(&mut self, why: &str) {
        if let Some(id) = self.transfer.as_ref().map(Transfer::id) {
            self.reply(id, FileEvent::Failed { message: why.into() }).await;
        }
        self.abandon("failed", why).await;
    }

    /// End the transfer under way (if any) without finishing it: a partial upload is removed.
    async fn abandon(&mut self, outcome: &str, why: &str) {
        let Some(t) = self.transfer.take() else { return };
        let (direction, path, bytes) = match t {
            Transfer::Down { path, sent, file, .. } => {
                drop(file);
                (TransferDirection::Download, path, sent)
            }
            Transfer::Up {
                path, written, file, ..
            } => {
                let _ = file.close().await;
                if let Err(e) = self.sftp.remove_file(path.clone()).await {
                    tracing::warn!(path = %path, error = %e, "Partial upload not removed");
                }
                (TransferDirection::Upload, path, written)
            }
        };
        tracing::info!(path = %path, bytes, outcome, reason = why, "Transfer ended early");
        self.report(direction, path, bytes, outcome).await;
    }

    async fn report(&self, direction: TransferDirection, path: String, bytes: u64, outcome: &str) {
        let report = TransferReport {
            direction,
            path,
            bytes,
            outcome: outcome.into(),
        };
        if let Err(e) = self.ctx.control.record_transfer(&self.ctx.session_id, &report).await {
            tracing::warn!(error = %e, "Could not report a file transfer");
        }
    }
}
