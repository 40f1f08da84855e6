//! Helpers for Portico's integration tests and benchmarks: real peers (`peers`), the `portico` binary as
//! a child process (`portico`), and clients for its API and WebSocket (`client`).

pub mod client;
pub mod idp;
pub mod lb;
pub mod link;
pub mod patroni;
pub mod peers;
pub mod portico;
pub mod prometheus;
pub mod rsyslog;
pub mod slapd;

/// Root of the workspace.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default()
}
