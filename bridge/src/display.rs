//! The display pipeline shared by graphical protocols: a framebuffer, the operations of one frame in
//! order, and their encoding for the browser.
//!
//! - Pixels that change are collected as damage and encoded at the end of the frame, from the framebuffer's
//!   final content (so a rectangle updated twice in one frame is sent once).
//! - Copies (scrolling, moved windows) are forwarded as cheap copy messages; pending damage that overlaps a
//!   copy's source is flushed before the copy, so the browser always copies what the server copied.
//! - Solid rectangles become fills; everything else is PNG with the fastest deflate level.
//! - Encoding runs on the blocking pool behind a semaphore as wide as the machine: 100 sessions do not
//!   mean 100 encoding threads.

use std::collections::VecDeque;
use std::time::Instant;

use portico_proto::wire::{ImageFormat, Rect, ServerMsg};

use crate::metrics::DisplayMetrics;
use crate::pool::encoder_permit;

/// More damage rectangles than this in one flush are merged into their bounding box.
const MAX_RECTS_PER_FLUSH: usize = 48;
/// A frame that collects more damage rectangles than this (a browser that is behind, while the server keeps
/// sending) merges them into their bounding box: the damage of a frame stays bounded.
const MAX_PENDING_DAMAGE: usize = 512;
/// A frame with more operations than this (copies, fills, passthrough images and the damage flushed before
/// copies: a server that keeps scrolling while the browser is behind, or floods one update with tiny
/// rectangles) collapses into one repaint of the whole screen. Pointer images and the size do not count: a
/// frame keeps only its last of each.
const MAX_FRAME_OPS: usize = 256;
/// Nor may a frame's operations hold more bytes (captured pixels, passthrough images) than a repaint of the
/// whole screen would (and at least this much, for small screens).
const MIN_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Frames sent but not yet acknowledged before a session stops sending (VNC: stops asking for updates).
pub const MAX_FRAMES_IN_FLIGHT: u32 = 2;

pub struct Framebuffer {
    pub width: u16,
    pub height: u16,
    rgba: Vec<u8>,
}

impl Framebuffer {
    pub fn new(width: u16, height: u16) -> Self {
        Framebuffer {
            width,
            height,
            rgba: vec![0; usize::from(width) * usize::from(height) * 4],
        }
    }

    pub fn full(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }

    fn contains(&self, r: &Rect) -> bool {
        u32::from(r.x) + u32::from(r.width) <= u32::from(self.width)
            && u32::from(r.y) + u32::from(r.height) <= u32::from(self.height)
    }

    fn row_range(&self, x: u16, y: u16, width: u16) -> std::ops::Range<usize> {
        let start = (usize::from(y) * usize::from(self.width) + usize::from(x)) * 4;
        start..start + usize::from(width) * 4
    }

    /// Write RGBA pixels (row-major, `r.width * r.height * 4` bytes); ignored when out of bounds.
    pub fn put(&mut self, r: &Rect, rgba: &[u8]) {
        if !self.contains(r) || rgba.len() != usize::from(r.width) * usize::from(r.height) * 4 {
            return;
        }
        for (row, line) in rgba.chunks_exact(usize::from(r.width) * 4).enumerate() {
            let range = self.row_range(r.x, r.y + row as u16, r.width);
            self.rgba[range].copy_from_slice(line);
        }
    }

    /// Copy `r` from an image of the same size with `stride` bytes per row (RDP's decoded image); ignored
    /// when out of bounds.
    pub fn put_from_image(&mut self, r: &Rect, image: &[u8], stride: usize) {
        if !self.contains(r) || stride < usize::from(self.width) * 4 {
            return;
        }
        for row in 0..r.height {
            let y = usize::from(r.y + row);
            let start = y * stride + usize::from(r.x) * 4;
            let Some(src) = image.get(start..start + usize::from(r.width) * 4) else {
                return;
            };
            let range = self.row_range(r.x, r.y + row, r.width);
            self.rgba[range].copy_from_slice(src);
        }
    }

    /// Fill `r` with one colour; ignored when out of bounds.
    pub fn fill(&mut self, r: &Rect, rgb: [u8; 3]) {
        if !self.contains(r) {
            return;
        }
        let px = [rgb[0], rgb[1], rgb[2], 255];
        for row in 0..r.height {
            let range = self.row_range(r.x, r.y + row, r.width);
            for p in self.rgba[range].chunks_exact_mut(4) {
                p.copy_from_slice(&px);
            }
        }
    }

    /// Copy `r`-sized pixels from `(src_x, src_y)` to `(r.x, r.y)`, overlap-safe.
    pub fn copy(&mut self, src_x: u16, src_y: u16, r: &Rect) {
        let src = Rect {
            x: src_x,
            y: src_y,
            ..*r
        };
        if !self.contains(r) || !self.contains(&src) {
            return;
        }
        let rows: Vec<u16> = if src_y < r.y {
            (0..r.height).rev().collect()
        } else {
            (0..r.height).collect()
        };
        for row in rows {
            let from = self.row_range(src_x, src_y + row, r.width);
            let to = self.row_range(r.x, r.y + row, r.width);
            self.rgba.copy_within(from, to.start);
        }
    }

    /// The pixels of `r` (row-major RGBA).
    pub fn extract(&self, r: &Rect) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::from(r.width) * usize::from(r.height) * 4);
        for row in 0..r.height {
            out.extend_from_slice(&self.rgba[self.row_range(r.x, r.y + row, r.width)]);
        }
        out
    }
}

