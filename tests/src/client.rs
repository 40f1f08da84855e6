//! Clients for a running Portico: the REST API (cookie + CSRF, or API key) and the bridge WebSocket.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use portico_proto::files::{FILE_CHUNK, FILE_WINDOW, FileEvent, FileOp, FileRequest};
use portico_proto::wire::{self, ClientMsg, ServerMsg};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::portico::Portico;

/// A logged-in (or anonymous) API client that trusts only the Portico instance's certificate.
#[derive(Clone)]
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
            // The server closes a keep-alive connection that stays idle for its header timeout (10 s); a
            // request sent on it at that instant meets a reset, and a POST is not retried. Pooled
            // connections are forgotten well before (browsers retry such a request instead).
            .pool_idle_timeout(Duration::from_secs(4))
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

    /// Wait (at most 30 s) until an agent reports healthy (the embedded agent registered).
    pub async fn wait_healthy_agent(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let agents = self.ok(reqwest::Method::GET, "/api/v1/agents", None).await?;
            if agents
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["state"] == "healthy"))
            {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the embedded agent did not register: {agents}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

    /// `GET path` (with a `Range` header when given): the status, the response headers and the body's bytes.
    pub async fn get_bytes(
        &self,
        path: &str,
        range: Option<&str>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        let res = req.send().await.with_context(|| format!("request {path}"))?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        Ok((status, headers, res.bytes().await?.to_vec()))
    }

    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, v) = self.request(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{path}: http {status}: {v}");
        }
        Ok(v)
    }

    /// Create a local user `name` with the password `{name}-password-1`; returns its id.
    pub async fn create_user(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let v = self
            .ok(
                reqwest::Method::POST,
                "/api/v1/users",
                Some(json!({ "username": name, "password": format!("{name}-password-1"), "role": role })),
            )
            .await?;
        Ok(v["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Create a local user as [`Api::create_user`] does and log them in (through this client's base URL):
    /// their id and their API client.
    pub async fn user_api(&self, p: &Portico, name: &str, role: &str) -> anyhow::Result<(String, Api)> {
        let id = self.create_user(name, role).await?;
        let mut api = Api::new(p)?;
        api.base = self.base.clone();
        api.login(name, &format!("{name}-password-1")).await?;
        Ok((id, api))
    }

    /// Share live session `sid` as a link (`mode`: `view` or `control`): the share and the link's secret.
    pub async fn share_link(&self, sid: &str, mode: &str) -> anyhow::Result<(Value, String)> {
        let share = self
            .ok(
                reqwest::Method::POST,
                &format!("/api/v1/sessions/{sid}/shares"),
                Some(json!({ "mode": mode, "link": true })),
            )
            .await?;
        let secret = share["link_url"]
            .as_str()
            .and_then(|u| u.split("#join=").nth(1))
            .context("a link share's link_url")?
            .to_owned();
        Ok((share, secret))
    }

    /// Join a shared session (`body`: a share, a link, or a session to shadow) and open the viewer's socket
    /// where the answer says: the join's answer and the socket.
    pub async fn join_session(&self, cert_sha256: &str, body: Value) -> anyhow::Result<(Value, WsStream)> {
        let j = self.ok(reqwest::Method::POST, "/api/v1/join", Some(body)).await?;
        let ws = ws_with_token(
            j["ws_url"].as_str().unwrap_or_default(),
            cert_sha256,
            j["token"].as_str().unwrap_or_default(),
        )
        .await?
        .map_err(|r| anyhow::anyhow!("viewer upgrade refused: {} {}", r.status, r.body))?;
        Ok((j, ws))
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
    match tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(connector)).await {
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

/// A new session of `connection_id` opened on `bridge` directly (not through the URL the webapp names),
/// its terminal connected.
pub async fn open_via(bridge: &Portico, api: &Api, connection_id: &str) -> anyhow::Result<(Value, Term)> {
    let s = api.create_session(connection_id).await?;
    let id = s["session_id"].as_str().unwrap_or_default();
    let url = format!("{}/bridge/v1/ws?session={id}", bridge.ws_base());
    let ws = ws_with_token(&url, &bridge.cert_sha256, s["token"].as_str().unwrap_or_default())
        .await?
        .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
    let mut t = Term::new(ws);
    t.connected().await?;
    Ok((s, t))
}

/// Whether the bridge refuses the token of a session `created` by `POST /api/v1/sessions` and never used.
pub async fn unclaimed_token_is_refused(p: &Portico, created: &Value) -> anyhow::Result<bool> {
    let ws_url = created["ws_url"].as_str().unwrap_or_default();
    let token = created["token"].as_str().unwrap_or_default();
    Ok(ws_with_token(ws_url, &p.cert_sha256, token).await?.is_err())
}

/// A terminal session driven over the wire protocol, with the output collected as text.
pub struct Term {
    pub ws: WsStream,
    pub output: Vec<u8>,
    pub hello: Option<wire::Hello>,
    pub errors: Vec<wire::ErrorInfo>,
    pub closed: Option<wire::Closed>,
    pub statuses: Vec<wire::Status>,
    /// Display messages (graphical sessions), in order.
    pub display: Vec<ServerMsg>,
    /// Clipboard texts from the remote side.
    pub clipboard: Vec<String>,
    /// The last word on who watches the session (shared sessions).
    pub share: Option<wire::ShareInfo>,
    /// Pongs received (their payloads), in order.
    pub pongs: Vec<[u8; 8]>,
    /// File replies, in order.
    pub file_replies: Vec<portico_proto::files::FileReply>,
    /// File data by transfer id.
    pub file_data: std::collections::HashMap<u32, Vec<u8>>,
    /// Sound: `AUDIO` packets received, their bytes, and the last one's sequence number.
    pub audio_packets: u64,
    pub audio_bytes: u64,
    pub audio_seq: Option<u32>,
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
            display: Vec::new(),
            clipboard: Vec::new(),
            share: None,
            pongs: Vec::new(),
            file_replies: Vec::new(),
            file_data: std::collections::HashMap::new(),
            audio_packets: 0,
            audio_bytes: 0,
            audio_seq: None,
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
                    ServerMsg::Pong(p) => self.pongs.push(p),
                    ServerMsg::RemoteClipboard(t) => self.clipboard.push(t),
                    ServerMsg::Share(i) => self.share = Some(i),
                    ServerMsg::FileReply(r) => self.file_replies.push(r),
                    ServerMsg::FileData { id, data } => self.file_data.entry(id).or_default().extend_from_slice(&data),
                    ServerMsg::Audio { seq, data } => {
                        self.audio_packets += 1;
                        self.audio_bytes += data.len() as u64;
                        self.audio_seq = Some(seq);
                    }
                    other => self.display.push(other),
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

    /// A ping answered: everything this socket sent before it was handled by the session (its actor
    /// answers in order).
    pub async fn barrier(&mut self, n: u8) -> anyhow::Result<()> {
        let data = [b'b', n, 0, 0, 0, 0, 0, 0];
        self.send(ClientMsg::Ping(data)).await?;
        self.until("the pong", Duration::from_secs(10), |t| t.pongs.contains(&data))
            .await
    }

    /// Wait until the remote shell is connected (a STATUS "connected").
    /// A command typed into the live shell comes back (within 10 s).
    pub async fn check_echo(&mut self, tag: &str) -> anyhow::Result<()> {
        self.input(&format!("echo alive-{tag}-$((6*7))\r")).await?;
        let want = format!("alive-{tag}-42");
        self.until(&format!("the session ({tag})"), Duration::from_secs(10), |t| {
            t.text().contains(&want)
        })
        .await
    }

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

/// The browser's canvas, modelled: applies display messages to an RGBA buffer (decoding PNG and JPEG).
#[derive(Default)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u8>,
    pub frames: u32,
    pub last_frame: u32,
    pub images: u64,
    pub fills: u64,
    pub copies: u64,
    pub jpegs: u64,
    /// H.264 access units received (not decoded here), and their bytes.
    pub videos: u64,
    pub video_bytes: u64,
    pub cursor: Option<(u16, u16, usize)>,
}

impl Canvas {
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let o = (y * self.width + x) * 4;
        [self.rgba[o], self.rgba[o + 1], self.rgba[o + 2]]
    }

    fn blit(&mut self, r: &wire::Rect, rgba: &[u8]) -> anyhow::Result<()> {
        let (x, y, w, h) = (
            usize::from(r.x),
            usize::from(r.y),
            usize::from(r.width),
            usize::from(r.height),
        );
        anyhow::ensure!(
            x + w <= self.width && y + h <= self.height,
            "rect {r:?} outside the canvas"
        );
        anyhow::ensure!(rgba.len() == w * h * 4, "image of {} bytes for {r:?}", rgba.len());
        for row in 0..h {
            let o = ((y + row) * self.width + x) * 4;
            self.rgba[o..o + w * 4].copy_from_slice(&rgba[row * w * 4..(row + 1) * w * 4]);
        }
        Ok(())
    }

    /// Apply one message; `Some(frame_id)` at the end of a frame.
    pub fn apply(&mut self, msg: &ServerMsg) -> anyhow::Result<Option<u32>> {
        match msg {
            ServerMsg::DisplaySize { width, height } => {
                self.width = (*width).into();
                self.height = (*height).into();
                self.rgba = vec![0; self.width * self.height * 4];
            }
            ServerMsg::Fill { rect, rgb } => {
                self.fills += 1;
                let px: Vec<u8> = std::iter::repeat_n(
                    [rgb[0], rgb[1], rgb[2], 255],
                    usize::from(rect.width) * usize::from(rect.height),
                )
                .flatten()
                .collect();
                self.blit(rect, &px)?;
            }
            ServerMsg::Copy { src_x, src_y, rect } => {
                self.copies += 1;
                let src = wire::Rect {
                    x: *src_x,
                    y: *src_y,
                    ..*rect
                };
                let mut px = Vec::new();
                anyhow::ensure!(
                    usize::from(src.x) + usize::from(src.width) <= self.width
                        && usize::from(src.y) + usize::from(src.height) <= self.height,
                    "copy source {src:?} outside the canvas"
                );
                for row in 0..usize::from(src.height) {
                    let o = ((usize::from(src.y) + row) * self.width + usize::from(src.x)) * 4;
                    px.extend_from_slice(&self.rgba[o..o + usize::from(src.width) * 4]);
                }
                self.blit(rect, &px)?;
            }
            ServerMsg::Image { rect, format, data } => {
                self.images += 1;
                let rgba = match format {
                    wire::ImageFormat::Png => decode_png(data)?,
                    wire::ImageFormat::Jpeg => {
                        self.jpegs += 1;
                        decode_jpeg(data)?
                    }
                };
                self.blit(rect, &rgba)?;
            }
            ServerMsg::Cursor { hot_x, hot_y, png } => self.cursor = Some((*hot_x, *hot_y, png.len())),
            ServerMsg::Video { data, .. } => {
                self.videos += 1;
                self.video_bytes += data.len() as u64;
            }
            ServerMsg::FrameEnd { frame_id } => {
                self.frames += 1;
                self.last_frame = *frame_id;
                return Ok(Some(*frame_id));
            }
            _ => {}
        }
        Ok(None)
    }
}

pub fn decode_png(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(data));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().context("png header")?;
    let mut buf = vec![0; reader.output_buffer_size().context("png size")?];
    let info = reader.next_frame(&mut buf).context("png data")?;
    buf.truncate(info.buffer_size());
    Ok(match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
        other => bail!("unexpected png colour type {other:?}"),
    })
}

pub fn decode_jpeg(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGBA);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(data), opts);
    dec.decode().map_err(|e| anyhow::anyhow!("jpeg: {e:?}"))
}

