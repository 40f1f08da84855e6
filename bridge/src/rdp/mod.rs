//! The RDP session actor: IronRDP's connector and active stage (sans-IO) over a TLS stream to the server,
//! with the decoded desktop fed into the shared display pipeline (`display.rs`).
//!
//! - Frames: the server pushes updates without being asked. Every PDU's damage goes into the current frame;
//!   the frame ends when the server pauses (no complete PDU waiting in the socket buffer) and the browser has
//!   room ([`crate::display::Flow::can_send_at`]: the link's budget, or room drained behind one larger
//!   frame). While the browser is behind, damage merges into the pending frame instead of queueing, so
//!   latency stays bounded and memory with it.
//! - Input: scancodes (from `KeyboardEvent.code`) as fast-path keyboard events, Unicode events for
//!   characters without a key, mouse and wheel.
//! - Clipboard: text both ways over CLIPRDR (`clipboard.rs`), each direction allowed by the connection.
//! - Resize: the Display Control channel; the server answers with a deactivation-reactivation at the new
//!   size, handled here.

mod clipboard;
mod connect;
pub mod gfx;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use ironrdp_cliprdr::CliprdrClient;
use ironrdp_cliprdr::backend::ClipboardMessage;
use ironrdp_connector::Sequence as _;
use ironrdp_connector::connection_activation::ConnectionActivationState;
use ironrdp_core::WriteBuf;
use ironrdp_displaycontrol::client::DisplayControlClient;
use ironrdp_displaycontrol::pdu::MonitorLayoutEntry;
use ironrdp_dvc::DrdynvcClient;
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_input::{MouseButton, MousePosition, Operation, Scancode, WheelRotations};
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput};
use ironrdp_tokio::FramedWrite as _;
use portico_proto::codes::CloseCode;
use portico_proto::control::{HostKeyReport, Target};
use portico_proto::limits::MaxDesktop;
use portico_proto::secret::Secret;
use portico_proto::wire::{CAPS_H264, ClientMsg, Rect, ServerMsg, Status};
use tokio::sync::mpsc;

use crate::display::{
    Flow, Frame, Framebuffer, INLINE_DECODE_BYTES, Pace, bounding, cursor_msg, detect_vertical_scroll, off_worker,
};
use crate::lifecycle::{Cmd, Common, End, Lifecycle, sleep_until};
use clipboard::{ClipEvent, MAX_CLIPBOARD_TEXT, TextClipboard, text_formats};
pub use connect::{RdpConnectError, fingerprint};

/// Most PDUs read in one go before the session looks at its commands again.
const DRAIN_BUDGET: u32 = 64;
/// How long the whole connection sequence (TCP, TLS, NLA, licensing, capabilities) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a write to the RDP server may wait for the server to read.
const WRITE_LIMIT: Duration = Duration::from_secs(10);
/// How long the goodbye (keys released, shutdown request) may wait for the server to read.
const GOODBYE_LIMIT: Duration = Duration::from_secs(1);
/// How long the bridge waits for the browser to report its size before connecting at a default size.
const SIZE_WAIT: Duration = Duration::from_secs(5);
/// How long the bridge waits for the browser's capabilities when it need not wait for its size.
const CAPS_WAIT: Duration = Duration::from_millis(500);
const DEFAULT_SIZE: (u16, u16) = (1024, 768);
/// The quality ceiling of lossy (photographic) regions the bridge encodes.
const DEFAULT_JPEG_LEVEL: u8 = 6;
/// Static-channel PDUs kept while the server reactivates (processed once it is done).
const MAX_HELD_CHANNEL_PDUS: usize = 64;
/// One wheel notch, in RDP rotation units.
const WHEEL_NOTCH: i16 = 120;
/// Largest pointer image side (the protocol's own maximum, large pointers of 384x384).
const MAX_POINTER_SIDE: u16 = 384;

/// Even width and height within what RDP servers accept and the bridge's limit.
fn clamp_size(width: u16, height: u16, max: MaxDesktop) -> (u16, u16) {
    let (w, h) = max.clamp(width.clamp(200, 8192), height.clamp(200, 8192));
    (w & !1, h & !1)
}

/// A target error for a desktop the server imposes over the bridge's limit.
fn check_desktop(width: u16, height: u16, max: MaxDesktop) -> Result<(), End> {
    if max.allows(width, height) {
        return Ok(());
    }
    Err(End {
        code: CloseCode::TargetError,
        reason: format!("the rdp server's desktop of {width}x{height} exceeds the limit of {max}"),
        from_control: false,
    })
}

/// The browser's size, reported by its first `RESIZE` (the view asks for the remote size at once).
/// Wait for what the browser says before the bridge connects: its size when `need_size` (at most
/// [`SIZE_WAIT`]; else `None`), and its capabilities (`CAPS`, which a browser sends right after `HELLO`,
/// before its size; a `RESIZE` or other input without them is an older client; without a size to wait
/// for, at most [`CAPS_WAIT`]).
async fn browser_hints(
    life: &mut Lifecycle,
    cmd_rx: &mut mpsc::Receiver<Cmd>,
    need_size: bool,
) -> Result<Option<(u16, u16)>, End> {
    let deadline = tokio::time::Instant::now() + if need_size { SIZE_WAIT } else { CAPS_WAIT };
    loop {
        if !need_size && life.caps.is_some() {
            return Ok(None);
        }
        let cmd = tokio::select! {
            cmd = cmd_rx.recv() => cmd,
            () = tokio::time::sleep_until(deadline) => return Ok(need_size.then_some(DEFAULT_SIZE)),
        };
        match cmd.map(|c| life.common(c)) {
            None => return Err(shutting_down()),
            Some(Common::End(end)) => return Err(end),
            Some(Common::Input(ClientMsg::Resize {
                width_px, height_px, ..
            })) if width_px > 0 && height_px > 0 => {
                return Ok(need_size.then(|| clamp_size(width_px, height_px, life.max_desktop)));
            }
            Some(Common::Input(_)) if !need_size => return Ok(None),
            Some(_) => {}
        }
    }
}

/// The `connected` status naming the graphics path (`h264` once the server's H.264 flows).
fn graphics_status(path: &str) -> ServerMsg {
    ServerMsg::Status(Status {
        state: "connected".into(),
        message: format!("connected; graphics: {path}"),
        graphics: Some(path.into()),
        files: None,
        audio: None,
    })
}

fn shutting_down() -> End {
    End {
        code: CloseCode::Ended,
        reason: "bridge shutting down".into(),
        from_control: false,
    }
}

fn rect_of(r: &InclusiveRectangle, width: u16, height: u16) -> Option<Rect> {
    let (x, y) = (r.left, r.top);
    let right = r.right.min(width.saturating_sub(1));
    let bottom = r.bottom.min(height.saturating_sub(1));
    (x <= right && y <= bottom).then(|| Rect {
        x,
        y,
        width: right - x + 1,
        height: bottom - y + 1,
    })
}

/// The reason of an MCS Disconnect Provider Ultimatum, if the PDU is one.
fn ultimatum(pdu: &[u8]) -> Option<ironrdp_pdu::mcs::DisconnectReason> {
    use ironrdp_pdu::mcs::McsMessage;
    match ironrdp_core::decode::<ironrdp_pdu::x224::X224<McsMessage<'_>>>(pdu)
        .ok()?
        .0
    {
        McsMessage::DisconnectProviderUltimatum(u) => Some(u.reason),
        _ => None,
    }
}

/// The character a keysym types, for Unicode input of keys without a scancode.
fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        0x0100_0000..=0x0110_ffff => char::from_u32(keysym - 0x0100_0000),
        _ => None,
    }
}