fn intersects(a: &Rect, b: &Rect) -> bool {
    let (ax2, ay2) = (
        u32::from(a.x) + u32::from(a.width),
        u32::from(a.y) + u32::from(a.height),
    );
    let (bx2, by2) = (
        u32::from(b.x) + u32::from(b.width),
        u32::from(b.y) + u32::from(b.height),
    );
    u32::from(a.x) < bx2 && u32::from(b.x) < ax2 && u32::from(a.y) < by2 && u32::from(b.y) < ay2
}

/// A vertical scroll found between the framebuffer (old) and a new image: the rows of `dst` in the new
/// image equal the old rows starting at `src_y` (same columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scroll {
    pub src_y: u16,
    pub dst: Rect,
}

/// Rows fewer than this are not worth a copy.
const MIN_SCROLL_ROWS: u16 = 16;

fn row_hash(row: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in row.chunks(8) {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Find a vertical scroll of `area` (protocols without copy operations, e.g. RDP without drawing orders):
/// the longest run of rows of the new image (`new`, `stride` bytes per row, the framebuffer's size) that
/// equals the old framebuffer's rows shifted by one offset, verified byte for byte. Rows whose content is
/// one colour do not vote (blank lines match anywhere).
pub fn detect_vertical_scroll(old: &Framebuffer, area: &Rect, new: &[u8], stride: usize) -> Option<Scroll> {
    if area.height < MIN_SCROLL_ROWS || area.width < 32 || !old.contains(area) || stride < usize::from(old.width) * 4 {
        return None;
    }
    let cols = usize::from(area.x) * 4..(usize::from(area.x) + usize::from(area.width)) * 4;
    let new_row = |y: u16| new.get(usize::from(y) * stride..).and_then(|r| r.get(cols.clone()));
    let old_row = |y: u16| &old.rgba[old.row_range(area.x, y, area.width)];
    let uniform = |r: &[u8]| r.chunks_exact(4).all(|p| p == &r[..4]);
    // Old rows within half the area's height above and below it, by hash.
    let reach = area.height / 2;
    let lo = area.y.saturating_sub(reach);
    let hi = (area.y + area.height + reach).min(old.height);
    let mut old_rows: std::collections::HashMap<u64, Vec<u16>> = std::collections::HashMap::new();
    for y in lo..hi {
        let r = old_row(y);
        if !uniform(r) {
            old_rows.entry(row_hash(r)).or_default().push(y);
        }
    }
    let mut votes: std::collections::HashMap<i32, u32> = std::collections::HashMap::new();
    for y in area.y..area.y + area.height {
        let r = new_row(y)?;
        if uniform(r) {
            continue;
        }
        for &oy in old_rows.get(&row_hash(r)).map_or(&[][..], |v| &v[..]).iter().take(4) {
            if oy != y {
                *votes.entry(i32::from(oy) - i32::from(y)).or_default() += 1;
            }
        }
    }
    let (&shift, &n) = votes.iter().max_by_key(|(d, n)| (**n, -d.abs()))?;
    if n < u32::from(MIN_SCROLL_ROWS / 2) {
        return None;
    }
    // The longest run of rows that match exactly at that shift.
    let (mut best, mut run_start) = (None::<(u16, u16)>, None::<u16>);
    for y in area.y..=area.y + area.height {
        let src = i32::from(y) + shift;
        let matches = y < area.y + area.height
            && src >= 0
            && src < i32::from(old.height)
            && new_row(y).is_some_and(|r| r == old_row(src as u16));
        match (matches, run_start) {
            (true, None) => run_start = Some(y),
            (false, Some(start)) => {
                if best.is_none_or(|(a, b)| y - start > b - a) {
                    best = Some((start, y));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    let (a, b) = best?;
    (b - a >= MIN_SCROLL_ROWS).then(|| Scroll {
        src_y: (i32::from(a) + shift) as u16,
        dst: Rect {
            x: area.x,
            y: a,
            width: area.width,
            height: b - a,
        },
    })
}

pub fn bounding(rects: &[Rect]) -> Rect {
    let x = rects.iter().map(|r| r.x).min().unwrap_or(0);
    let y = rects.iter().map(|r| r.y).min().unwrap_or(0);
    let x2 = rects.iter().map(|r| r.x + r.width).max().unwrap_or(0);
    let y2 = rects.iter().map(|r| r.y + r.height).max().unwrap_or(0);
    Rect {
        x,
        y,
        width: x2 - x,
        height: y2 - y,
    }
}

/// One operation of a frame, in order: pixels captured for encoding, or a ready message.
enum Op {
    Pixels(Rect, Vec<u8>),
    Msg(ServerMsg),
}

/// Collects one frame.
#[derive(Default)]
pub struct Frame {
    damage: Vec<Rect>,
    ops: Vec<Op>,
    /// Bytes held by `ops` (captured pixels, passthrough images).
    bytes: usize,
}

fn area_bytes(r: &Rect) -> usize {
    usize::from(r.width) * usize::from(r.height) * 4
}

/// Whether `d` covers all of `r`.
fn covers(d: &Rect, r: &Rect) -> bool {
    d.x <= r.x
        && d.y <= r.y
        && u32::from(d.x) + u32::from(d.width) >= u32::from(r.x) + u32::from(r.width)
        && u32::from(d.y) + u32::from(d.height) >= u32::from(r.y) + u32::from(r.height)
}

impl Frame {
    pub fn is_empty(&self) -> bool {
        self.damage.is_empty() && self.ops.is_empty()
    }

    /// Pixels at `r` changed (the framebuffer already holds them).
    pub fn damage(&mut self, r: Rect) {
        if r.width > 0 && r.height > 0 {
            self.damage.push(r);
            if self.damage.len() > MAX_PENDING_DAMAGE {
                self.damage = vec![bounding(&self.damage)];
            }
        }
    }

    /// The rectangles a flush would capture now.
    fn flush_rects(&self) -> Vec<Rect> {
        if self.damage.len() > MAX_RECTS_PER_FLUSH {
            vec![bounding(&self.damage)]
        } else {
            self.damage.clone()
        }
    }

    /// Capture the pending damage from the framebuffer now.
    fn flush(&mut self, fb: &Framebuffer) {
        let rects = self.flush_rects();
        self.damage.clear();
        for r in rects {
            if fb.contains(&r) {
                self.bytes += area_bytes(&r);
                self.ops.push(Op::Pixels(r, fb.extract(&r)));
            }
        }
    }

    /// Whether pending damage already covers `r` (its final pixels are sent at the next flush).
    fn damaged(&self, r: &Rect) -> bool {
        self.damage.iter().any(|d| covers(d, r))
    }

    /// Whether `ops` more operations holding `bytes` more bytes fit in the frame; if not, the frame
    /// collapses into one repaint of the whole screen.
    fn room(&mut self, fb: &Framebuffer, ops: usize, bytes: usize) -> bool {
        let budget = area_bytes(&fb.full()).max(MIN_FRAME_BYTES);
        if self.ops.len() + ops <= MAX_FRAME_OPS && self.bytes + bytes <= budget {
            return true;
        }
        tracing::debug!(
            ops = self.ops.len(),
            bytes = self.bytes,
            "Frame over its operation budget; sending one repaint instead"
        );
        // Keep what is not pixels: the last size and the last pointer image.
        let mut size = None;
        let mut cursor = None;
        for op in self.ops.drain(..) {
            match op {
                Op::Msg(m @ ServerMsg::DisplaySize { .. }) => size = Some(m),
                Op::Msg(m @ ServerMsg::Cursor { .. }) => cursor = Some(m),
                _ => {}
            }
        }
        self.ops.extend(size.into_iter().chain(cursor).map(Op::Msg));
        self.bytes = 0;
        self.damage = vec![fb.full()];
        false
    }

    /// A copy on the remote side: flush what it would read, then apply it to the framebuffer.
    pub fn copy(&mut self, fb: &mut Framebuffer, src_x: u16, src_y: u16, r: Rect) {
        let src = Rect {
            x: src_x,
            y: src_y,
            ..r
        };
        if self.damage.iter().any(|d| covers(d, &src) && covers(d, &r)) {
            // The damage is sent from the final framebuffer anyway: the copy needs no message.
            fb.copy(src_x, src_y, &r);
            return;
        }
        let flush = self.damage.iter().any(|d| intersects(d, &src));
        let (ops, bytes) = if flush {
            let rects = self.flush_rects();
            (rects.len() + 1, rects.iter().map(area_bytes).sum())
        } else {
            (1, 0)
        };
        if !self.room(fb, ops, bytes) {
            fb.copy(src_x, src_y, &r);
            return;
        }
        if flush {
            self.flush(fb);
        }
        fb.copy(src_x, src_y, &r);
        self.ops.push(Op::Msg(ServerMsg::Copy { src_x, src_y, rect: r }));
    }

    /// A solid rectangle: applied to the framebuffer and sent as a fill in its place.
    pub fn fill(&mut self, fb: &mut Framebuffer, r: Rect, rgb: [u8; 3]) {
        fb.fill(&r, rgb);
        if !fb.contains(&r) || self.damaged(&r) || !self.room(fb, 1, 0) {
            return;
        }
        self.ops.push(Op::Msg(ServerMsg::Fill { rect: r, rgb }));
    }

    /// An image passed through as it is (a VNC server's JPEG): its pixels `rgba` go into the framebuffer,
    /// the image itself into the frame in their place.
    pub fn image(&mut self, fb: &mut Framebuffer, r: Rect, rgba: &[u8], format: ImageFormat, data: Vec<u8>) {
        fb.put(&r, rgba);
        if !fb.contains(&r) || self.damaged(&r) || !self.room(fb, 1, data.len()) {
            return;
        }
        self.bytes += data.len();
        self.ops.push(Op::Msg(ServerMsg::Image { rect: r, format, data }));
    }

    /// A message that keeps its place among the frame's operations: the size (a new framebuffer starts a
    /// new frame, so there is one) or a pointer image (only the last one of a frame is kept, so neither
    /// counts against [`MAX_FRAME_OPS`]).
    pub fn message(&mut self, msg: ServerMsg) {
        if matches!(msg, ServerMsg::Cursor { .. }) {
            self.ops.retain(|op| !matches!(op, Op::Msg(ServerMsg::Cursor { .. })));
        }
        self.ops.push(Op::Msg(msg));
    }

    /// Close the frame: capture the remaining damage and encode everything (on the shared pool), lossy
    /// regions at the quality `level`.
    pub async fn finish(mut self, fb: &Framebuffer, level: u8) -> Vec<ServerMsg> {
        self.flush(fb);
        let ops = self.ops;
        let permit = encoder_permit().await;
        let encoded = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            ops.into_iter()
                .map(|op| match op {
                    Op::Msg(m) => m,
                    Op::Pixels(r, rgba) => encode_rect(r, &rgba, level),
                })
                .collect::<Vec<_>>()
        })
        .await;
        encoded.unwrap_or_default()
    }
}

/// The browser side of a graphical session: frame numbering, acknowledgements (flow control), the last
/// pointer image (for a reattached browser) and the quality of lossy regions. Sans-IO: encoded messages,
/// acknowledgements and time in, numbered frames out; `crate::screen` sends them through a session.
pub struct Flow {
    frame_id: u32,
    acked: u32,
    /// When each unacknowledged frame was sent (for the quality control).
    sent_at: VecDeque<(u32, Instant)>,
    quality: QualityControl,
    cursor: Option<ServerMsg>,
    /// Frames, acknowledgement round trips, quality levels and merges, aggregated per protocol.
    metrics: DisplayMetrics,
}

impl Flow {
    pub fn new(max_quality: u8, metrics: DisplayMetrics) -> Self {
        Flow {
            frame_id: 0,
            acked: 0,
            sent_at: VecDeque::new(),
            quality: QualityControl::new(max_quality),
            cursor: None,
            metrics,
        }
    }

    /// A server update went into a pending frame instead of out, because the browser is behind (RDP), or
    /// the next update request waits for an acknowledgement (VNC: the server merges meanwhile).
    pub fn merged(&self) {
        self.metrics.merged.inc();
    }

    /// Whether another frame may be sent now ([`MAX_FRAMES_IN_FLIGHT`]).
    pub fn can_send(&self) -> bool {
        self.frame_id - self.acked < MAX_FRAMES_IN_FLIGHT
    }

    pub fn quality(&self) -> u8 {
        self.quality.level()
    }

    /// A frame acknowledgement received at `now`; returns the new quality level when its round trip changed it. Ids the bridge
    /// never sent are ignored.
    pub fn on_ack(&mut self, frame_id: u32, now: Instant) -> Option<u8> {
        if frame_id > self.frame_id {
            return None;
        }
        self.acked = self.acked.max(frame_id);
        let mut changed = None;
        while let Some(&(id, at)) = self.sent_at.front() {
            if id > frame_id {
                break;
            }
            self.sent_at.pop_front();
            if id == frame_id {
                self.metrics.ack_seconds.observe_duration(now - at);
                changed = self.quality.on_ack(now - at, now);
            }
        }
        changed
    }

    /// A new pointer image: remembered for reattaches, and part of the current frame.
    pub fn cursor(&mut self, frame: &mut Frame, msg: ServerMsg) {
        self.cursor = Some(msg.clone());
        frame.message(msg);
    }

    /// Number a frame of encoded messages `msgs`, sent at `now`: the messages to send, ending with the
    /// frame's `FRAME_END`.
    pub fn seal(&mut self, mut msgs: Vec<ServerMsg>, now: Instant) -> Vec<ServerMsg> {
        self.frame_id += 1;
        self.sent_at.push_back((self.frame_id, now));
        self.metrics.frames.inc();
        self.metrics.quality.observe(f64::from(self.quality.level()));
        msgs.push(ServerMsg::FrameEnd {
            frame_id: self.frame_id,
        });
        msgs
    }

    /// A browser attached: frames sent to an earlier one no longer count. Returns the frame of the full
    /// picture it needs, from `image` (the whole screen of `size`, see [`encode_full`]), sent at `now`: the
    /// size first, then the screen, then the last pointer image.
    pub fn full_picture(&mut self, size: Rect, image: Option<ServerMsg>, now: Instant) -> Vec<ServerMsg> {
        let mut msgs = vec![ServerMsg::DisplaySize {
            width: size.width,
            height: size.height,
        }];
        msgs.extend(image);
        self.picture_frame(msgs, now)
    }

    /// A browser attached: frames sent to an earlier one no longer count. Returns the frame of the full
    /// picture `msgs` (starting with the size), the last pointer image after it.
    pub fn picture_frame(&mut self, mut msgs: Vec<ServerMsg>, now: Instant) -> Vec<ServerMsg> {
        self.acked = self.frame_id;
        self.sent_at.clear();
        msgs.extend(self.cursor.clone());
        self.seal(msgs, now)
    }
}

/// The whole screen of `fb` as one image at quality `level` (encoded on the shared pool).
pub async fn encode_full(fb: &Framebuffer, level: u8) -> Option<ServerMsg> {
    let rect = fb.full();
    let pixels = fb.extract(&rect);
    let permit = encoder_permit().await;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        encode_rect(rect, &pixels, level)
    })
    .await
    .ok()
}

/// The pointer image as a browser cursor message (PNG with alpha; an empty image hides the pointer).
pub async fn cursor_msg(hot_x: u16, hot_y: u16, width: u16, height: u16, rgba: Vec<u8>) -> ServerMsg {
    let png = if width == 0 || height == 0 || rgba.len() != usize::from(width) * usize::from(height) * 4 {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || png(width, height, &rgba, png::ColorType::Rgba))
            .await
            .unwrap_or_default()
    };
    ServerMsg::Cursor { hot_x, hot_y, png }
}

/// Regions smaller than this many pixels are always lossless (text, icons).
const LOSSY_MIN_PIXELS: usize = 64 * 64;
/// More distinct colours than this among the sampled pixels mark a region as photographic.
const LOSSY_MIN_COLOURS: usize = 96;

/// Whether a region looks photographic: many distinct colours among up to 1024 sampled pixels. Text and
/// UI have few colours (antialiasing adds a few dozen), photos and video have hundreds.
fn photographic(rgba: &[u8]) -> bool {
    let pixels = rgba.len() / 4;
    if pixels < LOSSY_MIN_PIXELS {
        return false;
    }
    let step = (pixels / 1024).max(1);
    let mut seen = std::collections::HashSet::with_capacity(256);
    for i in (0..pixels).step_by(step) {
        let p = &rgba[i * 4..i * 4 + 3];
        seen.insert([p[0], p[1], p[2]]);
        if seen.len() > LOSSY_MIN_COLOURS {
            return true;
        }
    }
    false
}

/// A fill for solid pixels, JPEG for photographic regions (at the quality `level` 0..=9), else a PNG.
pub fn encode_rect(rect: Rect, rgba: &[u8], level: u8) -> ServerMsg {
    let first = [rgba[0], rgba[1], rgba[2]];
    if rgba.chunks_exact(4).all(|p| p[..3] == first) {
        return ServerMsg::Fill { rect, rgb: first };
    }
    if photographic(rgba) {
        let mut data = Vec::new();
        let enc = jpeg_encoder::Encoder::new(&mut data, jpeg_quality(level));
        if enc
            .encode(rgba, rect.width, rect.height, jpeg_encoder::ColorType::Rgba)
            .is_ok()
        {
            return ServerMsg::Image {
                rect,
                format: ImageFormat::Jpeg,
                data,
            };
        }
    }
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for p in rgba.chunks_exact(4) {
        rgb.extend_from_slice(&p[..3]);
    }
    ServerMsg::Image {
        rect,
        format: ImageFormat::Png,
        data: png(rect.width, rect.height, &rgb, png::ColorType::Rgb),
    }
}

/// The JPEG quality (1..=100) of a quality level (0..=9), close to TigerVNC's scale.
pub fn jpeg_quality(level: u8) -> u8 {
    30 + level.min(9) * 8
}

/// The quality level of lossy regions, from how fast the browser acknowledges frames: slow acks (a slow
/// link or a busy browser) lower it, fast acks raise it back. Sans-IO: acks and time in, levels out.
pub struct QualityControl {
    level: u8,
    max: u8,
    ewma_ms: f64,
    last_change: Option<std::time::Instant>,
}

impl QualityControl {
    /// Never below this level.
    pub const MIN: u8 = 2;
    /// Acknowledgements slower than this (smoothed) lower the quality.
    pub const SLOW_MS: f64 = 150.0;
    /// Acknowledgements faster than this (smoothed) raise it.
    pub const FAST_MS: f64 = 40.0;

    pub fn new(max: u8) -> Self {
        QualityControl {
            level: max,
            max,
            ewma_ms: 0.0,
            last_change: None,
        }
    }

    pub fn level(&self) -> u8 {
        self.level
    }

    /// A frame was acknowledged `rtt` after it was sent; returns the new level when it changes. Lowers at
    /// most once a second, raises at most once every three seconds.
    pub fn on_ack(&mut self, rtt: std::time::Duration, now: std::time::Instant) -> Option<u8> {
        self.ewma_ms = 0.8 * self.ewma_ms + 0.2 * rtt.as_secs_f64() * 1000.0;
        let since = self
            .last_change
            .map_or(std::time::Duration::MAX, |t| now.saturating_duration_since(t));
        let next = if self.ewma_ms > Self::SLOW_MS && self.level > Self::MIN && since.as_secs() >= 1 {
            self.level - 1
        } else if self.ewma_ms < Self::FAST_MS && self.level < self.max && since.as_secs() >= 3 {
            self.level + 1
        } else {
            return None;
        };
        self.level = next;
        self.last_change = Some(now);
        Some(next)
    }
}

/// Decode a JPEG of exactly `width` x `height` to RGBA on the shared pool: the bytes back, and the pixels
/// if it is one.
pub async fn decode_jpeg(data: Vec<u8>, width: u16, height: u16) -> (Vec<u8>, Option<Vec<u8>>) {
    let permit = encoder_permit().await;
    let res = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let rgba = jpeg_pixels(&data, width, height);
        (data, rgba)
    })
    .await;
    res.unwrap_or_default()
}

