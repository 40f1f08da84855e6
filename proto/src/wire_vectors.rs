//! The shared wire-protocol test vectors, `proto/vectors/wire.json` (tests only): every message of both
//! directions as a structured value and its exact bytes, and malformed inputs that must be rejected. The
//! Rust codec (`wire.rs`) generates and checks them here; the web client's codec (`web-client/src/wire.ts`)
//! is checked against the same file by `npm test` in `web-client/`.
//!
//! The file is generated from the cases below by the Rust codec; the test fails when the file differs from
//! them, and then decodes and encodes every vector of the file as it is read, so the file, the cases and
//! the codec must all agree.

use serde::{Deserialize, Serialize};

use crate::codes::CloseCode;
use crate::generated;
use crate::wire::{
    CAPS_H264, ClientMsg, Closed, Credentials, ErrorInfo, Hello, ImageFormat, Rect, ServerMsg, ShareInfo, Status,
    VERSION, ViewerInfo,
};

use crate::files::{FileEntry, FileEvent, FileOp, FilePolicy, FileReply, FileRequest};
use crate::token::ShareMode;

const FILE: &str = "proto/vectors/wire.json";

/// A [`ServerMsg`] as a vector's value: flat fields, bytes in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ServerValue {
    Hello {
        session_id: String,
        protocol: String,
        resume_token: String,
        grace_seconds: u32,
        reattached: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        recording: bool,
    },
    TermOutput {
        data: String,
    },
    Status {
        state: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        graphics: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        files: Option<FilePolicy>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<String>,
    },
    Error {
        code: CloseCode,
        message: String,
        fatal: bool,
    },
    Closed {
        code: CloseCode,
        reason: String,
    },
    Pong {
        data: String,
    },
    Share {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<ShareMode>,
        viewers: Vec<ViewerInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cols: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u16>,
    },
    DisplaySize {
        width: u16,
        height: u16,
    },
    Image {
        x: u16,
        y: u16,
        width: u16,
        height: u16,
        /// 1 = PNG, 2 = JPEG.
        format: u8,
        data: String,
    },
    Copy {
        src_x: u16,
        src_y: u16,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    Fill {
        x: u16,
        y: u16,
        width: u16,
        height: u16,
        rgb: [u8; 3],
    },
    Cursor {
        hot_x: u16,
        hot_y: u16,
        png: String,
    },
    FrameEnd {
        frame_id: u32,
    },
    RemoteClipboard {
        text: String,
    },
    Video {
        stream: u16,
        x: u16,
        y: u16,
        key: bool,
        /// Each `[x, y, width, height]`.
        rects: Vec<[u16; 4]>,
        data: String,
    },
    CacheStore {
        slot: u16,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    CacheDraw {
        slot: u16,
        x: u16,
        y: u16,
    },
    FileReply {
        reply: FileReply,
    },
    FileData {
        id: u32,
        data: String,
    },
    Audio {
        seq: u32,
        data: String,
    },
}

/// A [`ClientMsg`] as a vector's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientValue {
    TermInput {
        data: String,
    },
    Resize {
        cols: u16,
        rows: u16,
        width_px: u16,
        height_px: u16,
    },
    Ping {
        data: String,
    },
    FrameAck {
        frame_id: u32,
    },
    Clipboard {
        text: String,
    },
    Disconnect,
    Key {
        keysym: u32,
        down: bool,
        scancode: u16,
    },
    Pointer {
        x: u16,
        y: u16,
        buttons: u8,
    },
    Credentials {
        username: String,
        password: String,
        domain: Option<String>,
    },
    Caps {
        flags: u32,
    },
    FileRequest {
        request: FileRequest,
    },
    FileChunk {
        id: u32,
        data: String,
    },
    AudioControl {
        play: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector<V> {
    name: String,
    value: V,
    hex: String,
    /// The bytes decode to the value, but the value encodes to other (canonical) bytes: older or lenient
    /// forms a decoder must accept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    decode_only: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Malformed {
    name: String,
    hex: String,
    /// What the Rust decoder says (other decoders only have to refuse the message).
    error: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vectors {
    about: String,
    server: Vec<Vector<ServerValue>>,
    client: Vec<Vector<ClientValue>>,
    malformed_server: Vec<Malformed>,
    malformed_client: Vec<Malformed>,
}

fn bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap_or_else(|e| panic!("bad hex {hex_text:?}: {e}"))
}

fn fixed<const N: usize>(hex_text: &str) -> [u8; N] {
    bytes(hex_text)
        .try_into()
        .unwrap_or_else(|_| panic!("{hex_text:?} is not {N} bytes"))
}

fn server_value(m: &ServerMsg) -> ServerValue {
    match m.clone() {
        ServerMsg::Hello(h) => ServerValue::Hello {
            session_id: h.session_id,
            protocol: h.protocol,
            resume_token: h.resume_token,
            grace_seconds: h.grace_seconds,
            reattached: h.reattached,
            recording: h.recording,
        },
        ServerMsg::TermOutput(b) => ServerValue::TermOutput { data: hex::encode(b) },
        ServerMsg::Status(s) => ServerValue::Status {
            state: s.state,
            message: s.message,
            graphics: s.graphics,
            files: s.files,
            audio: s.audio,
        },
        ServerMsg::Error(e) => ServerValue::Error {
            code: e.code,
            message: e.message,
            fatal: e.fatal,
        },
        ServerMsg::Closed(c) => ServerValue::Closed {
            code: c.code,
            reason: c.reason,
        },
        ServerMsg::Pong(p) => ServerValue::Pong { data: hex::encode(p) },
        ServerMsg::Share(i) => ServerValue::Share {
            mode: i.mode,
            viewers: i.viewers,
            cols: i.cols,
            rows: i.rows,
        },
        ServerMsg::DisplaySize { width, height } => ServerValue::DisplaySize { width, height },
        ServerMsg::Image { rect, format, data } => ServerValue::Image {
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
            format: format as u8,
            data: hex::encode(data),
        },
        ServerMsg::Copy { src_x, src_y, rect } => ServerValue::Copy {
            src_x,
            src_y,
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
        },
        ServerMsg::Fill { rect, rgb } => ServerValue::Fill {
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
            rgb,
        },
        ServerMsg::Cursor { hot_x, hot_y, png } => ServerValue::Cursor {
            hot_x,
            hot_y,
            png: hex::encode(png),
        },
        ServerMsg::FrameEnd { frame_id } => ServerValue::FrameEnd { frame_id },
        ServerMsg::RemoteClipboard(text) => ServerValue::RemoteClipboard { text },
        ServerMsg::Video {
            stream,
            x,
            y,
            key,
            rects,
            data,
        } => ServerValue::Video {
            stream,
            x,
            y,
            key,
            rects: rects.iter().map(|r| [r.x, r.y, r.width, r.height]).collect(),
            data: hex::encode(data),
        },
        ServerMsg::CacheStore { slot, rect } => ServerValue::CacheStore {
            slot,
            x: rect.x,
            y: rect.y,
            width: rect.width,
            height: rect.height,
        },
        ServerMsg::CacheDraw { slot, x, y } => ServerValue::CacheDraw { slot, x, y },
        ServerMsg::FileReply(reply) => ServerValue::FileReply { reply },
        ServerMsg::FileData { id, data } => ServerValue::FileData {
            id,
            data: hex::encode(data),
        },
        ServerMsg::Audio { seq, data } => ServerValue::Audio {
            seq,
            data: hex::encode(data),
        },
    }
}

fn server_msg(v: &ServerValue) -> ServerMsg {
    let rect = |x, y, width, height| Rect { x, y, width, height };
    match v.clone() {
        ServerValue::Hello {
            session_id,
            protocol,
            resume_token,
            grace_seconds,
            reattached,
            recording,
        } => ServerMsg::Hello(Hello {
            session_id,
            protocol,
            resume_token,
            grace_seconds,
            reattached,
            recording,
        }),
        ServerValue::TermOutput { data } => ServerMsg::TermOutput(bytes(&data)),
        ServerValue::Status {
            state,
            message,
            graphics,
            files,
            audio,
        } => ServerMsg::Status(Status {
            state,
            message,
            graphics,
            files,
            audio,
        }),
        ServerValue::Error { code, message, fatal } => ServerMsg::Error(ErrorInfo { code, message, fatal }),
        ServerValue::Closed { code, reason } => ServerMsg::Closed(Closed { code, reason }),
        ServerValue::Pong { data } => ServerMsg::Pong(fixed(&data)),
        ServerValue::Share {
            mode,
            viewers,
            cols,
            rows,
        } => ServerMsg::Share(ShareInfo {
            mode,
            viewers,
            cols,
            rows,
        }),
        ServerValue::DisplaySize { width, height } => ServerMsg::DisplaySize { width, height },
        ServerValue::Image {
            x,
            y,
            width,
            height,
            format,
            data,
        } => ServerMsg::Image {
            rect: rect(x, y, width, height),
            format: match format {
                1 => ImageFormat::Png,
                2 => ImageFormat::Jpeg,
                other => panic!("image format {other} in a vector's value"),
            },
            data: bytes(&data),
        },
        ServerValue::Copy {
            src_x,
            src_y,
            x,
            y,
            width,
            height,
        } => ServerMsg::Copy {
            src_x,
            src_y,
            rect: rect(x, y, width, height),
        },
        ServerValue::Fill {
            x,
            y,
            width,
            height,
            rgb,
        } => ServerMsg::Fill {
            rect: rect(x, y, width, height),
            rgb,
        },
        ServerValue::Cursor { hot_x, hot_y, png } => ServerMsg::Cursor {
            hot_x,
            hot_y,
            png: bytes(&png),
        },
        ServerValue::FrameEnd { frame_id } => ServerMsg::FrameEnd { frame_id },
        ServerValue::RemoteClipboard { text } => ServerMsg::RemoteClipboard(text),
        ServerValue::Video {
            stream,
            x,
            y,
            key,
            rects,
            data,
        } => ServerMsg::Video {
            stream,
            x,
            y,
            key,
            rects: rects.iter().map(|r| rect(r[0], r[1], r[2], r[3])).collect(),
            data: bytes(&data),
        },
        ServerValue::CacheStore {
            slot,
            x,
            y,
            width,
            height,
        } => ServerMsg::CacheStore {
            slot,
            rect: rect(x, y, width, height),
        },
        ServerValue::CacheDraw { slot, x, y } => ServerMsg::CacheDraw { slot, x, y },
        ServerValue::FileReply { reply } => ServerMsg::FileReply(reply),
        ServerValue::FileData { id, data } => ServerMsg::FileData { id, data: bytes(&data) },
        ServerValue::Audio { seq, data } => ServerMsg::Audio {
            seq,
            data: bytes(&data),
        },
    }
}

fn client_value(m: &ClientMsg) -> ClientValue {
    match m.clone() {
        ClientMsg::TermInput(b) => ClientValue::TermInput { data: hex::encode(b) },
        ClientMsg::Resize {
            cols,
            rows,
            width_px,
            height_px,
        } => ClientValue::Resize {
            cols,
            rows,
            width_px,
            height_px,
        },
        ClientMsg::Ping(p) => ClientValue::Ping { data: hex::encode(p) },
        ClientMsg::FrameAck { frame_id } => ClientValue::FrameAck { frame_id },
        ClientMsg::Clipboard(text) => ClientValue::Clipboard { text },
        ClientMsg::Disconnect => ClientValue::Disconnect,
        ClientMsg::Key { keysym, down, scancode } => ClientValue::Key { keysym, down, scancode },
        ClientMsg::Pointer { x, y, buttons } => ClientValue::Pointer { x, y, buttons },
        ClientMsg::Credentials(c) => ClientValue::Credentials {
            username: c.username,
            password: c.password,
            domain: c.domain,
        },
        ClientMsg::Caps { flags } => ClientValue::Caps { flags },
        ClientMsg::FileRequest(request) => ClientValue::FileRequest { request },
        ClientMsg::FileChunk { id, data } => ClientValue::FileChunk {
            id,
            data: hex::encode(data),
        },
        ClientMsg::AudioControl { play } => ClientValue::AudioControl { play },
    }
}

fn client_msg(v: &ClientValue) -> ClientMsg {
    match v.clone() {
        ClientValue::TermInput { data } => ClientMsg::TermInput(bytes(&data)),
        ClientValue::Resize {
            cols,
            rows,
            width_px,
            height_px,
        } => ClientMsg::Resize {
            cols,
            rows,
            width_px,
            height_px,
        },
        ClientValue::Ping { data } => ClientMsg::Ping(fixed(&data)),
        ClientValue::FrameAck { frame_id } => ClientMsg::FrameAck { frame_id },
        ClientValue::Clipboard { text } => ClientMsg::Clipboard(text),
        ClientValue::Disconnect => ClientMsg::Disconnect,
        ClientValue::Key { keysym, down, scancode } => ClientMsg::Key { keysym, down, scancode },
        ClientValue::Pointer { x, y, buttons } => ClientMsg::Pointer { x, y, buttons },
        ClientValue::Credentials {
            username,
            password,
            domain,
        } => ClientMsg::Credentials(Credentials {
            username,
            password,
            domain,
        }),
        ClientValue::Caps { flags } => ClientMsg::Caps { flags },
        ClientValue::FileRequest { request } => ClientMsg::FileRequest(request),
        ClientValue::FileChunk { id, data } => ClientMsg::FileChunk { id, data: bytes(&data) },
        ClientValue::AudioControl { play } => ClientMsg::AudioControl { play },
    }
}

fn msg(ty: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, ty];
    out.extend_from_slice(payload);
    out
}

fn json_msg(ty: u8, json: &str) -> Vec<u8> {
    msg(ty, json.as_bytes())
}

/// Edge-case text: multi-byte UTF-8 of every length, a combining mark, JSON's escapes, a NUL.
const UNICODE: &str = "héllo wörld ✓ 日本語 🦀 e\u{301} \"quoted\" back\\slash\ttab\nline\u{0}nul\u{1f}";

fn server_cases() -> Vec<(&'static str, ServerMsg)> {
    let rect = |x, y, width, height| Rect { x, y, width, height };
    let mut cases = vec![
        (
            "hello",
            ServerMsg::Hello(Hello {
                session_id: "0b6f4c2e-5a4d-4c9e-9d55-0f3c1f2b7a10".into(),
                protocol: "ssh".into(),
                resume_token: "c29tZS1yZXN1bWUtdG9rZW4".into(),
                grace_seconds: 60,
                reattached: false,
                recording: false,
            }),
        ),
        (
            "hello of a recorded session",
            ServerMsg::Hello(Hello {
                session_id: "0b6f4c2e-5a4d-4c9e-9d55-0f3c1f2b7a10".into(),
                protocol: "vnc".into(),
                resume_token: "c29tZS1yZXN1bWUtdG9rZW4".into(),
                grace_seconds: 60,
                reattached: false,
                recording: true,
            }),
        ),
        (
            "share, to the owner: two viewers, one an administrator",
            ServerMsg::Share(ShareInfo {
                mode: None,
                viewers: vec![
                    ViewerInfo {
                        id: "v1".into(),
                        name: "alice".into(),
                        mode: ShareMode::View,
                        shadow: false,
                    },
                    ViewerInfo {
                        id: "v2".into(),
                        name: "root".into(),
                        mode: ShareMode::Control,
                        shadow: true,
                    },
                ],
                cols: None,
                rows: None,
            }),
        ),
        (
            "share, to a view-only viewer of a terminal",
            ServerMsg::Share(ShareInfo {
                mode: Some(ShareMode::View),
                viewers: vec![],
                cols: Some(132),
                rows: Some(43),
            }),
        ),
        (
            "hello reattached, empty strings, largest grace",
            ServerMsg::Hello(Hello {
                session_id: String::new(),
                protocol: "rdp".into(),
                resume_token: String::new(),
                grace_seconds: u32::MAX,
                reattached: true,
                recording: false,
            }),
        ),
        (
            "term output",
            ServerMsg::TermOutput(b"\x1b[1;32mok\x1b[0m\r\n$ ".to_vec()),
        ),
        ("term output empty", ServerMsg::TermOutput(Vec::new())),
        (
            "term output splitting a code point",
            ServerMsg::TermOutput(vec![0x41, 0xe2, 0x82]),
        ),
        (
            "status connecting",
            ServerMsg::status("connecting", "connecting to host:22…"),
        ),
        ("status connected, empty message", ServerMsg::status("connected", "")),
        ("status credentials, unicode", ServerMsg::status("credentials", UNICODE)),
    ];
    for &code in CloseCode::ALL {
        let name: &'static str = Box::leak(format!("error {code}").into_boxed_str());
        cases.push((
            name,
            ServerMsg::error(code, format!("what happened: {}", code.meaning())),
        ));
    }
    cases.extend([
        (
            "error with an empty message",
            ServerMsg::error(CloseCode::TargetError, ""),
        ),
        (
            "closed ended",
            ServerMsg::closed(CloseCode::Ended, "closed by the user"),
        ),
        (
            "closed lost",
            ServerMsg::closed(
                CloseCode::Lost,
                "lost: bridge b1 stopped responding; reconnect to start a new session",
            ),
        ),
        (
            "closed replaced, unicode",
            ServerMsg::closed(CloseCode::Replaced, UNICODE),
        ),
        (
            "closed with an empty reason",
            ServerMsg::closed(CloseCode::RemoteClosed, ""),
        ),
        ("pong", ServerMsg::Pong(*b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")),
        (
            "display size",
            ServerMsg::DisplaySize {
                width: 1920,
                height: 1080,
            },
        ),
        ("display size zero", ServerMsg::DisplaySize { width: 0, height: 0 }),
        (
            "display size largest",
            ServerMsg::DisplaySize {
                width: u16::MAX,
                height: u16::MAX,
            },
        ),
        (
            "image png",
            ServerMsg::Image {
                rect: rect(10, 20, 64, 32),
                format: ImageFormat::Png,
                data: vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a],
            },
        ),
        (
            "image jpeg at the largest coordinates",
            ServerMsg::Image {
                rect: rect(u16::MAX, u16::MAX, u16::MAX, u16::MAX),
                format: ImageFormat::Jpeg,
                data: vec![0xff, 0xd8, 0xff, 0xd9],
            },
        ),
        (
            "image with no data",
            ServerMsg::Image {
                rect: rect(0, 0, 1, 1),
                format: ImageFormat::Png,
                data: Vec::new(),
            },
        ),
        (
            "copy",
            ServerMsg::Copy {
                src_x: 0,
                src_y: 16,
                rect: rect(0, 0, 800, 584),
            },
        ),
        (
            "copy largest",
            ServerMsg::Copy {
                src_x: u16::MAX,
                src_y: u16::MAX,
                rect: rect(u16::MAX, u16::MAX, u16::MAX, u16::MAX),
            },
        ),
        (
            "fill",
            ServerMsg::Fill {
                rect: rect(1, 2, 300, 400),
                rgb: [0x12, 0x34, 0x56],
            },
        ),
        (
            "fill white at the largest coordinates",
            ServerMsg::Fill {
                rect: rect(u16::MAX, u16::MAX, u16::MAX, u16::MAX),
                rgb: [0xff, 0xff, 0xff],
            },
        ),
        (
            "cursor",
            ServerMsg::Cursor {
                hot_x: 4,
                hot_y: 7,
                png: vec![0x89, b'P', b'N', b'G'],
            },
        ),
        (
            "cursor hidden (empty image)",
            ServerMsg::Cursor {
                hot_x: 0,
                hot_y: 0,
                png: Vec::new(),
            },
        ),
        ("frame end", ServerMsg::FrameEnd { frame_id: 1 }),
        ("frame end zero", ServerMsg::FrameEnd { frame_id: 0 }),
        ("frame end largest", ServerMsg::FrameEnd { frame_id: u32::MAX }),
        ("remote clipboard", ServerMsg::RemoteClipboard("copied text".into())),
        ("remote clipboard empty", ServerMsg::RemoteClipboard(String::new())),
        ("remote clipboard unicode", ServerMsg::RemoteClipboard(UNICODE.into())),
        (
            "status of a graphical session with its graphics path",
            ServerMsg::Status(Status {
                state: "connected".into(),
                message: "connected to 127.0.0.1:3389".into(),
                graphics: Some("h264".into()),
                files: None,
                audio: None,
            }),
        ),
        (
            "status of a terminal with file transfer",
            ServerMsg::Status(Status {
                state: "connected".into(),
                message: "connected to u@127.0.0.1".into(),
                graphics: None,
                files: Some(FilePolicy::Both),
                audio: None,
            }),
        ),
        (
            "file reply: a directory's entries",
            ServerMsg::FileReply(FileReply {
                id: 1,
                event: FileEvent::Entries {
                    path: "/home/u".into(),
                    entries: vec![
                        FileEntry {
                            name: "docs".into(),
                            dir: true,
                            size: 4096,
                            mtime: 1_764_000_000,
                        },
                        FileEntry {
                            name: UNICODE.into(),
                            dir: false,
                            size: 5_000_000_000,
                            mtime: 0,
                        },
                    ],
                    truncated: 0,
                },
            }),
        ),
        (
            "file reply: a download started",
            ServerMsg::FileReply(FileReply {
                id: 2,
                event: FileEvent::Started { size: 65536 },
            }),
        ),
        (
            "file reply: upload progress",
            ServerMsg::FileReply(FileReply {
                id: 3,
                event: FileEvent::Progress { bytes: 32768 },
            }),
        ),
        (
            "file reply: done",
            ServerMsg::FileReply(FileReply {
                id: 3,
                event: FileEvent::Done { bytes: 65536 },
            }),
        ),
        (
            "file reply: failed",
            ServerMsg::FileReply(FileReply {
                id: u32::MAX,
                event: FileEvent::Failed {
                    message: "this connection allows downloads only".into(),
                },
            }),
        ),
        (
            "file data",
            ServerMsg::FileData {
                id: 2,
                data: vec![0, 1, 0xfe, 0xff],
            },
        ),
        (
            "status of a workspace with sound",
            ServerMsg::Status(Status {
                state: "connected".into(),
                message: "connected to 10.201.254.2:5901".into(),
                graphics: None,
                files: None,
                audio: Some("opus".into()),
            }),
        ),
        (
            "audio packet",
            ServerMsg::Audio {
                seq: 0x0102_0304,
                data: vec![0xfc, 0xff, 0xfe],
            },
        ),
        (
            "file data, the last (empty)",
            ServerMsg::FileData {
                id: 2,
                data: Vec::new(),
            },
        ),
        (
            "video key frame with one region",
            ServerMsg::Video {
                stream: 0,
                x: 0,
                y: 0,
                key: true,
                rects: vec![Rect {
                    x: 0,
                    y: 0,
                    width: 1280,
                    height: 720,
                }],
                data: vec![0, 0, 0, 1, 0x67, 0x64, 0x00, 0x20],
            },
        ),
        (
            "video delta frame, two regions, offset picture",
            ServerMsg::Video {
                stream: 3,
                x: 1920,
                y: 16,
                key: false,
                rects: vec![
                    Rect {
                        x: 1,
                        y: 2,
                        width: 3,
                        height: 4,
                    },
                    Rect {
                        x: 65535,
                        y: 65535,
                        width: 1,
                        height: 1,
                    },
                ],
                data: vec![0, 0, 1, 0x41],
            },
        ),
        (
            "video without regions or data",
            ServerMsg::Video {
                stream: u16::MAX,
                x: 0,
                y: 0,
                key: false,
                rects: Vec::new(),
                data: Vec::new(),
            },
        ),
        (
            "cache store",
            ServerMsg::CacheStore {
                slot: 7,
                rect: Rect {
                    x: 10,
                    y: 20,
                    width: 64,
                    height: 32,
                },
            },
        ),
        (
            "cache store, empty: frees the slot",
            ServerMsg::CacheStore {
                slot: u16::MAX,
                rect: Rect {
                    x: 0,
                    y: 0,
                    width: 0,
                    height: 0,
                },
            },
        ),
        (
            "cache draw",
            ServerMsg::CacheDraw {
                slot: 7,
                x: 100,
                y: 200,
            },
        ),
    ]);
    cases
}

/// Server messages in lenient forms the decoder accepts: (name, bytes, value).
fn server_decode_only() -> Vec<(&'static str, Vec<u8>, ServerMsg)> {
    vec![
        (
            "closed with fields this version does not know",
            json_msg(0x05, r#"{"code":"ended","reason":"bye","since":"a later version"}"#),
            ServerMsg::closed(CloseCode::Ended, "bye"),
        ),
        (
            "error with whitespace and escapes in its json",
            json_msg(
                0x04,
                " {\n \"fatal\" : false, \"message\": \"caf\\u00e9 \\ud83e\\udd80\", \"code\": \"malformed_message\" } ",
            ),
            ServerMsg::Error(ErrorInfo {
                code: CloseCode::MalformedMessage,
                message: "café 🦀".into(),
                fatal: false,
            }),
        ),
    ]
}

fn client_cases() -> Vec<(&'static str, ClientMsg)> {
    vec![
        ("term input", ClientMsg::TermInput(b"ls -l\r".to_vec())),
        ("term input empty", ClientMsg::TermInput(Vec::new())),
        (
            "term input, bytes that are not utf-8",
            ClientMsg::TermInput(vec![0x00, 0x1b, 0xff, 0xfe]),
        ),
        (
            "resize a terminal",
            ClientMsg::Resize {
                cols: 80,
                rows: 24,
                width_px: 800,
                height_px: 480,
            },
        ),
        (
            "resize a desktop (no cols and rows)",
            ClientMsg::Resize {
                cols: 0,
                rows: 0,
                width_px: 1920,
                height_px: 1080,
            },
        ),
        (
            "resize to the largest terminal",
            ClientMsg::Resize {
                cols: 1000,
                rows: 1000,
                width_px: u16::MAX,
                height_px: u16::MAX,
            },
        ),
        ("ping", ClientMsg::Ping(*b"\x41\x2e\x84\x80\x00\x00\x00\x00")),
        ("frame ack", ClientMsg::FrameAck { frame_id: 7 }),
        ("frame ack largest", ClientMsg::FrameAck { frame_id: u32::MAX }),
        ("clipboard", ClientMsg::Clipboard("paste me".into())),
        ("clipboard empty", ClientMsg::Clipboard(String::new())),
        ("clipboard unicode", ClientMsg::Clipboard(UNICODE.into())),
        ("disconnect", ClientMsg::Disconnect),
        (
            "key down with its scancode",
            ClientMsg::Key {
                keysym: 0xff0d,
                down: true,
                scancode: 0x1c,
            },
        ),
        (
            "key up, extended scancode",
            ClientMsg::Key {
                keysym: 0xff51,
                down: false,
                scancode: 0xe04b,
            },
        ),
        (
            "key, unicode keysym without a scancode",
            ClientMsg::Key {
                keysym: 0x0100_20ac,
                down: true,
                scancode: 0,
            },
        ),
        (
            "key largest",
            ClientMsg::Key {
                keysym: u32::MAX,
                down: true,
                scancode: u16::MAX,
            },
        ),
        (
            "pointer",
            ClientMsg::Pointer {
                x: 640,
                y: 360,
                buttons: 1,
            },
        ),
        (
            "pointer no buttons at zero",
            ClientMsg::Pointer { x: 0, y: 0, buttons: 0 },
        ),
        (
            "pointer largest, every button",
            ClientMsg::Pointer {
                x: u16::MAX,
                y: u16::MAX,
                buttons: u8::MAX,
            },
        ),
        (
            "credentials with a domain",
            ClientMsg::Credentials(Credentials {
                username: "alice".into(),
                password: "correct horse".into(),
                domain: Some("CORP".into()),
            }),
        ),
        (
            "credentials without a domain",
            ClientMsg::Credentials(Credentials {
                username: "bob".into(),
                password: String::new(),
                domain: None,
            }),
        ),
        (
            "credentials unicode",
            ClientMsg::Credentials(Credentials {
                username: "jürgen".into(),
                password: UNICODE.into(),
                domain: Some("例え".into()),
            }),
        ),
        (
            "credentials at the length limits",
            ClientMsg::Credentials(Credentials {
                username: "u".repeat(256),
                password: "p".repeat(4096),
                domain: Some("d".repeat(256)),
            }),
        ),
        ("caps: h264", ClientMsg::Caps { flags: CAPS_H264 }),
        ("caps: none", ClientMsg::Caps { flags: 0 }),
        ("caps: flags of later versions", ClientMsg::Caps { flags: u32::MAX }),
        (
            "file request: list the home directory",
            ClientMsg::FileRequest(FileRequest {
                id: 1,
                op: FileOp::List { path: String::new() },
            }),
        ),
        (
            "file request: upload",
            ClientMsg::FileRequest(FileRequest {
                id: 2,
                op: FileOp::Upload {
                    path: format!("/tmp/{UNICODE}"),
                    size: 5_000_000_000,
                },
            }),
        ),
        (
            "file request: download",
            ClientMsg::FileRequest(FileRequest {
                id: 3,
                op: FileOp::Download {
                    path: "report.pdf".into(),
                },
            }),
        ),
        (
            "file request: ack",
            ClientMsg::FileRequest(FileRequest {
                id: 3,
                op: FileOp::Ack { bytes: 262_144 },
            }),
        ),
        (
            "file request: mkdir",
            ClientMsg::FileRequest(FileRequest {
                id: 4,
                op: FileOp::Mkdir { path: "new".into() },
            }),
        ),
        (
            "file request: remove",
            ClientMsg::FileRequest(FileRequest {
                id: 5,
                op: FileOp::Remove { path: "old".into() },
            }),
        ),
        (
            "file request: cancel",
            ClientMsg::FileRequest(FileRequest {
                id: 2,
                op: FileOp::Cancel,
            }),
        ),
        (
            "file chunk",
            ClientMsg::FileChunk {
                id: 2,
                data: vec![0xde, 0xad, 0xbe, 0xef],
            },
        ),
        ("audio on", ClientMsg::AudioControl { play: true }),
        ("audio off", ClientMsg::AudioControl { play: false }),
    ]
}

/// Client messages in older or lenient forms the bridge accepts: (name, bytes, value).
fn client_decode_only() -> Vec<(&'static str, Vec<u8>, ClientMsg)> {
    vec![
        (
            "key from an older client (5 bytes, no scancode)",
            msg(0x87, &[0x00, 0x00, 0x00, 0x61, 0x01]),
            ClientMsg::Key {
                keysym: 0x61,
                down: true,
                scancode: 0,
            },
        ),
        (
            "key down as any non-zero byte",
            msg(0x87, &[0x00, 0x00, 0xff, 0x0d, 0x02, 0x00, 0x1c]),
            ClientMsg::Key {
                keysym: 0xff0d,
                down: true,
                scancode: 0x1c,
            },
        ),
        (
            "credentials without the domain field",
            json_msg(0x89, r#"{"username":"alice","password":"pw"}"#),
            ClientMsg::Credentials(Credentials {
                username: "alice".into(),
                password: "pw".into(),
                domain: None,
            }),
        ),
    ]
}

fn malformed_server() -> Vec<(&'static str, Vec<u8>)> {
    let hello = |json: &str| json_msg(0x01, json);
    vec![
        ("empty", Vec::new()),
        ("version only", vec![VERSION]),
        ("version 0", vec![0, 0x25, 0, 0, 0, 1]),
        ("version 2", vec![2, 0x25, 0, 0, 0, 1]),
        ("share without its json", msg(0x07, &[])),
        ("file data of 3 bytes", msg(0x09, &[0, 0, 1])),
        (
            "file reply of an unknown kind",
            json_msg(0x08, r#"{"id":1,"kind":"teleported"}"#),
        ),
        ("unknown type 0x0b", msg(0x0b, &[])),
        ("audio without a packet", msg(0x0a, &[0, 0, 0, 1])),
        ("audio of 3 bytes", msg(0x0a, &[0, 0, 1])),
        ("audio packet beyond opus's largest", msg(0x0a, &[0u8; 4 + 1276])),
        ("reserved display type 0x29", msg(0x29, &[0; 8])),
        ("video of 8 bytes", msg(0x26, &[0; 8])),
        (
            "video with a region cut short",
            msg(0x26, &[0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0]),
        ),
        (
            "video claiming more regions than it holds",
            msg(0x26, &[0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]),
        ),
        ("cache store of 9 bytes", msg(0x27, &[0; 9])),
        ("cache store of 11 bytes", msg(0x27, &[0; 11])),
        ("cache draw of 5 bytes", msg(0x28, &[0; 5])),
        ("cache draw of 7 bytes", msg(0x28, &[0; 7])),
        ("a client type", msg(0x81, b"ls")),
        ("pong of 7 bytes", msg(0x06, &[0; 7])),
        ("pong of 9 bytes", msg(0x06, &[0; 9])),
        ("display size of 3 bytes", msg(0x20, &[0, 1, 0])),
        ("display size of 5 bytes", msg(0x20, &[0, 1, 0, 1, 0])),
        ("image of 8 bytes", msg(0x21, &[0; 8])),
        ("image format 0", msg(0x21, &[0, 0, 0, 0, 0, 1, 0, 1, 0, 0x89])),
        ("image format 3", msg(0x21, &[0, 0, 0, 0, 0, 1, 0, 1, 3, 0x89])),
        ("copy of 11 bytes", msg(0x22, &[0; 11])),
        ("copy of 13 bytes", msg(0x22, &[0; 13])),
        ("fill of 10 bytes", msg(0x23, &[0; 10])),
        ("fill of 12 bytes", msg(0x23, &[0; 12])),
        ("cursor of 3 bytes", msg(0x24, &[0; 3])),
        ("frame end of 3 bytes", msg(0x25, &[0; 3])),
        ("frame end of 5 bytes", msg(0x25, &[0; 5])),
        ("remote clipboard, invalid utf-8", msg(0x40, &[0x61, 0xc3, 0x28])),
        ("remote clipboard, a lone surrogate", msg(0x40, &[0xed, 0xa0, 0x80])),
        ("hello, not json", hello("hello")),
        ("hello, empty", hello("")),
        (
            "hello, trailing garbage",
            hello(r#"{"session_id":"s","protocol":"ssh","resume_token":"r","grace_seconds":60,"reattached":false} x"#),
        ),
        (
            "hello, a field missing",
            hello(r#"{"session_id":"s","protocol":"ssh","resume_token":"r","grace_seconds":60}"#),
        ),
        (
            "hello, a negative grace",
            hello(r#"{"session_id":"s","protocol":"ssh","resume_token":"r","grace_seconds":-1,"reattached":false}"#),
        ),
        (
            "hello, a grace beyond u32",
            hello(
                r#"{"session_id":"s","protocol":"ssh","resume_token":"r","grace_seconds":4294967296,"reattached":false}"#,
            ),
        ),
        (
            "hello, a fractional grace",
            hello(r#"{"session_id":"s","protocol":"ssh","resume_token":"r","grace_seconds":1.5,"reattached":false}"#),
        ),
        (
            "hello, reattached as a string",
            hello(r#"{"session_id":"s","protocol":"ssh","resume_token":"r","grace_seconds":60,"reattached":"no"}"#),
        ),
        (
            "hello, session id null",
            hello(r#"{"session_id":null,"protocol":"ssh","resume_token":"r","grace_seconds":60,"reattached":false}"#),
        ),
        ("status, not an object", json_msg(0x03, r#""connected""#)),
        ("status, message missing", json_msg(0x03, r#"{"state":"connected"}"#)),
        (
            "status, json that is not utf-8",
            msg(0x03, b"{\"state\":\"c\xff\",\"message\":\"\"}"),
        ),
        (
            "error, an unknown code",
            json_msg(0x04, r#"{"code":"closed_by_magic","message":"m","fatal":true}"#),
        ),
        (
            "error, a code in another case",
            json_msg(0x04, r#"{"code":"Ended","message":"m","fatal":true}"#),
        ),
        (
            "error, fatal as a string",
            json_msg(0x04, r#"{"code":"ended","message":"m","fatal":"true"}"#),
        ),
        (
            "error, code as a number",
            json_msg(0x04, r#"{"code":4,"message":"m","fatal":true}"#),
        ),
        ("closed, reason missing", json_msg(0x05, r#"{"code":"ended"}"#)),
        ("share, viewers missing", json_msg(0x07, r#"{"mode":"view"}"#)),
        (
            "share, an unknown mode",
            json_msg(0x07, r#"{"mode":"admin","viewers":[]}"#),
        ),
        (
            "share, a viewer without a name",
            json_msg(0x07, r#"{"viewers":[{"id":"v1","mode":"view"}]}"#),
        ),
        ("closed, an unknown code", json_msg(0x05, r#"{"code":"","reason":"r"}"#)),
    ]
}

fn malformed_client() -> Vec<(&'static str, Vec<u8>)> {
    let creds = |json: &str| json_msg(0x89, json);
    vec![
        ("empty", Vec::new()),
        ("version only", vec![VERSION]),
        ("version 0", vec![0, 0x86]),
        ("version 2", vec![2, 0x86]),
        ("a server type", msg(0x01, b"{}")),
        ("file request without its json", msg(0x8b, &[])),
        ("caps of 3 bytes", msg(0x8a, &[0, 0, 1])),
        ("audio control of 2 bytes", msg(0x8d, &[1, 0])),
        ("audio control with flag 2", msg(0x8d, &[2])),
        (
            "file request of an unknown operation",
            json_msg(0x8b, r#"{"id":1,"op":"chmod","path":"x"}"#),
        ),
        (
            "file request without an id",
            json_msg(0x8b, r#"{"op":"list","path":""}"#),
        ),
        (
            "file request with a negative id",
            json_msg(0x8b, r#"{"id":-1,"op":"cancel"}"#),
        ),
        ("file chunk of 3 bytes", msg(0x8c, &[0, 0, 1])),
        ("file chunk over the chunk limit", {
            let mut p = vec![0, 0, 0, 1];
            p.resize(4 + crate::files::FILE_CHUNK + 1, 0x41);
            msg(0x8c, &p)
        }),
        ("caps of 5 bytes", msg(0x8a, &[0, 0, 0, 1, 0])),
        ("unknown type 0xff", msg(0xff, &[])),
        ("resize of 7 bytes", msg(0x82, &[0, 80, 0, 24, 0, 0, 0])),
        ("resize of 9 bytes", msg(0x82, &[0, 80, 0, 24, 0, 0, 0, 0, 0])),
        ("resize with cols but no rows", msg(0x82, &[0, 80, 0, 0, 0, 0, 0, 0])),
        ("resize with rows but no cols", msg(0x82, &[0, 0, 0, 24, 0, 0, 0, 0])),
        ("resize beyond 1000 cols", msg(0x82, &[0x03, 0xe9, 0, 24, 0, 0, 0, 0])),
        ("resize beyond 1000 rows", msg(0x82, &[0, 80, 0xff, 0xff, 0, 0, 0, 0])),
        ("ping of 7 bytes", msg(0x83, &[0; 7])),
        ("ping of 9 bytes", msg(0x83, &[0; 9])),
        ("frame ack of 3 bytes", msg(0x84, &[0; 3])),
        ("frame ack of 5 bytes", msg(0x84, &[0; 5])),
        ("clipboard, invalid utf-8", msg(0x85, &[0xff])),
        ("clipboard, a truncated code point", msg(0x85, &[0x61, 0xe2, 0x82])),
        ("disconnect with a payload", msg(0x86, &[0])),
        ("key of 4 bytes", msg(0x87, &[0, 0, 0, 0x61])),
        ("key of 6 bytes", msg(0x87, &[0, 0, 0, 0x61, 1, 0])),
        ("key of 8 bytes", msg(0x87, &[0, 0, 0, 0x61, 1, 0, 0x1e, 0])),
        ("pointer of 4 bytes", msg(0x88, &[0; 4])),
        ("pointer of 6 bytes", msg(0x88, &[0; 6])),
        ("credentials, not json", creds("alice:pw")),
        ("credentials, password missing", creds(r#"{"username":"alice"}"#)),
        (
            "credentials, username null",
            creds(r#"{"username":null,"password":"pw"}"#),
        ),
        (
            "credentials, a username over 256 bytes",
            creds(&format!(r#"{{"username":"{}","password":"pw"}}"#, "u".repeat(257))),
        ),
        (
            "credentials, a password over 4096 bytes",
            creds(&format!(r#"{{"username":"u","password":"{}"}}"#, "p".repeat(4097))),
        ),
        (
            "credentials, a domain over 256 bytes",
            creds(&format!(
                r#"{{"username":"u","password":"p","domain":"{}"}}"#,
                "d".repeat(257)
            )),
        ),
    ]
}

fn generate() -> Vectors {
    let mut server: Vec<Vector<ServerValue>> = server_cases()
        .into_iter()
        .map(|(name, m)| Vector {
            name: name.into(),
            value: server_value(&m),
            hex: hex::encode(m.encode()),
            decode_only: false,
        })
        .collect();
    server.extend(server_decode_only().into_iter().map(|(name, b, m)| Vector {
        name: name.into(),
        value: server_value(&m),
        hex: hex::encode(b),
        decode_only: true,
    }));
    let mut client: Vec<Vector<ClientValue>> = client_cases()
        .into_iter()
        .map(|(name, m)| Vector {
            name: name.into(),
            value: client_value(&m),
            hex: hex::encode(m.encode()),
            decode_only: false,
        })
        .collect();
    client.extend(client_decode_only().into_iter().map(|(name, b, m)| Vector {
        name: name.into(),
        value: client_value(&m),
        hex: hex::encode(b),
        decode_only: true,
    }));
    let malformed = |cases: Vec<(&str, Vec<u8>)>, decode: &dyn Fn(&[u8]) -> Option<String>| {
        cases
            .into_iter()
            .map(|(name, b)| Malformed {
                name: name.into(),
                error: decode(&b).unwrap_or_else(|| panic!("malformed case {name:?} decodes")),
                hex: hex::encode(b),
            })
            .collect()
    };
    Vectors {
        about: "Portico wire protocol v1 test vectors (docs/protocol.md), generated from the Rust codec by \
                proto/src/wire_vectors.rs: do not edit by hand (PORTICO_BLESS=1 cargo test -p portico-proto \
                --lib rewrites this file). server: bridge to client, client: client to bridge; each value \
                decodes from its hex and, unless decode_only, encodes to exactly its hex; byte fields are hex; \
                every malformed input must be refused by a decoder of its direction."
            .into(),
        server,
        client,
        malformed_server: malformed(malformed_server(), &|b| {
            ServerMsg::decode(b).err().map(|e| e.to_string())
        }),
        malformed_client: malformed(malformed_client(), &|b| {
            ClientMsg::decode(b).err().map(|e| e.to_string())
        }),
    }
}

fn render(v: &Vectors) -> String {
    let mut out = serde_json::to_string_pretty(v).expect("vectors serialize");
    out.push('\n');
    out
}

#[test]
fn the_vectors_file_is_what_the_codec_generates() {
    generated::check(FILE, &render(&generate()));
}

#[test]
fn the_codec_agrees_with_every_vector_of_the_file() {
    let text = generated::read(FILE);
    let file: Vectors = serde_json::from_str(&text).expect("the vectors file parses");
    let names = |n: &[&str]| n.iter().collect::<std::collections::BTreeSet<_>>().len() == n.len();
    assert!(
        names(&file.server.iter().map(|v| v.name.as_str()).collect::<Vec<_>>()),
        "server names repeat"
    );
    assert!(
        names(&file.client.iter().map(|v| v.name.as_str()).collect::<Vec<_>>()),
        "client names repeat"
    );
    for v in &file.server {
        let b = bytes(&v.hex);
        let expected = server_msg(&v.value);
        assert_eq!(
            ServerMsg::decode(&b).as_ref(),
            Ok(&expected),
            "server vector {:?}",
            v.name
        );
        if !v.decode_only {
            assert_eq!(hex::encode(expected.encode()), v.hex, "server vector {:?}", v.name);
        }
    }
    for v in &file.client {
        let b = bytes(&v.hex);
        let expected = client_msg(&v.value);
        assert_eq!(
            ClientMsg::decode(&b).as_ref(),
            Ok(&expected),
            "client vector {:?}",
            v.name
        );
        if !v.decode_only {
            assert_eq!(hex::encode(expected.encode()), v.hex, "client vector {:?}", v.name);
        }
    }
    for m in &file.malformed_server {
        let err = ServerMsg::decode(&bytes(&m.hex)).expect_err(&m.name);
        assert_eq!(err.to_string(), m.error, "malformed server message {:?}", m.name);
    }
    for m in &file.malformed_client {
        let err = ClientMsg::decode(&bytes(&m.hex)).expect_err(&m.name);
        assert_eq!(err.to_string(), m.error, "malformed client message {:?}", m.name);
    }
}

#[test]
fn every_message_type_has_a_vector() {
    let file = generate();
    let server: std::collections::BTreeSet<u8> = file.server.iter().map(|v| bytes(&v.hex)[1]).collect();
    assert_eq!(
        server.into_iter().collect::<Vec<_>>(),
        [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27,
            0x28, 0x40
        ]
    );
    let client: std::collections::BTreeSet<u8> = file.client.iter().map(|v| bytes(&v.hex)[1]).collect();
    assert_eq!(
        client.into_iter().collect::<Vec<_>>(),
        [
            0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d
        ]
    );
    // Every close code appears in an ERROR.
    for &code in CloseCode::ALL {
        assert!(
            file.server
                .iter()
                .any(|v| matches!(&v.value, ServerValue::Error { code: c, .. } if *c == code)),
            "{code}"
        );
    }
}
