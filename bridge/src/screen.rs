//! The thin glue between the display core ([`crate::display`], sans-IO) and a session's browsers
//! ([`crate::lifecycle`]): encode a frame, number it, send it to the owner and to the viewers, each with its
//! own flow control ([`ViewerScreens`]). Used by the graphical protocols (VNC, RDP).

use std::time::{Duration, Instant};

use crate::display::{Flow, Frame, Framebuffer, coalesce, encode_full};
use crate::lifecycle::{Lifecycle, VIEWER_QUEUE};
use crate::metrics::DisplayMetrics;
use portico_proto::wire::{Rect, ServerMsg};

/// Most rectangles a viewer's missed region keeps before they coalesce into tiles.
const MAX_MISSED: usize = 256;
/// How often a viewer that is behind is looked at when nothing else wakes the session.
const VIEWER_POLL: Duration = Duration::from_millis(50);

/// What each viewer of a shared graphical session was sent. A viewer that is up to date and has room on its
/// own link gets the owner's frame as it was encoded (no second encoding); one that is behind (its link,
/// or its queue) notes what the frames it missed changed and, once it has room, gets one frame of those
/// regions encoded from the current screen (merged frames), or the whole picture (it just joined, the
/// display was resized, the pipeline's H.264 stream moved on). A slow viewer never slows the owner or the
/// others: nothing waits for it.
pub struct ViewerScreens {
    max_quality: u8,
    screens: Vec<ViewerScreen>,
    cursor: Option<ServerMsg>,
}

struct ViewerScreen {
    key: u64,
    flow: Flow,
    /// Needs the whole picture.
    full: bool,
    /// What changed since its last frame.
    missed: Vec<Rect>,
}

impl ViewerScreen {
    fn behind(&self) -> bool {
        self.full || !self.missed.is_empty()
    }

    /// Note what `msgs` change, for the frame that catches up.
    fn miss(&mut self, msgs: &[ServerMsg]) {
        for m in msgs {
            match m {
                ServerMsg::Image { rect, .. } | ServerMsg::Fill { rect, .. } | ServerMsg::Copy { rect, .. } => {
                    self.missed.push(*rect)
                }
                ServerMsg::Cursor { .. } | ServerMsg::FrameEnd { .. } => {}
                // A new size, or the graphics pipeline (its stream and caches cannot be skipped).
                _ => self.full = true,
            }
        }
        if self.missed.len() > MAX_MISSED {
            self.missed = coalesce(&self.missed);
        }
    }
}

impl ViewerScreens {
    pub fn new(max_quality: u8) -> Self {
        ViewerScreens {
            max_quality,
            screens: Vec::new(),
            cursor: None,
        }
    }

    /// Follow the viewers attached now: a new one needs the whole picture, a gone one is forgotten; a viewer
    /// whose queue overflowed needs the whole picture too.
    fn follow(&mut self, life: &mut Lifecycle) {
        self.screens.retain(|s| life.viewers().iter().any(|v| v.key == s.key));
        for v in life.viewers_mut() {
            match self.screens.iter_mut().find(|s| s.key == v.key) {
                Some(s) if v.lagging => s.full = true,
                Some(_) => {}
                None => {
                    let mut flow = Flow::new(self.max_quality, DisplayMetrics::default());
                    if let Some(c) = &self.cursor {
                        flow.set_cursor(c.clone());
                    }
                    self.screens.push(ViewerScreen {
                        key: v.key,
                        flow,
                        full: true,
                        missed: Vec::new(),
                    });
                }
            }
            v.lagging = false;
        }
    }