/// A browser key as an input operation: the scancode when the browser knows the physical key, else the
/// character the keysym types; `None` for neither.
fn key_operation(keysym: u32, down: bool, scancode: u16) -> Option<Operation> {
    Some(if scancode != 0 {
        let code = Scancode::from_u16(scancode);
        if down {
            Operation::KeyPressed(code)
        } else {
            Operation::KeyReleased(code)
        }
    } else {
        let ch = keysym_char(keysym)?;
        if down {
            Operation::UnicodeKeyPressed(ch)
        } else {
            Operation::UnicodeKeyReleased(ch)
        }
    })
}

/// A browser pointer event as input operations: the move (clamped to the desktop), buttons whose state
/// changed since `held`, and one wheel notch per wheel bit that appeared.
fn pointer_operations(held: u8, x: u16, y: u16, buttons: u8, (width, height): (u16, u16)) -> Vec<Operation> {
    let x = x.min(width.saturating_sub(1));
    let y = y.min(height.saturating_sub(1));
    let mut ops = vec![Operation::MouseMove(MousePosition { x, y })];
    for (bit, button) in [
        (1, MouseButton::Left),
        (2, MouseButton::Middle),
        (4, MouseButton::Right),
    ] {
        match (held & bit != 0, buttons & bit != 0) {
            (false, true) => ops.push(Operation::MouseButtonPressed(button)),
            (true, false) => ops.push(Operation::MouseButtonReleased(button)),
            _ => {}
        }
    }
    // Wheel bits are one notch each when they appear (the browser sends press then release).
    for (bit, vertical, units) in [
        (8, true, WHEEL_NOTCH),
        (16, true, -WHEEL_NOTCH),
        (32, false, -WHEEL_NOTCH),
        (64, false, WHEEL_NOTCH),
    ] {
        if buttons & bit != 0 && held & bit == 0 {
            ops.push(Operation::WheelRotations(WheelRotations {
                is_vertical: vertical,
                rotation_units: units,
            }));
        }
    }
    ops
}

/// What the clipboard backend asked for, as the channel's PDUs (`None`: nothing to send).
fn clipboard_messages(
    cliprdr: &mut CliprdrClient,
    msg: ClipboardMessage,
) -> Option<ironrdp_pdu::PduResult<ironrdp_cliprdr::CliprdrSvcMessages<ironrdp_cliprdr::Client>>> {
    Some(match msg {
        ClipboardMessage::SendInitiateCopy(formats) => cliprdr.initiate_copy(&formats),
        ClipboardMessage::SendFormatData(response) => cliprdr.submit_format_data(response),
        ClipboardMessage::SendInitiatePaste(format) => cliprdr.initiate_paste(format),
        ClipboardMessage::SendFileContentsRequest(r) => cliprdr.request_file_contents(r),
        ClipboardMessage::SendFileContentsResponse(r) => cliprdr.submit_file_contents(r),
        ClipboardMessage::SendInitiateFileCopy(files) => cliprdr.initiate_file_copy(files),
        ClipboardMessage::Error(e) => {
            tracing::debug!(error = %e, "Clipboard backend error");
            return None;
        }
    })
}

/// The live RDP connection and the browser-side display state.
struct Rdp {
    framed: connect::TlsFramed,
    stage: ActiveStage,
    image: DecodedImage,
    activation: ironrdp_connector::connection_activation::ConnectionActivationFactory,
    input: ironrdp_input::Database,
    fb: Framebuffer,
    frame: Frame,
    flow: Flow,
    buttons: u8,
    refresh_rect: bool,
    suppress_output: bool,
    /// The text the browser last put on the clipboard (the CLIPRDR backend serves it).
    local_clip: Arc<Mutex<Option<String>>>,
    /// The largest desktop the server may impose (reactivations included).
    max_desktop: MaxDesktop,
    /// The graphics pipeline, when the bridge asked for it.
    gfx: Option<GfxPath>,
    /// The viewers of the shared session, each with its own flow control.
    viewers: crate::screen::ViewerScreens,
    /// The server ended the connection with a Disconnect Provider Ultimatum in the middle of a reactivation
    /// (the session may be redialled).
    ultimatum_in_reactivation: bool,
    /// What one redial needs (the credentials among it), until the first reactivation completes: xrdp's
    /// ultimatum comes in the first one, and the credentials are not kept longer than that.
    redial: Option<Dial>,
    /// The desktop size the browser last asked for (a redial asks for it again).
    requested: Option<(u16, u16)>,
}

/// The graphics pipeline of a session: the channel's queue, the sans-IO translator, and the server frames
/// the browser has yet to draw (acknowledged to the server once it did: the server paces itself to the
/// browser).
struct GfxPath {
    queue: gfx::GfxQueue,
    core: gfx::Gfx,
    /// (wire frame id, server frame id), oldest first.
    unacked: VecDeque<(u32, u32)>,
    /// Server frames acknowledged so far.
    decoded: u32,
    /// The H.264 path was reported to the browser.
    reported: bool,
    /// Armed by the pipeline's first PDU (its capabilities confirmed), pushed back by every frame: when the
    /// server has been quiet for [`SETTLE`], the bridge asks once for a refresh of the whole desktop (see
    /// [`SETTLE`]).
    settle: Option<tokio::time::Instant>,
    settled: bool,
}

/// How long the graphics pipeline stays quiet after it started or after its first frames before the bridge
/// asks the server for one refresh. FreeRDP 2's shadow server can lose the screen's first changes when its client thread is
/// slow (its capture clears damage that was not yet consumed) and then sends nothing while the screen
/// stays still: the browser would keep a stale first picture. One refresh at the start costs one frame
/// (the server's encoder skips what did not change) and makes the first picture right.
const SETTLE: Duration = Duration::from_secs(1);

impl Rdp {
    /// Translate the graphics PDUs the channel queued, send their frames, and acknowledge at once the server
    /// frames no browser will draw.
    async fn pump_gfx(&mut self, life: &mut Lifecycle) -> Result<(), End> {
        let Some(g) = self.gfx.as_mut() else {
            return Ok(());
        };
        let pdus: Vec<_> = g.queue.lock().map(|mut q| q.drain(..).collect()).unwrap_or_default();
        if !pdus.is_empty() && !g.settled && g.settle.is_none() {
            // The pipeline started (its capabilities confirmed): a server that then sends no frame at all is
            // asked for the desktop once too (the shadow server under load lost its whole first picture, and
            // a still screen never sent another).
            g.settle = Some(tokio::time::Instant::now() + SETTLE);
        }
        let before = g.core.desktop();
        for pdu in pdus {
            for out in g.core.handle(pdu) {
                let gfx::GfxOut::Frame { msgs, server_frame } = out;
                self.viewers.frame(&msgs, life);
                if life.client().is_none() {
                    // No browser draws it: not acknowledged until one attaches, so the server pauses and the
                    // history a reattach replays stays short.
                    g.unacked.push_back((0, server_frame));
                    continue;
                }
                if !g.settled {
                    g.settle = Some(tokio::time::Instant::now() + SETTLE);
                }
                let sealed = self.flow.seal(msgs, std::time::Instant::now());
                if let Some(ServerMsg::FrameEnd { frame_id }) = sealed.last() {
                    tracing::trace!(server_frame, wire_frame = frame_id, "Graphics frame sent");
                    g.unacked.push_back((*frame_id, server_frame));
                }
                for m in sealed {
                    life.send_wait(m).await;
                }
            }
        }
        let (w, h) = g.core.desktop();
        if (w, h) != before {
            // A new desktop through the pipeline (ResetGraphics): the same limit as at connect.
            if let Err(end) = check_desktop(w, h, self.max_desktop) {
                tracing::warn!(width = w, height = h, limit = %self.max_desktop, "RDP desktop over the limit");
                return Err(end);
            }
        }
        if g.core.h264 && !g.reported {
            g.reported = true;
            life.send(graphics_status("h264"));
        }
        // The recording's keyframe on the pipeline: what a browser attaching now would get (the size and the
        // stream since its last H.264 key frame), so a player can start there; not before anything is drawn.
        if g.core.active
            && life.recorder.as_ref().is_some_and(|r| r.wants_keyframe())
            && let Some(mut state) = g.core.full_picture().filter(|p| p.len() > 1)
        {
            state.push(ServerMsg::FrameEnd { frame_id: 0 });
            if let Some(r) = life.recorder.as_mut() {
                r.keyframe(None, &state);
            }
        }
        Ok(())
    }

