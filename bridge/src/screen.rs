//! The thin glue between the display core ([`crate::display`], sans-IO) and a session's browser
//! ([`crate::lifecycle`]): encode a frame, number it, send it. Used by the graphical protocols (VNC, RDP).

use std::time::Instant;

use crate::display::{Flow, Frame, Framebuffer, encode_full};
use crate::lifecycle::Lifecycle;
use portico_proto::wire::ServerMsg;

/// Encode and send `frame` (nothing when no browser is attached: a reattach gets the full picture).
pub async fn send_frame(flow: &mut Flow, frame: Frame, fb: &mut Framebuffer, life: &mut Lifecycle) {
    if frame.is_empty() {
        return;
    }
    let (msgs, stats) = frame.finish_with(fb, flow.quality(), flow.effort()).await;
    flow.encoded(stats);
    if life.client().is_none() {
        return;
    }
    for m in flow.seal(msgs, Instant::now()) {
        life.send_wait(m).await;
    }
    record_keyframe(flow, fb, life).await;
}

/// A keyframe for the session's recording when it wants one: the size and the whole screen, encoded as a
/// reattach gets it (on the shared encoder pool, off the session's task).
pub async fn record_keyframe(flow: &Flow, fb: &mut Framebuffer, life: &mut Lifecycle) {
    if !life.recorder.as_ref().is_some_and(|r| r.wants_keyframe()) {
        return;
    }
    let Some(image) = encode_full(fb, flow.quality()).await else {
        return;
    };
    let full = fb.full();
    let state = [
        ServerMsg::DisplaySize {
            width: full.width,
            height: full.height,
        },
        image,
        // A player draws a frame at its end (frame 0: never acknowledged, nothing waits for it).
        ServerMsg::FrameEnd { frame_id: 0 },
    ];
    if let Some(r) = life.recorder.as_mut() {
        r.keyframe(None, &state);
    }
}

/// Everything a freshly attached browser needs: the size, the whole screen, the pointer.
pub async fn send_full_picture(flow: &mut Flow, fb: &mut Framebuffer, life: &mut Lifecycle) {
    let image = encode_full(fb, flow.quality()).await;
    for m in flow.full_picture(fb.full(), image, Instant::now()) {
        life.send_wait(m).await;
    }
}
