//! The browser wire protocol, version 1: one binary WebSocket message = `[version, type, payload..]`.
//!
//! See `docs/protocol.md` for the table of message types. This module only encodes and decodes.

use serde::{Deserialize, Serialize};

use crate::codes::CloseCode;
use crate::files::{FILE_CHUNK, FilePolicy, FileReply, FileRequest};
use crate::token::ShareMode;

pub const VERSION: u8 = 1;
/// WebSocket sub-protocol the bridge selects.
pub const SUBPROTOCOL: &str = "portico.v1";
/// Prefix of the sub-protocol entry that carries a session token.
pub const TOKEN_PREFIX: &str = "portico.token.";
/// Prefix of the sub-protocol entry that carries a resume token.
pub const RESUME_PREFIX: &str = "portico.resume.";
/// Largest client message accepted, in bytes.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Largest terminal size accepted in either dimension.
pub const MAX_TERM_DIM: u16 = 1000;

mod ty {
    pub const HELLO: u8 = 0x01;
    pub const TERM_OUTPUT: u8 = 0x02;
    pub const STATUS: u8 = 0x03;
    pub const ERROR: u8 = 0x04;
    pub const CLOSED: u8 = 0x05;
    pub const PONG: u8 = 0x06;
    pub const SHARE: u8 = 0x07;
    pub const FILE_REPLY: u8 = 0x08;
    pub const FILE_DATA: u8 = 0x09;
    pub const AUDIO: u8 = 0x0a;
    pub const DISPLAY_SIZE: u8 = 0x20;
    pub const IMAGE: u8 = 0x21;
    pub const COPY: u8 = 0x22;
    pub const FILL: u8 = 0x23;
    pub const CURSOR: u8 = 0x24;
    pub const FRAME_END: u8 = 0x25;
    pub const VIDEO: u8 = 0x26;
    pub const CACHE_STORE: u8 = 0x27;
    pub const CACHE_DRAW: u8 = 0x28;
    pub const REMOTE_CLIPBOARD: u8 = 0x40;

    pub const TERM_INPUT: u8 = 0x81;
    pub const RESIZE: u8 = 0x82;
    pub const PING: u8 = 0x83;
    pub const FRAME_ACK: u8 = 0x84;
    pub const CLIPBOARD: u8 = 0x85;
    pub const DISCONNECT: u8 = 0x86;
    pub const KEY: u8 = 0x87;
    pub const POINTER: u8 = 0x88;
    pub const CREDENTIALS: u8 = 0x89;
    pub const CAPS: u8 = 0x8a;
    pub const FILE_REQUEST: u8 = 0x8b;
    pub const FILE_CHUNK: u8 = 0x8c;
    pub const AUDIO_CONTROL: u8 = 0x8d;
}

/// The sound of [`ServerMsg::Audio`]: Opus (RFC 6716) packets of 20 ms at 48 kHz, stereo.
pub const AUDIO_CODEC: &str = "opus";
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;
pub const AUDIO_CHANNELS: u8 = 2;
/// Samples per channel in one packet (20 ms).
pub const AUDIO_FRAME_SAMPLES: usize = 960;
/// Largest Opus packet (RFC 6716 §3.2.1).
pub const MAX_AUDIO_PACKET: usize = 1275;

/// [`ClientMsg::Caps`] flag: the client decodes H.264 (AVC420, Annex B) in [`ServerMsg::Video`].
pub const CAPS_H264: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub session_id: String,
    pub protocol: String,
    pub resume_token: String,
    pub grace_seconds: u32,
    pub reattached: bool,
    /// The session is recorded (the client shows it); omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recording: bool,
}

/// Who watches a shared session ([`ServerMsg::Share`]): sent to the owner whenever it changes, and to each
/// viewer when it joins and when its mode or the owner's terminal size changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// This browser's mode when it is a viewer; absent for the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ShareMode>,
    /// The viewers attached now.
    pub viewers: Vec<ViewerInfo>,
    /// Terminal sessions, to a viewer: the owner's terminal size (the viewer's terminal takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
}

