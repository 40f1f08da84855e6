//! The VNC session actor: owns the TCP connection to the VNC server, the sans-IO RFB client
//! (`portico_proto::rfb`) and the framebuffer, and turns each FramebufferUpdate into one frame for the browser.
//!
//! Flow control: the bridge asks the server for the next (incremental) update only when the link has room
//! ([`Flow::can_send_at`]: bytes in flight under the link's delivery rate times the latency target, bounded
//! in time, not in frames; or, when one frame larger than that is in flight, once the link has drained it
//! under the budget: a timer wakes the actor at [`Flow::room_at`]). While the browser is behind, the
//! server merges what changes on its side.
//!
//! Encodings follow the content and the link: lossless while the content is quiet (typing, an idle
//! desktop: [`ContentRate`]) or the link is the bottleneck, the server's JPEG passed through while a large
//! share of the screen keeps changing (video). Turning lossless asks for the whole screen once.
//! Measured on emulated links (docs/performance.md), this beat keeping a request out and merging in the
//! bridge: TigerVNC's own merging sent a third of the bytes on scrolling text, and the latency stayed
//! within 300 ms at 1 Mbit/s where the bridge's merging reached seconds.

use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::control::{ControlError, Target, WorkspaceEndpoint};
use portico_proto::rfb::{RfbClient, RfbConfig, RfbError, RfbEvent};
use portico_proto::wire::{ClientMsg, Rect, ServerMsg};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::display::{ContentRate, Flow, Frame, Framebuffer, cursor_msg, jpeg_fits};
use crate::lifecycle::{Cmd, Common, End, Lifecycle, sleep_until};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a write to the VNC server may wait for the server to read.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

fn rfb_code(e: &RfbError) -> CloseCode {
    match e {
        RfbError::AuthFailed(_) | RfbError::PasswordRequired => CloseCode::AuthFailed,
        _ => CloseCode::TargetError,
    }
}

struct Display {
    /// The workspace's sound, when it has some.
    audio: Option<crate::audio::Audio>,
    rfb: RfbClient,
    fb: Option<Framebuffer>,
    frame: Frame,
    requested: bool,
    /// The next update request waits for room on the link (counted once per wait).
    held: bool,
    flow: Flow,
    /// How much of the screen the content changes: quiet content is asked for lossless.
    content: ContentRate,
    /// Pixels of the update being read that need an image.
    update_pixels: u64,
    /// The update being read answers a non-incremental request (the whole screen): it says nothing about
    /// the content.
    full_update: bool,
    /// Ask for the whole screen next (non-incremental): the server holds lossy regions that lossless
    /// encodings would otherwise refine bit by bit.
    refresh: bool,
    /// Remote clipboard changes go to the browser.
    clipboard_down: bool,
    /// The viewers of the shared session, each with its own flow control.
    viewers: crate::screen::ViewerScreens,
}

// The Tight JPEG quality level asked for at first is the ceiling of the quality control.
use portico_proto::rfb::DEFAULT_JPEG_LEVEL;

impl Display {
    /// A frame acknowledgement: its round trip may change the JPEG quality the server is asked for, and
    /// whether it is asked for JPEG at all: on a link that is the bottleneck ([`Flow::link_bound`]) the
    /// server sends lossless encodings only and the bridge encodes for the link (text as indexed PNG, a
    /// quarter of the bytes of the server's JPEG of it, and lossless; photographic regions as JPEG).
    fn on_ack(&mut self, frame_id: u32) {
        if let Some(level) = self.flow.on_ack(frame_id, std::time::Instant::now()) {
            tracing::debug!(level, "JPEG quality level changed");
            self.rfb.set_jpeg_quality(level);
        }
        self.follow_encodings();
    }

    /// Lossless encodings while the content is quiet ([`ContentRate`]) or the link is the bottleneck,
    /// else the server's JPEG too. Turning lossless asks for the whole screen once: TigerVNC refines the
    /// regions it sent as JPEG in small pieces, one per request, for many seconds otherwise.
    fn follow_encodings(&mut self) {
        let quiet = self.content.quiet();
        self.flow.set_quiet_content(quiet);
        let bound = self.flow.link_bound();
        let lossless = bound || quiet;
        if lossless != self.rfb.is_lossless() {
            let rate = self.flow.link().rate().unwrap_or_default() as u64;
            tracing::info!(
                lossless,
                quiet,
                link_bound = bound,
                link_rate = rate,
                "VNC encodings follow the content and the link"
            );
            self.rfb.set_lossless(lossless);
            self.refresh |= lossless;
        }
    }