/// A graphical session: the wire messages of a [`Term`] applied to a [`Canvas`], acknowledging frames.
pub struct Screen {
    pub term: Term,
    pub canvas: Canvas,
    /// Acknowledge each frame at once (a browser that decodes instantly).
    pub ack: bool,
}

impl Screen {
    pub fn new(ws: WsStream) -> Screen {
        Screen::of(Term::new(ws))
    }

    /// A screen over a terminal client that already has its socket.
    pub fn of(term: Term) -> Screen {
        Screen {
            term,
            canvas: Canvas::default(),
            ack: true,
        }
    }

    /// Read messages for up to `timeout`, apply them; `Ok(false)` when the socket ended.
    pub async fn pump(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let open = self.term.pump(timeout).await?;
        for msg in std::mem::take(&mut self.term.display) {
            if let Some(id) = self.canvas.apply(&msg)?
                && self.ack
            {
                self.term.send(ClientMsg::FrameAck { frame_id: id }).await?;
            }
        }
        Ok(open)
    }

    /// Read and apply whatever comes for `span` (a window of observation, not a wait for an event).
    pub async fn pump_for(&mut self, span: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + span;
        while tokio::time::Instant::now() < until {
            self.pump(Duration::from_millis(100)).await?;
        }
        Ok(())
    }

