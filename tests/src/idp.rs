//! A real OpenID Provider for the SSO tests: node-oidc-provider (`tests/browser/oidc_provider.mjs`) on a
//! loopback port, started as a child process and stopped by PID.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::peers::{free_port, node_browser_dir, scratch, stop_child, wait_for};

pub struct OidcProvider {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    child: Option<Child>,
    dir: PathBuf,
}

impl OidcProvider {
    /// Start a provider whose one client (Portico) returns to `redirect_uri`; `accounts` maps each account
    /// to its groups.
    pub fn start(redirect_uri: &str, accounts: Value) -> anyhow::Result<OidcProvider> {
        let dir = node_browser_dir();
        if !dir.join("node_modules/oidc-provider").exists() {
            bail!("oidc-provider is not installed in tests/browser: run scripts/install-test-deps.sh");
        }
        let port = free_port();
        let run = scratch("oidc")?;
        let log = fs::File::create(run.join("provider.log"))?;
        let client_secret = uuid::Uuid::new_v4().to_string();
        let child = Command::new("node")
            .arg(dir.join("oidc_provider.mjs"))
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", "portico")
            .env("CLIENT_SECRET", &client_secret)
            .env("REDIRECT_URI", redirect_uri)
            .env("ACCOUNTS", accounts.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start node (install nodejs)")?;
        let p = OidcProvider {
            issuer: format!("http://127.0.0.1:{port}"),
            client_id: "portico".into(),
            client_secret,
            child: Some(child),
            dir: run,
        };
        wait_for("the OpenID Provider to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .with_context(|| p.log())?;
        Ok(p)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("provider.log")).unwrap_or_default()
    }

    async fn control(&self, what: &str, body: Value) -> anyhow::Result<Value> {
        // Plain HTTP on loopback: no roots needed, but reqwest wants a rustls configuration (ring).
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let res = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()?
            .post(format!("{}/__test/{what}", self.issuer))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(res.status().is_success(), "provider control {what}: {}", res.status());
        Ok(res.json().await?)
    }

    /// Make the token endpoint forge its ID tokens: "tamper", "aud", or "" for honest ones.
    pub async fn set_mode(&self, mode: &str) -> anyhow::Result<()> {
        self.control("mode", json!({ "mode": mode })).await.map(|_| ())
    }

    pub async fn set_groups(&self, account: &str, groups: &[&str]) -> anyhow::Result<()> {
        self.control("groups", json!({ "account": account, "groups": groups }))
            .await
            .map(|_| ())
    }

    /// Replace the signing key; returns the new key id.
    pub async fn rotate_key(&self) -> anyhow::Result<String> {
        let v = self.control("rotate", json!({})).await?;
        Ok(v["kid"].as_str().unwrap_or_default().to_owned())
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