    /// Ask for the next update while a browser is attached and the link has room; otherwise the server
    /// merges what changes until the request goes out.
    fn maybe_request(&mut self, attached: bool) {
        if !attached {
            self.held = false;
            return;
        }
        if self.requested || self.fb.is_none() {
            return;
        }
        if self.flow.can_send_at(std::time::Instant::now()) {
            self.rfb.request_update(!self.refresh);
            self.full_update = std::mem::take(&mut self.refresh);
            self.requested = true;
            self.held = false;
        } else if !self.held {
            self.held = true;
            self.flow.merged();
        }
    }

    /// Send the pending frame if the link has room (a frame held back by a full link goes out with the
    /// acknowledgement, or the drained room, that makes room); never in the middle of an update.
    async fn flush(&mut self, life: &mut Lifecycle) {
        if self.requested || self.frame.is_empty() || !self.flow.can_send_at(std::time::Instant::now()) {
            return;
        }
        if let Some(fb) = &mut self.fb {
            crate::screen::send_frame(
                &mut self.flow,
                std::mem::take(&mut self.frame),
                fb,
                life,
                &mut self.viewers,
            )
            .await;
        }
    }

    /// When the link will have drained room ([`Flow::room_at`]) for what waits for it: a held request or
    /// a pending frame, while a browser is attached.
    fn room_at(&self, attached: bool) -> Option<tokio::time::Instant> {
        let waiting = self.held || (!self.frame.is_empty() && !self.requested);
        if !attached || !waiting {
            return None;
        }
        self.flow.room_at().map(tokio::time::Instant::from_std)
    }

    /// Viewers that are behind get what they missed, once they have room.
    async fn catch_up_viewers(&mut self, life: &mut Lifecycle) {
        if let Some(fb) = &mut self.fb {
            self.viewers.catch_up(fb, life).await;
        }
    }

    /// Everything a freshly attached browser needs: the size, the whole screen, the pointer.
    async fn full_frame(&mut self, life: &mut Lifecycle) {
        if let Some(fb) = &mut self.fb {
            crate::screen::send_full_picture(&mut self.flow, fb, life).await;
        }
    }