    /// The size of the desktop the browser shows: the pipeline's when it drives the display.
    fn desktop(&self) -> (u16, u16) {
        match &self.gfx {
            Some(g) if g.core.active => g.core.desktop(),
            _ => (self.fb.width, self.fb.height),
        }
    }

    /// The browser drew wire frame `frame_id`: acknowledge the server frames it held.
    async fn gfx_acked(&mut self, frame_id: u32) -> Result<(), End> {
        let Some(g) = self.gfx.as_mut() else {
            return Ok(());
        };
        let mut acks = Vec::new();
        while let Some(&(wire, server)) = g.unacked.front() {
            if wire > frame_id {
                break;
            }
            g.unacked.pop_front();
            g.decoded = g.decoded.wrapping_add(1);
            tracing::trace!(server_frame = server, wire_frame = wire, "Graphics frame acknowledged");
            acks.push(gfx::frame_ack(server, g.decoded));
        }
        self.send_gfx(acks).await
    }

    /// A browser attached: the frames the earlier one did not draw are acknowledged, and the new one gets
    /// the pipeline's full picture. `false` when the session is not on the graphics pipeline.
    async fn gfx_attached(&mut self, life: &mut Lifecycle) -> Result<bool, End> {
        let Some(g) = self.gfx.as_mut() else {
            return Ok(false);
        };
        if !g.core.active {
            return Ok(false);
        }
        let mut acks = Vec::new();
        while let Some((_, server)) = g.unacked.pop_front() {
            g.decoded = g.decoded.wrapping_add(1);
            acks.push(gfx::frame_ack(server, g.decoded));
        }
        let picture = gfx_picture(&g.core);
        if g.core.h264 {
            life.send(graphics_status("h264"));
        }
        for m in self.flow.picture_frame(picture, std::time::Instant::now()) {
            life.send_wait(m).await;
        }
        self.send_gfx(acks).await?;
        Ok(true)
    }

    /// The graphics pipeline's frames pass through as they come (H.264 refers to the frame before it: none
    /// can be merged or dropped), so the server itself is paced: told to suppress its output while the
    /// frames in flight fill the link's budget, and to send the whole desktop again (only what changed,
    /// for its encoder) once they no longer do ([`Flow::pace`]). A server without Suppress Output is paced
    /// by the frame acknowledgements alone.
    async fn pace_gfx(&mut self) -> Result<(), End> {
        let Some(g) = self.gfx.as_ref() else {
            return Ok(());
        };
        if !g.core.active || !self.suppress_output {
            return Ok(());
        }
        let (w, h) = g.core.desktop();
        let Some(pace) = self.flow.pace(std::time::Instant::now()) else {
            return Ok(());
        };
        let desktop_rect = match pace {
            Pace::Pause => None,
            Pace::Resume => Some(InclusiveRectangle {
                left: 0,
                top: 0,
                right: w.saturating_sub(1),
                bottom: h.saturating_sub(1),
            }),
        };
        tracing::trace!(
            ?pace,
            in_flight = self.flow.in_flight_bytes(),
            "Graphics pipeline paced"
        );
        let mut buf = WriteBuf::new();
        if let Err(e) = self.stage.encode_static(
            &mut buf,
            ironrdp_pdu::rdp::headers::ShareDataPdu::SuppressOutput(
                ironrdp_pdu::rdp::suppress_output::SuppressOutputPdu { desktop_rect },
            ),
        ) {
            tracing::debug!(error = %e.report(), "Suppress Output not encodable");
            return Ok(());
        }
        self.write(buf.filled()).await
    }

    async fn send_gfx(&mut self, pdus: Vec<ironrdp_egfx::pdu::GfxPdu>) -> Result<(), End> {
        if pdus.is_empty() {
            return Ok(());
        }
        let failed = |e: String| End {
            code: CloseCode::TargetError,
            reason: format!("could not answer the rdp graphics channel: {}", e.to_lowercase()),
            from_control: false,
        };
        let Some(channel) = self.stage.get_dvc_mut::<gfx::GfxChannel>() else {
            return Ok(());
        };
        let id = channel.channel_id();
        let msgs: Vec<ironrdp_dvc::DvcMessage> = pdus
            .into_iter()
            .map(|p| Box::new(p) as ironrdp_dvc::DvcMessage)
            .collect();
        let svc = ironrdp_dvc::encode_dvc_messages(id, msgs, ironrdp_svc::ChannelFlags::empty())
            .map_err(|e| failed(e.to_string()))?;
        let bytes = self
            .stage
            .encode_dvc_messages(svc)
            .map_err(|e| failed(e.report().to_string()))?;
        self.write(&bytes).await
    }

