//! The display pipeline shared by graphical protocols: a framebuffer, the operations of one frame in
//! order, and their encoding for the browser.
//!
//! - Pixels that change are collected as damage and encoded at the end of the frame, from the framebuffer's
//!   final content (so a rectangle updated twice in one frame is sent once).
//! - Copies (scrolling, moved windows) are forwarded as cheap copy messages; pending damage that overlaps a
//!   copy's source is flushed before the copy, so the browser always copies what the server copied.
//! - Solid rectangles become fills; everything else is PNG with the fastest deflate level.
//! - Encoding runs on the blocking pool behind a semaphore as wide as the machine: 100 sessions do not
//!   mean 100 encoding threads. Frames with little to encode (up to 64 KiB of pixels) are encoded in place.
//! - Images passed through (VNC's Tight JPEG) stay undecoded in the framebuffer until a read needs them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// A frame may always hold this many bytes before its size is compared with a repaint of what it changed.
const MIN_REPAINT_BYTES: usize = 256 * 1024;
/// A frame with at most this many bytes of pixels to encode (a typed character, a blinking cursor) is encoded
/// where it is built: handing it to the encoder pool costs more (thread wake-ups) than encoding it.
const INLINE_ENCODE_BYTES: usize = 64 * 1024;
/// A server update with at most this many bytes (a few tiles) is decoded where it arrives; a larger one is
/// decoded after the worker has handed its other tasks to another thread ([`off_worker`]).
pub const INLINE_DECODE_BYTES: usize = 16 * 1024;

/// Run CPU-bound work of a session task (decoding a server update) without holding up the worker's other
/// tasks when it is `heavy`: on the multi-thread runtime the worker first hands them (heartbeats, other
/// sessions) to another thread. Light work, or no multi-thread runtime: it just runs.
pub fn off_worker<R>(heavy: bool, f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if heavy && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Frames in flight while the link is not yet measured (no acknowledgement so far).
pub const INITIAL_FRAMES_IN_FLIGHT: u32 = 2;
/// Never more frames in flight than this, however fast the link (each holds the bridge's bookkeeping).
pub const MAX_FRAMES_IN_FLIGHT: u32 = 16;
/// The latency the flow control aims at: the bytes in flight stay under what the link delivers in this time
/// (or in two round trips, on a link whose round trip alone is longer).
pub const LATENCY_TARGET: Duration = Duration::from_millis(150);
/// What the efforts cost before a session measured them (text on this project's 2-core machine: the fast
/// PNG ~9 % of the pixel bytes at ~1.5 ns per byte, the compact one ~3 % at ~6 ns): the link is the
/// bottleneck below ~13 MB/s.
const INITIAL_COSTS: [EffortCost; 2] = [
    EffortCost {
        ratio: 0.09,
        secs_per_byte: 1.5e-9,
    },
    EffortCost {
        ratio: 0.03,
        secs_per_byte: 6e-9,
    },
];
/// Frames up to this size measure the round trip (their own transfer is negligible).
const SMALL_FRAME_BYTES: u64 = 2048;
/// The bytes-in-flight budget never falls below this (a link measured while nearly idle).
const MIN_BUDGET_BYTES: u64 = 16 * 1024;
/// Delivery rate samples count for this long (the largest of them is the estimate).
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// A small frame's round trip is preferred to a larger frame's unless the larger one's was measured this
/// much later ([`LinkEstimate::min_rtt`]).
const RTT_WINDOW: Duration = Duration::from_secs(10);
/// A round trip estimate this old (no smaller sample since) is measured again by draining the queue
/// ([`LinkEstimate::probing`]).
const RTT_PROBE_AFTER: Duration = Duration::from_secs(30);

/// An image from the server kept as it came (a VNC server's Tight JPEG, passed through to the browser):
/// decoded into the framebuffer only when something needs its pixels.
struct Undecoded {
    /// Where the image's top-left pixel lands (a copy moves it; it may then start off the framebuffer).
    x: i32,
    y: i32,
    /// The image's own size.
    width: u16,
    height: u16,
    /// The part of the framebuffer it still paints (inside where it lands): writes over it and copies cut it.
    clip: Rect,
    data: Arc<[u8]>,
}

/// An image's bytes and its pixels (none: it does not decode).
type Decoded = (Arc<[u8]>, Option<Vec<u8>>);

/// More undecoded images than this (or holding more bytes than [`MAX_UNDECODED_BYTES`]) and the oldest is
/// decoded: what a framebuffer holds stays bounded.
const MAX_UNDECODED: usize = 256;
const MAX_UNDECODED_BYTES: usize = 8 * 1024 * 1024;

/// A session's screen. Images passed through to the browser may be kept undecoded ([`Framebuffer::put_jpeg`])
/// until a read needs their pixels (damage re-encoded over them, a full picture), oldest first, so the
/// pixels are always the same as if every image had been decoded when it came. Writes over part of one cut
/// it down (if what stays is a rectangle), copies move it (a scrolled image stays undecoded).
pub struct Framebuffer {
    pub width: u16,
    pub height: u16,
    rgba: Vec<u8>,
    /// Where each row's pixels are stored in `rgba` (a row index): a vertical copy of wide rows remaps rows
    /// instead of moving their pixels.
    rows: Vec<u32>,
    /// Images not decoded yet, oldest first, cut to what they still paint (pieces of one share its bytes).
    undecoded: Vec<Undecoded>,
    /// Where an undecoded image turned out not to decode (the server sent garbage): see [`Framebuffer::take_invalid`].
    invalid: Option<Rect>,
    /// Images kept undecoded, and how many of them had to be decoded later.
    lazy: LazyCounts,
}

/// How lazy decoding went for one framebuffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LazyCounts {
    /// Images kept undecoded.
    pub kept: u64,
    /// Decodes of them because their pixels were read (or to bound what is kept).
    pub decoded: u64,
}

fn intersection(a: &Rect, b: &Rect) -> Option<Rect> {
    let x = a.x.max(b.x);
    let y = a.y.max(b.y);
    let x2 = (u32::from(a.x) + u32::from(a.width)).min(u32::from(b.x) + u32::from(b.width));
    let y2 = (u32::from(a.y) + u32::from(a.height)).min(u32::from(b.y) + u32::from(b.height));
    (u32::from(x) < x2 && u32::from(y) < y2).then(|| Rect {
        x,
        y,
        width: (x2 - u32::from(x)) as u16,
        height: (y2 - u32::from(y)) as u16,
    })
}

/// `a` without `r`: at most four rectangles (the bands above and below `r`, then left and right of it).
fn subtract(a: &Rect, r: &Rect) -> Vec<Rect> {
    let Some(i) = intersection(a, r) else {
        return vec![*a];
    };
    let (a_y2, i_y2) = (a.y + a.height, i.y + i.height);
    let (a_x2, i_x2) = (a.x + a.width, i.x + i.width);
    let bands = [
        Rect {
            height: i.y - a.y,
            ..*a
        },
        Rect {
            y: i_y2,
            height: a_y2 - i_y2,
            ..*a
        },
        Rect {
            x: a.x,
            width: i.x - a.x,
            ..i
        },
        Rect {
            x: i_x2,
            width: a_x2 - i_x2,
            ..i
        },
    ];
    bands.into_iter().filter(|b| b.width > 0 && b.height > 0).collect()
}