    /// A frame of the owner's, encoded once: as it is to the viewers that are up to date and have room,
    /// noted by the others.
    pub fn frame(&mut self, msgs: &[ServerMsg], life: &mut Lifecycle) {
        if let Some(c) = msgs.iter().rev().find(|m| matches!(m, ServerMsg::Cursor { .. })) {
            self.cursor = Some(c.clone());
        }
        if life.viewers().is_empty() && self.screens.is_empty() {
            return;
        }
        self.follow(life);
        let now = Instant::now();
        for s in &mut self.screens {
            if let Some(c) = &self.cursor {
                s.flow.set_cursor(c.clone());
            }
            if s.behind() || !s.flow.can_send_at(now) {
                s.miss(msgs);
                continue;
            }
            for m in s.flow.seal(msgs.to_vec(), now) {
                if !life.send_viewer(s.key, m) {
                    // Its queue is full mid-frame: what it has is unknown, it gets the whole picture.
                    s.full = true;
                    break;
                }
            }
        }
    }

    /// Whether a viewer is behind and has room now (the session then calls a catch-up).
    fn needy(&self, life: &Lifecycle, now: Instant) -> Vec<usize> {
        (0..self.screens.len())
            .filter(|&i| {
                let s = &self.screens[i];
                s.behind() && s.flow.can_send_at(now) && life.viewer_room(s.key) >= VIEWER_QUEUE / 2
            })
            .collect()
    }

    /// Send each viewer that is behind and has room what it missed: the regions encoded from the current
    /// screen, or the whole picture.
    pub async fn catch_up(&mut self, fb: &mut Framebuffer, life: &mut Lifecycle) {
        self.follow(life);
        let now = Instant::now();
        for i in self.needy(life, now) {
            let s = &mut self.screens[i];
            let msgs = if s.full {
                let image = encode_full(fb, s.flow.quality()).await;
                s.flow.full_picture(fb.full(), image, now)
            } else {
                let mut frame = Frame::default();
                let full = fb.full();
                for r in s.missed.drain(..) {
                    if let Some(r) = clip(&r, &full) {
                        frame.damage(r);
                    }
                }
                let (msgs, stats) = frame.finish_with(fb, s.flow.quality(), s.flow.effort()).await;
                s.flow.encoded(stats);
                s.flow.seal(msgs, now)
            };
            s.full = false;
            s.missed.clear();
            for m in msgs {
                if !life.send_viewer(s.key, m) {
                    s.full = true;
                    break;
                }
            }
        }
    }

    /// The graphics pipeline's catch-up: a viewer that is behind gets the pipeline's full picture
    /// (`picture`: the history since the last key frame), computed once for all of them.
    pub fn catch_up_with(&mut self, picture: impl FnOnce() -> Vec<ServerMsg>, life: &mut Lifecycle) {
        self.follow(life);
        let now = Instant::now();
        let needy = self.needy(life, now);
        if needy.is_empty() {
            return;
        }
        let picture = picture();
        for i in needy {
            let s = &mut self.screens[i];
            s.full = false;
            s.missed.clear();
            for m in s.flow.picture_frame(picture.clone(), now) {
                if !life.send_viewer(s.key, m) {
                    s.full = true;
                    break;
                }
            }
        }
    }

    /// Viewer `key` drew its frame `frame_id`.
    pub fn ack(&mut self, key: u64, frame_id: u32) {
        if let Some(s) = self.screens.iter_mut().find(|s| s.key == key) {
            s.flow.on_ack(frame_id, Instant::now());
        }
    }

    /// When to look again at the viewers that are behind (none: `None`).
    pub fn wake_at(&self) -> Option<tokio::time::Instant> {
        self.screens
            .iter()
            .any(ViewerScreen::behind)
            .then(|| tokio::time::Instant::now() + VIEWER_POLL)
    }
}

/// `r` inside `bounds` (`None`: nothing of it is).
fn clip(r: &Rect, bounds: &Rect) -> Option<Rect> {
    let x2 = (u32::from(r.x) + u32::from(r.width)).min(u32::from(bounds.x) + u32::from(bounds.width));
    let y2 = (u32::from(r.y) + u32::from(r.height)).min(u32::from(bounds.y) + u32::from(bounds.height));
    let (x, y) = (r.x.max(bounds.x), r.y.max(bounds.y));
    (x2 > u32::from(x) && y2 > u32::from(y)).then(|| Rect {
        x,
        y,
        width: (x2 - u32::from(x)) as u16,
        height: (y2 - u32::from(y)) as u16,
    })
}

