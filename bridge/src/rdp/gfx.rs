//! The RDP graphics pipeline (MS-RDPEGFX) with the server's H.264 passed through to the browser.
//!
//! - [`GfxChannel`] is the dynamic channel: it advertises capability set 8.1 with AVC420 only (any 10.x set
//!   lets a server answer with AVC444, two streams a browser decoder cannot take as they are), undoes the
//!   ZGFX bulk compression and queues the decoded PDUs for the session, which takes them after each PDU
//!   the active stage processed. It answers nothing by itself: frame acknowledgements wait for the browser.
//! - [`Gfx`] is sans-IO: graphics PDUs in, wire frames out. AVC420 bitstreams become `VIDEO` messages
//!   without being decoded; solid fills, surface-to-surface copies and the cache become `FILL`, `COPY`,
//!   `CACHE_STORE` and `CACHE_DRAW`; planar, ClearCodec and uncompressed tiles are decoded here and sent
//!   as images. It also keeps what a browser that attaches later needs for a correct picture: everything
//!   sent since the last full-surface key frame (a server sends one at the start and every 250 frames).
//!
//! Surfaces the server does not map to the output (offscreen surfaces), AVC444, RemoteFX, progressive and
//! alpha commands are counted and skipped: the servers tested (FreeRDP's shadow server) never send them
//! with this capability set.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ironrdp_core::{Decode as _, ReadCursor, impl_as_any};
use ironrdp_dvc::{DvcClientProcessor, DvcMessage, DvcProcessor};
use ironrdp_egfx::pdu::{
    Avc420BitmapStream, CapabilitiesAdvertisePdu, CapabilitiesV81Flags, CapabilitySet, Codec1Type, FrameAcknowledgePdu,
    GfxPdu, QueueDepth, WireToSurface1Pdu,
};
use ironrdp_graphics::clearcodec::ClearCodecDecoder;
use ironrdp_graphics::rdp6::BitmapStreamDecoder;
use ironrdp_graphics::zgfx;
use ironrdp_pdu::geometry::ExclusiveRectangle;
use ironrdp_pdu::{PduResult, decode_err};
use portico_proto::wire::{Rect, ServerMsg};

use crate::display::encode_rect;