    async fn write(&mut self, frame: &[u8]) -> Result<(), End> {
        if frame.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_LIMIT, self.framed.write_all(frame)).await {
            Ok(r) => r.map_err(|e| End {
                code: CloseCode::RemoteClosed,
                reason: format!("write to the rdp server failed: {}", e.to_string().to_lowercase()),
                from_control: false,
            }),
            Err(_) => Err(End {
                code: CloseCode::TargetError,
                reason: format!("the rdp server stopped reading for {} s", WRITE_LIMIT.as_secs()),
                from_control: false,
            }),
        }
    }

    fn input(&mut self, ops: impl IntoIterator<Item = Operation>) -> Vec<ActiveStageOutput> {
        let events = self.input.apply(ops);
        if events.is_empty() {
            return Vec::new();
        }
        self.stage
            .process_fastpath_input(&mut self.image, &events)
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e.report(), "Input not encodable");
                Vec::new()
            })
    }

    fn key(&mut self, keysym: u32, down: bool, scancode: u16) -> Vec<ActiveStageOutput> {
        let Some(op) = key_operation(keysym, down, scancode) else {
            tracing::debug!(keysym, "Key without scancode or character ignored");
            return Vec::new();
        };
        self.input([op])
    }

    fn pointer(&mut self, x: u16, y: u16, buttons: u8) -> Vec<ActiveStageOutput> {
        let ops = pointer_operations(self.buttons, x, y, buttons, self.desktop());
        self.buttons = buttons;
        self.input(ops)
    }

    fn clipboard(&mut self, msg: ClipboardMessage) -> Vec<ActiveStageOutput> {
        let Some(cliprdr) = self.stage.get_svc_processor_mut::<CliprdrClient>() else {
            return Vec::new(); // The server did not join the clipboard channel.
        };
        let Some(messages) = clipboard_messages(cliprdr, msg) else {
            return Vec::new();
        };
        let frame = messages.map_err(|e| e.to_string()).and_then(|m| {
            self.stage
                .process_svc_processor_messages(m)
                .map_err(|e| e.report().to_string())
        });
        match frame {
            Ok(frame) => vec![ActiveStageOutput::ResponseFrame(frame)],
            Err(e) => {
                tracing::debug!(error = %e, "Clipboard message not sent");
                Vec::new()
            }
        }
    }

    /// The server deactivated the session (resize, reconnection): run the reactivation sequence and start
    /// over at the new size.
    async fn reactivate(&mut self) -> Result<(), End> {
        let fail = |why: String| End {
            code: CloseCode::TargetError,
            reason: format!("rdp reactivation failed: {why}"),
            from_control: false,
        };
        let mut seq = self.activation.create();
        let io_channel = seq.io_channel_id();
        let mut held = Vec::new();
        let mut buf = WriteBuf::new();
        loop {
            buf.clear();
            let written = match seq.next_pdu_hint() {
                Some(hint) => {
                    // The hint drops fast-path updates drawn for the old desktop (it repaints afterwards).
                    let pdu = self
                        .framed
                        .read_by_hint(hint)
                        .await
                        .map_err(|e| fail(e.to_string().to_lowercase()))?;
                    if let Some(reason) = ultimatum(&pdu) {
                        self.ultimatum_in_reactivation = true;
                        return Err(fail(format!("the server disconnected ({reason})")));
                    }
                    // Static channel data (clipboard, dynamic channels) keeps flowing while the server
                    // reactivates; the sequence understands only the I/O channel's PDUs. Answering it
                    // before the reactivation completes makes xrdp disconnect, so it waits until then
                    // (xrdp's clipboard starts with a Monitor Ready sent right now).
                    let other_channel = ironrdp_pdu::mcs::decode_send_data_indication(&pdu)
                        .is_ok_and(|ctx| ctx.channel_id != io_channel);
                    // Updates on the I/O channel (slow-path bitmaps, pointers, session info) can come
                    // between the deactivation and the new desktop; the finalization accepts none of them.
                    let stray_update = !other_channel
                        && ironrdp_pdu::mcs::decode_send_data_indication(&pdu)
                            .ok()
                            .and_then(|ctx| ironrdp_pdu::rdp::headers::decode_share_data(ctx).ok())
                            .is_some_and(|ctx| {
                                use ironrdp_pdu::rdp::headers::ShareDataPdu as D;
                                !matches!(
                                    ctx.pdu,
                                    D::Synchronize(_)
                                        | D::Control(_)
                                        | D::ServerSetErrorInfo(_)
                                        | D::MonitorLayout(_)
                                        | D::FontMap(_)
                                )
                            });
                    if stray_update {
                        tracing::debug!(len = pdu.len(), "Update during reactivation skipped");
                        continue;
                    }
                    if other_channel {
                        if held.len() < MAX_HELD_CHANNEL_PDUS {
                            held.push(pdu);
                        }
                        continue;
                    }
                    seq.step(&pdu, self.framed.last_read_at(), &mut buf)
                }
                None => seq.step_no_input(&mut buf),
            }
            .map_err(|e| fail(e.report().to_string().to_lowercase()))?;
            if let Some(len) = written.size() {
                let out = buf.filled()[..len].to_vec();
                self.write(&out).await?;
            }
            match seq.connection_activation_state() {
                ConnectionActivationState::Finalized {
                    desktop_size,
                    share_id,
                    static_channel_chunk_size,
                    enable_server_pointer,
                    pointer_software_rendering,
                    refresh_rect_support,
                    suppress_output_support,
                    ..
                } => {
                    let (w, h) = (desktop_size.width, desktop_size.height);
                    check_desktop(w, h, self.max_desktop)?;
                    self.image = DecodedImage::new(PixelFormat::RgbA32, w, h);
                    if !self.stage.reactivate(
                        seq.io_channel_id(),
                        seq.user_channel_id(),
                        share_id,
                        enable_server_pointer,
                        pointer_software_rendering,
                        static_channel_chunk_size,
                    ) {
                        return Err(fail("invalid static channel chunk size".into()));
                    }
                    self.refresh_rect = refresh_rect_support;
                    self.suppress_output = suppress_output_support;
                    self.fb = Framebuffer::new(w, h);
                    self.frame = Frame::default();
                    self.frame.message(ServerMsg::DisplaySize { width: w, height: h });
                    tracing::info!(width = w, height = h, held = held.len(), "Desktop reactivated");
                    self.redial = None;
                    for pdu in held {
                        let outputs = self
                            .stage
                            .process(
                                &mut self.image,
                                ironrdp_pdu::Action::X224,
                                &pdu,
                                self.framed.last_read_at(),
                            )
                            .unwrap_or_default();
                        for out in outputs {
                            if let ActiveStageOutput::ResponseFrame(f) = out {
                                self.write(&f).await?;
                            }
                        }
                    }
                    // What the server drew while the stage was reactivating was skipped: ask for the
                    // whole new desktop, or a static screen (xrdp's fresh session) stays black.
                    if (refresh_rect_support || suppress_output_support)
                        && let Ok(frames) =
                            self.stage
                                .request_full_redraw(w, h, refresh_rect_support, suppress_output_support)
                    {
                        for f in frames {
                            self.write(&f).await?;
                        }
                    }
                    return Ok(());
                }
                ConnectionActivationState::Redirected { .. } => {
                    return Err(fail("the server redirected the connection".into()));
                }
                _ => {}
            }
        }
    }

    /// Apply the stage's outputs and pass the user's notices on; `Err` ends the session (a target error is
    /// also told to the browser as a fatal error, whichever event produced it).
    async fn deliver(&mut self, life: &mut Lifecycle, outputs: Vec<ActiveStageOutput>) -> Result<(), End> {
        match self.outputs(outputs).await {
            Ok(notices) => {
                for m in notices {
                    life.send(m);
                }
                Ok(())
            }
            Err(end) => {
                // A reactivation cut by the server is redialled first (`run`): the browser hears of it only if
                // that fails.
                if end.code == CloseCode::TargetError && !self.ultimatum_in_reactivation {
                    life.send(ServerMsg::error(end.code, end.reason.clone()));
                }
                Err(end)
            }
        }
    }

    /// Apply the stage's outputs; `Err` ends the session. Messages for the user come back in `Ok`.
    async fn outputs(&mut self, outputs: Vec<ActiveStageOutput>) -> Result<Vec<ServerMsg>, End> {
        let mut notices = Vec::new();
        let mut updates = Vec::new();
        for out in outputs {
            match out {
                ActiveStageOutput::ResponseFrame(frame) => self.write(&frame).await?,
                ActiveStageOutput::GraphicsUpdate(r) => {
                    updates.extend(rect_of(&r, self.image.width(), self.image.height()));
                }
                ActiveStageOutput::PointerBitmap(p) => {
                    if p.width > MAX_POINTER_SIDE || p.height > MAX_POINTER_SIDE {
                        return Err(End {
                            code: CloseCode::TargetError,
                            reason: format!(
                                "the rdp server sent a pointer of {}x{}, over the limit of \
                                 {MAX_POINTER_SIDE}x{MAX_POINTER_SIDE}",
                                p.width, p.height
                            ),
                            from_control: false,
                        });
                    }
                    let msg = cursor_msg(p.hotspot_x, p.hotspot_y, p.width, p.height, p.bitmap_data.clone()).await;
                    self.flow.cursor(&mut self.frame, msg);
                }
                ActiveStageOutput::PointerHidden => {
                    let msg = cursor_msg(0, 0, 0, 0, Vec::new()).await;
                    self.flow.cursor(&mut self.frame, msg);
                }
                ActiveStageOutput::PointerDefault => {
                    let (w, h, rgba) = default_pointer();
                    let msg = cursor_msg(0, 0, w, h, rgba).await;
                    self.flow.cursor(&mut self.frame, msg);
                }
                ActiveStageOutput::Terminate(reason) => {
                    return Err(End {
                        code: CloseCode::RemoteClosed,
                        reason: format!("the rdp server ended the session: {}", reason.description()),
                        from_control: false,
                    });
                }
                ActiveStageOutput::DeactivateAll => {
                    self.apply_updates(&mut updates);
                    self.reactivate().await?;
                }
                ActiveStageOutput::LogonErrors(info) => {
                    // Windows reports a failed or refused logon here (e.g. the user is already logged on
                    // elsewhere); the session goes on showing what the server shows.
                    let why = format!(
                        "the rdp server reported a logon problem: {:?} ({:?})",
                        info.error_type, info.error_data
                    )
                    .to_lowercase();
                    tracing::info!(error = %why, "Logon error notification");
                    notices.push(ServerMsg::error(CloseCode::LogonError, why));
                }
                ActiveStageOutput::ServerRedirection(_) => {
                    return Err(End {
                        code: CloseCode::TargetError,
                        reason: "the rdp server redirected the session to another host (session broker \
                                 redirection is not supported)"
                            .into(),
                        from_control: false,
                    });
                }
                other => tracing::trace!(output = ?other, "RDP output not used"),
            }
        }
        self.apply_updates(&mut updates);
        Ok(notices)
    }

    /// Take the decoded image's updated rectangles into the framebuffer and the frame. RDP (without drawing
    /// orders) sends scrolled content as new pixels: a vertical scroll of the updated area is detected
    /// (verified row by row) and sent as a copy, so only the exposed rows are encoded.
    fn apply_updates(&mut self, rects: &mut Vec<Rect>) {
        if rects.is_empty() {
            return;
        }
        let area = bounding(rects);
        let heavy = usize::from(area.width) * usize::from(area.height) * 4 > INLINE_DECODE_BYTES * 16;
        off_worker(heavy, || self.apply_area(area, rects));
    }

    fn apply_area(&mut self, area: Rect, rects: &mut Vec<Rect>) {
        let scroll = detect_vertical_scroll(&mut self.fb, &area, self.image.data(), self.image.stride());
        if let Some(s) = scroll {
            self.frame.copy(&mut self.fb, s.dst.x, s.src_y, s.dst);
        }
        for r in rects.drain(..) {
            self.fb.put_from_image(&r, self.image.data(), self.image.stride());
            match scroll {
                Some(s) => {
                    let (a, b) = (s.dst.y, s.dst.y + s.dst.height);
                    let end = r.y + r.height;
                    if r.y < a {
                        self.frame.damage(Rect {
                            height: a.min(end) - r.y,
                            ..r
                        });
                    }
                    if end > b {
                        let y = r.y.max(b);
                        self.frame.damage(Rect {
                            y,
                            height: end - y,
                            ..r
                        });
                    }
                }
                None => self.frame.damage(r),
            }
        }
    }

    /// When the link will have drained room for the pending frame ([`crate::display::Flow::room_at`]).
    fn room_at(&self) -> Option<tokio::time::Instant> {
        if self.frame.is_empty() && !self.flow.source_paused() {
            return None;
        }
        self.flow.room_at().map(tokio::time::Instant::from_std)
    }

    /// Send the pending frame if there is one and the browser has room.
    async fn flush(&mut self, life: &mut Lifecycle) {
        if !self.frame.is_empty() && self.flow.can_send_at(std::time::Instant::now()) {
            let frame = std::mem::take(&mut self.frame);
            crate::screen::send_frame(&mut self.flow, frame, &mut self.fb, life, &mut self.viewers).await;
        }
    }

    /// Viewers that are behind get what they missed once they have room: on the graphics pipeline its full
    /// picture (the history since the last key frame), else the regions from the framebuffer.
    async fn catch_up_viewers(&mut self, life: &mut Lifecycle) {
        match self.gfx.as_ref() {
            Some(g) if g.core.active => self.viewers.catch_up_with(|| gfx_picture(&g.core), life),
            _ => self.viewers.catch_up(&mut self.fb, life).await,
        }
    }
}