    /// A browser that stopped acknowledging acknowledges what it got: frames must flow again (five more).
    pub async fn acknowledge_and_flow(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.ack = true;
        self.term
            .send(ClientMsg::FrameAck {
                frame_id: self.canvas.last_frame,
            })
            .await?;
        let resumed = self.canvas.frames;
        self.until("frames after a true acknowledgement", timeout, |c| {
            c.frames >= resumed + 5
        })
        .await
    }

    /// Pump until `pred` holds on the canvas (error with the session's errors after `timeout`).
    pub async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Canvas) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.canvas.width > 0 && pred(&self.canvas) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out waiting for {what}; frames {}, errors {:?}, closed {:?}",
                    self.canvas.frames,
                    self.term.errors,
                    self.term.closed
                );
            }
            if !self.pump(left.min(Duration::from_millis(200))).await? {
                bail!(
                    "socket closed while waiting for {what}; errors {:?}, closed {:?}",
                    self.term.errors,
                    self.term.closed
                );
            }
        }
    }
}

/// File transfers over the wire, as the web client does them (the bridge's side: `bridge/src/files.rs`).
impl Term {
    /// The replies to file request `id` so far.
    pub fn replies(&self, id: u32) -> Vec<FileEvent> {
        self.file_replies
            .iter()
            .filter(|r| r.id == id)
            .map(|r| r.event.clone())
            .collect()
    }