/// Encode `frame` and send it to the owner (nothing when no browser is attached: a reattach gets the full
/// picture) and to the viewers.
pub async fn send_frame(
    flow: &mut Flow,
    frame: Frame,
    fb: &mut Framebuffer,
    life: &mut Lifecycle,
    viewers: &mut ViewerScreens,
) {
    if frame.is_empty() {
        return;
    }
    let (msgs, stats) = frame.finish_with(fb, flow.quality(), flow.effort()).await;
    flow.encoded(stats);
    viewers.frame(&msgs, life);
    if life.client().is_none() {
        viewers.catch_up(fb, life).await;
        return;
    }
    for m in flow.seal(msgs, Instant::now()) {
        life.send_wait(m).await;
    }
    record_keyframe(flow, fb, life).await;
    viewers.catch_up(fb, life).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use portico_proto::wire::ImageFormat;

    fn rect(x: u16, y: u16, width: u16, height: u16) -> Rect {
        Rect { x, y, width, height }
    }

    fn screen() -> ViewerScreen {
        ViewerScreen {
            key: 1,
            flow: Flow::new(4, DisplayMetrics::default()),
            full: false,
            missed: Vec::new(),
        }
    }

    #[test]
    fn a_viewer_behind_notes_what_changed_and_needs_the_whole_picture_for_what_cannot_be_merged() {
        let mut s = screen();
        assert!(!s.behind());
        s.miss(&[
            ServerMsg::Image {
                rect: rect(0, 0, 10, 10),
                format: ImageFormat::Png,
                data: vec![1],
            },
            ServerMsg::Copy {
                src_x: 0,
                src_y: 10,
                rect: rect(0, 0, 100, 50),
            },
            ServerMsg::Fill {
                rect: rect(5, 5, 2, 2),
                rgb: [1, 2, 3],
            },
            ServerMsg::Cursor {
                hot_x: 0,
                hot_y: 0,
                png: vec![],
            },
            ServerMsg::FrameEnd { frame_id: 3 },
        ]);
        assert!(s.behind() && !s.full);
        assert_eq!(s.missed, [rect(0, 0, 10, 10), rect(0, 0, 100, 50), rect(5, 5, 2, 2)]);
        // A new size, or the graphics pipeline's stream: only the whole picture resynchronises.
        for m in [
            ServerMsg::DisplaySize { width: 8, height: 8 },
            ServerMsg::Video {
                stream: 0,
                x: 0,
                y: 0,
                key: false,
                rects: vec![],
                data: vec![0, 0, 1],
            },
            ServerMsg::CacheDraw { slot: 1, x: 0, y: 0 },
        ] {
            let mut s = screen();
            s.miss(&[m]);
            assert!(s.full);
        }
    }

    #[test]
    fn many_missed_regions_coalesce_into_tiles() {
        let mut s = screen();
        let many: Vec<ServerMsg> = (0..400u16)
            .map(|i| ServerMsg::Fill {
                rect: rect((i % 20) * 10, (i / 20) * 10, 3, 3),
                rgb: [0; 3],
            })
            .collect();
        s.miss(&many);
        assert!(s.missed.len() <= MAX_MISSED, "{}", s.missed.len());
        // Every missed pixel is still covered.
        for i in 0..400u16 {
            let (x, y) = ((i % 20) * 10, (i / 20) * 10);
            assert!(
                s.missed
                    .iter()
                    .any(|r| r.x <= x && r.y <= y && x < r.x + r.width && y < r.y + r.height),
                "{x},{y}"
            );
        }
    }

    #[test]
    fn missed_regions_are_clipped_to_the_screen() {
        let full = rect(0, 0, 100, 50);
        assert_eq!(clip(&rect(90, 40, 20, 20), &full), Some(rect(90, 40, 10, 10)));
        assert_eq!(clip(&rect(100, 0, 5, 5), &full), None);
        assert_eq!(clip(&rect(0, 0, 100, 50), &full), Some(full));
    }
}