impl Framebuffer {
    pub fn new(width: u16, height: u16) -> Self {
        Framebuffer {
            width,
            height,
            rgba: vec![0; usize::from(width) * usize::from(height) * 4],
            rows: (0..u32::from(height)).collect(),
            undecoded: Vec::new(),
            invalid: None,
            lazy: LazyCounts::default(),
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
        let start = (self.rows[usize::from(y)] as usize * usize::from(self.width) + usize::from(x)) * 4;
        start..start + usize::from(width) * 4
    }

    /// A vertical copy of rows at least half the screen wide (scrolling): the destination rows take the
    /// source rows' storage; only the rows the copy leaves behind and the columns beside `r` are copied.
    fn move_rows(&mut self, src_y: u16, r: &Rect) {
        let w = usize::from(self.width) * 4;
        let (x0, x1) = (usize::from(r.x) * 4, (usize::from(r.x) + usize::from(r.width)) * 4);
        let (s, d, h) = (usize::from(src_y), usize::from(r.y), usize::from(r.height));
        // The columns beside `r` in the destination rows keep their pixels.
        let mut beside = Vec::with_capacity(h * (w - (x1 - x0)));
        for y in d..d + h {
            let base = self.rows[y] as usize * w;
            beside.extend_from_slice(&self.rgba[base..base + x0]);
            beside.extend_from_slice(&self.rgba[base + x1..base + w]);
        }
        let old = self.rows.clone();
        self.rows[d..d + h].copy_from_slice(&old[s..s + h]);
        // Source rows outside the destination keep their pixels: they take the storage the destination rows
        // gave up (as many), and a copy of their row.
        let left = (s..s + h).filter(|y| !(d..d + h).contains(y));
        let freed = (d..d + h).filter(|y| !(s..s + h).contains(y)).map(|y| old[y]);
        for (y, store) in left.zip(freed) {
            self.rows[y] = store;
            let from = old[y] as usize * w;
            self.rgba.copy_within(from..from + w, store as usize * w);
        }
        let mut at = 0;
        for y in d..d + h {
            let base = self.rows[y] as usize * w;
            self.rgba[base..base + x0].copy_from_slice(&beside[at..at + x0]);
            at += x0;
            self.rgba[base + x1..base + w].copy_from_slice(&beside[at..at + w - x1]);
            at += w - x1;
        }
    }

    fn write(&mut self, r: &Rect, rgba: &[u8]) {
        for (row, line) in rgba.chunks_exact(usize::from(r.width) * 4).enumerate() {
            let range = self.row_range(r.x, r.y + row as u16, r.width);
            self.rgba[range].copy_from_slice(line);
        }
    }

    /// Decode the undecoded images that the pixels of `r` depend on, oldest first: those over `r`, and the
    /// older ones under those (decoded later, an older image would paint over a newer one).
    fn settle(&mut self, r: &Rect) {
        if self.undecoded.is_empty() {
            return;
        }
        let n = self.undecoded.len();
        let mut need = vec![false; n];
        for i in (0..n).rev() {
            let u = &self.undecoded[i].clip;
            need[i] = intersects(u, r) || (i + 1..n).any(|j| need[j] && intersects(u, &self.undecoded[j].clip));
        }
        if need.contains(&true) {
            self.decode_needed(&need);
        }
    }

    /// Decode the undecoded images marked in `need`, in order (the marked set must hold every older image
    /// under a marked one), keep the others.
    fn decode_needed(&mut self, need: &[bool]) {
        let mut keep = Vec::with_capacity(self.undecoded.len());
        // Pieces of one image decode it once.
        let mut decoded: Vec<Decoded> = Vec::new();
        for (u, &needed) in std::mem::take(&mut self.undecoded).into_iter().zip(need) {
            if !needed {
                keep.push(u);
                continue;
            }
            let at = match decoded.iter().position(|(d, _)| Arc::ptr_eq(d, &u.data)) {
                Some(at) => at,
                None => {
                    self.lazy.decoded += 1;
                    decoded.push((u.data.clone(), jpeg_pixels(&u.data, u.width, u.height)));
                    decoded.len() - 1
                }
            };
            match &decoded[at].1 {
                Some(px) => self.paint(&u, px),
                None => self.invalid = Some(u.clip),
            }
        }
        self.undecoded = keep;
    }

    /// Paint an undecoded image's clip from its decoded pixels `px`.
    fn paint(&mut self, u: &Undecoded, px: &[u8]) {
        let c = u.clip;
        let (sx, sy) = (i32::from(c.x) - u.x, i32::from(c.y) - u.y);
        let stride = usize::from(u.width) * 4;
        for row in 0..c.height {
            // The clip lies inside the image: the offsets are in range.
            let start = (sy + i32::from(row)) as usize * stride + sx as usize * 4;
            let range = self.row_range(c.x, c.y + row, c.width);
            self.rgba[range].copy_from_slice(&px[start..start + usize::from(c.width) * 4]);
        }
    }

    /// Bytes held by undecoded images (pieces of one count once).
    fn undecoded_bytes(&self) -> usize {
        let mut seen: Vec<*const u8> = Vec::with_capacity(self.undecoded.len());
        let mut bytes = 0;
        for u in &self.undecoded {
            let p = u.data.as_ptr();
            if !seen.contains(&p) {
                seen.push(p);
                bytes += u.data.len();
            }
        }
        bytes
    }

    /// `r` is about to be overwritten: undecoded images are cut down to what stays visible around it (up to
    /// four pieces each, none when nothing does); nothing is decoded.
    fn cut(&mut self, r: &Rect) {
        if self.undecoded.iter().all(|u| !intersects(&u.clip, r)) {
            return;
        }
        let mut out = Vec::with_capacity(self.undecoded.len() + 4);
        for u in self.undecoded.drain(..) {
            if !intersects(&u.clip, r) {
                out.push(u);
                continue;
            }
            for clip in subtract(&u.clip, r) {
                out.push(Undecoded {
                    clip,
                    data: u.data.clone(),
                    ..u
                });
            }
        }
        self.undecoded = out;
        self.bound();
    }

    /// Keep at most [`MAX_UNDECODED`] pieces and [`MAX_UNDECODED_BYTES`]: decode the oldest (nothing is
    /// older, so decoding it alone keeps the pixels true).
    fn bound(&mut self) {
        // The plain sum counts shared bytes more than once: only when it is over is the exact sum needed.
        let over = |fb: &Self| {
            fb.undecoded.iter().map(|u| u.data.len()).sum::<usize>() > MAX_UNDECODED_BYTES
                && fb.undecoded_bytes() > MAX_UNDECODED_BYTES
        };
        while self.undecoded.len() > MAX_UNDECODED || (!self.undecoded.is_empty() && over(self)) {
            let mut need = vec![false; self.undecoded.len()];
            need[0] = true;
            self.decode_needed(&need);
        }
    }

    /// Write RGBA pixels (row-major, `r.width * r.height * 4` bytes); ignored when out of bounds.
    pub fn put(&mut self, r: &Rect, rgba: &[u8]) {
        if !self.contains(r) || rgba.len() != usize::from(r.width) * usize::from(r.height) * 4 {
            return;
        }
        self.cut(r);
        self.write(r, rgba);
    }

    /// A JPEG of exactly `r`'s size (checked beforehand with [`jpeg_fits`]) whose pixels go to `r`, kept
    /// undecoded until they are needed; ignored when out of bounds.
    pub fn put_jpeg(&mut self, r: &Rect, data: Arc<[u8]>) {
        if !self.contains(r) || r.width == 0 || r.height == 0 {
            return;
        }
        self.cut(r);
        self.undecoded.push(Undecoded {
            x: i32::from(r.x),
            y: i32::from(r.y),
            width: r.width,
            height: r.height,
            clip: *r,
            data,
        });
        self.lazy.kept += 1;
        self.bound();
    }

    /// Where an undecoded image failed to decode since the last call (the server sent an invalid image).
    pub fn take_invalid(&mut self) -> Option<Rect> {
        self.invalid.take()
    }

    /// The lazy decoding since the last call.
    pub fn take_lazy_counts(&mut self) -> LazyCounts {
        std::mem::take(&mut self.lazy)
    }

    /// Copy `r` from an image of the same size with `stride` bytes per row (RDP's decoded image); ignored
    /// when out of bounds.
    pub fn put_from_image(&mut self, r: &Rect, image: &[u8], stride: usize) {
        if !self.contains(r) || stride < usize::from(self.width) * 4 {
            return;
        }
        self.cut(r);
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
        self.cut(r);
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
        // What is undecoded under the source moves with it, still undecoded, on top of the copied pixels.
        let (dx, dy) = (i32::from(r.x) - i32::from(src_x), i32::from(r.y) - i32::from(src_y));
        let moved: Vec<Undecoded> = self
            .undecoded
            .iter()
            .filter_map(|u| {
                let c = intersection(&u.clip, &src)?;
                Some(Undecoded {
                    x: u.x + dx,
                    y: u.y + dy,
                    clip: Rect {
                        x: (i32::from(c.x) + dx) as u16,
                        y: (i32::from(c.y) + dy) as u16,
                        ..c
                    },
                    data: u.data.clone(),
                    ..*u
                })
            })
            .collect();
        self.cut(r);
        if src_x == r.x && src_y != r.y && usize::from(r.width) * 2 >= usize::from(self.width) {
            self.move_rows(src_y, r);
        } else {
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
        self.undecoded.extend(moved);
        self.bound();
    }

    /// The pixels of `r` (row-major RGBA), decoding what they depend on.
    pub fn extract(&mut self, r: &Rect) -> Vec<u8> {
        self.settle(r);
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

/// A row's hash for voting (CRC-32 with the CPU's carry-less multiply: several bytes per cycle, where a
/// byte-serial hash cost a sixth of an RDP session's time); candidates are verified byte for byte.
fn row_hash(row: &[u8]) -> u64 {
    u64::from(crc32fast::hash(row))
}

/// Find a vertical scroll of `area` (protocols without copy operations, e.g. RDP without drawing orders):
/// the longest run of rows of the new image (`new`, `stride` bytes per row, the framebuffer's size) that
/// equals the old framebuffer's rows shifted by one offset, verified byte for byte. Rows whose content is
/// one colour do not vote (blank lines match anywhere).
pub fn detect_vertical_scroll(old: &mut Framebuffer, area: &Rect, new: &[u8], stride: usize) -> Option<Scroll> {
    if area.height < MIN_SCROLL_ROWS || area.width < 32 || !old.contains(area) || stride < usize::from(old.width) * 4 {
        return None;
    }
    let reach = area.height / 2;
    let lo = area.y.saturating_sub(reach);
    let hi = (area.y + area.height + reach).min(old.height);
    old.settle(&Rect {
        y: lo,
        height: hi - lo,
        ..*area
    });
    let old = &*old;
    let cols = usize::from(area.x) * 4..(usize::from(area.x) + usize::from(area.width)) * 4;
    let new_row = |y: u16| new.get(usize::from(y) * stride..).and_then(|r| r.get(cols.clone()));
    let old_row = |y: u16| &old.rgba[old.row_range(area.x, y, area.width)];
    let uniform = |r: &[u8]| r.chunks_exact(4).all(|p| p == &r[..4]);
    // Old rows within half the area's height above and below it, by hash.
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

/// Side of the tiles [`coalesce`] merges damage into.
const TILE: u32 = 64;

/// Many damage rectangles as a few: the 64x64 tiles they touch, runs of tiles merged along each tile row,
/// then equal runs of consecutive rows merged. The area grows by at most the tiles' margins (scattered
/// changes stay scattered, unlike a bounding box that would repaint the screen between two typed
/// characters), and there are at most as many rectangles as tiles.
pub fn coalesce(rects: &[Rect]) -> Vec<Rect> {
    let Some(b) = (!rects.is_empty()).then(|| bounding(rects)) else {
        return Vec::new();
    };
    let (x0, y0) = (u32::from(b.x) / TILE, u32::from(b.y) / TILE);
    let cols = (u32::from(b.x) + u32::from(b.width)).div_ceil(TILE) - x0;
    let rows = (u32::from(b.y) + u32::from(b.height)).div_ceil(TILE) - y0;
    let mut tiles = vec![false; (cols * rows) as usize];
    for r in rects.iter().filter(|r| r.width > 0 && r.height > 0) {
        let (tx0, ty0) = (u32::from(r.x) / TILE - x0, u32::from(r.y) / TILE - y0);
        let tx1 = (u32::from(r.x) + u32::from(r.width)).div_ceil(TILE) - x0;
        let ty1 = (u32::from(r.y) + u32::from(r.height)).div_ceil(TILE) - y0;
        for ty in ty0..ty1 {
            for tx in tx0..tx1 {
                tiles[(ty * cols + tx) as usize] = true;
            }
        }
    }
    // (first tile column, end column, first tile row, end row) of each merged run.
    let mut runs: Vec<(u32, u32, u32, u32)> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    for ty in 0..rows {
        let mut next_open = Vec::new();
        let mut tx = 0;
        while tx < cols {
            if !tiles[(ty * cols + tx) as usize] {
                tx += 1;
                continue;
            }
            let start = tx;
            while tx < cols && tiles[(ty * cols + tx) as usize] {
                tx += 1;
            }
            match open.iter().find(|&&i| runs[i].0 == start && runs[i].1 == tx) {
                Some(&i) => {
                    runs[i].3 = ty + 1;
                    next_open.push(i);
                }
                None => {
                    runs.push((start, tx, ty, ty + 1));
                    next_open.push(runs.len() - 1);
                }
            }
        }
        open = next_open;
    }
    // Clipped to the damage's bounding box (tiles may reach past the framebuffer).
    let (bx1, by1) = (
        u32::from(b.x) + u32::from(b.width),
        u32::from(b.y) + u32::from(b.height),
    );
    runs.into_iter()
        .map(|(c0, c1, r0, r1)| {
            let x = ((x0 + c0) * TILE).max(u32::from(b.x));
            let y = ((y0 + r0) * TILE).max(u32::from(b.y));
            let x1 = ((x0 + c1) * TILE).min(bx1);
            let y1 = ((y0 + r1) * TILE).min(by1);
            // INVARIANT: inside the bounding box of u16 rectangles.
            Rect {
                x: x as u16,
                y: y as u16,
                width: (x1 - x) as u16,
                height: (y1 - y) as u16,
            }
        })
        .collect()
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
    /// The bounding box of everything the frame changed (damage, copy destinations, fills, images).
    dirty: Option<Rect>,
    /// Pixels drawn by `ops` (captured pixels and passthrough images, by area: JPEGs count as what they
    /// cover), four bytes each: compared with a repaint of `dirty`.
    drawn: usize,
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

    /// The frame changes `r`.
    fn touch(&mut self, r: &Rect) {
        self.dirty = Some(match &self.dirty {
            Some(d) => bounding(&[*d, *r]),
            None => *r,
        });
    }

    /// Pixels at `r` changed (the framebuffer already holds them).
    pub fn damage(&mut self, r: Rect) {
        if r.width > 0 && r.height > 0 && !self.damaged(&r) {
            self.touch(&r);
            self.occlude(&r);
            self.damage.push(r);
            if self.damage.len() > MAX_PENDING_DAMAGE {
                self.damage = coalesce(&self.damage);
            }
        }
    }

    /// The rectangles a flush would capture now.
    fn flush_rects(&self) -> Vec<Rect> {
        if self.damage.len() > MAX_RECTS_PER_FLUSH {
            coalesce(&self.damage)
        } else {
            self.damage.clone()
        }
    }

    /// Capture the pending damage from the framebuffer now.
    fn flush(&mut self, fb: &mut Framebuffer) {
        self.flush_with(fb, Effort::Fast);
    }

    /// [`Frame::flush`]; at `Compact` effort damage that covers at least half of its bounding box is that
    /// box, one image: a server's update arrives as many rectangles (TigerVNC cuts text around its solid
    /// areas), and each image of them repeats its headers and palette (up to 800 bytes in an indexed PNG)
    /// where the solid parts of the box cost a few bytes of deflate.
    fn flush_with(&mut self, fb: &mut Framebuffer, effort: Effort) {
        let mut rects = self.flush_rects();
        if effort == Effort::Compact && rects.len() > 1 {
            let bbox = bounding(&rects);
            if rects.iter().map(area_bytes).sum::<usize>() * 2 >= area_bytes(&bbox) {
                rects = vec![bbox];
            }
        }
        self.damage.clear();
        for r in rects {
            if fb.contains(&r) {
                self.bytes += area_bytes(&r);
                self.drawn += area_bytes(&r);
                self.ops.push(Op::Pixels(r, fb.extract(&r)));
            }
        }
    }

    /// A later write covers `r`: the operations it hides wholly go (updates merged while the browser is
    /// behind: a video region sent once, not once per server update). Back to the last copy that reads from
    /// `r` only: what a copy moves must still be there when it runs.
    fn occlude(&mut self, r: &Rect) {
        let mut i = self.ops.len();
        while i > 0 {
            i -= 1;
            let hidden = match &self.ops[i] {
                Op::Msg(ServerMsg::Copy { src_x, src_y, rect }) => {
                    let src = Rect {
                        x: *src_x,
                        y: *src_y,
                        ..*rect
                    };
                    if intersects(&src, r) {
                        break;
                    }
                    false
                }
                Op::Pixels(p, _) => covers(r, p),
                Op::Msg(ServerMsg::Image { rect, .. } | ServerMsg::Fill { rect, .. }) => covers(r, rect),
                Op::Msg(_) => false,
            };
            if hidden {
                let (freed, area) = match self.ops.remove(i) {
                    Op::Pixels(_, px) => (px.len(), px.len()),
                    Op::Msg(ServerMsg::Image { data, rect, .. }) => (data.len(), area_bytes(&rect)),
                    Op::Msg(_) => (0, 0),
                };
                self.bytes = self.bytes.saturating_sub(freed);
                self.drawn = self.drawn.saturating_sub(area);
            }
        }
    }

    /// Whether pending damage already covers `r` (its final pixels are sent at the next flush).
    fn damaged(&self, r: &Rect) -> bool {
        self.damage.iter().any(|d| covers(d, r))
    }

    /// Whether `ops` more operations holding `bytes` more bytes fit in the frame; if not, the frame
    /// collapses into one repaint of the whole screen.
    fn room(&mut self, fb: &Framebuffer, ops: usize, bytes: usize, drawn: usize) -> bool {
        // No more bytes than a repaint of the screen, and no more pixels drawn than a repaint of what the
        // frame changed (merged scrolls: strips that scrolled out again before the frame left are not
        // worth sending).
        let full = fb.full();
        let dirty = self.dirty.unwrap_or(full);
        let budget = area_bytes(&full).max(MIN_FRAME_BYTES);
        let repaint = area_bytes(&dirty).max(MIN_REPAINT_BYTES);
        if self.ops.len() + ops <= MAX_FRAME_OPS && self.bytes + bytes <= budget && self.drawn + drawn <= repaint {
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
        self.drawn = 0;
        self.damage = vec![intersection(&dirty, &full).unwrap_or(full)];
        false
    }

    /// A copy on the remote side: flush what it would read, then apply it to the framebuffer.
    pub fn copy(&mut self, fb: &mut Framebuffer, src_x: u16, src_y: u16, r: Rect) {
        let src = Rect {
            x: src_x,
            y: src_y,
            ..r
        };
        self.touch(&r);
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
        if !self.room(fb, ops, bytes, bytes) {
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
        if !fb.contains(&r) || self.damaged(&r) {
            return;
        }
        self.touch(&r);
        self.occlude(&r);
        if !self.room(fb, 1, 0, 0) {
            return;
        }
        self.ops.push(Op::Msg(ServerMsg::Fill { rect: r, rgb }));
    }

    /// A JPEG passed through as it is (a VNC server's, of exactly `r`'s size: see [`jpeg_fits`]): kept
    /// undecoded in the framebuffer, the image itself goes into the frame in place of its pixels.
    pub fn jpeg(&mut self, fb: &mut Framebuffer, r: Rect, data: Vec<u8>) {
        fb.put_jpeg(&r, Arc::from(&data[..]));
        let format = ImageFormat::Jpeg;
        if !fb.contains(&r) || self.damaged(&r) {
            return;
        }
        self.touch(&r);
        self.occlude(&r);
        if !self.room(fb, 1, data.len(), area_bytes(&r)) {
            return;
        }
        self.bytes += data.len();
        self.drawn += area_bytes(&r);
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
    /// regions at the quality `level`, at the [`Effort::Fast`] effort.
    pub async fn finish(self, fb: &mut Framebuffer, level: u8) -> Vec<ServerMsg> {
        self.finish_with(fb, level, Effort::Fast).await.0
    }

    /// Close the frame at `effort`: the messages, and what encoding its pixels cost.
    pub async fn finish_with(
        mut self,
        fb: &mut Framebuffer,
        level: u8,
        effort: Effort,
    ) -> (Vec<ServerMsg>, EncodeStats) {
        self.flush_with(fb, effort);
        let ops = self.ops;
        let encode = move |ops: Vec<Op>| {
            let (mut raw, mut bytes, mut secs) = (0, 0, 0.0);
            let msgs = ops
                .into_iter()
                .map(|op| match op {
                    Op::Msg(m) => m,
                    Op::Pixels(r, rgba) => {
                        let start = Instant::now();
                        let m = encode_rect_with(r, &rgba, level, effort);
                        // Only what the effort changes counts: lossless images (fills and JPEGs are the
                        // same at either effort).
                        if matches!(
                            &m,
                            ServerMsg::Image {
                                format: ImageFormat::Png,
                                ..
                            }
                        ) {
                            raw += rgba.len() as u64;
                            bytes += wire_bytes(&m);
                            secs += start.elapsed().as_secs_f64();
                        }
                        m
                    }
                })
                .collect::<Vec<_>>();
            let stats = EncodeStats {
                effort,
                raw,
                bytes,
                secs,
            };
            (msgs, stats)
        };
        let pixels: usize = ops
            .iter()
            .map(|op| match op {
                Op::Pixels(_, px) => px.len(),
                Op::Msg(_) => 0,
            })
            .sum();
        if pixels <= INLINE_ENCODE_BYTES {
            return encode(ops);
        }
        let permit = encoder_permit().await;
        let encoded = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            encode(ops)
        })
        .await;
        encoded.unwrap_or_default()
    }
}

/// What encoding a frame's lossless images cost: the effort, the pixel bytes in, the bytes out and the
/// CPU seconds it took.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeStats {
    pub effort: Effort,
    pub raw: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// An effort's cost per pixel byte: bytes out and CPU seconds (smoothed over a session's frames).
#[derive(Debug, Clone, Copy)]
struct EffortCost {
    ratio: f64,
    secs_per_byte: f64,
}

/// A frame sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Sent {
    id: u32,
    at: Instant,
    bytes: u64,
    /// The link's delivered bytes, and when that count last grew, as the frame left (see
    /// [`LinkEstimate::on_ack`]).
    delivered: u64,
    delivered_at: Instant,
    /// The frame left with room to spare in the budget: its delivery rate shows how much the session
    /// sent, not what the link can carry.
    app_limited: bool,
    /// Nothing else was in flight: its round trip has no queue of ours in it.
    alone: bool,
    /// It measures the round trip again ([`LinkEstimate::probing`]).
    probe: bool,
}

/// The browser's link as frame acknowledgements reveal it, after BBR: the delivery rate (bytes acknowledged
/// over the interval they took; the largest recent sample) and the round trip (the smallest recent
/// acknowledgement round trip). Sans-IO: sends, acknowledgements and time in, estimates and a
/// bytes-in-flight budget out.
#[derive(Debug, Default)]
pub struct LinkEstimate {
    /// Bytes acknowledged so far, and when that count last grew (restarted when nothing is in flight).
    delivered: u64,
    delivered_at: Option<Instant>,
    /// Rate samples (bytes/s) of the last [`RATE_WINDOW`], decreasing (a monotonic queue: the front is the
    /// largest). The last one stays when the window empties: an idle link keeps its estimate.
    rates: VecDeque<(Instant, f64)>,
    /// The smallest acknowledgement round trip of a small frame (at most [`SMALL_FRAME_BYTES`]: a typed
    /// character, the pointer), and when; for want of one, of any frame with its own transfer at the
    /// estimated rate taken out (`sized`). Older than [`RTT_PROBE_AFTER`], it is measured again
    /// ([`LinkEstimate::probing`]).
    small_rtt: Option<(Duration, Instant)>,
    sized_rtt: Option<(Duration, Instant)>,
    /// The estimate is older than [`RTT_PROBE_AFTER`]: [`LinkEstimate::probing`].
    probing: bool,
    /// The frame that measures it, once it left.
    probe: Option<u32>,
}

impl LinkEstimate {
    /// The estimated delivery rate, bytes per second (`None` before the first acknowledgement).
    pub fn rate(&self) -> Option<f64> {
        self.rates.front().map(|&(_, r)| r)
    }

    /// The estimated round trip without queueing (`None` before the first acknowledgement).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.rtt_sample().map(|(d, _)| d)
    }

    /// The round trip estimate and when it was measured: a small frame's, unless a larger frame's was
    /// measured more than [`RTT_WINDOW`] after it (a re-measure by a larger frame).
    fn rtt_sample(&self) -> Option<(Duration, Instant)> {
        match (self.small_rtt, self.sized_rtt) {
            (Some(small), Some(sized)) if sized.1.saturating_duration_since(small.1) > RTT_WINDOW => Some(sized),
            (small, sized) => small.or(sized),
        }
    }

    /// The round trip is measured again: the estimate is [`RTT_PROBE_AFTER`] old, and the path may have
    /// changed (a shorter one cannot show under the queue the old estimate allows; a longer one never gives
    /// a smaller sample). The next frame leaves alone into an
    /// empty pipe ([`LinkEstimate::limit`]) and its round trip replaces the estimate; frames after it
    /// leave as usual (they queue behind it, not ahead). The link idles for one round trip every
    /// [`RTT_PROBE_AFTER`] (BBR's ProbeRTT drains every 10 s; the first version of this waited for the
    /// probe's acknowledgement too: two round trips every 10 s, a dip in full-screen video).
    pub fn probing(&self) -> bool {
        self.probing
    }

    /// The round trip is measured again and its probe has not left yet.
    fn awaits_probe(&self) -> bool {
        self.probing && self.probe.is_none()
    }

    /// The bytes in flight under which the next frame may leave: the [budget](LinkEstimate::budget), or
    /// none while a [probe](LinkEstimate::probing) waits to leave (it leaves into an empty pipe).
    fn limit(&self) -> Option<u64> {
        let budget = self.budget()?;
        Some(if self.awaits_probe() { 0 } else { budget })
    }

    /// The bytes that may be in flight: what the link delivers in [`LATENCY_TARGET`] (at least two round
    /// trips' worth, and at least [`MIN_BUDGET_BYTES`]). `None` until the link is measured.
    pub fn budget(&self) -> Option<u64> {
        let rate = self.rate()?;
        // What the link holds (rate x round trip) plus the queue the target allows.
        let span = LATENCY_TARGET + self.min_rtt().unwrap_or_default();
        Some(((rate * span.as_secs_f64()) as u64).max(MIN_BUDGET_BYTES))
    }

    /// A frame leaves at `now` with `in_flight` frames before it: its bookkeeping.
    fn on_send(&mut self, id: u32, bytes: u64, in_flight: usize, in_flight_bytes: u64, now: Instant) -> Sent {
        if in_flight == 0 {
            // The pipe was empty: the interval of this frame's sample starts now, not at the last ack.
            self.delivered_at = Some(now);
        }
        let app_limited = self.budget().is_some_and(|b| in_flight_bytes + bytes < b);
        let probe = self.awaits_probe() && in_flight == 0;
        if probe {
            self.probe = Some(id);
        }
        Sent {
            id,
            at: now,
            bytes,
            delivered: self.delivered,
            delivered_at: self.delivered_at.unwrap_or(now),
            app_limited,
            alone: in_flight == 0,
            probe,
        }
    }

    /// `acked` bytes were acknowledged at `now`, the newest of them in `last`: a rate and a round trip
    /// sample. Only a smaller round trip or a probe's ([`LinkEstimate::probing`]) replaces the estimate:
    /// samples under a standing queue never do, so the budget cannot grow the queue that grows it. (A
    /// longer sample taken as clean because the acknowledgements paused before it let a browser's stall
    /// in: the page's decoding delays its acknowledgements.)
    fn on_ack(&mut self, last: &Sent, acked: u64, now: Instant) {
        self.delivered += acked;
        self.delivered_at = Some(now);
        let mut interval = now.saturating_duration_since(last.delivered_at);
        if last.alone && !last.app_limited {
            // A frame that filled the budget alone: its interval holds one round trip of waiting for the
            // acknowledgement, which is not delivery (at most half of the interval is taken out).
            interval = interval
                .saturating_sub(self.min_rtt().unwrap_or_default())
                .max(interval / 2);
        }
        let interval = interval.as_secs_f64();
        if interval > 0.0 {
            let rate = (self.delivered - last.delivered) as f64 / interval;
            // A sample of a session that sent little says little about the link, unless it beats the
            // estimate.
            if !last.app_limited || self.rate().is_none_or(|r| rate > r) {
                while self.rates.back().is_some_and(|&(_, r)| r <= rate) {
                    self.rates.pop_back();
                }
                self.rates.push_back((now, rate));
            }
        }
        while self.rates.len() > 1 && self.rates.front().is_some_and(|&(t, _)| now - t > RATE_WINDOW) {
            self.rates.pop_front();
        }
        let raw = now.saturating_duration_since(last.at);
        let (slot, rtt) = if last.bytes <= SMALL_FRAME_BYTES {
            (&mut self.small_rtt, raw)
        } else {
            // The frame's own transfer at the estimated rate is not round trip.
            let transfer = self
                .rates
                .front()
                .map_or(Duration::ZERO, |&(_, r)| Duration::from_secs_f64(last.bytes as f64 / r));
            (&mut self.sized_rtt, raw.saturating_sub(transfer))
        };
        let probe = self.probing && last.probe;
        if slot.is_none_or(|(min, _)| rtt < min) || probe {
            *slot = Some((rtt, now));
        }
        if probe {
            self.probing = false;
            self.probe = None;
        } else if self.probe.is_some_and(|id| last.id > id) {
            // The probe was acknowledged together with later frames: its round trip is lost; another one.
            self.probe = None;
        }
        if self
            .rtt_sample()
            .is_some_and(|(_, at)| now.saturating_duration_since(at) > RTT_PROBE_AFTER)
            && !self.probing
        {
            tracing::debug!(min_rtt = ?self.min_rtt(), "The round trip is measured again: the pipe drains");
            self.probing = true;
        }
    }
}

/// About the bytes `msg` takes on the wire (its payload and a small header).
fn wire_bytes(msg: &ServerMsg) -> u64 {
    let payload = match msg {
        ServerMsg::Image { data, .. } | ServerMsg::Video { data, .. } => data.len(),
        ServerMsg::Cursor { png, .. } => png.len(),
        ServerMsg::TermOutput(b) => b.len(),
        ServerMsg::RemoteClipboard(t) => t.len(),
        _ => 16,
    };
    payload as u64 + 8
}

/// The browser side of a graphical session: frame numbering, acknowledgements and the link they reveal
/// (flow control bounded in time: the bytes in flight stay under the link's delivery rate times
/// [`LATENCY_TARGET`]), the last pointer image (for a reattached browser) and the quality of lossy
/// regions. Sans-IO: encoded messages, acknowledgements and time in, numbered frames out; `crate::screen`
/// sends them through a session.
pub struct Flow {
    frame_id: u32,
    acked: u32,
    /// Frames sent and not yet acknowledged, oldest first, and their bytes.
    in_flight: VecDeque<Sent>,
    in_flight_bytes: u64,
    link: LinkEstimate,
    /// What each effort costs (`[Fast, Compact]`), measured on this session's frames (typical figures until
    /// then).
    costs: [EffortCost; 2],
    quality: QualityControl,
    cursor: Option<ServerMsg>,
    /// Frames, acknowledgement round trips, link estimates, quality levels and merges, aggregated per
    /// protocol.
    metrics: DisplayMetrics,
    /// The next frame waited for room on the link (an update merged or held back).
    waited: bool,
    /// Moving average of the frames that waited (0..=1), over [`Flow::seal`].
    pressure: f64,
    sealed: u32,
    /// The link is the bottleneck, since its delivery rate was this (see [`Flow::link_bound`]).
    bound_at: Option<f64>,
    /// The content is quiet ([`ContentRate`]): its lossless regions stay lossless ([`Flow::effort`]).
    quiet_content: bool,
    /// A source that pushes was told to pause ([`Flow::pace`]).
    source_paused: bool,
}

/// What a source that pushes frames the bridge can neither merge nor drop (RDP's graphics pipeline: H.264
/// passes through, each frame refers to the last) must do ([`Flow::pace`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The frames in flight fill the link's budget: stop sending (RDP: Suppress Output).
    Pause,
    /// The link has room again: send what changed meanwhile (RDP: Suppress Output lifted for the whole
    /// desktop, which the server repaints from its own, current picture).
    Resume,
}

/// The link counts as the bottleneck once this share of recent frames waited for room ([`Flow::link_bound`])
/// and at least [`BOUND_MIN_FRAMES`] frames were sent.
const BOUND_PRESSURE: f64 = 0.45;
const BOUND_MIN_FRAMES: u32 = 3;

impl Flow {
    pub fn new(max_quality: u8, metrics: DisplayMetrics) -> Self {
        Flow {
            frame_id: 0,
            acked: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            link: LinkEstimate::default(),
            costs: INITIAL_COSTS,
            quality: QualityControl::new(max_quality),
            cursor: None,
            metrics,
            waited: false,
            pressure: 0.0,
            sealed: 0,
            bound_at: None,
            quiet_content: false,
            source_paused: false,
        }
    }

    /// For a source that pushes its frames (they cannot be merged or dropped here), whether it must pause or
    /// may resume at `now`: paused while the frames in flight fill the link's budget
    /// ([`Flow::can_send_at`]), resumed once they no longer do. Such a source would otherwise build a queue
    /// of its own frames on a slow link (FreeRDP's shadow server slows to one frame a second with many in
    /// flight, but never stops), and the latency would grow with it; paused, it merges the changes itself,
    /// as a VNC server does between update requests.
    pub fn pace(&mut self, now: Instant) -> Option<Pace> {
        let room = self.can_send_at(now);
        match (self.source_paused, room) {
            (false, false) => {
                self.source_paused = true;
                self.waited = true;
                self.metrics.merged.inc();
                Some(Pace::Pause)
            }
            (true, true) => {
                self.source_paused = false;
                Some(Pace::Resume)
            }
            _ => None,
        }
    }

    /// The source was told to pause ([`Flow::pace`]) and not yet to resume.
    pub fn source_paused(&self) -> bool {
        self.source_paused
    }

    /// The content is quiet ([`ContentRate`]): the server sends it lossless, and the bridge keeps it so
    /// (antialiased text as an indexed PNG, not a JPEG: [`Effort::Compact`]; it is small).
    pub fn set_quiet_content(&mut self, quiet: bool) {
        self.quiet_content = quiet;
    }

    /// A server update went into a pending frame instead of out (or a request for one was held back),
    /// because the frames in flight fill the link's budget.
    pub fn merged(&mut self) {
        self.metrics.merged.inc();
        self.waited = true;
    }

    /// Whether the link, not the CPU or the content, is the bottleneck: most recent frames waited for room
    /// on a link slow enough that CPU spent on smaller images pays ([`Flow::effort`]'s rule). It stays so
    /// (the smaller images it brings relieve the link, which must not switch it back and forth) until the
    /// link's delivery rate is past that rule's threshold (a faster network). A VNC session then asks its
    /// server for lossless encodings, and every session encodes at [`Effort::Compact`].
    pub fn link_bound(&self) -> bool {
        self.bound_at.is_some()
    }

    fn update_bound(&mut self) {
        let rate = self.link.rate();
        match (self.bound_at, rate) {
            (None, Some(r))
                if self.sealed >= BOUND_MIN_FRAMES
                    && self.pressure >= BOUND_PRESSURE
                    && self.cost_effort(r) == Effort::Compact =>
            {
                tracing::debug!(rate = r, pressure = self.pressure, "The link is the bottleneck");
                self.bound_at = Some(r);
            }
            (Some(r0), Some(r)) if self.cost_effort(r) == Effort::Fast => {
                tracing::debug!(rate = r, was = r0, "The link is no longer the bottleneck");
                self.bound_at = None;
            }
            _ => {}
        }
    }

    /// Whether another frame may be sent now: nothing is in flight, or the bytes in flight are under the
    /// link's budget ([`LinkEstimate::budget`]; [`INITIAL_FRAMES_IN_FLIGHT`] frames until it is measured),
    /// and fewer than [`MAX_FRAMES_IN_FLIGHT`] frames.
    pub fn can_send(&self) -> bool {
        let frames = self.frame_id - self.acked;
        if frames == 0 {
            return true;
        }
        if frames >= MAX_FRAMES_IN_FLIGHT {
            return false;
        }
        match self.link.limit() {
            Some(limit) => self.in_flight_bytes < limit,
            None => frames < INITIAL_FRAMES_IN_FLIGHT,
        }
    }

    /// [`Flow::can_send`], or the one frame in flight has drained under the budget by `now`
    /// ([`Flow::room_at`]).
    pub fn can_send_at(&self, now: Instant) -> bool {
        self.can_send() || self.room_at().is_some_and(|at| now >= at)
    }

    /// When the link will have room by its delivery alone, without an acknowledgement: the one frame in
    /// flight is larger than the budget (a repaint, a screen of new text on a slow link), and the link
    /// drains it at the estimated rate from when its delivery began (the last acknowledgement, or its own
    /// sending into an empty pipe); once what remains of it is under the budget the next frame may leave.
    /// Without this the link idled for every such frame's acknowledgement to come back and for the next
    /// one to be asked for and encoded. One frame at most leaves early: the acknowledgements still clock
    /// the rest, so a rate estimated too high cannot build a queue.
    pub fn room_at(&self) -> Option<Instant> {
        // A probe waits for acknowledgements: they show the queue gone.
        if self.frame_id - self.acked != 1 || self.link.awaits_probe() {
            return None;
        }
        let excess = self.in_flight_bytes.checked_sub(self.link.budget()?)?;
        let rate = self.link.rate().filter(|r| *r > 0.0)?;
        let from = self.link.delivered_at?;
        Some(from + Duration::from_secs_f64((excess + 1) as f64 / rate))
    }

    /// How much CPU the next frame's images may cost, from the estimates: [`Effort::Compact`] when the link
    /// time it saves (the bytes it saves per pixel byte, at the link's delivery rate) exceeds the CPU time
    /// it adds (per pixel byte): below a delivery rate of `saved / added` bytes per second the link is the
    /// bottleneck. [`Effort::Fast`] otherwise. On a link not measured yet (before the first acknowledgement)
    /// `Compact`: the first frames hold the whole first picture, the largest of a session (a desktop of text
    /// was 430 KB as an RGB PNG, seconds on a 1 Mbit/s link); on a fast link the first acknowledgement
    /// comes back after a frame or two, so that CPU is spent once.
    /// A [link-bound](Flow::link_bound) session, and one whose content is quiet
    /// ([`Flow::set_quiet_content`]), is always `Compact`.
    pub fn effort(&self) -> Effort {
        match self.link.rate() {
            _ if self.link_bound() || self.quiet_content => Effort::Compact,
            Some(rate) => self.cost_effort(rate),
            None => Effort::Compact,
        }
    }

    fn cost_effort(&self, rate: f64) -> Effort {
        let [fast, compact] = self.costs;
        let saved = fast.ratio - compact.ratio;
        let added = compact.secs_per_byte - fast.secs_per_byte;
        if saved > 0.0 && (added <= 0.0 || rate < saved / added) {
            Effort::Compact
        } else {
            Effort::Fast
        }
    }

    /// A frame was encoded: its cost refines its effort's figures (frames with little to encode say
    /// little, and are skipped).
    pub fn encoded(&mut self, stats: EncodeStats) {
        if stats.raw < 16 * 1024 || stats.secs <= 0.0 {
            return;
        }
        let c = &mut self.costs[stats.effort as usize];
        let raw = stats.raw as f64;
        c.ratio = 0.8 * c.ratio + 0.2 * (stats.bytes as f64 / raw);
        c.secs_per_byte = 0.8 * c.secs_per_byte + 0.2 * (stats.secs / raw);
    }

    /// The link as the acknowledgements so far show it.
    pub fn link(&self) -> &LinkEstimate {
        &self.link
    }

    /// Bytes sent and not yet acknowledged.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    pub fn quality(&self) -> u8 {
        self.quality.level()
    }

    /// A frame acknowledgement received at `now`; returns the new quality level when its round trip changed
    /// it. Ids the bridge never sent are ignored; acknowledging a frame acknowledges those before it.
    pub fn on_ack(&mut self, frame_id: u32, now: Instant) -> Option<u8> {
        if frame_id > self.frame_id || frame_id <= self.acked {
            return None;
        }
        self.acked = frame_id;
        let mut acked = 0;
        let mut last = None;
        while let Some(&sent) = self.in_flight.front() {
            if sent.id > frame_id {
                break;
            }
            self.in_flight.pop_front();
            acked += sent.bytes;
            last = Some(sent);
        }
        self.in_flight_bytes -= acked;
        let last = last?;
        self.link.on_ack(&last, acked, now);
        if let (Some(rate), Some(rtt)) = (self.link.rate(), self.link.min_rtt()) {
            self.metrics.link_rate.observe(rate);
            self.metrics.link_rtt.observe_duration(rtt);
        }
        if last.id != frame_id {
            return None;
        }
        self.metrics.ack_seconds.observe_duration(now - last.at);
        self.quality.on_ack(now - last.at, now)
    }

    /// Count a framebuffer's lazy decoding ([`Framebuffer::take_lazy_counts`]) in the metrics.
    pub fn count_lazy(&self, counts: LazyCounts) {
        self.metrics.passthrough_images.add(counts.kept);
        self.metrics.passthrough_decoded.add(counts.decoded);
    }

    /// The pointer image a full picture ends with (a viewer's flow learns it from the owner's frames).
    pub fn set_cursor(&mut self, msg: ServerMsg) {
        self.cursor = Some(msg);
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
        let bytes = msgs.iter().map(wire_bytes).sum::<u64>() + 8;
        let sent = self
            .link
            .on_send(self.frame_id, bytes, self.in_flight.len(), self.in_flight_bytes, now);
        self.in_flight.push_back(sent);
        self.in_flight_bytes += bytes;
        self.pressure = 0.8 * self.pressure + if std::mem::take(&mut self.waited) { 0.2 } else { 0.0 };
        self.sealed = self.sealed.saturating_add(1);
        self.update_bound();
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

    /// A browser attached: frames sent to an earlier one no longer count (nor does the link they crossed).
    /// Returns the frame of the full picture `msgs` (starting with the size), the last pointer image after
    /// it.
    pub fn picture_frame(&mut self, mut msgs: Vec<ServerMsg>, now: Instant) -> Vec<ServerMsg> {
        self.acked = self.frame_id;
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        self.link = LinkEstimate::default();
        msgs.extend(self.cursor.clone());
        self.seal(msgs, now)
    }
}

/// How long [`ContentRate`] measures over.
const CONTENT_WINDOW: Duration = Duration::from_secs(1);
/// Content that changes less than this share of the screen per second is quiet ([`ContentRate`]).
const QUIET_SHARE: f64 = 0.03;
/// Content that changes more than this share of the screen per second is busy.
const BUSY_SHARE: f64 = 0.15;

/// How much of the screen the content changes: the pixels of the server's updates that need an image
/// (copies and fills excluded), per second. Quiet content (typing, an idle desktop, a few lines of text a
/// second) is sent lossless: lossy patches of it would be refined later, each change drawn twice and the
/// screen never still. Busy content (video, a fast scroll) may be lossy, which pays for itself there.
/// Quiet at first; busy as soon as one window's pixels pass [`BUSY_SHARE`] of the screen, quiet again
/// after a whole window under [`QUIET_SHARE`] (a screen that stops changing sends no update, so
/// [`ContentRate::check_at`] says when to look). Sans-IO: updates and time in, the mode out.
#[derive(Debug)]
pub struct ContentRate {
    screen: f64,
    since: Option<Instant>,
    pixels: u64,
    quiet: bool,
}

impl ContentRate {
    pub fn new(width: u16, height: u16) -> Self {
        ContentRate {
            screen: (f64::from(width) * f64::from(height)).max(1.0),
            since: None,
            pixels: 0,
            quiet: true,
        }
    }

    pub fn quiet(&self) -> bool {
        self.quiet
    }

    /// The screen is now `width` x `height` (a resize): measured anew, the mode kept.
    pub fn resize(&mut self, width: u16, height: u16) {
        let quiet = self.quiet;
        *self = ContentRate::new(width, height);
        self.quiet = quiet;
    }

    /// An update changed `pixels` at `now`; the new mode when it changes.
    pub fn update(&mut self, pixels: u64, now: Instant) -> Option<bool> {
        let changed = self.check(now);
        self.since.get_or_insert(now);
        self.pixels += pixels;
        if self.quiet && self.pixels as f64 > BUSY_SHARE * self.screen {
            self.quiet = false;
            self.since = Some(now);
            self.pixels = 0;
            return Some(false);
        }
        changed
    }

    /// When a busy screen's window ends, to look whether it became quiet ([`ContentRate::check`]).
    pub fn check_at(&self) -> Option<Instant> {
        if self.quiet {
            return None;
        }
        self.since.map(|since| since + CONTENT_WINDOW)
    }

    /// Close the window if it is over at `now`: quiet when it changed less than [`QUIET_SHARE`] of the
    /// screen per second; the new mode when it changes.
    pub fn check(&mut self, now: Instant) -> Option<bool> {
        let since = self.since?;
        let elapsed = now.saturating_duration_since(since);
        if elapsed < CONTENT_WINDOW {
            return None;
        }
        let share = self.pixels as f64 / self.screen / elapsed.as_secs_f64();
        self.pixels = 0;
        let became_quiet = !self.quiet && share < QUIET_SHARE;
        self.quiet |= became_quiet;
        // A busy screen's next window starts now; a quiet one's with its next update.
        self.since = (!self.quiet).then_some(now);
        became_quiet.then_some(true)
    }
}

/// The whole screen of `fb` as one image at quality `level` (encoded on the shared pool).
pub async fn encode_full(fb: &mut Framebuffer, level: u8) -> Option<ServerMsg> {
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
    encode_rect_with(rect, rgba, level, Effort::Fast)
}

/// [`encode_rect`] at `effort`. `Compact` (the link is the bottleneck) spends CPU on fewer bytes: a region
/// of at most 256 colours is an indexed PNG even when it looks photographic to the sampling (antialiased
/// text has up to 256 greys: lossless and about a quarter of the bytes of a JPEG of it), other lossless
/// regions are an RGB PNG with adaptive filters at the default deflate level.
pub fn encode_rect_with(rect: Rect, rgba: &[u8], level: u8, effort: Effort) -> ServerMsg {
    let first = [rgba[0], rgba[1], rgba[2]];
    if rgba.chunks_exact(4).all(|p| p[..3] == first) {
        return ServerMsg::Fill { rect, rgb: first };
    }
    let image = |data| ServerMsg::Image {
        rect,
        format: ImageFormat::Png,
        data,
    };
    let indexed = match effort {
        Effort::Compact => Indexed::of(rgba),
        Effort::Fast => None,
    };
    if let Some(ix) = indexed {
        return image(ix.png(rect.width, rect.height));
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
    if effort == Effort::Compact {
        return image(png_rgb_compact(rect.width, rect.height, rgba));
    }
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for p in rgba.chunks_exact(4) {
        rgb.extend_from_slice(&p[..3]);
    }
    image(png(rect.width, rect.height, &rgb, png::ColorType::Rgb))
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

/// Whether `data` is a JPEG of exactly `width` x `height`, from its headers alone (cheap: the image is
/// passed through undecoded; one whose scan turns out not to decode is caught when its pixels are read, see
/// [`Framebuffer::take_invalid`]).
pub fn jpeg_fits(data: &[u8], width: u16, height: u16) -> bool {
    jpeg_size(data) == Some((width, height))
}

/// The size in a JPEG's frame header (SOFn), found by walking the markers before it.
fn jpeg_size(data: &[u8]) -> Option<(u16, u16)> {
    if data.get(..2)? != [0xff, 0xd8] {
        return None;
    }
    let be = |i: usize| Some(u16::from_be_bytes([*data.get(i)?, *data.get(i + 1)?]));
    let mut i = 2;
    loop {
        if *data.get(i)? != 0xff {
            return None;
        }
        while *data.get(i)? == 0xff {
            i += 1;
        }
        let marker = data[i];
        i += 1;
        match marker {
            // Markers without a length.
            0x01 | 0xd0..=0xd8 => continue,
            // The scan or the end before any frame header.
            0xd9 | 0xda => return None,
            _ => {}
        }
        let len = usize::from(be(i)?);
        if len < 2 {
            return None;
        }
        if matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
            // Length, precision, height, width.
            return Some((be(i + 5)?, be(i + 3)?));
        }
        i += len;
    }
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
/// How much CPU an image may cost to make it smaller: `Fast` (the CPU is the bottleneck: PNG at the fastest
/// deflate level), `Compact` (the link is: text with few colours as an indexed PNG, deflate at its default
/// level; ~2-4x smaller, several times the CPU). See [`Flow::effort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Effort {
    #[default]
    Fast,
    Compact,
}

fn png_rgb_compact(width: u16, height: u16, rgba: &[u8]) -> Vec<u8> {
    let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    encode_png(
        (width, height),
        &rgb,
        (png::ColorType::Rgb, png::BitDepth::Eight, None),
        png::Compression::Balanced,
        png::Filter::Adaptive,
    )
}

/// Pixels with at most 256 colours as a palette and one index per pixel.
struct Indexed {
    palette: Vec<[u8; 3]>,
    indices: Vec<u8>,
}

impl Indexed {
    /// `None` past 256 colours (it stops at the 257th).
    fn of(rgba: &[u8]) -> Option<Indexed> {
        let mut palette: Vec<[u8; 3]> = Vec::new();
        let mut index: std::collections::HashMap<[u8; 3], u8> = std::collections::HashMap::new();
        let mut indices = Vec::with_capacity(rgba.len() / 4);
        let mut last: Option<([u8; 3], u8)> = None;
        for p in rgba.chunks_exact(4) {
            let c = [p[0], p[1], p[2]];
            let i = match last {
                Some((lc, li)) if lc == c => li,
                _ => match index.get(&c) {
                    Some(&i) => i,
                    None if palette.len() < 256 => {
                        let i = palette.len() as u8;
                        palette.push(c);
                        index.insert(c, i);
                        i
                    }
                    None => return None,
                },
            };
            last = Some((c, i));
            indices.push(i);
        }
        Some(Indexed { palette, indices })
    }

    fn png(&self, width: u16, height: u16) -> Vec<u8> {
        let (bits, depth) = match self.palette.len() {
            0..=2 => (1u8, png::BitDepth::One),
            3..=4 => (2, png::BitDepth::Two),
            5..=16 => (4, png::BitDepth::Four),
            _ => (8, png::BitDepth::Eight),
        };
        // Rows packed at `bits` per pixel, most significant first.
        let per_byte = 8 / usize::from(bits);
        let row_bytes = usize::from(width).div_ceil(per_byte);
        let mut packed = vec![0u8; row_bytes * usize::from(height)];
        for (y, row) in self.indices.chunks_exact(usize::from(width)).enumerate() {
            let dst = &mut packed[y * row_bytes..(y + 1) * row_bytes];
            for (x, &i) in row.iter().enumerate() {
                let shift = 8 - usize::from(bits) * (x % per_byte + 1);
                dst[x / per_byte] |= i << shift;
            }
        }
        encode_png(
            (width, height),
            &packed,
            (png::ColorType::Indexed, depth, Some(self.palette.concat())),
            png::Compression::Balanced,
            png::Filter::NoFilter,
        )
    }
}

/// `pixels` (rows of `color` at `depth`, with `palette` when indexed) as a PNG.
fn encode_png(
    (width, height): (u16, u16),
    pixels: &[u8],
    (color, depth, palette): (png::ColorType, png::BitDepth, Option<Vec<u8>>),
    compression: png::Compression,
    filter: png::Filter,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width.into(), height.into());
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        enc.set_compression(compression);
        enc.set_filter(filter);
        // INVARIANT: the sizes match the pixel buffer, and writing to a Vec cannot fail.
        let mut w = enc.write_header().expect("png header");
        w.write_image_data(pixels).expect("png data");
    }
    out
}

pub fn png(width: u16, height: u16, pixels: &[u8], color: png::ColorType) -> Vec<u8> {
    encode_png(
        (width, height),
        pixels,
        (color, png::BitDepth::Eight, None),
        png::Compression::Fast,
        png::Filter::Sub,
    )
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
        let msgs = frame.finish(&mut fb, 6).await;
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
            assert!(ids.len() <= INITIAL_FRAMES_IN_FLIGHT as usize, "sent past the limit");
        }
        assert_eq!(ids, (1..=INITIAL_FRAMES_IN_FLIGHT).collect::<Vec<_>>());
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
        for _ in 0..INITIAL_FRAMES_IN_FLIGHT {
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
        for _ in 0..INITIAL_FRAMES_IN_FLIGHT {
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
                    frame_id: INITIAL_FRAMES_IN_FLIGHT + 1
                },
            ]
        );
        // Only the full picture is in flight now.
        assert!(flow.can_send());
        flow.seal(Vec::new(), t0);
        assert_eq!(flow.can_send(), INITIAL_FRAMES_IN_FLIGHT > 2);
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
                let msgs = std::mem::take(&mut pending).finish(&mut fb, flow.quality()).await;
                sent.push(flow.seal(msgs, t0));
            } else {
                flow.merged();
            }
        }
        assert_eq!(
            sent.len(),
            INITIAL_FRAMES_IN_FLIGHT as usize,
            "a frame went out past the window"
        );
        assert!(!pending.is_empty(), "updates while behind were lost");
        flow.on_ack(INITIAL_FRAMES_IN_FLIGHT, t0);
        let msgs = std::mem::take(&mut pending).finish(&mut fb, flow.quality()).await;
        // One frame carries the merged updates, from the framebuffer's final content.
        let images = msgs.iter().filter(|m| matches!(m, ServerMsg::Image { .. })).count();
        assert!((1..=8).contains(&images), "{images} images for 8 merged updates");
        let merged = flow.seal(msgs, t0);
        assert_eq!(frame_ids(&merged), [INITIAL_FRAMES_IN_FLIGHT + 1]);
    }

    /// An image message of `n` bytes of data (its pixels do not matter to the flow control).
    fn sized_image(n: usize) -> ServerMsg {
        ServerMsg::Image {
            rect: rect(0, 0, 1, 1),
            format: ImageFormat::Png,
            data: vec![0; n],
        }
    }

    /// A link of `rate` bytes/s and round trip `rtt` (serialised at the rate, then half the round trip each
    /// way), fed frames of `frame_bytes` (every fourth one small) whenever the flow control lets one go, for
    /// `secs` of virtual time.
    /// Returns the flow and, per frame, its latency (send to acknowledgement), the bytes in flight before it
    /// left, and when it was acknowledged (since the start).
    fn simulate(rate: f64, rtt: Duration, frame_bytes: usize, secs: u64) -> (Flow, Vec<(Duration, u64, Duration)>) {
        simulate_with(rate, rtt, frame_bytes, secs, false)
    }

    /// [`simulate`]; with `drain`, frames also leave when the link has drained room ([`Flow::can_send_at`],
    /// woken at [`Flow::room_at`]), as the VNC actor sends them.
    fn simulate_with(
        rate: f64,
        rtt: Duration,
        frame_bytes: usize,
        secs: u64,
        drain: bool,
    ) -> (Flow, Vec<(Duration, u64, Duration)>) {
        simulate_path(rate, &|_| rtt, frame_bytes, secs, drain)
    }

    /// [`simulate_with`] on a path whose round trip is `rtt(t)` for a frame sent at `t` since the start.
    fn simulate_path(
        rate: f64,
        rtt: &dyn Fn(Duration) -> Duration,
        frame_bytes: usize,
        secs: u64,
        drain: bool,
    ) -> (Flow, Vec<(Duration, u64, Duration)>) {
        let t0 = Instant::now();
        let mut flow = Flow::new(6, DisplayMetrics::default());
        let mut now = t0;
        let mut link_free = t0;
        // (ack arrival, frame id, sent at, bytes in flight before it)
        let mut acks: VecDeque<(Instant, u32, Instant, u64)> = VecDeque::new();
        let mut out = Vec::new();
        // Every fourth frame is small (a typed character, the pointer), as in a real session.
        let image = |n: usize| sized_image(if n % 4 == 3 { 300 } else { frame_bytes });
        while now < t0 + Duration::from_secs(secs) {
            // The server always has something new: a frame leaves whenever the window allows.
            while if drain { flow.can_send_at(now) } else { flow.can_send() } {
                let before = flow.in_flight_bytes();
                let msgs = flow.seal(vec![image(acks.len() + out.len())], now);
                let ServerMsg::FrameEnd { frame_id } = msgs[msgs.len() - 1] else {
                    unreachable!()
                };
                let bytes: u64 = msgs.iter().map(wire_bytes).sum();
                link_free = link_free.max(now) + Duration::from_secs_f64(bytes as f64 / rate);
                // In order, however the path changes.
                let at = (link_free + rtt(now - t0)).max(acks.back().map_or(now, |a| a.0));
                acks.push_back((at, frame_id, now, before));
            }
            let next_ack = acks.front().expect("a frame in flight").0;
            if let Some(room) = flow.room_at().filter(|&r| drain && r < next_ack) {
                assert!(room > now, "room_at {room:?} is not ahead of now {now:?}");
                now = room;
                continue;
            }
            let (at, id, sent, before) = acks.pop_front().expect("a frame in flight");
            now = at;
            flow.on_ack(id, now);
            out.push((now - sent, before, now - t0));
        }
        (flow, out)
    }

    #[test]
    fn the_link_estimates_follow_the_link() {
        for (rate, rtt_ms, frame) in [
            (500_000.0, 80, 20_000),
            (125_000.0, 80, 20_000),
            (500_000.0, 80, 190_000),
            (50_000_000.0, 1, 50_000),
        ] {
            let rtt = Duration::from_millis(rtt_ms);
            let (flow, _) = simulate(rate, rtt, frame, 20);
            let est = flow.link().rate().expect("a rate after 20 s of acknowledgements");
            assert!(
                (0.8..=1.05).contains(&(est / rate)),
                "rate {est:.0} B/s on a {rate:.0} B/s link ({frame}-byte frames)"
            );
            let min_rtt = flow.link().min_rtt().unwrap();
            let one_frame = Duration::from_secs_f64(frame as f64 / rate);
            assert!(
                min_rtt >= rtt * 3 / 4 && min_rtt <= rtt + one_frame + Duration::from_millis(1),
                "round trip {min_rtt:?} on a {rtt:?} link"
            );
        }
    }

    #[test]
    fn the_round_trip_is_measured_again_without_periodic_gaps_in_the_frames() {
        // Full-screen video at 4 Mbit/s and 1 Mbit/s, 80 ms, for 65 s: the pipe never idles by itself, so the
        // round trip estimate is re-measured by draining it once it is [`RTT_PROBE_AFTER`] old; otherwise the
        // acknowledgements come as often as the frames' transfer allows (BBR drains every 10 s, for two round
        // trips here: a dip in the frames every 10 s).
        for (rate, frame) in [(500_000.0, 40_000), (125_000.0, 12_000)] {
            let rtt = Duration::from_millis(80);
            let secs = 65;
            let (flow, frames) = simulate_with(rate, rtt, frame, secs, true);
            let transfer = Duration::from_secs_f64(frame as f64 / rate);
            let gaps: Vec<Duration> = frames.windows(2).skip(20).map(|w| w[1].2 - w[0].2).collect();
            // One frame's transfer (a small frame may precede it).
            let wide: Vec<&Duration> = gaps
                .iter()
                .filter(|&&g| g > transfer + Duration::from_millis(5))
                .collect();
            assert!(
                wide.len() as u64 <= secs / RTT_PROBE_AFTER.as_secs(),
                "gaps between acknowledgements {wide:?} on a {rate} B/s link, over {transfer:?}"
            );
            // A probe: the pipe drains (one round trip), then the probe's transfer.
            for &&g in &wide {
                assert!(
                    g <= transfer + rtt + Duration::from_millis(5),
                    "a gap of {g:?} at a probe"
                );
            }
            let min_rtt = flow.link().min_rtt().unwrap();
            assert!(
                min_rtt >= rtt * 3 / 4 && min_rtt <= rtt + Duration::from_millis(20),
                "round trip {min_rtt:?} on a {rtt:?} link after {secs} s"
            );
        }
    }

    #[test]
    fn a_path_whose_round_trip_changes_is_measured_again() {
        let rate = 500_000.0;
        // Full-screen video (the pipe never idles by itself) on a path that gets longer (measured once the
        // estimate is older than the window: the link idles between frames), and on one that gets shorter
        // (measured by the probe).
        for (before, after) in [(80, 250), (250, 80)] {
            let path = |t: Duration| Duration::from_millis(if t < Duration::from_secs(5) { before } else { after });
            let (flow, _) = simulate_path(rate, &path, 40_000, RTT_PROBE_AFTER.as_secs() + 15, true);
            let min_rtt = flow.link().min_rtt().unwrap().as_secs_f64() * 1000.0;
            let after = after as f64;
            assert!(
                (0.75 * after..=after + 20.0).contains(&min_rtt),
                "round trip {min_rtt:.0} ms, the path's {before} ms then {after} ms"
            );
        }
    }

    #[test]
    fn bytes_in_flight_stay_under_the_links_budget_so_latency_is_bounded_in_time() {
        // 4 Mbit/s and 1 Mbit/s, 80 ms: small frames (text) and large ones (a repaint).
        for (rate, frame) in [
            (500_000.0, 8_000),
            (500_000.0, 60_000),
            (125_000.0, 8_000),
            (125_000.0, 30_000),
        ] {
            let rtt = Duration::from_millis(80);
            let (flow, frames) = simulate(rate, rtt, frame, 30);
            let budget = flow.link().budget().unwrap();
            let steady = &frames[frames.len() / 2..];
            for &(latency, before, _) in steady {
                assert!(
                    before < budget,
                    "a frame left with {before} bytes in flight, budget {budget}"
                );
                // Bounded in time: the queue ahead (at most the target's worth beyond what the link holds),
                // the round trip the bytes in flight span, the frame's own transfer and its round trip.
                let bound =
                    LATENCY_TARGET + rtt * 2 + Duration::from_secs_f64(frame as f64 / rate) + Duration::from_millis(10);
                assert!(
                    latency <= bound,
                    "latency {latency:?} over {bound:?} ({frame}-byte frames at {rate} B/s)"
                );
            }
            // And the link is used: the estimate (what was delivered) is most of its rate.
            let est = flow.link().rate().unwrap();
            assert!(est >= 0.7 * rate, "{est:.0} B/s delivered on a {rate:.0} B/s link");
        }
    }

    /// A source that pushes a frame every 50 ms while it is not paused (RDP's graphics pipeline), on a link
    /// of `rate` bytes/s and an 80 ms round trip, for `secs` of virtual time; with `paced`, it follows
    /// [`Flow::pace`] (the first frame after a pause carries what changed meanwhile: `resumed` bytes).
    /// Returns each frame's latency (sent to acknowledged) and when it was acknowledged.
    fn push_source(rate: f64, frame: usize, resumed: usize, secs: u64, paced: bool) -> Vec<(Duration, Duration)> {
        let rtt = Duration::from_millis(80);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut flow = Flow::new(6, DisplayMetrics::default());
        let mut link_free = t0;
        let mut acks: VecDeque<(Instant, u32, Instant)> = VecDeque::new();
        let mut next_frame = Some(t0);
        let mut after_pause = false;
        let mut out = Vec::new();
        loop {
            let ack = acks.front().map(|a| a.0);
            let room = if flow.source_paused() { flow.room_at() } else { None };
            let Some(now) = [ack, next_frame, room].into_iter().flatten().min() else {
                break;
            };
            if now >= end {
                break;
            }
            if ack == Some(now) {
                let (_, id, sent) = acks.pop_front().expect("an ack");
                flow.on_ack(id, now);
                out.push((now - sent, now - t0));
            } else if next_frame == Some(now) {
                let bytes = if std::mem::take(&mut after_pause) {
                    resumed
                } else {
                    frame
                };
                let msgs = flow.seal(vec![sized_image(bytes)], now);
                let ServerMsg::FrameEnd { frame_id } = msgs[msgs.len() - 1] else {
                    unreachable!()
                };
                let wire: u64 = msgs.iter().map(wire_bytes).sum();
                link_free = link_free.max(now) + Duration::from_secs_f64(wire as f64 / rate);
                acks.push_back((link_free + rtt, frame_id, now));
                next_frame = Some(now + Duration::from_millis(50));
            }
            if paced {
                match flow.pace(now) {
                    Some(Pace::Pause) => next_frame = None,
                    Some(Pace::Resume) => {
                        // The server answers at once with what changed while it was paused.
                        next_frame = Some(now);
                        after_pause = true;
                    }
                    None => {}
                }
            }
        }
        out
    }

    #[test]
    fn a_source_that_pushes_is_paused_so_the_latency_stays_bounded_in_time() {
        // 1 Mbit/s and 4 Mbit/s, fed more than they carry (H.264 frames of 25 and 40 KB), the first one after a
        // pause larger (what changed meanwhile).
        for (rate, frame, resumed) in [(125_000.0, 25_000, 60_000), (500_000.0, 40_000, 100_000)] {
            let unpaced = push_source(rate, frame, resumed, 20, false);
            let last = unpaced.last().expect("frames").0;
            assert!(
                last > Duration::from_secs(3),
                "without pausing, the queue grows on a {rate} B/s link: last latency {last:?}"
            );
            let paced = push_source(rate, frame, resumed, 20, true);
            let settled: Vec<Duration> = paced
                .iter()
                .filter(|(_, at)| *at > Duration::from_secs(2))
                .map(|(l, _)| *l)
                .collect();
            let worst = settled.iter().max().copied().expect("frames after 2 s");
            // The budget's queue, the round trip, and the transfer of the frame in flight and of the
            // resumed one.
            let bound = LATENCY_TARGET
                + Duration::from_millis(80)
                + Duration::from_secs_f64(2.0 * resumed as f64 / rate)
                + Duration::from_millis(100);
            assert!(
                worst <= bound,
                "paced on {rate} B/s: worst latency {worst:?} over {bound:?}"
            );
            let fps = settled.len() as f64 / 18.0;
            // The link does not idle while paused: at least 90 % of what it carries in resumed frames.
            let can = rate / resumed as f64;
            assert!(
                fps >= 0.9 * can,
                "paced on {rate} B/s: {fps:.2} frames/s, the link idles (it carries {can:.2} resumed frames/s)"
            );
        }
    }

    #[test]
    fn a_frame_larger_than_the_budget_does_not_leave_the_link_idle_for_its_acknowledgement() {
        // A screen of new text at 1 Mbit/s (57 KB, twice the budget) and a repaint at 4 Mbit/s, 80 ms.
        for (rate, frame) in [(125_000.0, 57_000), (500_000.0, 190_000)] {
            let rtt = Duration::from_millis(80);
            let secs = 30;
            let (clocked, _) = simulate_with(rate, rtt, frame, secs, false);
            let (drained, frames) = simulate_with(rate, rtt, frame, secs, true);
            let budget = drained.link().budget().unwrap();
            assert!(
                budget < frame as u64,
                "the case needs frames over the budget ({budget})"
            );
            // The link is used: frames leave before the last one is acknowledged.
            let carried = |n: usize| n as f64 * 0.75 * frame as f64 / secs as f64;
            let (n_clocked, n_drained) = (clocked.frame_id as usize, drained.frame_id as usize);
            assert!(
                carried(n_drained) >= 0.85 * rate,
                "{n_drained} frames: {:.0} B/s on a {rate:.0} B/s link",
                carried(n_drained)
            );
            assert!(
                n_drained > n_clocked,
                "{n_drained} frames, {n_clocked} clocked by acknowledgements"
            );
            // Bounded in time: the one frame ahead has at most the budget left to deliver at the estimated
            // rate (which the max filter may put up to a quarter above the link's).
            let queue = Duration::from_secs_f64(budget as f64 * 1.25 / rate);
            let bound = queue + rtt + Duration::from_secs_f64(frame as f64 / rate) + Duration::from_millis(10);
            for &(latency, before, _) in &frames[frames.len() / 2..] {
                assert!(
                    latency <= bound,
                    "latency {latency:?} over {bound:?} ({frame}-byte frames at {rate} B/s)"
                );
                assert!(
                    before < budget + frame as u64 + 64,
                    "{before} bytes in flight before a frame"
                );
            }
        }
    }

    #[test]
    fn content_is_quiet_until_much_of_the_screen_changes_and_quiet_again_once_it_stops() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = ContentRate::new(1280, 720);
        let screen = 1280 * 720;
        // Typing: a character cell ten times a second for 3 s.
        for i in 0..30 {
            assert_eq!(c.update(9 * 16, at(i * 100)), None);
        }
        assert!(c.quiet() && c.check_at().is_none(), "typing is quiet");
        // A few lines of text a second (5 strips of 800x16: 7 % of the screen per second) stay quiet.
        for i in 0..50 {
            assert_eq!(c.update(800 * 16, at(3_000 + i * 200)), None);
        }
        assert!(c.quiet());
        // Video: the whole screen 24 times a second is busy within the first second.
        let mut busy_at = None;
        for i in 0..48 {
            if c.update(screen, at(20_000 + i * 42)) == Some(false) {
                busy_at.get_or_insert(i);
            }
        }
        assert_eq!(busy_at, Some(0), "a full-screen change is busy at once");
        assert!(!c.quiet());
        // Busy content at 7 % a second stays busy (hysteresis): no switching back and forth.
        for i in 0..25 {
            assert_eq!(c.update(800 * 16, at(22_100 + i * 200)), None);
        }
        assert!(!c.quiet());
        // The screen stops: no more updates; the window's end says it is quiet.
        let check = c.check_at().expect("a busy screen is checked at its window's end");
        assert!(check <= at(27_100 + 1_000), "{:?}", check - t0);
        assert_eq!(c.check(check), None, "the last window still had changes");
        let next = c.check_at().expect("checked again");
        assert_eq!(c.check(next), Some(true));
        assert!(c.quiet() && c.check_at().is_none());
        // A resize keeps the mode.
        c.resize(1920, 1080);
        assert!(c.quiet());
    }

    #[test]
    fn a_fast_link_carries_many_small_frames_at_once_a_slow_one_few() {
        let (fast, _) = simulate(50_000_000.0, Duration::from_millis(1), 4_000, 5);
        let (slow, _) = simulate(125_000.0, Duration::from_millis(80), 4_000, 30);
        let fast_frames = fast.link().budget().unwrap() / 4_000;
        let slow_frames = slow.link().budget().unwrap() / 4_000;
        assert!(fast_frames >= u64::from(MAX_FRAMES_IN_FLIGHT), "{fast_frames}");
        assert!(
            (3..=8).contains(&slow_frames),
            "{slow_frames} frames of 4 KB in flight at 1 Mbit/s"
        );
    }

    #[test]
    fn a_session_that_sends_little_does_not_shrink_the_estimate() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut flow = Flow::new(6, DisplayMetrics::default());
        let frame = |n: usize| vec![sized_image(n)];
        // A 100 KB frame over a 1 MB/s link with a 20 ms round trip: ~1 MB/s.
        flow.seal(frame(100_000), at(0));
        flow.on_ack(1, at(120));
        let rate = flow.link().rate().unwrap();
        assert!((800_000.0..=1_000_000.0).contains(&rate), "{rate}");
        // Then a typed character now and then: tiny samples, far under the budget.
        for i in 0..50u32 {
            let t = 200 + u64::from(i) * 100;
            flow.seal(frame(200), at(t));
            flow.on_ack(i + 2, at(t + 21));
        }
        assert_eq!(
            flow.link().rate(),
            Some(rate),
            "app-limited samples lowered the estimate"
        );
        assert_eq!(flow.link().min_rtt(), Some(Duration::from_millis(21)));
    }

    #[test]
    fn acknowledgements_out_of_order_or_for_frames_never_sent_keep_the_books_straight() {
        let t0 = Instant::now();
        let mut flow = Flow::new(6, DisplayMetrics::default());
        for _ in 0..2 {
            flow.seal(
                vec![ServerMsg::Fill {
                    rect: rect(0, 0, 1, 1),
                    rgb: [0; 3],
                }],
                t0,
            );
        }
        assert!(flow.in_flight_bytes() > 0);
        assert_eq!(flow.on_ack(7, t0), None);
        flow.on_ack(2, t0 + Duration::from_millis(5));
        assert_eq!(flow.in_flight_bytes(), 0);
        flow.on_ack(1, t0 + Duration::from_millis(6));
        assert_eq!(flow.in_flight_bytes(), 0);
        assert!(flow.can_send());
    }

    #[tokio::test]
    async fn updates_merged_while_behind_send_a_video_region_once_and_keep_the_scroll_copies() {
        let mut fb = Framebuffer::new(64, 64);
        let mut pending = Frame::default();
        // Ten video frames over one region, then a fill over another: one image, one fill.
        for i in 0..10u8 {
            pending.jpeg(&mut fb, rect(0, 0, 16, 16), pattern_jpeg(16, 16, i));
            pending.fill(&mut fb, rect(32, 0, 8, 8), [i, 0, 0]);
        }
        // A scroll of three lines, each exposing a new strip at the bottom.
        for i in 0..3u8 {
            pending.copy(&mut fb, 0, 36, rect(0, 32, 64, 24));
            fb.put(&rect(0, 56, 64, 4), &[i * 40; 64 * 4 * 4]);
            pending.damage(rect(0, 56, 64, 4));
        }
        let msgs = pending.finish(&mut fb, 6).await;
        let images = msgs
            .iter()
            .filter(|m| matches!(m, ServerMsg::Image { rect, .. } if rect.y == 0))
            .count();
        let fills = msgs
            .iter()
            .filter(|m| matches!(m, ServerMsg::Fill { rect, .. } if rect.x == 32))
            .count();
        let copies = msgs.iter().filter(|m| matches!(m, ServerMsg::Copy { .. })).count();
        let strips = msgs
            .iter()
            .filter(|m| matches!(m, ServerMsg::Image { rect, .. } | ServerMsg::Fill { rect, .. } if rect.y == 56))
            .count();
        assert_eq!((images, fills, copies, strips), (1, 1, 3, 3), "{msgs:?}");
        // The last video frame is the one sent.
        assert!(
            msgs.iter()
                .any(|m| matches!(m, ServerMsg::Image { data, .. } if *data == pattern_jpeg(16, 16, 9)))
        );
    }

    #[tokio::test]
    async fn a_merged_scroll_longer_than_its_region_becomes_one_repaint_of_the_region() {
        // 120 lines a second at 2 frames a second: each frame merges ~10 scrolls of 6 lines over a region
        // of 51: more text than the region holds scrolled through it.
        let (w, h) = (1280u16, 720u16);
        let mut fb = Framebuffer::new(w, h);
        let mut pending = Frame::default();
        let strip = 84u16;
        for i in 0..10u32 {
            pending.copy(&mut fb, 0, strip, rect(0, 0, w, h - strip));
            let text = text_like(w, strip, i);
            fb.put(&rect(0, h - strip, w, strip), &text);
            pending.damage(rect(0, h - strip, w, strip));
        }
        let msgs = pending.finish(&mut fb, 6).await;
        let copies = msgs.iter().filter(|m| matches!(m, ServerMsg::Copy { .. })).count();
        let area: u64 = msgs
            .iter()
            .filter_map(|m| match m {
                ServerMsg::Image { rect, .. } | ServerMsg::Fill { rect, .. } => {
                    Some(u64::from(rect.width) * u64::from(rect.height))
                }
                _ => None,
            })
            .sum();
        assert_eq!(copies, 0, "a repaint needs no copies");
        assert!(
            area <= u64::from(w) * u64::from(h),
            "{area} pixels drawn for a {w}x{h} region"
        );
        // Six scrolls fit: they stay copies and strips.
        let mut pending = Frame::default();
        for i in 0..4u32 {
            pending.copy(&mut fb, 0, strip, rect(0, 0, w, h - strip));
            fb.put(&rect(0, h - strip, w, strip), &text_like(w, strip, i));
            pending.damage(rect(0, h - strip, w, strip));
        }
        let msgs = pending.finish(&mut fb, 6).await;
        assert_eq!(msgs.iter().filter(|m| matches!(m, ServerMsg::Copy { .. })).count(), 4);
    }

    #[tokio::test]
    async fn a_write_under_a_later_copys_source_is_kept() {
        let mut fb = Framebuffer::new(32, 32);
        let mut pending = Frame::default();
        pending.fill(&mut fb, rect(0, 0, 8, 8), [1, 2, 3]);
        // The copy reads the fill; a later fill over it must not drop the first one.
        pending.copy(&mut fb, 0, 0, rect(16, 16, 8, 8));
        pending.fill(&mut fb, rect(0, 0, 8, 8), [9, 9, 9]);
        let msgs = pending.finish(&mut fb, 6).await;
        let fills = msgs.iter().filter(|m| matches!(m, ServerMsg::Fill { .. })).count();
        assert_eq!(fills, 2, "{msgs:?}");
        assert_eq!(fb.extract(&rect(16, 16, 1, 1)), [1, 2, 3, 255]);
    }

    /// Text-like pixels: a white page with dark glyphs and a few antialiasing greys.
    fn text_like(width: u16, height: u16, seed: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(usize::from(width) * usize::from(height) * 4);
        let mut x = seed.wrapping_mul(2654435761) | 1;
        for py in 0..height {
            for px in 0..width {
                // Glyph cells 8x16; inside a glyph, strokes on some columns and rows.
                let cell = u32::from(px / 8) * 31 + u32::from(py / 16) * 17 + seed;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let stroke =
                    !cell.is_multiple_of(7) && ((px % 8) == (cell % 5) as u16 || (py % 16) == (cell % 11) as u16 + 2);
                let v = if stroke {
                    [0u8, 40, 90, 160][(x % 4) as usize]
                } else {
                    255
                };
                out.extend_from_slice(&[v, v, v, 255]);
            }
        }
        out
    }

    fn decode_png(data: &[u8]) -> Vec<u8> {
        let mut dec = png::Decoder::new(std::io::Cursor::new(data));
        dec.set_transformations(png::Transformations::EXPAND);
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        match info.color_type {
            png::ColorType::Rgb => buf.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
            png::ColorType::Rgba => buf,
            other => panic!("unexpected colour type {other:?}"),
        }
    }

    /// `rgba` as the smallest PNG the `Compact` effort makes: indexed (1, 2, 4 or 8 bits per pixel) when it has
    /// at most 256 colours, RGB otherwise; deflate at its default level, adaptive filters for RGB.
    fn png_compact(width: u16, height: u16, rgba: &[u8]) -> Vec<u8> {
        match Indexed::of(rgba) {
            Some(ix) => ix.png(width, height),
            None => png_rgb_compact(width, height, rgba),
        }
    }

    #[test]
    fn compact_images_are_the_same_pixels_and_smaller() {
        for (w, h, colours) in [(1280u16, 48u16, 5), (200, 30, 2), (64, 64, 300)] {
            let rgba: Vec<u8> = if colours > 256 {
                (0..usize::from(w) * usize::from(h))
                    .flat_map(|i| [(i % 251) as u8, (i / 7 % 253) as u8, 3, 255])
                    .collect()
            } else if colours == 2 {
                (0..usize::from(w) * usize::from(h))
                    .flat_map(|i| if i % 3 == 0 { [0, 0, 0, 255] } else { [255; 4] })
                    .collect()
            } else {
                text_like(w, h, 7)
            };
            let compact = png_compact(w, h, &rgba);
            assert_eq!(decode_png(&compact), rgba, "{w}x{h}, {colours} colours");
            let rgb: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            let fast = png(w, h, &rgb, png::ColorType::Rgb);
            assert_eq!(decode_png(&fast), rgba);
            if colours <= 256 {
                assert!(
                    compact.len() * 2 <= fast.len(),
                    "{w}x{h}: compact {} bytes, fast {}",
                    compact.len(),
                    fast.len()
                );
            }
        }
    }

    /// A server with an update of `update_bytes` every `every` on a link of `rate` bytes/s and round trip
    /// `rtt`, for `secs`, starting with `flow`: an update goes out when the link has room, otherwise it waits
    /// ([`Flow::merged`]) and merges with the next ones until an acknowledgement makes room (as the VNC
    /// actor does). Returns the flow and whether it was link-bound after each second.
    fn with_content(
        mut flow: Flow,
        t0: Instant,
        (rate, rtt): (f64, Duration),
        (every, update_bytes): (Duration, usize),
        secs: u64,
    ) -> (Flow, Vec<bool>) {
        let mut now = t0;
        let mut link_free = t0;
        let mut acks: VecDeque<(Instant, u32)> = VecDeque::new();
        let mut next_update = t0;
        let mut waiting = false;
        let mut bound = Vec::new();
        let mut next_second = t0 + Duration::from_secs(1);
        let mut send = |flow: &mut Flow, now: Instant, acks: &mut VecDeque<(Instant, u32)>| {
            let msgs = flow.seal(vec![sized_image(update_bytes)], now);
            let ServerMsg::FrameEnd { frame_id } = msgs[msgs.len() - 1] else {
                unreachable!()
            };
            let bytes: u64 = msgs.iter().map(wire_bytes).sum();
            link_free = link_free.max(now) + Duration::from_secs_f64(bytes as f64 / rate);
            acks.push_back((link_free + rtt, frame_id));
        };
        while now < t0 + Duration::from_secs(secs) {
            let ack_at = acks.front().map(|a| a.0);
            if ack_at.is_some_and(|a| a <= next_update) {
                let (at, id) = acks.pop_front().unwrap();
                now = at;
                flow.on_ack(id, now);
                if waiting && flow.can_send() {
                    waiting = false;
                    send(&mut flow, now, &mut acks);
                }
            } else {
                now = next_update;
                next_update += every;
                if flow.can_send() {
                    send(&mut flow, now, &mut acks);
                } else if !waiting {
                    waiting = true;
                    flow.merged();
                }
            }
            while now >= next_second {
                bound.push(flow.link_bound());
                next_second += Duration::from_secs(1);
            }
        }
        // The browser acknowledges what is still in flight.
        for (at, id) in acks {
            flow.on_ack(id, at);
        }
        (flow, bound)
    }

    #[test]
    fn a_link_that_holds_the_updates_back_is_the_bottleneck_until_it_is_fast() {
        let new = || Flow::new(6, DisplayMetrics::default());
        let t0 = Instant::now();
        let slow = (125_000.0, Duration::from_millis(80));
        let lan = (50_000_000.0, Duration::from_millis(1));
        let text_heavy = (Duration::from_millis(50), 20_000);
        // 400 KB/s of updates on a 1 Mbit/s link: bound within its first seconds, and compact.
        let (flow, bound) = with_content(new(), t0, slow, text_heavy, 10);
        assert!(bound[2..].iter().all(|b| *b), "{bound:?}");
        assert_eq!(flow.effort(), Effort::Compact);
        // The same content on a LAN: never.
        let (lan_flow, bound) = with_content(new(), t0, lan, text_heavy, 10);
        assert!(bound.iter().all(|b| !*b), "{bound:?}");
        assert_eq!(lan_flow.effort(), Effort::Fast);
        // Content the slow link carries (a line of text 5 times a second): nothing waits, never bound.
        let (_, bound) = with_content(new(), t0, slow, (Duration::from_millis(200), 2_000), 10);
        assert!(bound.iter().all(|b| !*b), "{bound:?}");
        // Bound, then the link becomes a LAN: no longer bound once the rate shows it.
        let (f, bound) = with_content(flow, t0 + Duration::from_secs(12), lan, text_heavy, 10);
        assert!(
            !bound[bound.len() - 1],
            "{bound:?} {:?} {:?}",
            f.link().rate(),
            f.link().min_rtt()
        );
    }

    #[test]
    fn the_effort_follows_the_link_not_a_fixed_threshold() {
        // Not measured yet: compact (the first picture). A 4 Mbit/s link: compact. A LAN: fast.
        let flow = Flow::new(6, DisplayMetrics::default());
        assert_eq!(flow.effort(), Effort::Compact);
        let (slow, _) = simulate(500_000.0, Duration::from_millis(80), 20_000, 5);
        assert_eq!(slow.effort(), Effort::Compact);
        let (fast, _) = simulate(50_000_000.0, Duration::from_millis(1), 20_000, 2);
        assert_eq!(fast.effort(), Effort::Fast);
        // A machine whose compact encoder is measured so slow that it costs more time than it saves on
        // the link (1 MB of pixels: 20 KB less than the fast encoding, 100 ms more CPU): fast again.
        let mut slow_cpu = slow;
        for _ in 0..40 {
            slow_cpu.encoded(EncodeStats {
                effort: Effort::Compact,
                raw: 1_000_000,
                bytes: 70_000,
                secs: 0.1,
            });
        }
        assert_eq!(slow_cpu.effort(), Effort::Fast);
    }

    #[test]
    fn coalesced_damage_covers_every_change_and_stays_near_it() {
        let mut x = 12345u32;
        let mut next = |m: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % m
        };
        for round in 0..200 {
            let n = 1 + next(300) as usize;
            let rects: Vec<Rect> = (0..n)
                .map(|_| {
                    rect(
                        next(1270) as u16,
                        next(710) as u16,
                        1 + next(10) as u16,
                        1 + next(10) as u16,
                    )
                })
                .collect();
            let out = coalesce(&rects);
            let b = bounding(&rects);
            // Every changed pixel is in some output rectangle, and no output leaves the bounding box.
            for r in &rects {
                for (px, py) in [(r.x, r.y), (r.x + r.width - 1, r.y + r.height - 1)] {
                    assert!(
                        out.iter().any(|o| covers(o, &rect(px, py, 1, 1))),
                        "round {round}: ({px}, {py}) lost"
                    );
                }
            }
            assert!(out.iter().all(|o| covers(&b, o)));
            // At most the tiles touched, and no more area than they hold.
            let tiles: std::collections::HashSet<(u16, u16)> = rects
                .iter()
                .flat_map(|r| {
                    [
                        (r.x / 64, r.y / 64),
                        ((r.x + r.width - 1) / 64, (r.y + r.height - 1) / 64),
                    ]
                })
                .collect();
            let area: u64 = out.iter().map(|o| u64::from(o.width) * u64::from(o.height)).sum();
            assert!(
                area <= 4 * tiles.len() as u64 * 64 * 64,
                "round {round}: {area} px for {} tiles",
                tiles.len()
            );
        }
        // Two characters typed far apart stay two small rectangles, not the screen between them.
        let out = coalesce(&[rect(10, 10, 8, 16), rect(1200, 700, 8, 16)]);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.width <= 128 && o.height <= 128), "{out:?}");
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

    #[test]
    fn on_a_slow_link_antialiased_text_is_lossless_and_photographs_stay_jpeg() {
        let r = rect(0, 0, 256, 64);
        // "Text": white with glyph pixels in 200 grey levels (antialiasing): photographic to the sampling.
        let text: Vec<u8> = (0..256u32 * 64)
            .flat_map(|i| {
                let h = i.wrapping_mul(2_654_435_761) >> 16;
                let g = if h % 5 < 2 { (h / 5 % 200) as u8 } else { 255 };
                [g, g, g, 255]
            })
            .collect();
        let kind = |m: &ServerMsg| match m {
            ServerMsg::Image { format, .. } => *format,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(&encode_rect_with(r, &text, 6, Effort::Fast)), ImageFormat::Jpeg);
        let compact = encode_rect_with(r, &text, 6, Effort::Compact);
        assert_eq!(kind(&compact), ImageFormat::Png);
        let ServerMsg::Image { data, .. } = &compact else {
            unreachable!()
        };
        assert_eq!(decode_png(data), text, "lossless");
        // More than 256 colours: JPEG at either effort.
        let photo: Vec<u8> = (0..256u32 * 64)
            .flat_map(|i| [(i * 7) as u8, (i * 13 / 64) as u8, (i % 251) as u8, 255])
            .collect();
        assert_eq!(
            kind(&encode_rect_with(r, &photo, 6, Effort::Compact)),
            ImageFormat::Jpeg
        );
    }

    #[tokio::test]
    async fn at_compact_effort_many_strips_are_one_image() {
        let mut fb = Framebuffer::new(64, 64);
        let strips = |frame: &mut Frame, fb: &mut Framebuffer| {
            for y in (0..64).step_by(8) {
                let r = rect(0, y, 48, 6);
                let px: Vec<u8> = (0..48 * 6).flat_map(|i| [(i % 3) as u8 * 60, 0, 0, 255]).collect();
                fb.put(&r, &px);
                frame.damage(r);
            }
        };
        let images = |msgs: &[ServerMsg]| msgs.iter().filter(|m| matches!(m, ServerMsg::Image { .. })).count();
        let mut frame = Frame::default();
        strips(&mut frame, &mut fb);
        let (fast, _) = frame.finish_with(&mut fb, 6, Effort::Fast).await;
        assert_eq!(images(&fast), 8);
        let mut frame = Frame::default();
        strips(&mut frame, &mut fb);
        let (compact, _) = frame.finish_with(&mut fb, 6, Effort::Compact).await;
        assert_eq!(images(&compact), 1, "{compact:?}");
        let Some(ServerMsg::Image { rect: r, .. }) = compact.first() else {
            panic!()
        };
        assert_eq!(*r, rect(0, 0, 48, 62), "the strips' bounding box");
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
        let msgs = frame.finish(&mut fb, 6).await;
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
                1 => frame.jpeg(&mut fb, r, solid_jpeg(1, 1, [i as u8, 3, 4])),
                _ => frame.message(ServerMsg::Cursor {
                    hot_x: 0,
                    hot_y: 0,
                    png: vec![i as u8],
                }),
            }
            assert!(frame.ops.len() <= MAX_FRAME_OPS + 2, "{} ops at {i}", frame.ops.len());
        }
        let msgs = frame.finish(&mut fb, 6).await;
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
        let jpeg = solid_jpeg(full.width, full.height, [7, 7, 7]);
        let big = [jpeg.clone(), vec![0; area_bytes(&full) / 3 - jpeg.len()]].concat();
        for _ in 0..8 {
            frame.jpeg(&mut fb, full, big.clone());
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
        frame.jpeg(&mut fb, rect(0, 0, 1, 1), solid_jpeg(1, 1, [40, 50, 60]));
        let msgs = frame.finish(&mut fb, 6).await;
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert_eq!(fb.extract(&rect(1, 1, 1, 1)), [1, 2, 3, 255]);
        assert_near(&fb.extract(&rect(0, 0, 1, 1)), [40, 50, 60]);
        assert_eq!(
            fb.take_lazy_counts(),
            LazyCounts { kept: 1, decoded: 1 },
            "the damage read it"
        );
    }

    /// A JPEG of one colour.
    fn solid_jpeg(width: u16, height: u16, rgb: [u8; 3]) -> Vec<u8> {
        let px: Vec<u8> = (0..usize::from(width) * usize::from(height))
            .flat_map(|_| rgb)
            .collect();
        rgb_jpeg(&px, width, height, 95)
    }

    /// RGB pixels as a JPEG at `quality`.
    fn rgb_jpeg(px: &[u8], width: u16, height: u16, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(px, width, height, jpeg_encoder::ColorType::Rgb)
            .expect("encodable");
        out
    }

    /// Every pixel of `rgba` is within JPEG's error of `rgb`.
    #[track_caller]
    fn assert_near(rgba: &[u8], rgb: [u8; 3]) {
        assert!(!rgba.is_empty());
        for p in rgba.chunks_exact(4) {
            for c in 0..3 {
                assert!(p[c].abs_diff(rgb[c]) <= 4, "{:?} is not {rgb:?}", &p[..3]);
            }
        }
    }

    /// A JPEG whose pixels all differ (so a misplaced image shows).
    fn pattern_jpeg(width: u16, height: u16, seed: u8) -> Vec<u8> {
        let px: Vec<u8> = (0..height)
            .flat_map(|y| {
                (0..width).flat_map(move |x| {
                    [
                        (x as u8).wrapping_mul(7).wrapping_add(seed),
                        (y as u8).wrapping_mul(5),
                        seed,
                    ]
                })
            })
            .collect();
        rgb_jpeg(&px, width, height, 90)
    }

    /// A deterministic generator for the randomized tests (xorshift64 from `seed`): a number below `n`.
    fn xorshift(seed: u64) -> impl FnMut(u64) -> u16 {
        let mut s = seed;
        move |n| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % n) as u16
        }
    }

    #[test]
    fn lazy_decoding_gives_the_pixels_of_eager_decoding_whatever_the_operations() {
        // Random writes, images, fills, copies and reads on a lazy framebuffer and on one that decodes every
        // image at once: every read must be byte for byte the same.
        let (w, h) = (96u16, 64u16);
        let mut rng = xorshift(0x2545_f491_4f6c_dd1d);
        let mut next = |n: u32| rng(u64::from(n));
        for round in 0..6 {
            let (mut lazy, mut eager) = (Framebuffer::new(w, h), Framebuffer::new(w, h));
            for step in 0..300 {
                let (rw, rh) = (1 + next(40), 1 + next(40));
                let r = rect(next(u32::from(w - rw + 1)), next(u32::from(h - rh + 1)), rw, rh);
                match next(10) {
                    0..=3 => {
                        let jpeg = pattern_jpeg(rw, rh, (step % 251) as u8);
                        eager.put(&r, &jpeg_pixels(&jpeg, rw, rh).expect("decodes"));
                        lazy.put_jpeg(&r, jpeg.into());
                    }
                    4 => {
                        let rgb = [next(256) as u8, 1, 2];
                        eager.fill(&r, rgb);
                        lazy.fill(&r, rgb);
                    }
                    5 => {
                        let px: Vec<u8> = (0..usize::from(rw) * usize::from(rh) * 4).map(|i| i as u8).collect();
                        eager.put(&r, &px);
                        lazy.put(&r, &px);
                    }
                    6..=8 => {
                        let (sx, sy) = (next(u32::from(w - rw + 1)), next(u32::from(h - rh + 1)));
                        eager.copy(sx, sy, &r);
                        lazy.copy(sx, sy, &r);
                    }
                    _ => assert_eq!(
                        lazy.extract(&r),
                        eager.extract(&r),
                        "round {round} step {step}: read {r:?}"
                    ),
                }
                assert!(lazy.undecoded.len() <= MAX_UNDECODED);
            }
            assert_eq!(
                lazy.extract(&lazy.full()),
                eager.extract(&eager.full()),
                "round {round}: the whole screen"
            );
            assert_eq!(lazy.take_invalid(), None);
        }
    }

    #[test]
    fn copies_match_a_plain_pixel_model_whatever_their_shape() {
        // Random copies (many of them wide vertical ones, which remap rows), fills and writes against a plain
        // row-major buffer with a copy through a temporary.
        let (w, h) = (40u16, 30u16);
        let mut model = vec![0u8; usize::from(w) * usize::from(h) * 4];
        let mut fb = Framebuffer::new(w, h);
        let mut rng = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: u16| rng(u64::from(n));
        let at = |x: u16, y: u16| (usize::from(y) * usize::from(w) + usize::from(x)) * 4;
        for step in 0..3000u32 {
            let wide = next(2) == 0;
            let rw = if wide { w / 2 + next(w / 2 + 1) } else { 1 + next(w) };
            let rh = 1 + next(h);
            let r = rect(next(w - rw + 1), next(h - rh + 1), rw, rh);
            match next(4) {
                0 => {
                    let rgb = [step as u8, (step >> 8) as u8, 7];
                    fb.fill(&r, rgb);
                    for y in r.y..r.y + r.height {
                        for x in r.x..r.x + r.width {
                            model[at(x, y)..at(x, y) + 4].copy_from_slice(&[rgb[0], rgb[1], rgb[2], 255]);
                        }
                    }
                }
                1 => {
                    let px: Vec<u8> = (0..usize::from(rw) * usize::from(rh) * 4)
                        .map(|i| (i as u32 ^ step) as u8)
                        .collect();
                    fb.put(&r, &px);
                    for (i, y) in (r.y..r.y + r.height).enumerate() {
                        let row = &px[i * usize::from(rw) * 4..(i + 1) * usize::from(rw) * 4];
                        model[at(r.x, y)..at(r.x, y) + row.len()].copy_from_slice(row);
                    }
                }
                _ => {
                    let sx = if wide { r.x } else { next(w - rw + 1) };
                    let sy = next(h - rh + 1);
                    fb.copy(sx, sy, &r);
                    let tmp: Vec<Vec<u8>> = (0..rh)
                        .map(|i| model[at(sx, sy + i)..at(sx, sy + i) + usize::from(rw) * 4].to_vec())
                        .collect();
                    for (i, row) in tmp.iter().enumerate() {
                        let y = r.y + i as u16;
                        model[at(r.x, y)..at(r.x, y) + row.len()].copy_from_slice(row);
                    }
                }
            }
            if step % 100 == 0 {
                assert_eq!(fb.extract(&fb.full()), model, "step {step}");
            }
        }
        assert_eq!(fb.extract(&fb.full()), model);
    }

    #[test]
    fn scrolled_text_in_jpeg_strips_is_never_decoded() {
        // A terminal scrolling up 8 rows per update, each update's new strip a JPEG (antialiased text): the
        // strips move up undecoded and are cut away at the top.
        let (w, h) = (128u16, 96u16);
        let mut fb = Framebuffer::new(w, h);
        for i in 0..40u8 {
            fb.copy(2, 10, &rect(2, 2, w - 4, h - 12));
            fb.put_jpeg(&rect(2, h - 10, w - 4, 8), pattern_jpeg(w - 4, 8, i).into());
            fb.fill(&rect(0, 0, w, 2), [255, 255, 255]);
        }
        let c = fb.take_lazy_counts();
        assert_eq!(c, LazyCounts { kept: 40, decoded: 0 });
        assert!(
            fb.undecoded.len() <= usize::from(h / 8) * 2,
            "{} kept",
            fb.undecoded.len()
        );
        // And they land where the eager path puts them.
        let mut eager = Framebuffer::new(w, h);
        for i in 0..40u8 {
            eager.copy(2, 10, &rect(2, 2, w - 4, h - 12));
            let jpeg = pattern_jpeg(w - 4, 8, i);
            eager.put(
                &rect(2, h - 10, w - 4, 8),
                &jpeg_pixels(&jpeg, w - 4, 8).expect("decodes"),
            );
            eager.fill(&rect(0, 0, w, 2), [255, 255, 255]);
        }
        assert_eq!(fb.extract(&fb.full()), eager.extract(&eager.full()));
    }

    #[test]
    fn a_passed_through_jpeg_is_decoded_only_when_its_pixels_are_read() {
        let mut fb = Framebuffer::new(64, 32);
        // A video tile, replaced by the next frame's tile at the same place: never decoded.
        fb.put_jpeg(&rect(0, 0, 32, 32), solid_jpeg(32, 32, [200, 0, 0]).into());
        fb.put_jpeg(&rect(0, 0, 32, 32), solid_jpeg(32, 32, [0, 200, 0]).into());
        fb.put(&rect(32, 0, 32, 32), &[9; 32 * 32 * 4]);
        fb.fill(&rect(40, 0, 8, 8), [1, 2, 3]);
        assert_eq!(fb.undecoded.len(), 1, "the covered tile was dropped");
        assert_eq!(fb.lazy.decoded, 0, "writes beside an undecoded image decode nothing");
        // A newer image over part of it, then a fill over that one: the green image is cut around them
        // (two pieces), the blue one dropped; nothing is decoded.
        fb.put_jpeg(&rect(0, 0, 16, 16), solid_jpeg(16, 16, [0, 0, 200]).into());
        fb.fill(&rect(0, 0, 16, 16), [5, 5, 5]);
        assert_eq!(fb.undecoded.len(), 2);
        assert_eq!(fb.lazy.decoded, 0);
        // A read decodes it, once for both pieces.
        assert_near(&fb.extract(&rect(16, 0, 16, 32)), [0, 200, 0]);
        assert!(fb.undecoded.is_empty());
        assert_near(&fb.extract(&rect(0, 16, 16, 16)), [0, 200, 0]);
        assert_eq!(
            fb.extract(&rect(0, 0, 1, 1)),
            [5, 5, 5, 255],
            "the newer fill stays on top"
        );
        assert_eq!(fb.take_lazy_counts(), LazyCounts { kept: 3, decoded: 1 });
        assert!(fb.undecoded.is_empty() && fb.undecoded_bytes() == 0);
        assert_eq!(fb.take_invalid(), None);
    }

    #[test]
    fn undecoded_images_land_in_their_order_whatever_is_read_first() {
        // Two overlapping undecoded images (red, then green over its right half) and a fill partly over
        // the green one: the pixels must be as if each had been decoded when it came.
        let expect = |fb: &mut Framebuffer| {
            assert_near(&fb.extract(&rect(0, 0, 16, 32)), [200, 0, 0]);
            assert_near(&fb.extract(&rect(16, 0, 24, 8)), [0, 200, 0]);
            assert_near(&fb.extract(&rect(16, 8, 32, 24)), [0, 200, 0]);
            assert_eq!(fb.extract(&rect(40, 0, 8, 8)), [1, 2, 3, 255].repeat(64));
            assert_near(&fb.extract(&rect(40, 8, 8, 24)), [0, 200, 0]);
        };
        for first_read in [
            rect(0, 0, 4, 4),
            rect(20, 0, 4, 4),
            rect(44, 20, 4, 4),
            rect(60, 0, 4, 4),
        ] {
            let mut fb = Framebuffer::new(64, 32);
            fb.put_jpeg(&rect(0, 0, 32, 32), solid_jpeg(32, 32, [200, 0, 0]).into());
            fb.put_jpeg(&rect(16, 0, 32, 32), solid_jpeg(32, 32, [0, 200, 0]).into());
            fb.fill(&rect(40, 0, 8, 8), [1, 2, 3]);
            fb.extract(&first_read);
            expect(&mut fb);
        }
        // A copy reads its source and overwrites its destination.
        let mut fb = Framebuffer::new(64, 32);
        fb.put_jpeg(&rect(0, 0, 32, 32), solid_jpeg(32, 32, [200, 0, 0]).into());
        fb.put_jpeg(&rect(32, 0, 32, 32), solid_jpeg(32, 32, [0, 0, 200]).into());
        fb.copy(0, 0, &rect(40, 8, 8, 8));
        assert_near(&fb.extract(&rect(40, 8, 8, 8)), [200, 0, 0]);
        assert_near(&fb.extract(&rect(32, 0, 8, 8)), [0, 0, 200]);
    }

    #[test]
    fn undecoded_images_are_bounded_and_a_broken_one_is_reported_when_read() {
        let mut fb = Framebuffer::new(256, 256);
        let tile = solid_jpeg(8, 8, [10, 20, 30]);
        for i in 0..(MAX_UNDECODED as u16 + 10) {
            fb.put_jpeg(&rect(i % 32 * 8, i / 32 * 8, 8, 8), tile.clone().into());
        }
        assert_eq!(fb.undecoded.len(), MAX_UNDECODED);
        assert_eq!(fb.take_lazy_counts().decoded, 10, "the oldest were decoded");
        assert_near(&fb.extract(&rect(0, 0, 8, 8)), [10, 20, 30]);
        let mut big = solid_jpeg(16, 16, [1, 1, 1]);
        big.resize(MAX_UNDECODED_BYTES + 1, 0);
        fb.put_jpeg(&rect(0, 128, 16, 16), big.into());
        assert!(fb.undecoded_bytes() <= MAX_UNDECODED_BYTES);

        // The headers are checked when it comes; a scan that does not decode, when it is read.
        let jpeg = solid_jpeg(16, 16, [0, 0, 0]);
        assert!(jpeg_fits(&jpeg, 16, 16));
        assert!(!jpeg_fits(&jpeg, 16, 17), "a lie about its size");
        assert!(!jpeg_fits(&[0xff, 0xd8, 0xff], 16, 16), "truncated");
        assert!(!jpeg_fits(b"not a jpeg at all", 16, 16));
        let mut fb = Framebuffer::new(16, 16);
        fb.put_jpeg(&rect(0, 0, 16, 16), jpeg[..jpeg.len() / 2].to_vec().into());
        assert_eq!(fb.take_invalid(), None, "not read yet");
        fb.extract(&rect(0, 0, 1, 1));
        assert_eq!(fb.take_invalid(), Some(rect(0, 0, 16, 16)));
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
        let full = fb.full();
        fb.put(&full, &old);
        let mut new: Vec<u8> = (13..h).flat_map(row).collect();
        new.extend(std::iter::repeat_n([9u8, 9, 9, 255], usize::from(w) * 13).flatten());
        let s = detect_vertical_scroll(&mut fb, &full, &new, usize::from(w) * 4).expect("a scroll");
        assert_eq!(s.src_y, 13);
        assert_eq!(s.dst, rect(0, 0, w, h - 13));
        // Nothing moved: no scroll.
        assert_eq!(detect_vertical_scroll(&mut fb, &full, &old, usize::from(w) * 4), None);
        // A blank screen matches anywhere, so it is never taken for a scroll.
        let mut blank = Framebuffer::new(w, h);
        assert_eq!(
            detect_vertical_scroll(&mut blank, &full, &vec![0; old.len()], usize::from(w) * 4),
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
