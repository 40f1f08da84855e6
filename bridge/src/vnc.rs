//! The VNC session actor: owns the TCP connection to the VNC server, the sans-IO RFB client
//! (`portico_proto::rfb`) and the framebuffer, and turns each FramebufferUpdate into one frame for the browser.
//!
//! Flow control: the bridge asks the server for the next (incremental) update only when the browser has
//! acknowledged all but [`MAX_FRAMES_IN_FLIGHT`]` - 1` frames. While the browser is behind, the server keeps
//! merging damage on its side, so nothing queues up in the bridge and latency stays low on slow links.

use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::control::{ControlError, Target, WorkspaceEndpoint};
use portico_proto::rfb::{RfbClient, RfbConfig, RfbError, RfbEvent};
use portico_proto::wire::{ClientMsg, ImageFormat, Rect, ServerMsg};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::display::{Flow, Frame, Framebuffer, cursor_msg, decode_jpeg};
use crate::lifecycle::{Cmd, Common, End, Lifecycle, sleep_until};

pub use crate::display::MAX_FRAMES_IN_FLIGHT;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

fn rfb_code(e: &RfbError) -> CloseCode {
    match e {
        RfbError::AuthFailed(_) | RfbError::PasswordRequired => CloseCode::AuthFailed,
        _ => CloseCode::TargetError,
    }
}

struct Display {
    rfb: RfbClient,
    fb: Option<Framebuffer>,
    frame: Frame,
    requested: bool,
    /// The next update request waits for an acknowledgement (counted once per wait).
    held: bool,
    flow: Flow,
    /// Remote clipboard changes go to the browser.
    clipboard_down: bool,
}

// The Tight JPEG quality level asked for at first is the ceiling of the quality control.
use portico_proto::rfb::DEFAULT_JPEG_LEVEL;

impl Display {
    /// A frame acknowledgement: its round trip may change the JPEG quality the server is asked for.
    fn on_ack(&mut self, frame_id: u32) {
        if let Some(level) = self.flow.on_ack(frame_id, std::time::Instant::now()) {
            tracing::debug!(level, "JPEG quality level changed");
            self.rfb.set_jpeg_quality(level);
        }
    }

    fn maybe_request(&mut self, attached: bool) {
        if !attached || self.requested || self.fb.is_none() {
            return;
        }
        if self.flow.can_send() {
            self.rfb.request_update(true);
            self.requested = true;
            self.held = false;
        } else if !self.held {
            // The browser is behind: the server merges what changes until the request goes out.
            self.held = true;
            self.flow.merged();
        }
    }

    /// Everything a freshly attached browser needs: the size, the whole screen, the pointer.
    async fn full_frame(&mut self, life: &mut Lifecycle) {
        if let Some(fb) = &self.fb {
            crate::screen::send_full_picture(&mut self.flow, fb, life).await;
        }
    }

    /// Apply the client's events; an error if the server sent something undecodable.
    async fn events(&mut self, life: &mut Lifecycle) -> Result<(), RfbError> {
        while let Some(ev) = self.rfb.poll_event() {
            match ev {
                RfbEvent::Connected { width, height, name } => {
                    self.fb = Some(Framebuffer::new(width, height));
                    life.send(ServerMsg::DisplaySize { width, height });
                    life.send(ServerMsg::status("connected", format!("connected to {name}")));
                    tracing::info!(width, height, "Upstream connected");
                    self.requested = true; // The RFB client asked for the first full update.
                }
                RfbEvent::Resize { width, height } => {
                    self.fb = Some(Framebuffer::new(width, height));
                    self.frame = Frame::default();
                    self.frame.message(ServerMsg::DisplaySize { width, height });
                }
                RfbEvent::Rect {
                    x,
                    y,
                    width,
                    height,
                    rgba,
                } => {
                    if let Some(fb) = &mut self.fb {
                        let r = Rect { x, y, width, height };
                        fb.put(&r, &rgba);
                        self.frame.damage(r);
                    }
                }
                RfbEvent::Fill {
                    x,
                    y,
                    width,
                    height,
                    rgb,
                } => {
                    if let Some(fb) = &mut self.fb {
                        self.frame.fill(fb, Rect { x, y, width, height }, rgb);
                    }
                }
                RfbEvent::Jpeg {
                    x,
                    y,
                    width,
                    height,
                    data,
                } => {
                    // Passed through as it is (no re-encoding); decoded only to keep the framebuffer true.
                    let r = Rect { x, y, width, height };
                    let (data, rgba) = decode_jpeg(data, width, height).await;
                    let Some(rgba) = rgba else {
                        return Err(RfbError::Protocol(format!(
                            "undecodable tight jpeg for {width}x{height}+{x}+{y}"
                        )));
                    };
                    if let Some(fb) = &mut self.fb {
                        self.frame.image(fb, r, &rgba, ImageFormat::Jpeg, data);
                    }
                }
                RfbEvent::Copy {
                    src_x,
                    src_y,
                    x,
                    y,
                    width,
                    height,
                } => {
                    if let Some(fb) = &mut self.fb {
                        self.frame.copy(fb, src_x, src_y, Rect { x, y, width, height });
                    }
                }
                RfbEvent::Cursor {
                    hot_x,
                    hot_y,
                    width,
                    height,
                    rgba,
                } => {
                    let msg = cursor_msg(hot_x, hot_y, width, height, rgba).await;
                    self.flow.cursor(&mut self.frame, msg);
                }
                RfbEvent::UpdateEnd => {
                    self.requested = false;
                    if let Some(fb) = &self.fb {
                        crate::screen::send_frame(&mut self.flow, std::mem::take(&mut self.frame), fb, life).await;
                    }
                }
                RfbEvent::CutText(text) if self.clipboard_down => {
                    life.send(ServerMsg::RemoteClipboard(text));
                }
                RfbEvent::CutText(_) => tracing::debug!("Remote clipboard not forwarded (clipboard_down is off)"),
                RfbEvent::ResizeRefused(why) => {
                    let why = format!("the vnc server refused to resize: {why}; the view is scaled instead");
                    life.send(ServerMsg::error(CloseCode::ResizeUnsupported, why));
                }
                RfbEvent::Bell => {}
            }
        }
        Ok(())
    }
}