/// The RGBA pixels of a JPEG from the server, if it decodes to exactly `width` x `height` (the decoder
/// refuses larger images before allocating for them). Blocking: call it on the pool.
///
/// zune-jpeg 0.5.15 (the latest) panics on some crafted images in its AVX2 inverse DCT (found by
/// fuzz/image_decode): a panic in the decoder is an invalid image, the session's own error, and nothing else.
/// The portable IDCT would avoid it at a cost on every photographic frame, so the SIMD path stays.
pub fn jpeg_pixels(data: &[u8], width: u16, height: u16) -> Option<Vec<u8>> {
    std::panic::catch_unwind(|| decode_jpeg_pixels(data, width, height)).unwrap_or_else(|_| {
        tracing::warn!(bytes = data.len(), "The jpeg decoder failed on a server's image");
        None
    })
}

fn decode_jpeg_pixels(data: &[u8], width: u16, height: u16) -> Option<Vec<u8>> {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGBA)
        .set_max_width(usize::from(width))
        .set_max_height(usize::from(height));
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(std::io::Cursor::new(data), opts);
    let rgba = dec.decode().ok();
    let size_ok = dec.dimensions() == Some((usize::from(width), usize::from(height)));
    rgba.filter(|px| size_ok && px.len() == usize::from(width) * usize::from(height) * 4)
}

