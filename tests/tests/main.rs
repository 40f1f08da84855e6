//! Portico integration tests against real peers: OpenSSH sshd, PostgreSQL, headless Chromium, and the
//! real `portico` binary in its all-in-one and split (webapp + bridges) topologies.

mod abuse;
mod access;
mod agent;
mod api;
mod bad_input;
mod browser;
mod db;
mod events;
mod failover;
pub mod files;
mod headers;
mod health;
mod hostile;
mod ldap;
mod metrics;
mod mfa;
mod ra3;
mod rdp;
pub mod recording;
pub mod rfb;
mod sharing;
mod ssh;
mod sso;
mod token;
mod vnc;
mod workspace;

use portico_tests::client::{Api, Term, attach};
use portico_tests::peers::Sshd;
use portico_tests::portico::Portico;
use serde_json::{Value, json};

/// An SSH connection to `sshd` with the given extra fields (password, private_key, host_key_fingerprint...).
pub async fn ssh_connection(api: &Api, sshd: &Sshd, extra: Value) -> anyhow::Result<String> {
    let mut body = json!({
        "name": format!("sshd {}", sshd.port),
        "protocol": "ssh",
        "host": "127.0.0.1",
        "port": sshd.port,
        "username": sshd.user.name,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    api.create_connection(body).await
}

/// Start a session on `conn` and attach a terminal to it through the bridge.
pub async fn open_term(p: &Portico, api: &Api, conn: &str) -> anyhow::Result<(Value, Term)> {
    let (s, ws) = attach(p, api, conn).await?;
    Ok((s, Term::new(ws)))
}

/// A running sshd, a Portico, an admin API client and an SSH connection with the user's password.
pub async fn password_fixture() -> anyhow::Result<(Sshd, Portico, Api, String)> {
    let sshd = Sshd::start()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = ssh_connection(&api, &sshd, json!({ "password": sshd.user.password })).await?;
    Ok((sshd, p, api, conn))
}

/// A unique file path on this machine that the test user can write.
pub fn marker_path(tag: &str) -> String {
    format!("/tmp/portico-test-{tag}-{}", uuid::Uuid::new_v4())
}
