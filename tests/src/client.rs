//! Clients for a running Portico: the REST API (cookie + CSRF, or API key) and the bridge WebSocket.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use portico_proto::wire::{self, ClientMsg, ServerMsg};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::portico::Portico;

/// A logged-in (or anonymous) API client that trusts only the Portico instance's certificate.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub csrf: Option<String>,
    pub bearer: Option<String>,
}

impl Api {
    pub fn new(p: &Portico) -> anyhow::Result<Api> {
        let tls = portico_bridge::control::client_tls_config(Some(&p.cert_sha256), None)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .cookie_store(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Api {
            base: p.url.clone(),
            http,
            csrf: None,
            bearer: None,
        })
    }

    /// Log in as the admin created at first start.
    pub async fn admin(p: &Portico) -> anyhow::Result<Api> {
        let mut api = Api::new(p)?;
        api.login("admin", &p.admin_password).await?;
        Ok(api)
    }

    pub async fn login(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                "/api/v1/auth/login",
                Some(json!({"username": user, "password": password})),
            )
            .await?;
        if status != 200 {
            bail!("login failed: {status} {body}");
        }
        self.csrf = body["csrf_token"].as_str().map(str::to_owned);
        Ok(())
    }

    /// Any request; returns the status and the JSON body (`Value::Null` when empty or not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.csrf {
            req = req.header("x-csrf-token", c);
        }
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.with_context(|| format!("request {path}"))?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: &'static [u8],
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(c) = &self.csrf {
            req = req.header("x-csrf-token", c);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        Ok((status, serde_json::from_str(&res.text().await?).unwrap_or(Value::Null)))
    }

    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, v) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{path}: http {status}: {v}");
        }
        Ok(v)
    }

    pub async fn create_connection(&self, body: Value) -> anyhow::Result<String> {
        let v = self
            .ok(reqwest::Method::POST, "/api/v1/connections", Some(body))
            .await?;
        v["id"].as_str().map(str::to_owned).context("connection id")
    }

    /// Start a session; returns the whole response (session_id, token, ws_url, connect_url, expires_at).
    pub async fn create_session(&self, connection_id: &str) -> anyhow::Result<Value> {
        self.ok(
            reqwest::Method::POST,
            "/api/v1/sessions",
            Some(json!({ "connection_id": connection_id })),
        )
        .await
    }
}

/// Start a session on `connection_id` and open its WebSocket with the token: `(session response, socket)`.
pub async fn attach(p: &Portico, api: &Api, connection_id: &str) -> anyhow::Result<(Value, WsStream)> {
    let s = api.create_session(connection_id).await?;
    let ws = ws_with_token(
        s["ws_url"].as_str().unwrap_or_default(),
        &p.cert_sha256,
        s["token"].as_str().unwrap_or_default(),
    )
    .await?
    .map_err(|r| anyhow::anyhow!("upgrade refused: {} {}", r.status, r.body))?;
    Ok((s, ws))
}

pub type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How a WebSocket upgrade was refused.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// Open `ws_url` with the given sub-protocol entries (besides `portico.v1`), trusting `cert_sha256`.
pub async fn ws_connect(
    ws_url: &str,
    cert_sha256: &str,
    extra_protocols: &[String],
) -> anyhow::Result<Result<WsStream, Refused>> {
    let mut req = ws_url.into_client_request()?;
    let mut protos = vec![wire::SUBPROTOCOL.to_owned()];
    protos.extend(extra_protocols.iter().cloned());
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_str(&protos.join(", "))?);
    let tls = portico_bridge::control::client_tls_config(Some(cert_sha256), None)?;
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));
    match tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector)).await {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Ok(Err(Refused {
                status: res.status().as_u16(),
                body,
            }))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn ws_with_token(ws_url: &str, cert: &str, token: &str) -> anyhow::Result<Result<WsStream, Refused>> {
    ws_connect(ws_url, cert, &[format!("{}{token}", wire::TOKEN_PREFIX)]).await
}

/// A terminal session driven over the wire protocol, with the output collected as text.
pub struct Term {
    pub ws: WsStream,
    pub output: Vec<u8>,
    pub hello: Option<wire::Hello>,
    pub errors: Vec<wire::ErrorInfo>,
    pub closed: Option<wire::Closed>,
    pub statuses: Vec<wire::Status>,
}

impl Term {
    pub fn new(ws: WsStream) -> Term {
        Term {
            ws,
            output: Vec::new(),
            hello: None,
            errors: Vec::new(),
            closed: None,
            statuses: Vec::new(),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    pub async fn send(&mut self, msg: ClientMsg) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(msg.encode().into()))
            .await
            .context("send to bridge")
    }

    pub async fn send_raw(&mut self, msg: Message) -> anyhow::Result<()> {
        self.ws.send(msg).await.context("send to bridge")
    }

    pub async fn input(&mut self, s: &str) -> anyhow::Result<()> {
        self.send(ClientMsg::TermInput(s.as_bytes().to_vec())).await
    }

    /// Read one message (with a timeout); `Ok(false)` when the socket ended.
    pub async fn pump(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let next = match tokio::time::timeout(timeout, self.ws.next()).await {
            Err(_) => return Ok(true),
            Ok(n) => n,
        };
        match next {
            None | Some(Ok(Message::Close(_))) => Ok(false),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Message::Binary(b))) => {
                match ServerMsg::decode(&b).context("decode server message")? {
                    ServerMsg::Hello(h) => self.hello = Some(h),
                    ServerMsg::TermOutput(o) => self.output.extend_from_slice(&o),
                    ServerMsg::Status(s) => self.statuses.push(s),
                    ServerMsg::Error(e) => self.errors.push(e),
                    ServerMsg::Closed(c) => self.closed = Some(c),
                    ServerMsg::Pong(_) => {}
                }
                Ok(true)
            }
            Some(Ok(_)) => Ok(true),
        }
    }

    /// Pump until `pred` holds or `timeout` elapses (error with the transcript).
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Term) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out waiting for {what}; errors {:?}, closed {:?}, output:\n{}",
                    self.errors,
                    self.closed,
                    self.text()
                );
            }
            if !self.pump(left.min(Duration::from_millis(200))).await? {
                if pred(self) {
                    return Ok(());
                }
                bail!(
                    "socket closed while waiting for {what}; errors {:?}, closed {:?}, output:\n{}",
                    self.errors,
                    self.closed,
                    self.text()
                );
            }
        }
    }

    /// Wait until the remote shell is connected (a STATUS "connected").
    pub async fn connected(&mut self) -> anyhow::Result<()> {
        self.until("connected status", Duration::from_secs(20), |t| {
            t.statuses.iter().any(|s| s.state == "connected")
        })
        .await
    }

    /// Wait until the socket is closed; returns the CLOSED message if one came.
    pub async fn closed_within(&mut self, timeout: Duration) -> anyhow::Result<Option<wire::Closed>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("socket still open after {timeout:?}; output:\n{}", self.text());
            }
            match self.pump(left).await {
                Ok(true) => continue,
                Ok(false) | Err(_) => return Ok(self.closed.clone()),
            }
        }
    }
}