/// Most bytes kept for a browser that attaches later (the messages since the last key frame); past it the
/// history is dropped, and such a browser sees the picture from the next key frame on.
const MAX_REPLAY_BYTES: usize = 32 * 1024 * 1024;
/// Most bytes of messages one server frame may collect (a server that never ends its frame, or floods
/// it): past it the frame collapses to its latest key frame or is dropped with a skip.
const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Most graphics PDUs queued between two looks of the session (a server that floods one PDU with
/// thousands of commands): past it the channel fails, which ends the session with a clear reason.
const MAX_QUEUED_PDUS: usize = 65_536;

/// The PDUs the channel decoded, for the session to take.
pub type GfxQueue = Arc<Mutex<VecDeque<GfxPdu>>>;

/// The graphics pipeline's dynamic channel.
pub struct GfxChannel {
    queue: GfxQueue,
    zgfx: zgfx::Decompressor,
    buf: Vec<u8>,
}

impl GfxChannel {
    pub fn new(queue: GfxQueue) -> Self {
        GfxChannel {
            queue,
            zgfx: zgfx::Decompressor::new(),
            buf: Vec::new(),
        }
    }

    /// What the bridge advertises: 8.1 with AVC420 (and the small cache a browser keeps easily).
    pub fn capabilities() -> Vec<CapabilitySet> {
        vec![CapabilitySet::V8_1 {
            flags: CapabilitiesV81Flags::AVC420_ENABLED | CapabilitiesV81Flags::SMALL_CACHE,
        }]
    }
}

impl_as_any!(GfxChannel);

impl DvcProcessor for GfxChannel {
    fn channel_name(&self) -> &str {
        ironrdp_egfx::CHANNEL_NAME
    }

    fn start(&mut self, _channel_id: u32) -> PduResult<Vec<DvcMessage>> {
        let caps = CapabilitiesAdvertisePdu::from_typed(&Self::capabilities());
        Ok(vec![Box::new(GfxPdu::CapabilitiesAdvertise(caps))])
    }

    fn process(&mut self, _channel_id: u32, payload: &[u8]) -> PduResult<Vec<DvcMessage>> {
        self.buf.clear();
        self.zgfx
            .decompress(payload, &mut self.buf)
            .map_err(|e| decode_err!(e))?;
        let mut cur = ReadCursor::new(&self.buf);
        let mut queue = self
            .queue
            .lock()
            .map_err(|_| ironrdp_pdu::pdu_other_err!("graphics queue poisoned"))?;
        while !cur.is_empty() {
            let pdu: GfxPdu = ironrdp_pdu::decode_cursor(&mut cur).map_err(|e| decode_err!(e))?;
            if queue.len() >= MAX_QUEUED_PDUS {
                return Err(ironrdp_pdu::pdu_other_err!("too many graphics commands at once"));
            }
            queue.push_back(pdu);
        }
        Ok(Vec::new())
    }
}

impl DvcClientProcessor for GfxChannel {}

/// The acknowledgement of server frame `frame_id` (the browser drew it) with the frames decoded so far.
/// The queue depth (bytes the client holds undecoded) is not known at the bridge: `Unavailable`.
pub fn frame_ack(frame_id: u32, decoded: u32) -> GfxPdu {
    GfxPdu::FrameAcknowledge(FrameAcknowledgePdu {
        queue_depth: QueueDepth::Unavailable,
        frame_id,
        total_frames_decoded: decoded,
    })
}

/// What a graphics PDU produced.
#[derive(Debug, PartialEq)]
pub enum GfxOut {
    /// A complete server frame: the wire messages to send as one frame, and the server's frame id to
    /// acknowledge once the browser drew it.
    Frame { msgs: Vec<ServerMsg>, server_frame: u32 },
}

/// Why a graphics command was skipped (counted, logged once per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skipped {
    OffscreenSurface,
    UnknownSurface,
    /// A surface larger than the bridge's desktop limit, or a tile outside its surface.
    OutOfBounds,
    /// A frame that grew past its byte budget.
    FrameTooLarge,
    Codec(u16),
    Progressive,
    Undecodable,
}

struct Surface {
    width: u16,
    height: u16,
    /// Where the surface sits on the output, when the server mapped it.
    origin: Option<(u16, u16)>,
}

/// The graphics pipeline's state for one session (sans-IO).
pub struct Gfx {
    desktop: (u16, u16),
    /// The largest surface accepted (the bridge's desktop limit).
    max: portico_proto::limits::MaxDesktop,
    /// The server drives the display through the pipeline (it reset the graphics or created a surface).
    pub active: bool,
    frame_bytes: usize,
    surfaces: HashMap<u16, Surface>,
    /// Messages of the frame in progress (and of commands outside frames, sent with the next one).
    frame: Vec<ServerMsg>,
    /// Index in `frame` of a full-surface key frame: the history restarts there.
    key_at: Option<usize>,
    /// Everything sent since the last full-surface key frame; `None` once it outgrew its budget.
    replay: Option<Vec<ServerMsg>>,
    replay_bytes: usize,
    /// Whether the server sent H.264 yet.
    pub h264: bool,
    planar: BitmapStreamDecoder,
    clear: Option<ClearCodecDecoder>,
    pub skipped: HashMap<Skipped, u64>,
}

fn msg_bytes(m: &ServerMsg) -> usize {
    match m {
        ServerMsg::Video { data, rects, .. } => data.len() + rects.len() * 8 + 16,
        ServerMsg::Image { data, .. } => data.len() + 16,
        _ => 16,
    }
}