/// PNG with the fastest deflate level (the browser decodes it natively).
pub fn png(width: u16, height: u16, pixels: &[u8], color: png::ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width.into(), height.into());
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        enc.set_filter(png::Filter::Sub);
        // INVARIANT: the sizes match the pixel buffer, and writing to a Vec cannot fail.
        let mut w = enc.write_header().expect("png header");
        w.write_image_data(pixels).expect("png data");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: u16, y: u16, width: u16, height: u16) -> Rect {
        Rect { x, y, width, height }
    }

    #[test]
    fn copy_handles_overlap_both_ways() {
        let mut fb = Framebuffer::new(1, 4);
        fb.put(
            &rect(0, 0, 1, 4),
            &[1, 0, 0, 255, 2, 0, 0, 255, 3, 0, 0, 255, 4, 0, 0, 255],
        );
        fb.copy(0, 0, &rect(0, 1, 1, 3)); // Scroll down by one.
        assert_eq!(
            fb.extract(&fb.full()).chunks(4).map(|p| p[0]).collect::<Vec<_>>(),
            [1, 1, 2, 3]
        );
        fb.copy(0, 1, &rect(0, 0, 1, 3)); // And back up.
        assert_eq!(
            fb.extract(&fb.full()).chunks(4).map(|p| p[0]).collect::<Vec<_>>(),
            [1, 2, 3, 3]
        );
    }

    #[tokio::test]
    async fn damage_under_a_copy_source_is_sent_before_the_copy() {
        let mut fb = Framebuffer::new(4, 2);
        let mut frame = Frame::default();
        fb.put(&rect(0, 0, 2, 1), &[9, 9, 9, 255, 8, 8, 8, 255]);
        frame.damage(rect(0, 0, 2, 1));
        frame.copy(&mut fb, 0, 0, rect(2, 1, 2, 1));
        fb.put(&rect(3, 0, 1, 1), &[7, 7, 7, 255]);
        frame.damage(rect(3, 0, 1, 1));
        let msgs = frame.finish(&fb, 6).await;
        assert!(matches!(
            msgs[0],
            ServerMsg::Image {
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: 2,
                    height: 1
                },
                ..
            }
        ));
        assert!(matches!(msgs[1], ServerMsg::Copy { src_x: 0, src_y: 0, .. }));
        assert_eq!(
            msgs[2],
            ServerMsg::Fill {
                rect: rect(3, 0, 1, 1),
                rgb: [7, 7, 7]
            }
        );
        assert_eq!(fb.extract(&rect(2, 1, 2, 1)), [9, 9, 9, 255, 8, 8, 8, 255]);
    }

    fn frame_ids(msgs: &[ServerMsg]) -> Vec<u32> {
        msgs.iter()
            .filter_map(|m| match m {
                ServerMsg::FrameEnd { frame_id } => Some(*frame_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn frames_in_flight_are_bounded_until_acknowledged() {
        let t0 = Instant::now();
        let mut flow = Flow::new(6, DisplayMetrics::default());
        let mut ids = Vec::new();
        while flow.can_send() {
            ids.extend(frame_ids(&flow.seal(Vec::new(), t0)));
            assert!(ids.len() <= MAX_FRAMES_IN_FLIGHT as usize, "sent past the limit");
        }
        assert_eq!(ids, (1..=MAX_FRAMES_IN_FLIGHT).collect::<Vec<_>>());
        // Acknowledging the first frame makes room for one more; the last, for all.
        flow.on_ack(1, t0);
        assert!(flow.can_send());
        ids.extend(frame_ids(&flow.seal(Vec::new(), t0)));
        assert!(!flow.can_send());
        flow.on_ack(*ids.last().unwrap(), t0);
        assert!(flow.can_send());
    }

    #[test]
    fn acknowledgements_of_frames_never_sent_or_older_ones_change_nothing() {
        let t0 = Instant::now();
        let mut flow = Flow::new(6, DisplayMetrics::default());
        for _ in 0..MAX_FRAMES_IN_FLIGHT {
            flow.seal(Vec::new(), t0);
        }
        // A browser that claims frames ahead of what it got cannot open the window.
        assert_eq!(flow.on_ack(99, t0), None);
        assert!(!flow.can_send());
        flow.on_ack(2, t0);
        assert!(flow.can_send());
        // An old acknowledgement arriving late does not close it again.
        flow.on_ack(1, t0);
        assert!(flow.can_send());
    }

    #[test]
    fn a_reattached_browser_gets_size_screen_and_pointer_and_old_frames_stop_counting() {
        let t0 = Instant::now();
        let mut flow = Flow::new(6, DisplayMetrics::default());
        let mut frame = Frame::default();
        let pointer = ServerMsg::Cursor {
            hot_x: 1,
            hot_y: 2,
            png: Vec::new(),
        };
        flow.cursor(&mut frame, pointer.clone());
        for _ in 0..MAX_FRAMES_IN_FLIGHT {
            flow.seal(Vec::new(), t0);
        }
        assert!(!flow.can_send(), "the old browser never acknowledged");
        let screen = ServerMsg::Fill {
            rect: rect(0, 0, 4, 2),
            rgb: [1, 2, 3],
        };
        let msgs = flow.full_picture(rect(0, 0, 4, 2), Some(screen.clone()), t0);
        assert_eq!(
            msgs,
            [
                ServerMsg::DisplaySize { width: 4, height: 2 },
                screen,
                pointer,
                ServerMsg::FrameEnd {
                    frame_id: MAX_FRAMES_IN_FLIGHT + 1
                },
            ]
        );
        // Only the full picture is in flight now.
        assert!(flow.can_send());
        flow.seal(Vec::new(), t0);
        assert_eq!(flow.can_send(), MAX_FRAMES_IN_FLIGHT > 2);
    }

    #[tokio::test]
    async fn updates_while_the_browser_is_behind_merge_into_one_frame_of_final_pixels() {
        let t0 = Instant::now();
        let mut flow = Flow::new(6, DisplayMetrics::default());
        let mut fb = Framebuffer::new(8, 8);
        let mut pending = Frame::default();
        let mut sent = Vec::new();
        // The protocols' rule: a server update goes into the pending frame; the frame goes out only when
        // the browser has room.
        for round in 0..10u8 {
            let r = rect(u16::from(round % 4), 0, 2, 2);
            fb.put(&r, &[round; 16]);
            pending.damage(r);
            if flow.can_send() {
                let msgs = std::mem::take(&mut pending).finish(&fb, flow.quality()).await;
                sent.push(flow.seal(msgs, t0));
            } else {
                flow.merged();
            }
        }
        assert_eq!(
            sent.len(),
            MAX_FRAMES_IN_FLIGHT as usize,
            "a frame went out past the window"
        );
        assert!(!pending.is_empty(), "updates while behind were lost");
        flow.on_ack(MAX_FRAMES_IN_FLIGHT, t0);
        let msgs = std::mem::take(&mut pending).finish(&fb, flow.quality()).await;
        // One frame carries the merged updates, from the framebuffer's final content.
        let images = msgs.iter().filter(|m| matches!(m, ServerMsg::Image { .. })).count();
        assert!((1..=8).contains(&images), "{images} images for 8 merged updates");
        let merged = flow.seal(msgs, t0);
        assert_eq!(frame_ids(&merged), [MAX_FRAMES_IN_FLIGHT + 1]);
    }

    #[test]
    fn slow_acks_lower_the_quality_and_fast_acks_raise_it() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut q = QualityControl::new(6);
        let slow = std::time::Duration::from_millis(400);
        let fast = std::time::Duration::from_millis(5);
        let mut levels = Vec::new();
        for i in 0..40 {
            if let Some(l) = q.on_ack(slow, at(i * 100)) {
                levels.push(l);
            }
        }
        // Down one level per second at most, never below the floor.
        assert_eq!(levels, [5, 4, 3, 2]);
        assert_eq!(q.level(), QualityControl::MIN);
        let mut ups = Vec::new();
        for i in 40..200 {
            if let Some(l) = q.on_ack(fast, at(i * 100)) {
                ups.push((l, i));
            }
        }
        assert_eq!(ups.iter().map(|u| u.0).collect::<Vec<_>>(), [3, 4, 5, 6]);
        assert!(
            ups.windows(2).all(|w| w[1].1 - w[0].1 >= 30),
            "raised faster than every 3 s: {ups:?}"
        );
    }

    #[test]
    fn photographic_regions_are_lossy_text_is_not() {
        let r = rect(0, 0, 128, 64);
        // Two-colour "text": lossless PNG.
        let text: Vec<u8> = (0..128 * 64)
            .flat_map(|i| if i % 7 == 0 { [0, 0, 0, 255] } else { [255; 4] })
            .collect();
        assert!(matches!(
            encode_rect(r, &text, 6),
            ServerMsg::Image {
                format: ImageFormat::Png,
                ..
            }
        ));
        // Many colours: JPEG.
        let photo: Vec<u8> = (0..128u32 * 64)
            .flat_map(|i| [(i * 7) as u8, (i * 13 / 64) as u8, (i % 251) as u8, 255])
            .collect();
        assert!(matches!(
            encode_rect(r, &photo, 6),
            ServerMsg::Image {
                format: ImageFormat::Jpeg,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_frame_that_keeps_scrolling_collapses_into_a_repaint() {
        let mut fb = Framebuffer::new(8, 8);
        let mut frame = Frame::default();
        frame.message(ServerMsg::DisplaySize { width: 8, height: 8 });
        for i in 0..2 * MAX_FRAME_OPS {
            fb.put(&rect(0, 7, 8, 1), &[i as u8; 32]);
            frame.damage(rect(0, 7, 8, 1));
            frame.copy(&mut fb, 0, 1, rect(0, 0, 8, 7));
        }
        assert!(frame.ops.len() <= MAX_FRAME_OPS + 1, "{} ops", frame.ops.len());
        let msgs = frame.finish(&fb, 6).await;
        assert!(
            matches!(msgs[0], ServerMsg::DisplaySize { .. }),
            "non-pixel messages are kept"
        );
        assert!(msgs.len() <= 4, "{} messages", msgs.len());
    }

    #[tokio::test]
    async fn a_flood_of_fills_images_and_pointers_stays_bounded() {
        let mut fb = Framebuffer::new(64, 64);
        let mut frame = Frame::default();
        frame.message(ServerMsg::DisplaySize { width: 64, height: 64 });
        for i in 0..65535u32 {
            let r = rect((i % 64) as u16, (i / 64 % 64) as u16, 1, 1);
            match i % 3 {
                0 => frame.fill(&mut fb, r, [i as u8, 1, 2]),
                1 => frame.image(&mut fb, r, &[i as u8, 3, 4, 255], ImageFormat::Jpeg, vec![0; 600]),
                _ => frame.message(ServerMsg::Cursor {
                    hot_x: 0,
                    hot_y: 0,
                    png: vec![i as u8],
                }),
            }
            assert!(frame.ops.len() <= MAX_FRAME_OPS + 2, "{} ops at {i}", frame.ops.len());
        }
        let msgs = frame.finish(&fb, 6).await;
        assert!(matches!(msgs[0], ServerMsg::DisplaySize { .. }), "the size first");
        let cursors: Vec<_> = msgs.iter().filter(|m| matches!(m, ServerMsg::Cursor { .. })).collect();
        assert_eq!(cursors.len(), 1, "only the last pointer image");
        assert!(matches!(cursors[0], ServerMsg::Cursor { png, .. } if png == &[(65534 % 256) as u8]));
        assert_eq!(msgs.len(), 3, "size, pointer, one repaint: {msgs:?}");
        assert!(matches!(msgs[2], ServerMsg::Image { rect: r, .. } if r == fb.full()));
    }

    #[tokio::test]
    async fn a_frame_holds_no_more_bytes_than_a_repaint() {
        // Few operations, but each image as large as the screen could ever need.
        let mut fb = Framebuffer::new(2048, 1024);
        let mut frame = Frame::default();
        let full = fb.full();
        let rgba = vec![7; area_bytes(&full)];
        for _ in 0..8 {
            frame.image(&mut fb, full, &rgba, ImageFormat::Jpeg, vec![0; area_bytes(&full) / 3]);
            fb.put(&rect(0, 0, 1, 1), &[1, 2, 3, 255]);
            frame.damage(rect(0, 0, 1, 1));
            frame.copy(&mut fb, 0, 0, rect(5, 5, 1, 1));
            assert!(frame.bytes <= area_bytes(&full), "{} bytes", frame.bytes);
        }
    }

    #[tokio::test]
    async fn fills_and_images_under_pending_damage_send_nothing_of_their_own() {
        let mut fb = Framebuffer::new(8, 8);
        let mut frame = Frame::default();
        fb.put(&rect(0, 0, 4, 4), &[9; 64]);
        frame.damage(rect(0, 0, 4, 4));
        frame.fill(&mut fb, rect(1, 1, 2, 2), [1, 2, 3]);
        frame.image(&mut fb, rect(0, 0, 1, 1), &[4, 5, 6, 255], ImageFormat::Jpeg, vec![1]);
        let msgs = frame.finish(&fb, 6).await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(fb.extract(&rect(1, 1, 1, 1)), [1, 2, 3, 255]);
        assert_eq!(fb.extract(&rect(0, 0, 1, 1)), [4, 5, 6, 255]);
    }

    #[test]
    fn a_scroll_is_found_and_verified() {
        // 64x100 "text": every row a different pattern; the new image is scrolled up by 13 rows.
        let (w, h) = (64u16, 100u16);
        let row = |y: u16| -> Vec<u8> {
            (0..w)
                .flat_map(|x| [(x * 7 + y * 13) as u8, y as u8, (x ^ y) as u8, 255])
                .collect()
        };
        let mut fb = Framebuffer::new(w, h);
        let old: Vec<u8> = (0..h).flat_map(row).collect();
        fb.put(&fb.full(), &old);
        let mut new: Vec<u8> = (13..h).flat_map(row).collect();
        new.extend(std::iter::repeat_n([9u8, 9, 9, 255], usize::from(w) * 13).flatten());
        let s = detect_vertical_scroll(&fb, &fb.full(), &new, usize::from(w) * 4).expect("a scroll");
        assert_eq!(s.src_y, 13);
        assert_eq!(s.dst, rect(0, 0, w, h - 13));
        // Nothing moved: no scroll.
        assert_eq!(detect_vertical_scroll(&fb, &fb.full(), &old, usize::from(w) * 4), None);
        // A blank screen matches anywhere, so it is never taken for a scroll.
        let blank = Framebuffer::new(w, h);
        assert_eq!(
            detect_vertical_scroll(&blank, &blank.full(), &vec![0; old.len()], usize::from(w) * 4),
            None
        );
    }

    #[test]
    fn out_of_bounds_writes_are_ignored() {
        let mut fb = Framebuffer::new(2, 2);
        fb.put(&rect(1, 1, 2, 2), &[1; 16]);
        fb.copy(1, 1, &rect(0, 0, 2, 2));
        assert_eq!(fb.extract(&fb.full()), vec![0; 16]);
    }
}

#[cfg(test)]
mod jpeg_regressions {
    /// fuzz/image_decode found a JPEG (its input format: width, height, level, then the image) on which
    /// zune-jpeg 0.5.15's AVX2 inverse DCT unwraps a missing block: a hostile VNC server's Tight JPEG must
    /// be an invalid image for the bridge, never a panic that leaves the decoder.
    #[test]
    fn a_jpeg_that_panics_the_simd_decoder_is_an_invalid_image() {
        let input = include_bytes!("../testdata/jpeg-avx2-idct-panic.bin");
        let (head, jpeg) = input.split_at(5);
        let width = 1 + u16::from_be_bytes([head[0], head[1]]) % 512;
        let height = 1 + u16::from_be_bytes([head[2], head[3]]) % 512;
        // With AVX2 (as here) the decoder panics and the image is refused; a portable decoder may read it.
        if let Some(px) = super::jpeg_pixels(jpeg, width, height) {
            assert_eq!(px.len(), usize::from(width) * usize::from(height) * 4);
        }
    }
}