/// One viewer of a shared session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerInfo {
    pub id: String,
    pub name: String,
    pub mode: ShareMode,
    /// An administrator watching without an invitation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: String,
    pub message: String,
    /// Graphical sessions: how the screen reaches the client (`"h264"`: the server's H.264 passed through;
    /// `"bitmap"`: images the bridge encodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graphics: Option<String>,
    /// Sessions with file transfer: what the connection allows (`"download"`, `"upload"`, `"both"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilePolicy>,
    /// Sessions with sound: its codec ([`AUDIO_CODEC`]); the client plays [`ServerMsg::Audio`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: CloseCode,
    pub message: String,
    pub fatal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub code: CloseCode,
    pub reason: String,
}

/// Image formats of [`ServerMsg::Image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png = 1,
    Jpeg = 2,
}

/// A rectangle of the remote display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u16,
    pub y: u16,
    pub width: u16,
    pub height: u16,
}

/// Bridge → client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    Hello(Hello),
    TermOutput(Vec<u8>),
    Status(Status),
    Error(ErrorInfo),
    Closed(Closed),
    Pong([u8; 8]),
    /// Who watches the session (shared sessions only).
    Share(ShareInfo),
    /// The answer to a file request (see [`crate::files`]).
    FileReply(FileReply),
    /// A chunk of download `id`.
    FileData {
        id: u32,
        data: Vec<u8>,
    },
    /// One packet of the session's sound ([`AUDIO_CODEC`], 20 ms): `seq` counts packets, with gaps where
    /// the session was silent or a packet was dropped.
    Audio {
        seq: u32,
        data: Vec<u8>,
    },
    /// The remote display has this size; the client clears its canvas to it.
    DisplaySize {
        width: u16,
        height: u16,
    },
    /// Draw an encoded image at `rect`.
    Image {
        rect: Rect,
        format: ImageFormat,
        data: Vec<u8>,
    },
    /// Copy `rect`-sized pixels from `(src_x, src_y)` to `(rect.x, rect.y)` (scrolling, moved windows).
    Copy {
        src_x: u16,
        src_y: u16,
        rect: Rect,
    },
    /// Fill `rect` with one colour.
    Fill {
        rect: Rect,
        rgb: [u8; 3],
    },
    /// The pointer image (PNG with alpha) and its hot spot; an empty image hides the pointer.
    Cursor {
        hot_x: u16,
        hot_y: u16,
        png: Vec<u8>,
    },
    /// End of a frame: the client draws what it has and acknowledges with `FRAME_ACK`.
    FrameEnd {
        frame_id: u32,
    },
    /// Text copied on the remote side.
    RemoteClipboard(String),
    /// One H.264 access unit (Annex B) of video stream `stream`, whose picture sits at `(x, y)` of the
    /// display: once decoded, only `rects` (in the picture's coordinates) are drawn. `key`: an IDR frame (a
    /// decoder may start here).
    Video {
        stream: u16,
        x: u16,
        y: u16,
        key: bool,
        rects: Vec<Rect>,
        data: Vec<u8>,
    },
    /// Keep the pixels of `rect` of the display in cache slot `slot` (an empty `rect` frees the slot).
    CacheStore {
        slot: u16,
        rect: Rect,
    },
    /// Draw the pixels of cache slot `slot` at `(x, y)`.
    CacheDraw {
        slot: u16,
        x: u16,
        y: u16,
    },
}

/// Client → bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    TermInput(Vec<u8>),
    Resize {
        cols: u16,
        rows: u16,
        width_px: u16,
        height_px: u16,
    },
    Ping([u8; 8]),
    FrameAck {
        frame_id: u32,
    },
    Clipboard(String),
    Disconnect,
    /// A key pressed or released: its X11 keysym (from `KeyboardEvent.key`: what the key types on the
    /// user's layout) and, when known, its PC/AT set-1 scancode (from `KeyboardEvent.code`: where the key
    /// is; `0xe0xx` for extended keys, 0 = unknown). VNC uses the keysym, RDP the scancode (and Unicode
    /// input from the keysym for characters without a key).
    Key {
        keysym: u32,
        down: bool,
        scancode: u16,
    },
    /// Pointer position in remote pixels and the button mask (1 left, 2 middle, 4 right, 8/16 wheel up/down).
    Pointer {
        x: u16,
        y: u16,
        buttons: u8,
    },
    /// The answer to a `credentials` status: used for this connection attempt only, never stored.
    Credentials(Credentials),
    /// What the client can do beyond the base protocol ([`CAPS_H264`]); sent after every `HELLO`, before
    /// `RESIZE`.
    Caps {
        flags: u32,
    },
    /// A file operation (see [`crate::files`]).
    FileRequest(FileRequest),
    /// A chunk of upload `id`.
    FileChunk {
        id: u32,
        data: Vec<u8>,
    },
    /// Play the session's sound (`true`) or not: a muted client is sent no [`ServerMsg::Audio`].
    AudioControl {
        play: bool,
    },
}