/// An exclusive rectangle as a wire rectangle moved by `(dx, dy)`; `None` when it is empty or inverted.
fn rect_at(r: &ExclusiveRectangle, dx: u16, dy: u16) -> Option<Rect> {
    let width = r.right.checked_sub(r.left).filter(|w| *w > 0)?;
    let height = r.bottom.checked_sub(r.top).filter(|h| *h > 0)?;
    Some(Rect {
        x: r.left.checked_add(dx)?,
        y: r.top.checked_add(dy)?,
        width,
        height,
    })
}

/// Whether an Annex B access unit holds an IDR slice (a decoder can start there).
pub fn has_idr(data: &[u8]) -> bool {
    let mut zeros = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == 1 && zeros >= 2 {
            if data.get(i + 1).is_some_and(|h| h & 0x1f == 5) {
                return true;
            }
            zeros = 0;
        } else if b == 0 {
            zeros += 1;
        } else {
            zeros = 0;
        }
    }
    false
}

impl Gfx {
    pub fn new(width: u16, height: u16, max: portico_proto::limits::MaxDesktop) -> Self {
        Gfx {
            desktop: (width, height),
            max,
            active: false,
            frame_bytes: 0,
            surfaces: HashMap::new(),
            frame: Vec::new(),
            key_at: None,
            replay: Some(Vec::new()),
            replay_bytes: 0,
            h264: false,
            planar: BitmapStreamDecoder::default(),
            clear: None,
            skipped: HashMap::new(),
        }
    }

    pub fn desktop(&self) -> (u16, u16) {
        self.desktop
    }

    fn skip(&mut self, why: Skipped) {
        let n = self.skipped.entry(why).or_default();
        if *n == 0 {
            tracing::warn!(?why, "Graphics command skipped");
        }
        *n += 1;
    }

    /// The origin of mapped surface `id`, counting a skip otherwise.
    fn mapped(&mut self, id: u16) -> Option<(u16, u16)> {
        match self.surfaces.get(&id) {
            Some(Surface { origin: Some(o), .. }) => Some(*o),
            Some(_) => {
                self.skip(Skipped::OffscreenSurface);
                None
            }
            None => {
                self.skip(Skipped::UnknownSurface);
                None
            }
        }
    }

    /// Everything a browser that attaches now needs for a correct picture: the size, then the messages
    /// since the last key frame. `None` when that history outgrew its budget (the picture is then
    /// complete from the next key frame on).
    pub fn full_picture(&self) -> Option<Vec<ServerMsg>> {
        let replay = self.replay.as_ref()?;
        let mut msgs = vec![ServerMsg::DisplaySize {
            width: self.desktop.0,
            height: self.desktop.1,
        }];
        msgs.extend(replay.iter().cloned());
        Some(msgs)
    }