    /// The bytes of download `id` so far.
    pub fn downloaded(&self, id: u32) -> usize {
        self.file_data.get(&id).map_or(0, Vec::len)
    }

    fn finished(&self, id: u32) -> Option<FileEvent> {
        self.file_replies.iter().rev().find_map(|r| {
            (r.id == id
                && matches!(
                    r.event,
                    FileEvent::Done { .. } | FileEvent::Entries { .. } | FileEvent::Failed { .. }
                ))
            .then(|| r.event.clone())
        })
    }

    pub async fn file_request(&mut self, id: u32, op: FileOp) -> anyhow::Result<()> {
        self.send(ClientMsg::FileRequest(FileRequest { id, op })).await
    }

    /// Send a request and wait for its final reply (done, entries or failed).
    pub async fn ask(&mut self, id: u32, op: FileOp) -> anyhow::Result<FileEvent> {
        self.file_request(id, op).await?;
        self.until(&format!("the answer to file request {id}"), FILE_WAIT, |t| {
            t.finished(id).is_some()
        })
        .await?;
        Ok(self.finished(id).unwrap_or(FileEvent::Done { bytes: 0 }))
    }

    /// Upload `data`, never more than a window ahead of the bridge's progress; the final reply.
    pub async fn upload(&mut self, id: u32, path: &str, data: &[u8]) -> anyhow::Result<FileEvent> {
        self.file_request(
            id,
            FileOp::Upload {
                path: path.into(),
                size: data.len() as u64,
            },
        )
        .await?;
        self.until("the upload to start", FILE_WAIT, |t| !t.replies(id).is_empty())
            .await?;
        if !matches!(self.replies(id)[0], FileEvent::Started { .. }) {
            return Ok(self.replies(id).remove(0));
        }
        let mut sent = 0usize;
        let mut seen = 0usize;
        loop {
            if let Some(end) = self.finished(id) {
                return Ok(end);
            }
            let written = self
                .file_replies
                .iter()
                .rev()
                .find_map(|r| match r.event {
                    FileEvent::Progress { bytes } if r.id == id => Some(bytes as usize),
                    _ => None,
                })
                .unwrap_or(0);
            if sent < data.len() && sent - written < FILE_WINDOW as usize {
                let end = (sent + FILE_CHUNK).min(data.len());
                self.send(ClientMsg::FileChunk {
                    id,
                    data: data[sent..end].to_vec(),
                })
                .await?;
                sent = end;
                continue;
            }
            seen = seen.max(self.file_replies.len());
            let before = seen;
            self.until("upload progress", FILE_WAIT, |t| t.file_replies.len() > before)
                .await?;
        }
    }

    /// Download `path`, acknowledging every half window: the final reply and the bytes.
    pub async fn download(&mut self, id: u32, path: &str) -> anyhow::Result<(FileEvent, Vec<u8>)> {
        self.file_request(id, FileOp::Download { path: path.into() }).await?;
        let mut acked = 0usize;
        loop {
            if let Some(end) = self.finished(id) {
                return Ok((end, self.file_data.remove(&id).unwrap_or_default()));
            }
            let got = self.downloaded(id);
            if got - acked >= FILE_WINDOW as usize / 2 {
                acked = got;
                self.file_request(id, FileOp::Ack { bytes: got as u64 }).await?;
            }
            let (replies, bytes) = (self.file_replies.len(), got);
            self.until("download data", FILE_WAIT, |t| {
                t.file_replies.len() > replies || t.downloaded(id) > bytes
            })
            .await?;
        }
    }
}

/// How long one step of a file transfer may take.
const FILE_WAIT: Duration = Duration::from_secs(20);