/// Credentials the user typed for one connection attempt.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub domain: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<secret>")
            .field("domain", &self.domain)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    #[error("message type {ty:#04x} needs {expected} payload bytes, got {got}")]
    Length { ty: u8, expected: usize, got: usize },
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("terminal size {cols}x{rows} out of range")]
    BadSize { cols: u16, rows: u16 },
    #[error("invalid utf-8 text")]
    Utf8,
    #[error("invalid json payload")]
    Json,
    #[error("unknown image format {0}")]
    ImageFormat(u8),
    #[error("invalid flag byte {0}")]
    Flag(u8),
}

fn frame(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + payload.len());
    out.push(VERSION);
    out.push(ty);
    out.extend_from_slice(payload);
    out
}

fn json_frame<T: Serialize>(ty: u8, value: &T) -> Vec<u8> {
    // INVARIANT: these payload structs contain only strings, numbers and bools.
    frame(ty, &serde_json::to_vec(value).expect("payload serializes"))
}

fn be16(p: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([p[i], p[i + 1]])
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

fn rect_bytes(r: &Rect) -> Vec<u8> {
    u16s(&[r.x, r.y, r.width, r.height])
}

fn split_rect(ty: u8, p: &[u8]) -> Result<(Rect, &[u8]), WireError> {
    if p.len() < 8 {
        return Err(WireError::Length {
            ty,
            expected: 8,
            got: p.len(),
        });
    }
    Ok((
        Rect {
            x: be16(p, 0),
            y: be16(p, 2),
            width: be16(p, 4),
            height: be16(p, 6),
        },
        &p[8..],
    ))
}

/// A transfer id and its bytes, as `FILE_DATA` and `FILE_CHUNK` carry them.
fn id_and(id: u32, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + data.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(data);
    p
}

fn split_id(ty: u8, p: &[u8]) -> Result<(u32, Vec<u8>), WireError> {
    match p {
        [a, b, c, d, data @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), data.to_vec())),
        _ => Err(WireError::Length {
            ty,
            expected: 4,
            got: p.len(),
        }),
    }
}

fn split(bytes: &[u8]) -> Result<(u8, &[u8]), WireError> {
    match bytes {
        [] | [_] => Err(WireError::Empty),
        [v, ..] if *v != VERSION => Err(WireError::Version(*v)),
        [_, ty, payload @ ..] => Ok((*ty, payload)),
    }
}

fn fixed<const N: usize>(ty: u8, payload: &[u8]) -> Result<[u8; N], WireError> {
    payload.try_into().map_err(|_| WireError::Length {
        ty,
        expected: N,
        got: payload.len(),
    })
}