    /// Take one graphics PDU.
    pub fn handle(&mut self, pdu: GfxPdu) -> Vec<GfxOut> {
        match pdu {
            GfxPdu::ResetGraphics(r) => {
                let w = u16::try_from(r.width).unwrap_or(u16::MAX);
                let h = u16::try_from(r.height).unwrap_or(u16::MAX);
                self.active = true;
                self.desktop = (w, h);
                self.surfaces.clear();
                // What the frame held was drawn for the old desktop.
                self.frame.clear();
                self.frame_bytes = 0;
                self.frame.push(ServerMsg::DisplaySize { width: w, height: h });
                // A new desktop: nothing before it is part of the picture.
                self.replay = Some(Vec::new());
                self.replay_bytes = 0;
                self.key_at = Some(self.frame.len() - 1);
            }
            GfxPdu::CreateSurface(c) => {
                self.active = true;
                if !self.max.allows(c.width, c.height) {
                    self.skip(Skipped::OutOfBounds);
                    return Vec::new();
                }
                self.surfaces.insert(
                    c.surface_id,
                    Surface {
                        width: c.width,
                        height: c.height,
                        origin: None,
                    },
                );
            }
            GfxPdu::DeleteSurface(d) => {
                self.surfaces.remove(&d.surface_id);
            }
            GfxPdu::MapSurfaceToOutput(m) => {
                if let Some(s) = self.surfaces.get_mut(&m.surface_id) {
                    let x = u16::try_from(m.output_origin_x).unwrap_or(u16::MAX);
                    let y = u16::try_from(m.output_origin_y).unwrap_or(u16::MAX);
                    s.origin = Some((x, y));
                }
            }
            GfxPdu::StartFrame(_) => {}
            GfxPdu::EndFrame(e) => return vec![self.end_frame(e.frame_id)],
            GfxPdu::SolidFill(f) => {
                if let Some((ox, oy)) = self.mapped(f.surface_id) {
                    let rgb = [f.fill_pixel.r, f.fill_pixel.g, f.fill_pixel.b];
                    for r in &f.rectangles {
                        if let Some(rect) = rect_at(r, ox, oy) {
                            self.frame.push(ServerMsg::Fill { rect, rgb });
                        }
                    }
                }
            }
            GfxPdu::SurfaceToSurface(s) => {
                if s.source_surface_id != s.destination_surface_id {
                    self.skip(Skipped::OffscreenSurface);
                } else if let Some((ox, oy)) = self.mapped(s.source_surface_id)
                    && let Some(src) = rect_at(&s.source_rectangle, ox, oy)
                {
                    for p in &s.destination_points {
                        if let (Some(x), Some(y)) = (p.x.checked_add(ox), p.y.checked_add(oy)) {
                            self.frame.push(ServerMsg::Copy {
                                src_x: src.x,
                                src_y: src.y,
                                rect: Rect { x, y, ..src },
                            });
                        }
                    }
                }
            }
            GfxPdu::SurfaceToCache(s) => {
                if let Some((ox, oy)) = self.mapped(s.surface_id)
                    && let Some(rect) = rect_at(&s.source_rectangle, ox, oy)
                {
                    self.frame.push(ServerMsg::CacheStore {
                        slot: s.cache_slot,
                        rect,
                    });
                }
            }
            GfxPdu::CacheToSurface(c) => {
                if let Some((ox, oy)) = self.mapped(c.surface_id) {
                    for p in &c.destination_points {
                        if let (Some(x), Some(y)) = (p.x.checked_add(ox), p.y.checked_add(oy)) {
                            self.frame.push(ServerMsg::CacheDraw {
                                slot: c.cache_slot,
                                x,
                                y,
                            });
                        }
                    }
                }
            }
            GfxPdu::EvictCacheEntry(e) => self.frame.push(ServerMsg::CacheStore {
                slot: e.cache_slot,
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: 0,
                    height: 0,
                },
            }),
            GfxPdu::WireToSurface1(w) => {
                let n = self.frame.len();
                self.wire_to_surface(w);
                self.frame_bytes += self.frame[n..].iter().map(msg_bytes).sum::<usize>();
                self.bound_frame();
            }
            GfxPdu::WireToSurface2(_) => self.skip(Skipped::Progressive),
            GfxPdu::CapabilitiesConfirm(c) => {
                tracing::debug!(caps = ?c.0.parsed(), "Graphics pipeline capabilities confirmed");
            }
            _ => {}
        }
        Vec::new()
    }

    /// Keep the frame in progress within its byte budget: past it, the frame keeps only what follows its
    /// last key frame, or nothing (and the history, which would miss it, is dropped).
    fn bound_frame(&mut self) {
        if self.frame_bytes <= MAX_FRAME_BYTES {
            return;
        }
        self.skip(Skipped::FrameTooLarge);
        let from = self.key_at.unwrap_or(self.frame.len());
        self.frame.drain(..from);
        self.key_at = self.key_at.map(|_| 0);
        if self.key_at.is_none() {
            self.replay = None;
        }
        self.frame_bytes = self.frame.iter().map(msg_bytes).sum();
        if self.frame_bytes > MAX_FRAME_BYTES {
            self.frame.clear();
            self.key_at = None;
            self.replay = None;
            self.frame_bytes = 0;
        }
    }

    fn end_frame(&mut self, server_frame: u32) -> GfxOut {
        self.frame_bytes = 0;
        let msgs = std::mem::take(&mut self.frame);
        let from = self.key_at.take();
        if let Some(at) = from {
            self.replay = Some(Vec::new());
            self.replay_bytes = 0;
            self.keep(&msgs[at..]);
        } else {
            self.keep(&msgs);
        }
        GfxOut::Frame { msgs, server_frame }
    }

    fn keep(&mut self, msgs: &[ServerMsg]) {
        let Some(replay) = self.replay.as_mut() else {
            return;
        };
        let bytes: usize = msgs.iter().map(msg_bytes).sum();
        if self.replay_bytes + bytes > MAX_REPLAY_BYTES {
            tracing::debug!(
                bytes = self.replay_bytes,
                "Graphics history over its budget: dropped until the next key frame"
            );
            self.replay = None;
            self.replay_bytes = 0;
            return;
        }
        self.replay_bytes += bytes;
        replay.extend(msgs.iter().cloned());
    }

    fn wire_to_surface(&mut self, w: WireToSurface1Pdu) {
        let Some((ox, oy)) = self.mapped(w.surface_id) else {
            return;
        };
        let dest = &w.destination_rectangle;
        match w.codec_id {
            Codec1Type::Avc420 => {
                let mut cur = ReadCursor::new(&w.bitmap_data);
                let Ok(stream) = Avc420BitmapStream::decode(&mut cur) else {
                    self.skip(Skipped::Undecodable);
                    return;
                };
                let key = has_idr(stream.data);
                let rects: Vec<Rect> = stream.rectangles.iter().filter_map(|r| rect_at(r, 0, 0)).collect();
                let full = self.surfaces.get(&w.surface_id).is_some_and(|s| {
                    rects
                        .iter()
                        .any(|r| r.x == 0 && r.y == 0 && r.width >= s.width && r.height >= s.height)
                });
                if key && full {
                    self.key_at = Some(self.frame.len());
                }
                self.h264 = true;
                self.frame.push(ServerMsg::Video {
                    stream: w.surface_id,
                    x: ox,
                    y: oy,
                    key,
                    rects,
                    data: stream.data.to_vec(),
                });
            }
            Codec1Type::Uncompressed | Codec1Type::Planar | Codec1Type::ClearCodec => {
                let inside = self
                    .surfaces
                    .get(&w.surface_id)
                    .is_some_and(|s| dest.right <= s.width && dest.bottom <= s.height);
                if !inside {
                    self.skip(Skipped::OutOfBounds);
                    return;
                }
                let Some(rect) = rect_at(dest, ox, oy) else {
                    return;
                };
                let (width, height) = (rect.width, rect.height);
                let rgba = match w.codec_id {
                    Codec1Type::Uncompressed => uncompressed(&w.bitmap_data, width, height),
                    Codec1Type::Planar => {
                        let mut rgb = Vec::new();
                        self.planar
                            .decode_bitmap_stream_to_rgb24(
                                &w.bitmap_data,
                                &mut rgb,
                                usize::from(width),
                                usize::from(height),
                            )
                            .ok()
                            .map(|()| rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect())
                    }
                    _ => self
                        .clear
                        .get_or_insert_with(ClearCodecDecoder::new)
                        .decode(&w.bitmap_data, width, height)
                        .ok()
                        .map(|bgra| bgra.chunks_exact(4).flat_map(|p| [p[2], p[1], p[0], 255]).collect()),
                };
                match rgba {
                    Some(px) if px.len() == usize::from(width) * usize::from(height) * 4 => {
                        self.frame.push(encode_rect(rect, &px, 9));
                    }
                    _ => self.skip(Skipped::Undecodable),
                }
            }
            other => self.skip(Skipped::Codec(other as u16)),
        }
    }
}