    /// Apply the client's events; an error if the server sent something undecodable.
    async fn events(&mut self, life: &mut Lifecycle) -> Result<(), RfbError> {
        while let Some(ev) = self.rfb.poll_event() {
            match ev {
                RfbEvent::Connected { width, height, name } => {
                    self.fb = Some(Framebuffer::new(width, height));
                    self.content.resize(width, height);
                    life.send(ServerMsg::DisplaySize { width, height });
                    let mut status = ServerMsg::status("connected", format!("connected to {name}"));
                    if let (Some(_), ServerMsg::Status(s)) = (&self.audio, &mut status) {
                        s.audio = Some(portico_proto::wire::AUDIO_CODEC.into());
                    }
                    life.send(status);
                    tracing::info!(width, height, "Upstream connected");
                    self.requested = true; // The RFB client asked for the first full update.
                    self.full_update = true;
                    self.follow_encodings();
                }
                RfbEvent::Resize { width, height } => {
                    if let Some(mut old) = self.fb.replace(Framebuffer::new(width, height)) {
                        self.flow.count_lazy(old.take_lazy_counts());
                    }
                    self.content.resize(width, height);
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
                        self.update_pixels += u64::from(width) * u64::from(height);
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
                    // Passed through as it is (no re-encoding), and decoded only if its pixels are needed.
                    if !jpeg_fits(&data, width, height) {
                        return Err(undecodable(&Rect { x, y, width, height }));
                    }
                    if let Some(fb) = &mut self.fb {
                        self.frame.jpeg(fb, Rect { x, y, width, height }, data);
                        self.update_pixels += u64::from(width) * u64::from(height);
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
                    let pixels = std::mem::take(&mut self.update_pixels);
                    if self.full_update {
                        // The whole screen says nothing about the content; an update of pseudo-encodings
                        // only (the pointer, the size) may come before it.
                        self.full_update = pixels == 0;
                    } else if self.content.update(pixels, std::time::Instant::now()).is_some() {
                        self.follow_encodings();
                    }
                    self.flush(life).await;
                }
                RfbEvent::CutText(text) if self.clipboard_down => {
                    life.send_clipboard(text);
                }
                RfbEvent::CutText(_) => tracing::debug!("Remote clipboard not forwarded (clipboard_down is off)"),
                RfbEvent::ResizeRefused(why) => {
                    let why = format!("the vnc server refused to resize: {why}; the view is scaled instead");
                    life.send(ServerMsg::error(CloseCode::ResizeUnsupported, why));
                }
                RfbEvent::Bell => {}
            }
        }
        let Some(fb) = &mut self.fb else {
            return Ok(());
        };
        self.flow.count_lazy(fb.take_lazy_counts());
        match fb.take_invalid() {
            Some(r) => Err(undecodable(&r)),
            None => Ok(()),
        }
    }
}

/// A server's JPEG that does not decode to its rectangle: the server is broken or lying.
fn undecodable(r: &Rect) -> RfbError {
    RfbError::Protocol(format!(
        "undecodable tight jpeg for {}x{}+{}+{}",
        r.width, r.height, r.x, r.y
    ))
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
                    Some(Common::Input(_) | Common::Handled | Common::ViewerJoined(_) | Common::ViewerAck { .. }) => {}
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
    let mut audio = None;
    if workspace {
        match wait_workspace(&mut life, &mut cmd_rx).await {
            Ok(e) => {
                // Sound from the container's audio server, unless the connection turned it off.
                if target.settings.workspace.as_ref().is_none_or(|w| w.audio) {
                    let client = life.client().cloned();
                    audio = Some(crate::audio::Audio::start(
                        e.host.clone(),
                        crate::audio::AUDIO_PORT,
                        e.password.clone(),
                        client,
                    ));
                }
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
        // Quiet content at first ([`ContentRate`]): lossless until the content is busy.
        rfb: RfbClient::new(RfbConfig {
            password,
            max_desktop: life.max_desktop,
            lossless: true,
            ..RfbConfig::default()
        }),
        fb: None,
        frame: Frame::default(),
        requested: false,
        held: false,
        flow: Flow::new(DEFAULT_JPEG_LEVEL, life.live.metrics.display.clone()),
        content: ContentRate::new(1, 1),
        update_pixels: 0,
        full_update: false,
        refresh: false,
        clipboard_down: settings.clipboard_down,
        viewers: crate::screen::ViewerScreens::new(DEFAULT_JPEG_LEVEL),
        audio,
    };
    // INVARIANT: the password is in the RFB client's config now; the target is not needed any more.
    drop(target);
    let handshake_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = vec![0u8; 64 * 1024];
    let end = 'session: loop {
        while let Some(out) = d.rfb.poll_transmit() {
            match tokio::time::timeout(WRITE_LIMIT, tcp.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let reason = format!("write to the vnc server failed: {}", e.to_string().to_lowercase());
                    break 'session End {
                        code: CloseCode::RemoteClosed,
                        reason,
                        from_control: false,
                    };
                }
                Err(_) => {
                    break 'session End {
                        code: CloseCode::TargetError,
                        reason: format!("the vnc server stopped reading for {} s", WRITE_LIMIT.as_secs()),
                        from_control: false,
                    };
                }
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
                    d.maybe_request(life.watched());
                }
            },
            cmd = cmd_rx.recv() => match cmd.map(|c| life.common(c)) {
                None => break End { code: CloseCode::Ended, reason: "bridge shutting down".into(), from_control: false },
                Some(Common::End(end)) => break end,
                Some(Common::Handled) => {}
                Some(Common::Attached(_)) => {
                    if let Some(a) = &d.audio {
                        a.command(crate::audio::AudioCmd::Client(life.client().cloned()));
                        // A page that attaches later learns the session has sound (it then asks for it).
                        if d.rfb.is_connected() {
                            let mut status = ServerMsg::status("connected", "connected (reattached)");
                            if let ServerMsg::Status(s) = &mut status {
                                s.audio = Some(portico_proto::wire::AUDIO_CODEC.into());
                            }
                            life.send(status);
                        }
                    }
                    d.full_frame(&mut life).await;
                    d.maybe_request(true);
                }
                Some(Common::ViewerJoined(_)) => {
                    d.catch_up_viewers(&mut life).await;
                    d.maybe_request(true);
                }
                Some(Common::ViewerAck { key, frame_id }) => {
                    d.viewers.ack(key, frame_id);
                    d.catch_up_viewers(&mut life).await;
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
                        ClientMsg::AudioControl { play } => {
                            if let Some(a) = &d.audio {
                                a.command(crate::audio::AudioCmd::Play(play));
                            }
                        }
                        ClientMsg::FrameAck { frame_id } => {
                            d.on_ack(frame_id);
                            d.flush(&mut life).await;
                            d.maybe_request(life.watched());
                        }
                        ClientMsg::Resize { width_px, height_px, .. } if !d.rfb.set_desktop_size(width_px, height_px) => {
                            let why = "this vnc server cannot be resized remotely; the view is scaled instead";
                            life.send(ServerMsg::error(CloseCode::ResizeUnsupported, why));
                        }
                        _ => {}
                    }
                }
            },
            // A busy screen's window ended: has it become quiet?
            () = sleep_until(d.content.check_at().map(tokio::time::Instant::from_std)) => {
                if d.content.check(std::time::Instant::now()).is_some() {
                    d.follow_encodings();
                }
                d.maybe_request(life.watched());
            }
            () = sleep_until(d.room_at(life.client().is_some())) => {
                d.flush(&mut life).await;
                d.maybe_request(life.watched());
            }
            () = sleep_until(d.viewers.wake_at()) => d.catch_up_viewers(&mut life).await,
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