impl ServerMsg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ServerMsg::Hello(h) => json_frame(ty::HELLO, h),
            ServerMsg::TermOutput(b) => frame(ty::TERM_OUTPUT, b),
            ServerMsg::Status(s) => json_frame(ty::STATUS, s),
            ServerMsg::Error(e) => json_frame(ty::ERROR, e),
            ServerMsg::Closed(c) => json_frame(ty::CLOSED, c),
            ServerMsg::Pong(p) => frame(ty::PONG, p),
            ServerMsg::Share(i) => json_frame(ty::SHARE, i),
            ServerMsg::FileReply(r) => json_frame(ty::FILE_REPLY, r),
            ServerMsg::FileData { id, data } => frame(ty::FILE_DATA, &id_and(*id, data)),
            ServerMsg::Audio { seq, data } => frame(ty::AUDIO, &id_and(*seq, data)),
            ServerMsg::DisplaySize { width, height } => frame(ty::DISPLAY_SIZE, &u16s(&[*width, *height])),
            ServerMsg::Image { rect, format, data } => {
                let mut p = rect_bytes(rect);
                p.push(*format as u8);
                p.extend_from_slice(data);
                frame(ty::IMAGE, &p)
            }
            ServerMsg::Copy { src_x, src_y, rect } => {
                let mut p = u16s(&[*src_x, *src_y]);
                p.extend_from_slice(&rect_bytes(rect));
                frame(ty::COPY, &p)
            }
            ServerMsg::Fill { rect, rgb } => {
                let mut p = rect_bytes(rect);
                p.extend_from_slice(rgb);
                frame(ty::FILL, &p)
            }
            ServerMsg::Cursor { hot_x, hot_y, png } => {
                let mut p = u16s(&[*hot_x, *hot_y]);
                p.extend_from_slice(png);
                frame(ty::CURSOR, &p)
            }
            ServerMsg::FrameEnd { frame_id } => frame(ty::FRAME_END, &frame_id.to_be_bytes()),
            ServerMsg::RemoteClipboard(text) => frame(ty::REMOTE_CLIPBOARD, text.as_bytes()),
            ServerMsg::Video {
                stream,
                x,
                y,
                key,
                rects,
                data,
            } => {
                let mut p = u16s(&[*stream, *x, *y]);
                p.push(u8::from(*key));
                // INVARIANT: the bridge sends at most u16::MAX rectangles (the RDP field is 32-bit but a
                // region of more would exceed any message limit).
                p.extend_from_slice(&(rects.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
                for r in rects.iter().take(usize::from(u16::MAX)) {
                    p.extend_from_slice(&rect_bytes(r));
                }
                p.extend_from_slice(data);
                frame(ty::VIDEO, &p)
            }
            ServerMsg::CacheStore { slot, rect } => {
                let mut p = slot.to_be_bytes().to_vec();
                p.extend_from_slice(&rect_bytes(rect));
                frame(ty::CACHE_STORE, &p)
            }
            ServerMsg::CacheDraw { slot, x, y } => frame(ty::CACHE_DRAW, &u16s(&[*slot, *x, *y])),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<ServerMsg, WireError> {
        let (t, payload) = split(bytes)?;
        fn json<T: for<'a> Deserialize<'a>>(p: &[u8]) -> Result<T, WireError> {
            serde_json::from_slice(p).map_err(|_| WireError::Json)
        }
        Ok(match t {
            ty::HELLO => ServerMsg::Hello(json(payload)?),
            ty::TERM_OUTPUT => ServerMsg::TermOutput(payload.to_vec()),
            ty::STATUS => ServerMsg::Status(json(payload)?),
            ty::ERROR => ServerMsg::Error(json(payload)?),
            ty::CLOSED => ServerMsg::Closed(json(payload)?),
            ty::PONG => ServerMsg::Pong(fixed(t, payload)?),
            ty::SHARE => ServerMsg::Share(json(payload)?),
            ty::FILE_REPLY => ServerMsg::FileReply(json(payload)?),
            ty::FILE_DATA => {
                let (id, data) = split_id(t, payload)?;
                ServerMsg::FileData { id, data }
            }
            ty::AUDIO => {
                let (seq, data) = split_id(t, payload)?;
                if data.is_empty() || data.len() > MAX_AUDIO_PACKET {
                    return Err(WireError::Length {
                        ty: t,
                        expected: 4 + MAX_AUDIO_PACKET,
                        got: payload.len(),
                    });
                }
                ServerMsg::Audio { seq, data }
            }
            ty::DISPLAY_SIZE => {
                let p: [u8; 4] = fixed(t, payload)?;
                ServerMsg::DisplaySize {
                    width: be16(&p, 0),
                    height: be16(&p, 2),
                }
            }
            ty::IMAGE => {
                let (rect, rest) = split_rect(t, payload)?;
                let (&f, data) = rest.split_first().ok_or(WireError::Length {
                    ty: t,
                    expected: 9,
                    got: payload.len(),
                })?;
                let format = match f {
                    1 => ImageFormat::Png,
                    2 => ImageFormat::Jpeg,
                    other => return Err(WireError::ImageFormat(other)),
                };
                ServerMsg::Image {
                    rect,
                    format,
                    data: data.to_vec(),
                }
            }
            ty::COPY => {
                let p: [u8; 12] = fixed(t, payload)?;
                let (rect, _) = split_rect(t, &p[4..])?;
                ServerMsg::Copy {
                    src_x: be16(&p, 0),
                    src_y: be16(&p, 2),
                    rect,
                }
            }
            ty::FILL => {
                let p: [u8; 11] = fixed(t, payload)?;
                let (rect, _) = split_rect(t, &p)?;
                ServerMsg::Fill {
                    rect,
                    rgb: [p[8], p[9], p[10]],
                }
            }
            ty::CURSOR => {
                if payload.len() < 4 {
                    return Err(WireError::Length {
                        ty: t,
                        expected: 4,
                        got: payload.len(),
                    });
                }
                ServerMsg::Cursor {
                    hot_x: be16(payload, 0),
                    hot_y: be16(payload, 2),
                    png: payload[4..].to_vec(),
                }
            }
            ty::FRAME_END => ServerMsg::FrameEnd {
                frame_id: u32::from_be_bytes(fixed(t, payload)?),
            },
            ty::REMOTE_CLIPBOARD => {
                ServerMsg::RemoteClipboard(String::from_utf8(payload.to_vec()).map_err(|_| WireError::Utf8)?)
            }
            ty::VIDEO => {
                let short = |expected: usize| WireError::Length {
                    ty: t,
                    expected,
                    got: payload.len(),
                };
                if payload.len() < 9 {
                    return Err(short(9));
                }
                let n = usize::from(be16(payload, 7));
                let head = 9 + n * 8;
                if payload.len() < head {
                    return Err(short(head));
                }
                let rects = (0..n)
                    .map(|i| split_rect(t, &payload[9 + i * 8..]).map(|(r, _)| r))
                    .collect::<Result<Vec<_>, _>>()?;
                ServerMsg::Video {
                    stream: be16(payload, 0),
                    x: be16(payload, 2),
                    y: be16(payload, 4),
                    key: payload[6] & 1 != 0,
                    rects,
                    data: payload[head..].to_vec(),
                }
            }
            ty::CACHE_STORE => {
                let p: [u8; 10] = fixed(t, payload)?;
                let (rect, _) = split_rect(t, &p[2..])?;
                ServerMsg::CacheStore {
                    slot: be16(&p, 0),
                    rect,
                }
            }
            ty::CACHE_DRAW => {
                let p: [u8; 6] = fixed(t, payload)?;
                ServerMsg::CacheDraw {
                    slot: be16(&p, 0),
                    x: be16(&p, 2),
                    y: be16(&p, 4),
                }
            }
            other => return Err(WireError::UnknownType(other)),
        })
    }

    /// An `ERROR`: fatal when the code ends the session ([`CloseCode::ends_session`]), then a `CLOSED`
    /// follows.
    pub fn error(code: CloseCode, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Error(ErrorInfo {
            code,
            message: message.into(),
            fatal: code.ends_session(),
        })
    }

    pub fn closed(code: CloseCode, reason: impl Into<String>) -> ServerMsg {
        ServerMsg::Closed(Closed {
            code,
            reason: reason.into(),
        })
    }

    pub fn status(state: &str, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Status(Status {
            state: state.into(),
            message: message.into(),
            graphics: None,
            files: None,
            audio: None,
        })
    }
}

impl ClientMsg {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientMsg::TermInput(b) => frame(ty::TERM_INPUT, b),
            ClientMsg::Resize {
                cols,
                rows,
                width_px,
                height_px,
            } => {
                let mut p = [0u8; 8];
                p[0..2].copy_from_slice(&cols.to_be_bytes());
                p[2..4].copy_from_slice(&rows.to_be_bytes());
                p[4..6].copy_from_slice(&width_px.to_be_bytes());
                p[6..8].copy_from_slice(&height_px.to_be_bytes());
                frame(ty::RESIZE, &p)
            }
            ClientMsg::Ping(p) => frame(ty::PING, p),
            ClientMsg::FrameAck { frame_id } => frame(ty::FRAME_ACK, &frame_id.to_be_bytes()),
            ClientMsg::Clipboard(text) => frame(ty::CLIPBOARD, text.as_bytes()),
            ClientMsg::Disconnect => frame(ty::DISCONNECT, &[]),
            ClientMsg::Key { keysym, down, scancode } => {
                let mut p = keysym.to_be_bytes().to_vec();
                p.push(u8::from(*down));
                p.extend_from_slice(&scancode.to_be_bytes());
                frame(ty::KEY, &p)
            }
            ClientMsg::Credentials(c) => json_frame(ty::CREDENTIALS, c),
            ClientMsg::Pointer { x, y, buttons } => {
                let mut p = u16s(&[*x, *y]);
                p.push(*buttons);
                frame(ty::POINTER, &p)
            }
            ClientMsg::Caps { flags } => frame(ty::CAPS, &flags.to_be_bytes()),
            ClientMsg::FileRequest(r) => json_frame(ty::FILE_REQUEST, r),
            ClientMsg::FileChunk { id, data } => frame(ty::FILE_CHUNK, &id_and(*id, data)),
            ClientMsg::AudioControl { play } => frame(ty::AUDIO_CONTROL, &[u8::from(*play)]),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<ClientMsg, WireError> {
        if bytes.len() > MAX_CLIENT_MESSAGE {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let (t, payload) = split(bytes)?;
        Ok(match t {
            ty::TERM_INPUT => ClientMsg::TermInput(payload.to_vec()),
            ty::RESIZE => {
                let p: [u8; 8] = fixed(t, payload)?;
                let be = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
                let (cols, rows) = (be(0), be(2));
                if (cols == 0) != (rows == 0) || cols > MAX_TERM_DIM || rows > MAX_TERM_DIM {
                    return Err(WireError::BadSize { cols, rows });
                }
                ClientMsg::Resize {
                    cols,
                    rows,
                    width_px: be(4),
                    height_px: be(6),
                }
            }
            ty::PING => ClientMsg::Ping(fixed(t, payload)?),
            ty::FRAME_ACK => ClientMsg::FrameAck {
                frame_id: u32::from_be_bytes(fixed(t, payload)?),
            },
            ty::CLIPBOARD => ClientMsg::Clipboard(String::from_utf8(payload.to_vec()).map_err(|_| WireError::Utf8)?),
            ty::DISCONNECT => match payload {
                [] => ClientMsg::Disconnect,
                _ => {
                    return Err(WireError::Length {
                        ty: t,
                        expected: 0,
                        got: payload.len(),
                    });
                }
            },
            ty::KEY => {
                // 5 bytes (keysym, down) from older clients, 7 with the scancode.
                let (p, scancode) = match payload.len() {
                    5 => (payload, 0),
                    7 => (payload, be16(payload, 5)),
                    got => {
                        return Err(WireError::Length {
                            ty: t,
                            expected: 7,
                            got,
                        });
                    }
                };
                ClientMsg::Key {
                    keysym: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
                    down: p[4] != 0,
                    scancode,
                }
            }
            ty::CREDENTIALS => {
                let c: Credentials = serde_json::from_slice(payload).map_err(|_| WireError::Json)?;
                if c.username.len() > 256 || c.password.len() > 4096 || c.domain.as_ref().is_some_and(|d| d.len() > 256)
                {
                    return Err(WireError::TooLarge(payload.len()));
                }
                ClientMsg::Credentials(c)
            }
            ty::POINTER => {
                let p: [u8; 5] = fixed(t, payload)?;
                ClientMsg::Pointer {
                    x: be16(&p, 0),
                    y: be16(&p, 2),
                    buttons: p[4],
                }
            }
            ty::CAPS => ClientMsg::Caps {
                flags: u32::from_be_bytes(fixed(t, payload)?),
            },
            ty::FILE_REQUEST => {
                let r: FileRequest = serde_json::from_slice(payload).map_err(|_| WireError::Json)?;
                ClientMsg::FileRequest(r)
            }
            ty::FILE_CHUNK => {
                let (id, data) = split_id(t, payload)?;
                if data.len() > FILE_CHUNK {
                    return Err(WireError::TooLarge(data.len()));
                }
                ClientMsg::FileChunk { id, data }
            }
            ty::AUDIO_CONTROL => match fixed::<1>(t, payload)? {
                [0] => ClientMsg::AudioControl { play: false },
                [1] => ClientMsg::AudioControl { play: true },
                [b] => return Err(WireError::Flag(b)),
            },
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_round_trip() {
        let msgs = [
            ClientMsg::TermInput(b"ls -l\r".to_vec()),
            ClientMsg::Resize {
                cols: 120,
                rows: 40,
                width_px: 1200,
                height_px: 800,
            },
            ClientMsg::Ping(*b"12345678"),
            ClientMsg::FrameAck { frame_id: 7 },
            ClientMsg::Clipboard("héllo".into()),
            ClientMsg::Disconnect,
            ClientMsg::Key {
                keysym: 0xff0d,
                down: true,
                scancode: 0x1c,
            },
            ClientMsg::Key {
                keysym: 0xff51,
                down: false,
                scancode: 0xe04b,
            },
            ClientMsg::Credentials(Credentials {
                username: "alice".into(),
                password: "pw".into(),
                domain: Some("CORP".into()),
            }),
            ClientMsg::Pointer {
                x: 640,
                y: 360,
                buttons: 5,
            },
        ];
        for m in msgs {
            assert_eq!(ClientMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn keys_without_scancode_and_hidden_passwords() {
        // An older client's 5-byte KEY: no scancode.
        assert_eq!(
            ClientMsg::decode(&[VERSION, ty::KEY, 0, 0, 0, 0x61, 1]).unwrap(),
            ClientMsg::Key {
                keysym: 0x61,
                down: true,
                scancode: 0
            }
        );
        assert!(ClientMsg::decode(&[VERSION, ty::KEY, 0, 0, 0, 0x61, 1, 0]).is_err());
        let c = Credentials {
            username: "alice".into(),
            password: "hunter2".into(),
            domain: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let long = ClientMsg::Credentials(Credentials {
            password: "x".repeat(5000),
            ..c
        });
        assert!(ClientMsg::decode(&long.encode()).is_err());
    }

    #[test]
    fn server_round_trip() {
        let msgs = [
            ServerMsg::Hello(Hello {
                session_id: "s".into(),
                protocol: "ssh".into(),
                resume_token: "r".into(),
                grace_seconds: 60,
                reattached: true,
                recording: true,
            }),
            ServerMsg::TermOutput(vec![0xe2, 0x82]),
            ServerMsg::status("connected", "ok"),
            ServerMsg::error(CloseCode::AuthFailed, "nope"),
            ServerMsg::closed(CloseCode::Ended, "bye"),
            ServerMsg::Pong(*b"abcdefgh"),
            ServerMsg::DisplaySize {
                width: 1280,
                height: 720,
            },
            ServerMsg::Image {
                rect: Rect {
                    x: 1,
                    y: 2,
                    width: 3,
                    height: 4,
                },
                format: ImageFormat::Png,
                data: vec![9, 8],
            },
            ServerMsg::Copy {
                src_x: 5,
                src_y: 6,
                rect: Rect {
                    x: 7,
                    y: 8,
                    width: 9,
                    height: 10,
                },
            },
            ServerMsg::Fill {
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: 64,
                    height: 64,
                },
                rgb: [1, 2, 3],
            },
            ServerMsg::Cursor {
                hot_x: 3,
                hot_y: 4,
                png: vec![1],
            },
            ServerMsg::FrameEnd { frame_id: 42 },
            ServerMsg::RemoteClipboard("héllo".into()),
        ];
        for m in msgs {
            assert_eq!(ServerMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn malformed_client_messages_are_errors() {
        assert_eq!(ClientMsg::decode(&[]), Err(WireError::Empty));
        assert_eq!(ClientMsg::decode(&[2, 0x81]), Err(WireError::Version(2)));
        assert_eq!(ClientMsg::decode(&[1, 0x7f]), Err(WireError::UnknownType(0x7f)));
        assert!(matches!(
            ClientMsg::decode(&[1, 0x82, 0, 1]),
            Err(WireError::Length { .. })
        ));
        assert!(matches!(
            ClientMsg::decode(&[1, 0x82, 0, 0, 0, 1, 0, 0, 0, 0]),
            Err(WireError::BadSize { .. })
        ));
        assert!(matches!(
            ClientMsg::decode(&[1, 0x82, 0xff, 0xff, 0, 1, 0, 0, 0, 0]),
            Err(WireError::BadSize { .. })
        ));
        assert_eq!(ClientMsg::decode(&[1, 0x85, 0xff]), Err(WireError::Utf8));
        assert!(matches!(
            ClientMsg::decode(&[1, 0x86, 0]),
            Err(WireError::Length { .. })
        ));
        let big = vec![1u8; MAX_CLIENT_MESSAGE + 1];
        assert!(matches!(ClientMsg::decode(&big), Err(WireError::TooLarge(_))));
    }
}