/// Uncompressed XRGB pixels (little-endian: B, G, R, X) as RGBA.
fn uncompressed(data: &[u8], width: u16, height: u16) -> Option<Vec<u8>> {
    let n = usize::from(width) * usize::from(height) * 4;
    (data.len() >= n).then(|| {
        data[..n]
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0], 255])
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironrdp_egfx::pdu::{
        Color, CreateSurfacePdu, EndFramePdu, MapSurfaceToOutputPdu, PixelFormat, Point, SolidFillPdu, StartFramePdu,
        SurfaceToSurfacePdu, Timestamp,
    };

    fn er(left: u16, top: u16, right: u16, bottom: u16) -> ExclusiveRectangle {
        ExclusiveRectangle {
            left,
            top,
            right,
            bottom,
        }
    }

    /// An AVC420 command for surface 0 with one region and these H.264 bytes.
    fn avc(region: ExclusiveRectangle, h264: &[u8]) -> GfxPdu {
        let stream = Avc420BitmapStream {
            rectangles: vec![region.clone()],
            quant_qual_vals: vec![ironrdp_egfx::pdu::QuantQuality {
                quantization_parameter: 22,
                progressive: false,
                quality: 100,
            }],
            data: h264,
        };
        let mut bitmap_data = vec![0; ironrdp_core::Encode::size(&stream)];
        ironrdp_core::encode(&stream, &mut bitmap_data).unwrap();
        GfxPdu::WireToSurface1(WireToSurface1Pdu {
            surface_id: 0,
            codec_id: Codec1Type::Avc420,
            pixel_format: PixelFormat::XRgb,
            destination_rectangle: region,
            bitmap_data,
        })
    }

    const IDR: &[u8] = &[
        0, 0, 0, 1, 0x67, 0x64, 0, 0x20, 0, 0, 0, 1, 0x68, 0xee, 0, 0, 1, 0x65, 0x88,
    ];
    const DELTA: &[u8] = &[0, 0, 0, 1, 0x41, 0x9a];

    fn frame(g: &mut Gfx, id: u32, pdus: Vec<GfxPdu>) -> Vec<ServerMsg> {
        g.handle(GfxPdu::StartFrame(StartFramePdu {
            timestamp: Timestamp {
                milliseconds: 0,
                seconds: 0,
                minutes: 0,
                hours: 0,
            },
            frame_id: id,
        }));
        for p in pdus {
            assert!(g.handle(p).is_empty());
        }
        match g.handle(GfxPdu::EndFrame(EndFramePdu { frame_id: id })).as_slice() {
            [GfxOut::Frame { msgs, server_frame }] => {
                assert_eq!(*server_frame, id);
                msgs.clone()
            }
            other => panic!("end of frame gave {other:?}"),
        }
    }

    fn setup(origin: (u32, u32)) -> Gfx {
        let mut g = Gfx::new(1024, 768, portico_proto::limits::MaxDesktop::default());
        g.handle(GfxPdu::CreateSurface(CreateSurfacePdu {
            surface_id: 0,
            width: 640,
            height: 480,
            pixel_format: PixelFormat::XRgb,
        }));
        g.handle(GfxPdu::MapSurfaceToOutput(MapSurfaceToOutputPdu {
            surface_id: 0,
            output_origin_x: origin.0,
            output_origin_y: origin.1,
        }));
        g
    }

    #[test]
    fn key_frames_are_recognised_in_annex_b() {
        assert!(has_idr(IDR));
        assert!(!has_idr(DELTA));
        assert!(!has_idr(&[]));
        assert!(!has_idr(&[0, 0, 1]));
    }

    #[test]
    fn h264_passes_through_untouched_with_its_regions_at_the_surface_origin() {
        let mut g = setup((100, 50));
        let msgs = frame(&mut g, 7, vec![avc(er(0, 0, 640, 480), IDR)]);
        assert_eq!(
            msgs,
            [ServerMsg::Video {
                stream: 0,
                x: 100,
                y: 50,
                key: true,
                rects: vec![Rect {
                    x: 0,
                    y: 0,
                    width: 640,
                    height: 480
                }],
                data: IDR.to_vec(),
            }]
        );
        assert!(g.h264);
    }

    #[test]
    fn fills_and_copies_of_a_mapped_surface_become_display_messages() {
        let mut g = setup((10, 20));
        let msgs = frame(
            &mut g,
            1,
            vec![
                GfxPdu::SolidFill(SolidFillPdu {
                    surface_id: 0,
                    fill_pixel: Color {
                        b: 3,
                        g: 2,
                        r: 1,
                        xa: 0,
                    },
                    rectangles: vec![er(0, 0, 4, 4), er(5, 5, 5, 9)],
                }),
                GfxPdu::SurfaceToSurface(SurfaceToSurfacePdu {
                    source_surface_id: 0,
                    destination_surface_id: 0,
                    source_rectangle: er(0, 10, 100, 30),
                    destination_points: vec![Point { x: 0, y: 0 }],
                }),
            ],
        );
        assert_eq!(
            msgs,
            [
                ServerMsg::Fill {
                    rect: Rect {
                        x: 10,
                        y: 20,
                        width: 4,
                        height: 4
                    },
                    rgb: [1, 2, 3]
                },
                ServerMsg::Copy {
                    src_x: 10,
                    src_y: 30,
                    rect: Rect {
                        x: 10,
                        y: 20,
                        width: 100,
                        height: 20
                    }
                },
            ],
            "the empty fill rectangle sends nothing"
        );
    }

    #[test]
    fn commands_for_unknown_or_offscreen_surfaces_are_skipped_and_counted() {
        let mut g = Gfx::new(800, 600, portico_proto::limits::MaxDesktop::default());
        g.handle(GfxPdu::CreateSurface(CreateSurfacePdu {
            surface_id: 4,
            width: 10,
            height: 10,
            pixel_format: PixelFormat::XRgb,
        }));
        let fill = |surface_id| {
            GfxPdu::SolidFill(SolidFillPdu {
                surface_id,
                fill_pixel: Color {
                    b: 0,
                    g: 0,
                    r: 0,
                    xa: 0,
                },
                rectangles: vec![er(0, 0, 1, 1)],
            })
        };
        let msgs = frame(&mut g, 1, vec![fill(4), fill(9), avc(er(0, 0, 10, 10), IDR)]);
        assert!(msgs.is_empty());
        assert_eq!(g.skipped[&Skipped::OffscreenSurface], 1);
        assert_eq!(g.skipped[&Skipped::UnknownSurface], 2);
    }

    #[test]
    fn a_late_browser_gets_the_history_from_the_last_full_key_frame() {
        let mut g = setup((0, 0));
        frame(&mut g, 1, vec![avc(er(0, 0, 640, 480), IDR)]);
        frame(&mut g, 2, vec![avc(er(0, 0, 64, 64), DELTA)]);
        let picture = g.full_picture().unwrap();
        assert_eq!(
            picture[0],
            ServerMsg::DisplaySize {
                width: 1024,
                height: 768
            }
        );
        let keys: Vec<bool> = picture
            .iter()
            .filter_map(|m| match m {
                ServerMsg::Video { key, .. } => Some(*key),
                _ => None,
            })
            .collect();
        assert_eq!(keys, [true, false]);
        // A key frame of a part of the surface does not restart the history.
        frame(&mut g, 3, vec![avc(er(0, 0, 64, 64), IDR)]);
        assert_eq!(g.full_picture().unwrap().len(), 4);
        // A full one does.
        frame(&mut g, 4, vec![avc(er(0, 0, 640, 480), IDR)]);
        assert_eq!(g.full_picture().unwrap().len(), 2);
    }

    #[test]
    fn an_endless_history_is_dropped_not_kept() {
        let mut g = setup((0, 0));
        frame(&mut g, 1, vec![avc(er(0, 0, 640, 480), IDR)]);
        let big = vec![0x41; 1024 * 1024];
        for id in 2..40 {
            frame(&mut g, id, vec![avc(er(0, 0, 64, 64), &big)]);
        }
        assert!(g.full_picture().is_none(), "over the budget");
        frame(&mut g, 50, vec![avc(er(0, 0, 640, 480), IDR)]);
        assert!(g.full_picture().is_some(), "a key frame starts it again");
    }

    #[test]
    fn surfaces_over_the_limit_and_tiles_outside_their_surface_are_refused() {
        let mut g = Gfx::new(800, 600, portico_proto::limits::MaxDesktop::default());
        g.handle(GfxPdu::CreateSurface(CreateSurfacePdu {
            surface_id: 1,
            width: 65535,
            height: 65535,
            pixel_format: PixelFormat::XRgb,
        }));
        assert_eq!(g.skipped[&Skipped::OutOfBounds], 1);
        let mut g = setup((0, 0));
        let tile = |right, bottom| {
            GfxPdu::WireToSurface1(WireToSurface1Pdu {
                surface_id: 0,
                codec_id: Codec1Type::ClearCodec,
                pixel_format: PixelFormat::XRgb,
                destination_rectangle: er(0, 0, right, bottom),
                bitmap_data: vec![0; 16],
            })
        };
        // A few bytes claiming a tile far larger than the 640x480 surface: no decoder runs.
        assert!(frame(&mut g, 1, vec![tile(8192, 8192)]).is_empty());
        assert_eq!(g.skipped[&Skipped::OutOfBounds], 1);
    }

    #[test]
    fn a_frame_past_its_byte_budget_keeps_what_follows_its_last_key_frame() {
        let mut g = setup((0, 0));
        let big = vec![0x41; 9 * 1024 * 1024];
        let mut pdus: Vec<GfxPdu> = (0..6).map(|_| avc(er(0, 0, 64, 64), &big)).collect();
        pdus.push(avc(er(0, 0, 640, 480), IDR));
        pdus.extend((0..2).map(|_| avc(er(0, 0, 64, 64), &big)));
        let msgs = frame(&mut g, 1, pdus);
        // 6 x 9 MiB + the key frame + 2 x 9 MiB is over 64 MiB: the frame restarts at its key frame.
        assert_eq!(g.skipped[&Skipped::FrameTooLarge], 1);
        assert!(
            matches!(msgs.first(), Some(ServerMsg::Video { key: true, .. })),
            "{}",
            msgs.len()
        );
        assert_eq!(msgs.len(), 3);
        assert_eq!(g.full_picture().map(|p| p.len()), Some(4));
    }

    #[test]
    fn uncompressed_tiles_are_sent_as_images_of_their_pixels() {
        let mut g = setup((0, 0));
        let msgs = frame(
            &mut g,
            1,
            vec![GfxPdu::WireToSurface1(WireToSurface1Pdu {
                surface_id: 0,
                codec_id: Codec1Type::Uncompressed,
                pixel_format: PixelFormat::XRgb,
                destination_rectangle: er(2, 2, 4, 3),
                bitmap_data: vec![30, 20, 10, 0, 30, 20, 10, 0],
            })],
        );
        // Two pixels of one colour: a fill.
        assert_eq!(
            msgs,
            [ServerMsg::Fill {
                rect: Rect {
                    x: 2,
                    y: 2,
                    width: 2,
                    height: 1
                },
                rgb: [10, 20, 30]
            }]
        );
        // Too few bytes for the rectangle: skipped, not a panic.
        frame(
            &mut g,
            2,
            vec![GfxPdu::WireToSurface1(WireToSurface1Pdu {
                surface_id: 0,
                codec_id: Codec1Type::Uncompressed,
                pixel_format: PixelFormat::XRgb,
                destination_rectangle: er(0, 0, 100, 100),
                bitmap_data: vec![0; 7],
            })],
        );
        assert_eq!(g.skipped[&Skipped::Undecodable], 1);
    }
}