/// The graphics pipeline's full picture for a browser that starts watching (the size at least).
fn gfx_picture(core: &gfx::Gfx) -> Vec<ServerMsg> {
    core.full_picture().unwrap_or_else(|| {
        let (width, height) = core.desktop();
        vec![ServerMsg::DisplaySize { width, height }]
    })
}

/// A plain arrow for the server's "default pointer": black with a white edge.
fn default_pointer() -> (u16, u16, Vec<u8>) {
    const W: u16 = 12;
    const H: u16 = 19;
    let mut rgba = vec![0u8; usize::from(W) * usize::from(H) * 4];
    for y in 0..H {
        // The arrow's body widens by one pixel per row down to the tail.
        let width = if y < 12 {
            y + 1
        } else {
            12u16.saturating_sub(y - 11).min(5)
        };
        for x in 0..width.min(W) {
            let i = (usize::from(y) * usize::from(W) + usize::from(x)) * 4;
            let edge = x == 0 || x + 1 == width || y + 1 == H;
            let c = if edge { 255 } else { 0 };
            rgba[i..i + 4].copy_from_slice(&[c, c, c, 255]);
        }
    }
    (W, H, rgba)
}

/// What a connection to the RDP server needs, kept for one redial.
struct Dial {
    host: String,
    port: u16,
    username: String,
    password: Secret<String>,
    domain: Option<String>,
    width: u16,
    height: u16,
    h264: bool,
    /// `SHA256:<base64>` of the certificate to expect; set by the first connection when trusted on first use.
    pinned: Option<String>,
}

/// What a redialled session keeps from the connection it replaces: the browser's flow control (its frame
/// ids) and the viewers.
struct Carried {
    flow: Flow,
    viewers: crate::screen::ViewerScreens,
    local_clip: Arc<Mutex<Option<String>>>,
}

/// Connect to the RDP server and activate: the session's state, and the clipboard backend's events.
async fn establish(
    life: &mut Lifecycle,
    settings: &portico_proto::control::ConnectionSettings,
    dial: &mut Dial,
    carried: Option<Carried>,
) -> Result<(Rdp, mpsc::UnboundedReceiver<ClipEvent>), End> {
    let failed = |code: CloseCode, reason: String| End {
        code,
        reason,
        from_control: false,
    };
    let h264 = dial.h264;
    let (width, height) = (dial.width, dial.height);
    let addr = format!("{}:{}", dial.host, dial.port);
    life.send(ServerMsg::status("connecting", format!("connecting to {addr}")));

    let (clip_tx, clip_rx) = mpsc::unbounded_channel::<ClipEvent>();
    let local_clip = carried
        .as_ref()
        .map_or_else(|| Arc::new(Mutex::new(None)), |c| c.local_clip.clone());
    let cliprdr = CliprdrClient::new(Box::new(TextClipboard::new(
        clip_tx,
        local_clip.clone(),
        settings.clipboard_down,
    )));
    let mut drdynvc = DrdynvcClient::new().with_dynamic_channel(DisplayControlClient::new(|_caps| Ok(Vec::new())));
    let gfx_queue: gfx::GfxQueue = Arc::default();
    if h264 {
        drdynvc = drdynvc.with_dynamic_channel(gfx::GfxChannel::new(gfx_queue.clone()));
    }
    let params = connect::ConnectParams {
        host: &dial.host,
        port: dial.port,
        username: dial.username.clone(),
        password: dial.password.expose().clone(),
        domain: dial.domain.clone(),
        width,
        height,
        settings,
        pinned: dial.pinned.as_deref(),
        gfx: h264,
    };
    let connecting = connect::connect(params, |c| c.with_static_channel(drdynvc).with_static_channel(cliprdr));
    let connected = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(failed(e.code(), e.to_string())),
        Err(_) => {
            let why = format!("no rdp connection to {addr} within {} s", HANDSHAKE_TIMEOUT.as_secs());
            return Err(failed(CloseCode::TargetError, why));
        }
    };
    let tofu = dial.pinned.is_none() && !settings.danger_accept_any_certificate;
    if tofu {
        // A redial must meet the same certificate.
        dial.pinned = Some(connected.cert_fingerprint.clone());
        let report = HostKeyReport {
            fingerprint: connected.cert_fingerprint.clone(),
        };
        if let Err(e) = life.control.record_host_key(&life.claims.sid, &report).await {
            tracing::warn!(error = %e, "Could not record the certificate fingerprint");
        }
    }
    let result = connected.result;
    let (w, h) = (result.desktop_size.width, result.desktop_size.height);
    if let Err(end) = check_desktop(w, h, life.max_desktop) {
        tracing::warn!(width = w, height = h, limit = %life.max_desktop, "RDP desktop over the limit");
        return Err(end);
    }
    let (flow, viewers) = match carried {
        Some(c) => (c.flow, c.viewers),
        None => (
            Flow::new(DEFAULT_JPEG_LEVEL, life.live.metrics.display.clone()),
            crate::screen::ViewerScreens::new(DEFAULT_JPEG_LEVEL),
        ),
    };
    let rdp = Rdp {
        framed: connected.framed,
        image: DecodedImage::new(PixelFormat::RgbA32, w, h),
        activation: result.activation_factory,
        stage: ActiveStageBuilder {
            static_channels: result.static_channels,
            user_channel_id: result.user_channel_id,
            io_channel_id: result.io_channel_id,
            message_channel_id: result.message_channel_id,
            share_id: result.share_id,
            compression_type: result.compression_type,
            enable_server_pointer: result.enable_server_pointer,
            pointer_software_rendering: result.pointer_software_rendering,
        }
        .build(),
        input: ironrdp_input::Database::new(),
        fb: Framebuffer::new(w, h),
        frame: Frame::default(),
        flow,
        viewers,
        ultimatum_in_reactivation: false,
        redial: None,
        requested: None,
        buttons: 0,
        refresh_rect: result.refresh_rect_support,
        suppress_output: result.suppress_output_support,
        local_clip,
        max_desktop: life.max_desktop,
        gfx: h264.then(|| GfxPath {
            queue: gfx_queue,
            core: gfx::Gfx::new(w, h, life.max_desktop),
            unacked: VecDeque::new(),
            decoded: 0,
            reported: false,
            settle: None,
            settled: false,
        }),
    };
    tracing::info!(width = w, height = h, cert = %connected.cert_fingerprint, "Upstream connected");
    life.send(ServerMsg::DisplaySize { width: w, height: h });
    life.send(ServerMsg::Status(Status {
        state: "connected".into(),
        message: format!("connected to {addr}"),
        graphics: Some("bitmap".into()),
        files: None,
        audio: None,
    }));
    Ok((rdp, clip_rx))
}

