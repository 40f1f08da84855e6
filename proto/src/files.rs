//! File transfer in a session (SSH: SFTP over the session's own SSH connection): the browser's requests,
//! the bridge's replies, the connection's policy and the limits both sides keep.
//!
//! One request id per operation, chosen by the browser. A download goes as `FILE_DATA` chunks of at most
//! [`FILE_CHUNK`] bytes, never more than [`FILE_WINDOW`] bytes ahead of the browser's last `ack`; an upload
//! goes as `FILE_CHUNK` messages, never more than [`FILE_WINDOW`] bytes ahead of the bridge's last
//! `progress`. Either side's window keeps transfers from filling the queue that the screen shares.

use serde::{Deserialize, Serialize};

/// The largest chunk of file data in one message (well under the client message limit).
pub const FILE_CHUNK: usize = 32 * 1024;

/// Bytes in flight per transfer, either way.
pub const FILE_WINDOW: u64 = 8 * FILE_CHUNK as u64;

/// The longest path the bridge accepts.
pub const MAX_PATH: usize = 4096;

/// Entries listed at most per directory (the rest are counted in `truncated`).
pub const MAX_ENTRIES: usize = 5000;

/// What a connection lets its users move (SSH: through SFTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePolicy {
    /// No file panel at all.
    #[default]
    None,
    /// Browse and download only.
    Download,
    /// Browse and upload (and create folders, delete) only.
    Upload,
    Both,
}

impl FilePolicy {
    pub fn is_none(&self) -> bool {
        *self == FilePolicy::None
    }

    pub fn download(self) -> bool {
        matches!(self, FilePolicy::Download | FilePolicy::Both)
    }

    pub fn upload(self) -> bool {
        matches!(self, FilePolicy::Upload | FilePolicy::Both)
    }

    /// Whether `op` is allowed, or why not.
    pub fn check(self, op: &FileOp) -> Result<(), &'static str> {
        let ok = match op {
            FileOp::Ack { .. } | FileOp::Cancel => true,
            FileOp::List { .. } => self != FilePolicy::None,
            FileOp::Download { .. } => self.download(),
            FileOp::Upload { .. } | FileOp::Mkdir { .. } | FileOp::Remove { .. } => self.upload(),
        };
        if ok {
            Ok(())
        } else if self == FilePolicy::None {
            Err("file transfer is off for this connection")
        } else if self.upload() {
            Err("this connection allows uploads only")
        } else {
            Err("this connection allows downloads only")
        }
    }
}

/// A browser's request (`FILE_REQUEST`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRequest {
    pub id: u32,
    #[serde(flatten)]
    pub op: FileOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileOp {
    /// The entries of a directory (`""`: the user's home).
    List {
        path: String,
    },
    Mkdir {
        path: String,
    },
    /// A file or an empty directory.
    Remove {
        path: String,
    },
    Download {
        path: String,
    },
    /// Create (or replace) `path` with `size` bytes that follow as `FILE_CHUNK`s.
    Upload {
        path: String,
        size: u64,
    },
    /// The browser has `bytes` of the download `id` in all.
    Ack {
        bytes: u64,
    },
    /// Stop transfer `id`; a partial upload is removed.
    Cancel,
}

impl FileOp {
    /// The path the operation names, if any.
    pub fn path(&self) -> Option<&str> {
        match self {
            FileOp::List { path }
            | FileOp::Mkdir { path }
            | FileOp::Remove { path }
            | FileOp::Download { path }
            | FileOp::Upload { path, .. } => Some(path),
            FileOp::Ack { .. } | FileOp::Cancel => None,
        }
    }
}

/// Why a path is refused before it reaches the server, if it is.
pub fn path_problem(path: &str) -> Option<&'static str> {
    if path.len() > MAX_PATH {
        Some("the path is too long")
    } else if path.contains('\0') {
        Some("the path contains a NUL character")
    } else {
        None
    }
}

/// The bridge's reply to request `id` (`FILE_REPLY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReply {
    pub id: u32,
    #[serde(flatten)]
    pub event: FileEvent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileEvent {
    /// A directory's entries, directories first, then by name; `path` is the directory's absolute path.
    Entries {
        path: String,
        entries: Vec<FileEntry>,
        #[serde(default, skip_serializing_if = "is_zero")]
        truncated: u32,
    },
    /// A transfer started: the file's size (download) or the size announced (upload).
    Started { size: u64 },
    /// An upload's bytes written so far (the browser's window moves on).
    Progress { bytes: u64 },
    /// Done: a transfer's bytes in all (0 for mkdir and remove).
    Done { bytes: u64 },
    /// The request failed or was refused; nothing more comes for `id`.
    Failed { message: String },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub dir: bool,
    pub size: u64,
    /// Seconds since the Unix epoch (0 when unknown).
    pub mtime: u64,
}

/// What the bridge reports to the control plane at the end of a transfer, or after a folder made or a
/// file removed (an audit event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReport {
    pub direction: TransferDirection,
    pub path: String,
    /// Bytes moved.
    pub bytes: u64,
    /// `done`, `cancelled` or `failed`.
    pub outcome: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferDirection {
    Upload,
    Download,
    /// A folder made (`bytes` 0).
    Mkdir,
    /// A file or folder removed (`bytes` 0).
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_what_it_says_and_says_why_not() {
        let list = FileOp::List { path: String::new() };
        let up = FileOp::Upload {
            path: "a".into(),
            size: 1,
        };
        let down = FileOp::Download { path: "a".into() };
        let rm = FileOp::Remove { path: "a".into() };
        assert_eq!(
            FilePolicy::None.check(&list),
            Err("file transfer is off for this connection")
        );
        assert!(FilePolicy::Download.check(&list).is_ok() && FilePolicy::Download.check(&down).is_ok());
        assert_eq!(
            FilePolicy::Download.check(&up),
            Err("this connection allows downloads only")
        );
        assert_eq!(
            FilePolicy::Download.check(&rm),
            Err("this connection allows downloads only")
        );
        assert_eq!(
            FilePolicy::Upload.check(&down),
            Err("this connection allows uploads only")
        );
        assert!(FilePolicy::Upload.check(&up).is_ok() && FilePolicy::Upload.check(&rm).is_ok());
        assert!(FilePolicy::Both.check(&down).is_ok() && FilePolicy::Both.check(&up).is_ok());
        assert!(FilePolicy::None.check(&FileOp::Cancel).is_ok());
    }

    #[test]
    fn requests_and_replies_are_flat_json() {
        let r: FileRequest = serde_json::from_str(r#"{"id":7,"op":"upload","path":"x.txt","size":3}"#).unwrap();
        assert_eq!(
            r,
            FileRequest {
                id: 7,
                op: FileOp::Upload {
                    path: "x.txt".into(),
                    size: 3
                }
            }
        );
        let reply = FileReply {
            id: 7,
            event: FileEvent::Failed { message: "no".into() },
        };
        assert_eq!(
            serde_json::to_string(&reply).unwrap(),
            r#"{"id":7,"kind":"failed","message":"no"}"#
        );
        assert!(serde_json::from_str::<FileRequest>(r#"{"id":1,"op":"chmod","path":"x"}"#).is_err());
        assert_eq!(path_problem("a\0b"), Some("the path contains a NUL character"));
        assert_eq!(path_problem(&"a".repeat(MAX_PATH + 1)), Some("the path is too long"));
        assert_eq!(path_problem("/home/u/ok"), None);
    }
}