/// Longest the bridge waits for a workspace container to be ready.
const WORKSPACE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why waiting for a workspace stopped.
enum WaitEnd {
    /// The session ended meanwhile (the user, the control plane, the bridge shutting down).
    Ended(End),
    /// The workspace will not come: the browser is told why ([`Lifecycle::fail`]).
    Failed(String),
}

/// Tell the browser the workspace is starting and wait until its container is ready (the browser may
/// detach, reattach or end the session meanwhile).
async fn wait_workspace(life: &mut Lifecycle, cmd_rx: &mut mpsc::Receiver<Cmd>) -> Result<WorkspaceEndpoint, WaitEnd> {
    let started = tokio::time::Instant::now();
    let status = "starting your workspace…";
    life.send(ServerMsg::status("connecting", status));
    let control = life.control.clone();
    let sid = life.claims.sid.clone();
    loop {
        let ask = control.workspace(&sid);
        tokio::pin!(ask);
        let answer = loop {
            tokio::select! {
                a = &mut ask => break a,
                cmd = cmd_rx.recv() => match cmd.map(|c| life.common(c)) {
                    None => return Err(WaitEnd::Ended(End { code: CloseCode::Ended, reason: "bridge shutting down".into(), from_control: false })),
                    Some(Common::End(end)) => return Err(WaitEnd::Ended(end)),
                    Some(Common::Attached(_)) => { life.send(ServerMsg::status("connecting", status)); }
                    Some(Common::Input(_) | Common::Handled) => {}
                },
            }
        };
        let in_time = started.elapsed() < WORKSPACE_TIMEOUT;
        match answer {
            Ok(Some(endpoint)) => {
                tracing::info!(host = %endpoint.host, port = endpoint.port, waited_ms = started.elapsed().as_millis() as u64, "Workspace ready");
                return Ok(endpoint);
            }
            Ok(None) if in_time => {}
            Ok(None) => {
                let why = format!("the workspace did not start within {} s", WORKSPACE_TIMEOUT.as_secs());
                return Err(WaitEnd::Failed(why));
            }
            Err(ControlError::Refused(why)) => {
                return Err(WaitEnd::Failed(format!("the workspace could not start: {why}")));
            }
            Err(e) if in_time => {
                tracing::warn!(error = %e, "Asking for the workspace failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(WaitEnd::Failed(format!("the workspace could not start: {e}"))),
        }
    }
}

#[tracing::instrument(name = "session", skip_all, fields(session_id = %life.claims.sid, protocol = "vnc"))]
pub async fn run(mut life: Lifecycle, target: Target, mut cmd_rx: mpsc::Receiver<Cmd>) {
    tracing::info!(host = %target.host, port = target.port, "Session started");
    if let Some(end) = life.wait_first_attach(&mut cmd_rx).await {
        return life.end(end).await;
    }
    let mut target = target;
    let workspace = target.workspace_pending;
    if workspace {
        match wait_workspace(&mut life, &mut cmd_rx).await {
            Ok(e) => {
                target.host = e.host;
                target.port = e.port;
                target.password = Some(e.password);
            }
            Err(WaitEnd::Ended(end)) => return life.end(end).await,
            Err(WaitEnd::Failed(why)) => return life.fail(CloseCode::TargetError, why).await,
        }
    }
    let settings = target.settings.clone();
    let mut password = target.password.clone();
    if settings.ask_credentials {
        match life.ask_credentials(&mut cmd_rx, "the vnc server's password").await {
            Ok(c) => password = Some(portico_proto::Secret::new(c.password)),
            Err(end) => return life.end(end).await,
        }
    }
    let addr = format!("{}:{}", target.host, target.port);
    life.send(ServerMsg::status("connecting", format!("connecting to {addr}")));
    let mut tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((target.host.as_str(), target.port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return life
                    .fail(
                        CloseCode::Unreachable,
                        format!("cannot reach {addr}: {}", e.to_string().to_lowercase()),
                    )
                    .await;
            }
            Err(_) => {
                return life
                    .fail(
                        CloseCode::Unreachable,
                        format!("cannot reach {addr}: connection timed out"),
                    )
                    .await;
            }
        };
    let _ = tcp.set_nodelay(true);
    let mut d = Display {
        rfb: RfbClient::new(RfbConfig {
            password,
            max_desktop: life.max_desktop,
            ..RfbConfig::default()
        }),
        fb: None,
        frame: Frame::default(),
        requested: false,
        held: false,
        flow: Flow::new(DEFAULT_JPEG_LEVEL, life.live.metrics.display.clone()),
        clipboard_down: settings.clipboard_down,
    };
    // INVARIANT: the password is in the RFB client's config now; the target is not needed any more.
    drop(target);
    let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    let end = 'session: loop {
        while let Some(out) = d.rfb.poll_transmit() {
            if let Err(e) = tcp.write_all(&out).await {
                let reason = format!("write to the vnc server failed: {}", e.to_string().to_lowercase());
                break 'session End {
                    code: CloseCode::RemoteClosed,
                    reason,
                    from_control: false,
                };
            }
        }
        let deadline = if d.rfb.is_connected() {
            life.deadline()
        } else {
            Some(handshake_deadline)
        };
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let why = if d.rfb.is_connected() { "the vnc server closed the connection" } else { "the vnc server closed the connection during the handshake" };
                    break End { code: CloseCode::RemoteClosed, reason: why.into(), from_control: false };
                }
                Ok(n) => {
                    let res = d.rfb.handle_input(&buf[..n]);
                    if let Err(e) = match res { Ok(()) => d.events(&mut life).await, Err(e) => Err(e) } {
                        tracing::warn!(error = %e, "VNC protocol error");
                        life.send(ServerMsg::error(rfb_code(&e), e.to_string()));
                        break End { code: rfb_code(&e), reason: e.to_string(), from_control: false };
                    }
                    d.maybe_request(life.client().is_some());
                }
            },
            cmd = cmd_rx.recv() => match cmd.map(|c| life.common(c)) {
                None => break End { code: CloseCode::Ended, reason: "bridge shutting down".into(), from_control: false },
                Some(Common::End(end)) => break end,
                Some(Common::Handled) => {}
                Some(Common::Attached(_)) => {
                    d.full_frame(&mut life).await;
                    d.maybe_request(true);
                }
                Some(Common::Input(msg)) => {
                    let (w, h) = d.rfb.size();
                    match msg {
                        ClientMsg::Key { keysym, down, .. } => {
                            life.last_input = tokio::time::Instant::now();
                            d.rfb.key(keysym, down);
                        }
                        ClientMsg::Pointer { x, y, buttons } => {
                            life.last_input = tokio::time::Instant::now();
                            d.rfb.pointer(x.min(w.saturating_sub(1)), y.min(h.saturating_sub(1)), buttons);
                        }
                        ClientMsg::Clipboard(text) if settings.clipboard_up => d.rfb.cut_text(&text),
                        ClientMsg::FrameAck { frame_id } => {
                            d.on_ack(frame_id);
                            d.maybe_request(life.client().is_some());
                        }
                        ClientMsg::Resize { width_px, height_px, .. } if !d.rfb.set_desktop_size(width_px, height_px) => {
                            let why = "this vnc server cannot be resized remotely; the view is scaled instead";
                            life.send(ServerMsg::error(CloseCode::ResizeUnsupported, why));
                        }
                        _ => {}
                    }
                }
            },
            () = sleep_until(deadline) => {
                if !d.rfb.is_connected() {
                    let why = format!("no rfb handshake with {addr} within {} s", HANDSHAKE_TIMEOUT.as_secs());
                    life.send(ServerMsg::error(CloseCode::TargetError, why.clone()));
                    break End { code: CloseCode::TargetError, reason: why, from_control: false };
                }
                if let Some(end) = life.expired() {
                    break end;
                }
            }
        }
    };
    let end = if workspace && end.code == CloseCode::RemoteClosed {
        life.explain_workspace_end(end).await
    } else {
        end
    };
    life.end(end).await;
}