/// The connected session until it ends: the server's updates to the browser, the browser's input to the
/// server.
async fn session(
    rdp: &mut Rdp,
    life: &mut Lifecycle,
    clip_rx: &mut mpsc::UnboundedReceiver<ClipEvent>,
    cmd_rx: &mut mpsc::Receiver<Cmd>,
    settings: &portico_proto::control::ConnectionSettings,
) -> End {
    'session: loop {
        let deadline = life.deadline();
        let room = rdp.room_at();
        tokio::select! {
            pdu = rdp.framed.read_pdu() => {
                let mut pdu = Some(pdu);
                // Drain what the socket already holds; the frame ends when the server pauses, or after a
                // budget of PDUs, so that a server that never pauses does not starve the session's commands
                // (input, acknowledgements, the order to end).
                let mut budget = DRAIN_BUDGET;
                while let Some(read) = pdu.take() {
                    budget -= 1;
                    let (action, payload) = match read {
                        Ok(p) => p,
                        Err(e) => {
                            break 'session End {
                                code: CloseCode::RemoteClosed,
                                reason: format!("the rdp server closed the connection: {}", e.to_string().to_lowercase()),
                                from_control: false,
                            };
                        }
                    };
                    let read_at = rdp.framed.last_read_at();
                    let heavy = payload.len() > INLINE_DECODE_BYTES;
                    let outputs = match off_worker(heavy, || rdp.stage.process(&mut rdp.image, action, &payload, read_at)) {
                        Ok(o) => o,
                        Err(e) => {
                            let why = format!("the rdp server sent something undecodable: {}", e.report().to_string().to_lowercase());
                            tracing::warn!(error = %why, "RDP protocol error");
                            life.send(ServerMsg::error(CloseCode::TargetError, why.clone()));
                            break 'session End { code: CloseCode::TargetError, reason: why, from_control: false };
                        }
                    };
                    let mut outputs = outputs;
                    if rdp.stage.take_bitmap_recovery_request() {
                        let (iw, ih) = (rdp.image.width(), rdp.image.height());
                        if let Ok(frames) = rdp.stage.request_full_redraw(iw, ih, rdp.refresh_rect, rdp.suppress_output) {
                            outputs.extend(frames.into_iter().map(ActiveStageOutput::ResponseFrame));
                        }
                    }
                    if let Err(end) = rdp.deliver(life, outputs).await {
                        break 'session end;
                    }
                    if let Err(end) = rdp.pump_gfx(life).await {
                        break 'session end;
                    }
                    if let Err(end) = rdp.pace_gfx().await {
                        break 'session end;
                    }
                    if budget > 0 {
                        pdu = rdp.framed.read_pdu().now_or_never();
                    }
                }
                if !rdp.frame.is_empty() && !rdp.flow.can_send_at(std::time::Instant::now()) {
                    // The browser is behind: this update merges into the pending frame.
                    rdp.flow.merged();
                }
                rdp.flush(life).await;
            }
            Some(ev) = clip_rx.recv() => {
                let outputs = match ev {
                    ClipEvent::Message(msg) => rdp.clipboard(msg),
                    ClipEvent::RemoteText(text) => {
                        if text.len() <= MAX_CLIPBOARD_TEXT {
                            life.send_clipboard(text);
                        }
                        Vec::new()
                    }
                };
                if let Err(end) = rdp.deliver(life, outputs).await {
                    break end;
                }
            }
            cmd = cmd_rx.recv() => {
                let outputs = match cmd.map(|c| life.common(c)) {
                    None => break shutting_down(),
                    Some(Common::End(end)) => break end,
                    Some(Common::Handled) => Vec::new(),
                    Some(Common::Attached(_)) => {
                        match rdp.gfx_attached(life).await {
                            Ok(true) => {
                                if let Err(end) = rdp.pace_gfx().await {
                                    break end;
                                }
                            }
                            Ok(false) => crate::screen::send_full_picture(&mut rdp.flow, &mut rdp.fb, life).await,
                            Err(end) => break end,
                        }
                        rdp.frame = Frame::default();
                        Vec::new()
                    }
                    Some(Common::ViewerJoined(_)) => {
                        rdp.catch_up_viewers(life).await;
                        Vec::new()
                    }
                    Some(Common::ViewerAck { key, frame_id }) => {
                        rdp.viewers.ack(key, frame_id);
                        rdp.catch_up_viewers(life).await;
                        Vec::new()
                    }
                    Some(Common::Input(msg)) => match msg {
                        ClientMsg::Key { keysym, down, scancode } => {
                            life.last_input = tokio::time::Instant::now();
                            rdp.key(keysym, down, scancode)
                        }
                        ClientMsg::Pointer { x, y, buttons } => {
                            life.last_input = tokio::time::Instant::now();
                            rdp.pointer(x, y, buttons)
                        }
                        ClientMsg::Clipboard(text) if settings.clipboard_up && text.len() <= MAX_CLIPBOARD_TEXT => {
                            if let Ok(mut t) = rdp.local_clip.lock() {
                                *t = Some(text);
                            }
                            rdp.clipboard(ClipboardMessage::SendInitiateCopy(text_formats()))
                        }
                        ClientMsg::FrameAck { frame_id } => {
                            rdp.flow.on_ack(frame_id, std::time::Instant::now());
                            if let Err(end) = rdp.gfx_acked(frame_id).await {
                                break end;
                            }
                            if let Err(end) = rdp.pace_gfx().await {
                                break end;
                            }
                            rdp.flush(life).await;
                            Vec::new()
                        }
                        ClientMsg::Resize { width_px, height_px, .. } if width_px > 0 && height_px > 0 => {
                            resize(rdp, life, settings, width_px, height_px)
                        }
                        _ => Vec::new(),
                    },
                };
                if let Err(end) = rdp.deliver(life, outputs).await {
                    break end;
                }
            }
            () = sleep_until(rdp.gfx.as_ref().and_then(|g| g.settle)) => {
                let Some(g) = rdp.gfx.as_mut() else { continue };
                g.settle = None;
                g.settled = true;
                if rdp.flow.source_paused() {
                    // The server is paused; lifting it asks for the whole desktop anyway.
                    continue;
                }
                let (w, h) = g.core.desktop();
                tracing::debug!(width = w, height = h, "Graphics pipeline settled: one refresh of the desktop");
                let outputs = rdp
                    .stage
                    .request_full_redraw(w, h, rdp.refresh_rect, rdp.suppress_output)
                    .map(|frames| frames.into_iter().map(ActiveStageOutput::ResponseFrame).collect())
                    .unwrap_or_default();
                if let Err(end) = rdp.deliver(life, outputs).await {
                    break end;
                }
            }
            () = sleep_until(rdp.viewers.wake_at()) => rdp.catch_up_viewers(life).await,
            // A pending frame behind one larger than the budget: the link has drained room for it.
            () = sleep_until(room) => {
                rdp.flush(life).await;
                if let Err(end) = rdp.pace_gfx().await {
                    break end;
                }
            }
            () = sleep_until(deadline) => {
                if let Some(end) = life.expired() {
                    break end;
                }
            }
        }
    }
}

