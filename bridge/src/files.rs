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

/// The session's file task.
pub struct Files {
    tx: mpsc::Sender<FileCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Files {
    /// Start the task on a session channel of the SSH connection; it asks for the `sftp` subsystem at the
    /// first command (a session that never moves a file starts no SFTP server).
    pub fn start(channel: russh::Channel<russh::client::Msg>, client: Option<ClientTx>, ctx: FilesContext) -> Files {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(async move {
            let Some(first) = rx.recv().await else { return };
            let opened = async {
                channel.request_subsystem(true, "sftp").await.map_err(|e| lower(&e))?;
                SftpSession::new(channel.into_stream()).await.map_err(|e| lower(&e))
            };
            let sftp = match tokio::time::timeout(Duration::from_secs(SFTP_TIMEOUT_SECS), opened).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "SFTP did not start");
                    let why = format!("the server's sftp did not start: {e}");
                    return refuse_all(first, rx, client, why).await;
                }
                Err(_) => {
                    let why = format!("the server's sftp did not start within {SFTP_TIMEOUT_SECS} s");
                    return refuse_all(first, rx, client, why).await;
                }
            };
            sftp.set_timeout(SFTP_TIMEOUT_SECS);
            let mut task = Task {
                sftp,
                client,
                ctx,
                transfer: None,
            };
            task.command(first).await;
            task.run(rx).await;
        });
        Files { tx, task }
    }

    /// Hand the task a command; `false` when its queue is full (a browser beyond its window).
    pub fn send(&self, cmd: FileCmd) -> bool {
        self.tx.try_send(cmd).is_ok()
    }

    /// Hand the task a command that must not be lost (a new browser, a cancel), waiting for room in a task
    /// of its own when the queue is full.
    pub fn hand(&self, cmd: FileCmd) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(cmd) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// The session ends: the transfer under way is abandoned (a partial upload removed) while the SSH
    /// connection is still up, for at most [`SHUTDOWN_LIMIT`].
    pub async fn shutdown(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, self.task).await;
    }
}

/// How long the end of a session waits for the file task to clean up.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// How long a transfer may wait for the browser (a chunk, an acknowledgement) before it is given up.
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Every request is refused with `why` (the server's SFTP did not start).
async fn refuse_all(first: FileCmd, mut rx: mpsc::Receiver<FileCmd>, mut client: Option<ClientTx>, why: String) {
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        match cmd {
            FileCmd::Request(r) if !matches!(r.op, FileOp::Ack { .. } | FileOp::Cancel) => {
                if let Some(c) = &client {
                    let _ = tokio::time::timeout(SEND_LIMIT, c.send(failed(r.id, why.clone()))).await;
                }
            }
            FileCmd::Client(c) => client = c,
            _ => {}
        }
        next = rx.recv().await;
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
    /// Written to `part` (next to `path`), renamed over `path` once whole: a cancelled or failed upload
    /// never touches a file that was there.
    Up {
        id: u32,
        path: String,
        part: String,
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
            // A download with room in its window reads on between commands; otherwise wait for one (a
            // transfer waits at most [`IDLE_LIMIT`] for its browser).
            let cmd = if self.download_has_room() {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match tokio::time::timeout(IDLE_LIMIT, rx.recv()).await {
                    Ok(Some(c)) => Some(c),
                    Ok(None) => break,
                    Err(_) => {
                        if self.transfer.is_some() {
                            let why = format!("the browser sent nothing for {} s", IDLE_LIMIT.as_secs());
                            self.fail(&why).await;
                        }
                        continue;
                    }
                }
            };
            match cmd {
                Some(c) => self.command(c).await,
                None => self.pump().await,
            }
        }
        // The session ended.
        self.abandon("cancelled", "the session ended").await;
        let _ = self.sftp.close().await;
    }

    async fn command(&mut self, cmd: FileCmd) {
        match cmd {
            FileCmd::Request(r) => self.request(r).await,
            FileCmd::Chunk { id, data } => self.chunk(id, data).await,
            FileCmd::Client(c) => {
                self.abandon("failed", "the browser reconnected").await;
                self.client = c;
            }
        }
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
                let event = match self.sftp.create_dir(path.clone()).await {
                    Ok(()) => FileEvent::Done { bytes: 0 },
                    Err(e) => FileEvent::Failed { message: lower(&e) },
                };
                let done = matches!(event, FileEvent::Done { .. });
                self.reply(id, event).await;
                if done {
                    self.report(TransferDirection::Mkdir, path, 0, "done").await;
                }
            }
            FileOp::Remove { path } => {
                let removed = match self.sftp.symlink_metadata(path.clone()).await {
                    Ok(m) if m.is_dir() => self.sftp.remove_dir(path.clone()).await,
                    Ok(_) => self.sftp.remove_file(path.clone()).await,
                    Err(e) => Err(e),
                };
                let event = match removed {
                    Ok(()) => FileEvent::Done { bytes: 0 },
                    Err(e) => FileEvent::Failed { message: lower(&e) },
                };
                let done = matches!(event, FileEvent::Done { .. });
                self.reply(id, event).await;
                if done {
                    self.report(TransferDirection::Remove, path, 0, "done").await;
                }
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
                let part = part_path(&path, id);
                match self.sftp.create(part.clone()).await {
                    Ok(file) => {
                        tracing::info!(id, path = %path, size, "Upload started");
                        self.transfer = Some(Transfer::Up {
                            id,
                            path,
                            part,
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
            part,
            file,
            written,
            ..
        }) = self.transfer.take()
        else {
            return;
        };
        let placed = async {
            file.close().await.map_err(|e| lower(&e))?;
            // SFTP's rename does not replace a file: the old one goes first, once the new one is whole.
            if self.sftp.try_exists(path.clone()).await.unwrap_or(false) {
                self.sftp.remove_file(path.clone()).await.map_err(|e| lower(&e))?;
            }
            self.sftp
                .rename(part.clone(), path.clone())
                .await
                .map_err(|e| lower(&e))
        };
        match placed.await {
            Ok(()) => {
                self.reply(id, FileEvent::Done { bytes: written }).await;
                tracing::info!(id, path = %path, bytes = written, "Upload done");
                self.report(TransferDirection::Upload, path, written, "done").await;
            }
            Err(message) => {
                let _ = self.sftp.remove_file(part).await;
                self.reply(id, FileEvent::Failed { message }).await;
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
                path,
                part,
                written,
                file,
                ..
            } => {
                let _ = file.close().await;
                if let Err(e) = self.sftp.remove_file(part.clone()).await {
                    tracing::warn!(path = %part, error = %e, "Partial upload not removed");
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

/// Where an upload to `path` is written until it is whole: a hidden name next to it.
fn part_path(path: &str, id: u32) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.portico-{id}.part"),
        None => format!(".{path}.portico-{id}.part"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_written_next_to_its_file_under_a_hidden_name() {
        assert_eq!(part_path("/home/u/a b.txt", 7), "/home/u/.a b.txt.portico-7.part");
        assert_eq!(part_path("report.pdf", 1), ".report.pdf.portico-1.part");
        assert_eq!(part_path("/x", 2), "/.x.portico-2.part");
    }
}