#[tracing::instrument(name = "session", skip_all, fields(session_id = %life.claims.sid, protocol = "rdp"))]
pub async fn run(mut life: Lifecycle, target: Target, mut cmd_rx: mpsc::Receiver<Cmd>) {
    tracing::info!(host = %target.host, port = target.port, "Session started");
    if let Some(end) = life.wait_first_attach(&mut cmd_rx).await {
        return life.end(end).await;
    }
    let settings = target.settings.clone();
    let (username, password, domain) = if settings.ask_credentials {
        let prompt = format!("credentials for {}", target.host);
        match life.ask_credentials(&mut cmd_rx, &prompt).await {
            Ok(c) => (c.username, c.password, c.domain.or_else(|| settings.domain.clone())),
            Err(end) => return life.end(end).await,
        }
    } else {
        (
            target.username.clone(),
            target.password.as_ref().map(|p| p.expose().clone()).unwrap_or_default(),
            settings.domain.clone(),
        )
    };
    let fixed = match (settings.width, settings.height) {
        (Some(w), Some(h)) => Some(clamp_size(w, h, life.max_desktop)),
        _ => None,
    };
    let (width, height) = match browser_hints(&mut life, &mut cmd_rx, fixed.is_none()).await {
        Ok(size) => fixed.or(size).unwrap_or(DEFAULT_SIZE),
        Err(end) => return life.end(end).await,
    };
    // The graphics pipeline with H.264 passthrough when the connection allows it and the browser decodes it.
    let h264 = settings.h264 && life.caps.is_some_and(|c| c & CAPS_H264 != 0);
    if settings.h264 {
        // Why a session that may use H.264 does not: the browser's capabilities decide.
        tracing::info!(offered = h264, browser_caps = ?life.caps, "RDP graphics pipeline with H.264");
    }
    let mut dial = Dial {
        host: target.host.clone(),
        port: target.port,
        username,
        password: Secret::new(password),
        domain,
        width,
        height,
        h264,
        pinned: target.host_key_fingerprint.clone(),
    };
    // INVARIANT: what the connection needs was copied into `dial`, kept for one redial (below) until the
    // first reactivation completes, then dropped.
    drop(target);
    let (mut rdp, mut clip_rx) = match establish(&mut life, &settings, &mut dial, None).await {
        Ok(up) => up,
        Err(end) => return life.fail(end.code, end.reason).await,
    };
    rdp.redial = Some(dial);
    let end = loop {
        let end = session(&mut rdp, &mut life, &mut clip_rx, &mut cmd_rx, &settings).await;
        // xrdp (0.9) sometimes answers a reactivation (a resize, or its own when it reattaches a logon session)
        // with a Disconnect Provider Ultimatum instead of the new desktop. A new connection lands in the same
        // logon session: dial once more, at the size the session had, before giving up.
        let retry = if rdp.ultimatum_in_reactivation {
            rdp.redial.take()
        } else {
            None
        };
        let Some(mut dial) = retry else {
            if rdp.ultimatum_in_reactivation {
                // Not redialled (once already): the browser hears why now.
                life.send(ServerMsg::error(end.code, end.reason.clone()));
            }
            break end;
        };
        tracing::warn!(reason = %end.reason, "RDP server dropped the connection during a reactivation; reconnecting once");
        (dial.width, dial.height) = rdp.requested.unwrap_or_else(|| rdp.desktop());
        let carried = Carried {
            flow: std::mem::replace(
                &mut rdp.flow,
                Flow::new(DEFAULT_JPEG_LEVEL, life.live.metrics.display.clone()),
            ),
            viewers: std::mem::replace(&mut rdp.viewers, crate::screen::ViewerScreens::new(DEFAULT_JPEG_LEVEL)),
            local_clip: rdp.local_clip.clone(),
        };
        match establish(&mut life, &settings, &mut dial, Some(carried)).await {
            Ok((up, clip)) => (rdp, clip_rx) = (up, clip),
            Err(end) => {
                life.send(ServerMsg::error(end.code, end.reason.clone()));
                break end;
            }
        }
    };
    // Release what the browser held down and say goodbye; the server may already be gone.
    let events = rdp.input.release_all();
    let mut goodbye = rdp
        .stage
        .process_fastpath_input(&mut rdp.image, &events)
        .unwrap_or_default();
    goodbye.extend(rdp.stage.graceful_shutdown().unwrap_or_default());
    let farewell = async {
        for out in goodbye {
            if let ActiveStageOutput::ResponseFrame(f) = out {
                let _ = rdp.write(&f).await;
            }
        }
    };
    // A server that does not read is not waited for: the session is over either way.
    let _ = tokio::time::timeout(GOODBYE_LIMIT, farewell).await;
    life.end(end).await;
}

/// Ask the server for a new desktop size (Display Control); a fixed-size connection or a server without
/// the channel says so and the browser scales instead.
fn resize(
    rdp: &mut Rdp,
    life: &mut Lifecycle,
    settings: &portico_proto::control::ConnectionSettings,
    width: u16,
    height: u16,
) -> Vec<ActiveStageOutput> {
    let unsupported = |life: &mut Lifecycle, why: &str| {
        life.send(ServerMsg::error(CloseCode::ResizeUnsupported, why));
        Vec::new()
    };
    if settings.width.is_some() {
        return unsupported(
            life,
            "this connection has a fixed desktop size; the view is scaled instead",
        );
    }
    let (w, h) = clamp_size(width, height, rdp.max_desktop);
    rdp.requested = Some((w, h));
    if (w, h) == rdp.desktop() {
        return Vec::new();
    }
    let (w, h) = MonitorLayoutEntry::adjust_display_size(u32::from(w), u32::from(h));
    match rdp.stage.encode_resize(w, h, Some(100), None) {
        Some(Ok(frame)) => vec![ActiveStageOutput::ResponseFrame(frame)],
        Some(Err(e)) => {
            tracing::debug!(error = %e.report(), "Resize not encodable");
            Vec::new()
        }
        None => unsupported(
            life,
            "this rdp server cannot resize the desktop (no display control channel); the view is scaled instead",
        ),
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not an API): the paths that take bytes from the browser
/// or the RDP server without a live connection.
#[doc(hidden)]
pub mod fuzzing {
    use ironrdp_cliprdr::pdu::ClipboardFormat;
    use ironrdp_svc::SvcProcessor as _;

    use super::*;

    /// Browser messages (each a `u16` length then the wire message) through the wire decoder, the
    /// key and pointer translation and IronRDP's input database into encoded fast-path input PDUs.
    pub fn input(data: &[u8]) {
        let mut db = ironrdp_input::Database::new();
        let mut held = 0;
        let size = (1024, 768);
        for msg in chunks(data) {
            let ops = match ClientMsg::decode(msg) {
                Ok(ClientMsg::Key { keysym, down, scancode }) => {
                    key_operation(keysym, down, scancode).into_iter().collect()
                }
                Ok(ClientMsg::Pointer { x, y, buttons }) => {
                    let ops = pointer_operations(held, x, y, buttons, size);
                    held = buttons;
                    ops
                }
                _ => continue,
            };
            let events = db.apply(ops);
            for chunk in events.chunks(ironrdp_pdu::input::fast_path::FastPathInput::MAX_EVENTS) {
                let pdu = ironrdp_pdu::input::fast_path::FastPathInput::new(chunk.to_vec());
                // INVARIANT: at most MAX_EVENTS events per PDU, and a Vec never refuses to grow.
                let pdu = pdu.expect("at most MAX_EVENTS events");
                ironrdp_core::encode_vec(&pdu).expect("fast-path input encodes");
            }
        }
    }

    /// Server PDUs on the clipboard channel (each a `u16` length then the PDU; the first byte of `data`
    /// chooses whether the browser owns text and whether remote copies are fetched) through IronRDP's
    /// CLIPRDR client and our text backend; what the backend asks for is answered as the session does.
    pub fn cliprdr(data: &[u8]) {
        let Some((&flags, data)) = data.split_first() else {
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let local = Arc::new(Mutex::new((flags & 1 != 0).then(|| "local ✓ text\n".to_owned())));
        let mut cliprdr = CliprdrClient::new(Box::new(TextClipboard::new(tx, local, flags & 2 != 0)));
        let _ = cliprdr.start();
        if flags & 4 != 0 {
            let _ = cliprdr.initiate_copy(&text_formats());
        }
        for pdu in chunks(data) {
            let _ = cliprdr.process(pdu);
            while let Ok(event) = rx.try_recv() {
                match event {
                    ClipEvent::Message(msg) => {
                        if let Some(Ok(messages)) = clipboard_messages(&mut cliprdr, msg) {
                            drop(Vec::<ironrdp_svc::SvcMessage>::from(messages));
                        }
                    }
                    ClipEvent::RemoteText(text) => assert!(text.len() <= MAX_CLIPBOARD_TEXT * 4),
                }
            }
        }
        let _ = cliprdr.initiate_copy(&[ClipboardFormat::new(ironrdp_cliprdr::pdu::ClipboardFormatId::CF_TEXT)]);
    }

    /// `u16`-length-prefixed pieces of `data` (the last one truncated).
    fn chunks(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
        std::iter::from_fn(move || {
            let (len, rest) = data.split_first_chunk::<2>()?;
            let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
            let (chunk, rest) = rest.split_at(len);
            data = rest;
            Some(chunk)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keysyms_type_their_characters() {
        assert_eq!(keysym_char(0x61), Some('a'));
        assert_eq!(keysym_char(0xe9), Some('é'));
        assert_eq!(keysym_char(0x0100_20ac), Some('€'));
        assert_eq!(keysym_char(0xff0d), None);
    }

    #[test]
    fn text_without_a_scancode_goes_as_unicode_events_in_utf16() {
        use ironrdp_pdu::input::fast_path::{FastPathInputEvent as E, KeyboardFlags as F};
        let mut db = ironrdp_input::Database::new();
        let mut typed = |keysym: u32| {
            let mut events = Vec::new();
            for down in [true, false] {
                events.extend(db.apply(key_operation(keysym, down, 0)));
            }
            events
        };
        assert_eq!(
            typed(0xe9),
            [
                E::UnicodeKeyboardEvent(F::empty(), 0xe9),
                E::UnicodeKeyboardEvent(F::RELEASE, 0xe9)
            ]
        );
        assert_eq!(
            typed(0xdf),
            [
                E::UnicodeKeyboardEvent(F::empty(), 0xdf),
                E::UnicodeKeyboardEvent(F::RELEASE, 0xdf)
            ]
        );
        assert_eq!(
            typed(0x0100_4e2d),
            [
                E::UnicodeKeyboardEvent(F::empty(), 0x4e2d),
                E::UnicodeKeyboardEvent(F::RELEASE, 0x4e2d)
            ]
        );
        // Beyond the Basic Multilingual Plane: a surrogate pair, pressed and released.
        let emoji = typed(0x0101_f600);
        assert_eq!(
            emoji,
            [
                E::UnicodeKeyboardEvent(F::empty(), 0xd83d),
                E::UnicodeKeyboardEvent(F::empty(), 0xde00),
                E::UnicodeKeyboardEvent(F::RELEASE, 0xd83d),
                E::UnicodeKeyboardEvent(F::RELEASE, 0xde00),
            ]
        );
        // A key the browser knows physically goes as its scancode.
        let physical = db.apply(key_operation(0x61, true, 0x1e));
        assert!(
            matches!(physical.as_slice(), [E::KeyboardEvent(_, 0x1e)]),
            "{physical:?}"
        );
    }

    #[test]
    fn rectangles_are_inclusive_and_clamped() {
        let r = InclusiveRectangle {
            left: 10,
            top: 20,
            right: 19,
            bottom: 29,
        };
        assert_eq!(
            rect_of(&r, 100, 100),
            Some(Rect {
                x: 10,
                y: 20,
                width: 10,
                height: 10
            })
        );
        let outside = InclusiveRectangle {
            left: 90,
            top: 90,
            right: 200,
            bottom: 200,
        };
        assert_eq!(rect_of(&outside, 100, 100).map(|r| (r.width, r.height)), Some((10, 10)));
        let beyond = InclusiveRectangle {
            left: 150,
            top: 0,
            right: 160,
            bottom: 5,
        };
        assert_eq!(rect_of(&beyond, 100, 100), None);
    }

    #[test]
    fn sizes_are_even_and_bounded() {
        let max = MaxDesktop::DEFAULT;
        assert_eq!(clamp_size(1281, 719, max), (1280, 718));
        assert_eq!(clamp_size(10, 60000, max), (200, 4096), "the bridge's limit, portrait");
        assert_eq!(clamp_size(5000, 5000, max), (4096, 2160));
        let big = MaxDesktop {
            width: 16384,
            height: 16384,
        };
        assert_eq!(clamp_size(10, 60000, big), (200, 8192), "what rdp servers accept");
    }

    #[test]
    fn a_desktop_over_the_limit_is_a_target_error() {
        let max = MaxDesktop::DEFAULT;
        assert!(check_desktop(3840, 2160, max).is_ok());
        assert!(check_desktop(2160, 4096, max).is_ok());
        let end = check_desktop(8192, 8192, max).unwrap_err();
        assert_eq!(end.code, CloseCode::TargetError);
        assert_eq!(
            end.reason,
            "the rdp server's desktop of 8192x8192 exceeds the limit of 4096x2160"
        );
    }

    #[test]
    fn a_disconnect_provider_ultimatum_is_told_apart() {
        use ironrdp_pdu::mcs::{DisconnectProviderUltimatum, DisconnectReason, McsMessage};
        let msg = McsMessage::DisconnectProviderUltimatum(DisconnectProviderUltimatum::from_reason(
            DisconnectReason::ProviderInitiated,
        ));
        let pdu = ironrdp_core::encode_vec(&ironrdp_pdu::x224::X224(msg)).unwrap();
        assert_eq!(ultimatum(&pdu), Some(DisconnectReason::ProviderInitiated));
        // Anything else (a truncated one, other bytes) is not one.
        assert_eq!(ultimatum(&pdu[..pdu.len() - 1]), None);
        assert_eq!(ultimatum(&[0x03, 0x00, 0x00, 0x04]), None);
    }

    #[test]
    fn the_default_pointer_is_an_opaque_arrow() {
        let (w, h, rgba) = default_pointer();
        assert_eq!(rgba.len(), usize::from(w) * usize::from(h) * 4);
        assert_eq!(rgba[3], 255, "the tip is drawn");
        assert_eq!(rgba[(usize::from(w) - 1) * 4 + 3], 0, "the top right is transparent");
    }
}
