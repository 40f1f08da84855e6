//! A sans-IO RFB (VNC) client ([RFC 6143]): bytes from the server go in through [`RfbClient::handle_input`],
//! events come out of [`RfbClient::poll_event`], bytes for the server out of [`RfbClient::poll_transmit`].
//!
//! Why our own and not vnc-rs: the display pipeline needs the FramebufferUpdate boundary (frames end there,
//! not on a timer), Tight JPEG quality levels, and later VeNCrypt; vnc-rs 0.6 has none of them
//! (see ARCHITECTURE.md).
//!
//! The pixel format is fixed: 32 bits per pixel, depth 24, little-endian, red at bit 0, green at 8, blue at
//! 16, so a pixel's bytes in memory are `R G B x`; decoded rectangles come out as RGBA.
//!
//! [RFC 6143]: https://www.rfc-editor.org/rfc/rfc6143

use std::collections::VecDeque;

use crate::Secret;
pub use crate::limits::{MAX_CURSOR_SIDE, MaxDesktop};

/// Largest compressed payload of one rectangle (whatever its size; smaller rectangles get less, see
/// [`data_limit`]).
pub const MAX_RECT_DATA: usize = 64 * 1024 * 1024;
/// Largest clipboard text accepted from a server.
pub const MAX_CUT_TEXT: usize = 1024 * 1024;
/// Largest desktop name accepted.
const MAX_NAME: usize = 4096;

/// Encoding numbers ([RFC 6143 §7.7], and the pseudo-encodings registry).
pub mod encoding {
    pub const RAW: i32 = 0;
    pub const COPY_RECT: i32 = 1;
    pub const TIGHT: i32 = 7;
    pub const ZRLE: i32 = 16;
    /// Tight JPEG quality level 0..=9 is `JPEG_QUALITY_0 + level`.
    pub const JPEG_QUALITY_0: i32 = -32;
    /// The ten JPEG quality pseudo-encodings.
    pub const JPEG_QUALITY: std::ops::RangeInclusive<i32> = JPEG_QUALITY_0..=JPEG_QUALITY_0 + 9;
    /// Tight/ZRLE compression level 0..=9 is `COMPRESS_LEVEL_0 + level`.
    pub const COMPRESS_LEVEL_0: i32 = -256;
    pub const CURSOR: i32 = -239;
    pub const DESKTOP_SIZE: i32 = -223;
    pub const LAST_RECT: i32 = -224;
    pub const EXTENDED_DESKTOP_SIZE: i32 = -308;
    /// The extended clipboard (UTF-8 text, request/provide flow).
    pub const EXTENDED_CLIPBOARD: i32 = 0xc0a1_e5ce_u32 as i32;
}

/// What the client learns from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfbEvent {
    /// The handshake finished.
    Connected {
        width: u16,
        height: u16,
        name: String,
    },
    /// Decoded pixels (RGBA, row-major, `width * height * 4` bytes).
    Rect {
        x: u16,
        y: u16,
        width: u16,
        height: u16,
        rgba: Vec<u8>,
    },
    /// A solid rectangle (Tight fill).
    Fill {
        x: u16,
        y: u16,
        width: u16,
        height: u16,
        rgb: [u8; 3],
    },
    /// A JPEG image of exactly this rectangle (Tight JPEG), passed on undecoded: the browser can draw it
    /// as it is.
    Jpeg {
        x: u16,
        y: u16,
        width: u16,
        height: u16,
        data: Vec<u8>,
    },
    /// Copy a rectangle of the current framebuffer from `(src_x, src_y)` to `(x, y)`.
    Copy {
        src_x: u16,
        src_y: u16,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    },
    /// A new cursor image (RGBA, transparent where the server's mask is 0).
    Cursor {
        hot_x: u16,
        hot_y: u16,
        width: u16,
        height: u16,
        rgba: Vec<u8>,
    },
    /// The framebuffer changed size (its content is undefined until the next rectangles).
    Resize {
        width: u16,
        height: u16,
    },
    /// The server refused our SetDesktopSize (the reason in words).
    ResizeRefused(&'static str),
    /// The end of one FramebufferUpdate: a frame boundary.
    UpdateEnd,
    Bell,
    /// Clipboard text from the server (Latin-1 on the wire, or UTF-8 with the extended clipboard).
    CutText(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RfbError {
    #[error("not an rfb server (greeting {0:?})")]
    NotRfb(String),
    #[error("unsupported rfb version {0}")]
    Version(String),
    #[error("the server refused the connection: {0}")]
    Refused(String),
    #[error(
        "no supported security type (the server offers {0:?}; portico supports none (1) and vnc authentication (2))"
    )]
    Security(Vec<u8>),
    #[error("the server requires a password and none is stored")]
    PasswordRequired,
    #[error("vnc authentication failed: {0}")]
    AuthFailed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{what} of {size} exceeds the limit")]
    TooLarge { what: &'static str, size: usize },
    #[error("the server's desktop of {width}x{height} exceeds the limit of {limit}")]
    DesktopTooLarge { width: u16, height: u16, limit: MaxDesktop },
    #[error("a cursor of {width}x{height} exceeds the limit of {MAX_CURSOR_SIDE}x{MAX_CURSOR_SIDE}")]
    CursorTooLarge { width: u16, height: u16 },
    #[error("corrupt compressed data: {0}")]
    Compression(String),
}

fn protocol(msg: impl Into<String>) -> RfbError {
    RfbError::Protocol(msg.into())
}

#[derive(Debug, Clone)]
pub struct RfbConfig {
    /// The VncAuth password: the client drops it (zeroed) once the handshake no longer needs it.
    pub password: Option<Secret<String>>,
    /// Ask the server to keep other clients connected.
    pub shared: bool,
    /// Encodings in order of preference; Raw is always accepted.
    pub encodings: Vec<i32>,
    /// The largest framebuffer accepted (ServerInit, DesktopSize, ExtendedDesktopSize); a larger one is
    /// [`RfbError::DesktopTooLarge`], and resize requests are clamped to it.
    pub max_desktop: MaxDesktop,
    /// Ask for lossless encodings only from the start (see [`RfbClient::set_lossless`]).
    pub lossless: bool,
}

/// The Tight JPEG quality level asked for at first (TigerVNC: JPEG quality 62, 4:2:2 subsampling): full-motion
/// video at 640x360 and 25 fps stays under 670 KiB/s; text is never sent as JPEG.
pub const DEFAULT_JPEG_LEVEL: u8 = 4;

impl Default for RfbConfig {
    fn default() -> Self {
        use encoding::*;
        RfbConfig {
            password: None,
            shared: true,
            encodings: vec![
                COPY_RECT,
                TIGHT,
                ZRLE,
                RAW,
                JPEG_QUALITY_0 + DEFAULT_JPEG_LEVEL as i32,
                COMPRESS_LEVEL_0 + 1,
                CURSOR,
                DESKTOP_SIZE,
                EXTENDED_DESKTOP_SIZE,
                LAST_RECT,
                EXTENDED_CLIPBOARD,
            ],
            max_desktop: MaxDesktop::DEFAULT,
            lossless: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Version,
    SecurityTypes,
    /// RFB 3.3: the server chose the security type (a u32).
    SecurityType33,
    VncAuthChallenge,
    SecurityResult,
    ServerInit,
    Normal,
    /// Inside a FramebufferUpdate with this many rectangles left.
    Update(u16),
    Failed,
}

pub struct RfbClient {
    config: RfbConfig,
    state: State,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    events: VecDeque<RfbEvent>,
    zlib: flate2::Decompress,
    /// The server announced the extended clipboard (UTF-8 text).
    ext_clipboard: bool,
    /// Our clipboard text, kept until the server asks for it (extended clipboard).
    our_clipboard: Option<String>,
    /// The screen id of the server's first screen, once it announced ExtendedDesktopSize (so it can be
    /// asked to resize).
    screen_id: Option<u32>,
    /// The four zlib streams of Tight.
    tight_zlib: [flate2::Decompress; 4],
    width: u16,
    height: u16,
    /// Rectangles received per encoding (diagnostics and tests).
    rect_counts: Vec<(i32, u64)>,
    /// Lossless encodings only: the JPEG quality pseudo-encoding is left out of SetEncodings (Tight then
    /// never sends JPEG), see [`RfbClient::set_lossless`].
    lossless: bool,
    /// The protocol minor version spoken: 3, 7 or 8 (RFB 3.3 and 3.7 differ in the security handshake).
    minor: u8,
}

/// A reader over the input buffer that reports "need more" as `None` instead of failing.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.u32().map(|v| v as i32)
    }
}

/// The DES key of VNC authentication: the password's first 8 bytes, each with its bits reversed.
fn vnc_auth_response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    use des::cipher::{BlockCipherEncrypt, KeyInit};
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    // INVARIANT: DES takes exactly 8 key bytes.
    let cipher = des::Des::new_from_slice(&key).expect("8-byte des key");
    zeroize::Zeroize::zeroize(&mut key);
    let mut out = *challenge;
    for chunk in out.chunks_exact_mut(8) {
        let mut block = des::cipher::Block::<des::Des>::default();
        block.copy_from_slice(chunk);
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
    }
    out
}

impl RfbClient {
    pub fn new(config: RfbConfig) -> Self {
        RfbClient {
            lossless: config.lossless,
            config,
            state: State::Version,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            events: VecDeque::new(),
            zlib: flate2::Decompress::new(true),
            tight_zlib: std::array::from_fn(|_| flate2::Decompress::new(true)),
            screen_id: None,
            ext_clipboard: false,
            our_clipboard: None,
            width: 0,
            height: 0,
            rect_counts: Vec::new(),
            minor: 8,
        }
    }

    /// How many rectangles arrived in each encoding so far.
    pub fn rect_counts(&self) -> &[(i32, u64)] {
        &self.rect_counts
    }

    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Normal | State::Update(_))
    }

    /// Whether the client still holds the VNC password: only until the VncAuth response is computed, or
    /// until the server picks no authentication, or the handshake fails.
    pub fn holds_password(&self) -> bool {
        self.config.password.is_some()
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        (!self.outbuf.is_empty()).then(|| std::mem::take(&mut self.outbuf))
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<RfbEvent> {
        self.events.pop_front()
    }

    /// Feed bytes from the server; parses every complete message. After an error the client is unusable.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), RfbError> {
        if self.state == State::Failed {
            return Err(protocol("the connection already failed"));
        }
        self.inbuf.extend_from_slice(bytes);
        loop {
            let buf = std::mem::take(&mut self.inbuf);
            let mut cur = Cursor { buf: &buf, pos: 0 };
            let step = self.step(&mut cur);
            let consumed = cur.pos;
            self.inbuf = buf;
            match step {
                Ok(true) => {
                    self.inbuf.drain(..consumed);
                }
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.state = State::Failed;
                    self.config.password = None;
                    return Err(e);
                }
            }
        }
    }

    /// Ask for an update of the whole screen (`incremental`: only what changed).
    pub fn request_update(&mut self, incremental: bool) {
        self.outbuf.push(3);
        self.outbuf.push(u8::from(incremental));
        for v in [0, 0, self.width, self.height] {
            self.outbuf.extend_from_slice(&v.to_be_bytes());
        }
    }

    /// A key event; dropped before the handshake is over (bytes sent then would be read as the handshake's).
    pub fn key(&mut self, keysym: u32, down: bool) {
        if !self.is_connected() {
            return;
        }
        self.outbuf.extend_from_slice(&[4, u8::from(down), 0, 0]);
        self.outbuf.extend_from_slice(&keysym.to_be_bytes());
    }

    /// A pointer event; dropped before the handshake is over, like [`RfbClient::key`].
    pub fn pointer(&mut self, x: u16, y: u16, buttons: u8) {
        if !self.is_connected() {
            return;
        }
        self.outbuf.extend_from_slice(&[5, buttons]);
        self.outbuf.extend_from_slice(&x.to_be_bytes());
        self.outbuf.extend_from_slice(&y.to_be_bytes());
    }

    /// Whether the server takes SetDesktopSize (it announced ExtendedDesktopSize).
    pub fn can_resize(&self) -> bool {
        self.screen_id.is_some()
    }

    /// Ask the server to resize its desktop to one screen of `width` x `height` (clamped to the configured
    /// maximum); false if it cannot.
    pub fn set_desktop_size(&mut self, width: u16, height: u16) -> bool {
        let Some(id) = self.screen_id else { return false };
        let (width, height) = self.config.max_desktop.clamp(width.max(16), height.max(16));
        self.outbuf.extend_from_slice(&[251, 0]);
        self.outbuf.extend_from_slice(&width.to_be_bytes());
        self.outbuf.extend_from_slice(&height.to_be_bytes());
        self.outbuf.extend_from_slice(&[1, 0]);
        self.outbuf.extend_from_slice(&id.to_be_bytes());
        for v in [0, 0, width, height] {
            self.outbuf.extend_from_slice(&v.to_be_bytes());
        }
        self.outbuf.extend_from_slice(&0u32.to_be_bytes());
        true
    }

    /// Change the Tight JPEG quality level (0..=9) the server uses from now on (SetEncodings again; kept for
    /// later while [lossless](RfbClient::set_lossless)).
    pub fn set_jpeg_quality(&mut self, level: u8) {
        let q = encoding::JPEG_QUALITY_0 + i32::from(level.min(9));
        match self
            .config
            .encodings
            .iter_mut()
            .find(|e| encoding::JPEG_QUALITY.contains(e))
        {
            Some(e) => *e = q,
            None => self.config.encodings.push(q),
        }
        if !self.lossless {
            self.send_encodings();
        }
    }

    /// Ask for lossless encodings only (`true`: SetEncodings without the JPEG quality level, so Tight sends
    /// no JPEG and the bridge chooses how to encode each region), or for the configured ones again.
    /// TigerVNC sends antialiased text as JPEG when a quality level is set (more than 24 or 96 colours in
    /// a rectangle), about four times the bytes of a lossless indexed PNG of the same text.
    pub fn set_lossless(&mut self, lossless: bool) {
        if self.lossless != lossless {
            self.lossless = lossless;
            self.send_encodings();
        }
    }

    /// Whether only lossless encodings are asked for (see [`RfbClient::set_lossless`]).
    pub fn is_lossless(&self) -> bool {
        self.lossless
    }

    fn send_encodings(&mut self) {
        let lossless = self.lossless;
        let encs: Vec<i32> = (self.config.encodings.iter())
            .copied()
            .filter(|e| !(lossless && encoding::JPEG_QUALITY.contains(e)))
            .collect();
        self.outbuf.extend_from_slice(&[2, 0]);
        self.outbuf.extend_from_slice(&(encs.len() as u16).to_be_bytes());
        for e in encs {
            self.outbuf.extend_from_slice(&e.to_be_bytes());
        }
    }

    /// Whether clipboard text goes both ways as UTF-8 (the server has the extended clipboard).
    pub fn has_utf8_clipboard(&self) -> bool {
        self.ext_clipboard
    }

    /// Send clipboard text: with the extended clipboard, announce it and provide it as UTF-8 when the server
    /// asks; otherwise as classic Latin-1, where other characters become `?`.
    /// Dropped before the handshake is over, like [`RfbClient::key`].
    pub fn cut_text(&mut self, text: &str) {
        if !self.is_connected() {
            return;
        }
        if self.ext_clipboard {
            self.our_clipboard = Some(text.to_owned());
            self.ext_clipboard_message(ext_clip::NOTIFY | ext_clip::TEXT, &[]);
            return;
        }
        let latin1: Vec<u8> = text
            .chars()
            .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
            .collect();
        self.outbuf.extend_from_slice(&[6, 0, 0, 0]);
        self.outbuf.extend_from_slice(&(latin1.len() as u32).to_be_bytes());
        self.outbuf.extend_from_slice(&latin1);
    }

    /// A ClientCutText in the extended format: negative length, flags, payload.
    fn ext_clipboard_message(&mut self, flags: u32, payload: &[u8]) {
        let len = -((4 + payload.len()) as i32);
        self.outbuf.extend_from_slice(&[6, 0, 0, 0]);
        self.outbuf.extend_from_slice(&len.to_be_bytes());
        self.outbuf.extend_from_slice(&flags.to_be_bytes());
        self.outbuf.extend_from_slice(payload);
    }

    /// An extended-clipboard message from the server (the payload after the negative length).
    fn ext_clipboard_in(&mut self, payload: &[u8]) -> Result<(), RfbError> {
        let Some(flags) = payload.get(..4).map(|f| u32::from_be_bytes([f[0], f[1], f[2], f[3]])) else {
            return Err(protocol("extended clipboard message without flags"));
        };
        let body = &payload[4..];
        if flags & ext_clip::CAPS != 0 {
            self.ext_clipboard = flags & ext_clip::TEXT != 0;
            if self.ext_clipboard {
                // Our capabilities: UTF-8 text up to MAX_CUT_TEXT, and the actions we handle.
                let ours = ext_clip::CAPS | ext_clip::TEXT | ext_clip::REQUEST | ext_clip::NOTIFY | ext_clip::PROVIDE;
                self.ext_clipboard_message(ours, &(MAX_CUT_TEXT as u32).to_be_bytes());
            }
        } else if flags & ext_clip::REQUEST != 0 {
            if flags & ext_clip::TEXT != 0
                && let Some(text) = self.our_clipboard.clone()
            {
                let mut raw = Vec::with_capacity(text.len() + 5);
                let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
                raw.extend_from_slice(&((crlf.len() + 1) as u32).to_be_bytes());
                raw.extend_from_slice(crlf.as_bytes());
                raw.push(0);
                let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut z, &raw).map_err(|e| RfbError::Compression(e.to_string()))?;
                let data = z.finish().map_err(|e| RfbError::Compression(e.to_string()))?;
                self.ext_clipboard_message(ext_clip::PROVIDE | ext_clip::TEXT, &data);
            }
        } else if flags & ext_clip::NOTIFY != 0 {
            if flags & ext_clip::TEXT != 0 {
                self.ext_clipboard_message(ext_clip::REQUEST | ext_clip::TEXT, &[]);
            }
        } else if flags & ext_clip::PROVIDE != 0 && flags & ext_clip::TEXT != 0 {
            // A fresh zlib stream per message; the first format present is text (formats come in bit order).
            let raw = inflate(&mut flate2::Decompress::new(true), body, MAX_CUT_TEXT + 4)?;
            let len = raw
                .get(..4)
                .map_or(0, |l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
            let text = raw
                .get(4..4 + len)
                .ok_or_else(|| protocol("extended clipboard text shorter than announced"))?;
            let text = String::from_utf8_lossy(text.strip_suffix(&[0]).unwrap_or(text));
            self.events.push_back(RfbEvent::CutText(text.replace("\r\n", "\n")));
        }
        Ok(())
    }

    /// Parse one unit of input; `Ok(false)` = need more bytes.
    fn step(&mut self, c: &mut Cursor<'_>) -> Result<bool, RfbError> {
        match self.state {
            State::Version => {
                let Some(v) = c.take(12) else { return Ok(false) };
                let v = String::from_utf8_lossy(v).into_owned();
                if !v.starts_with("RFB ") {
                    return Err(RfbError::NotRfb(v.trim_end().to_owned()));
                }
                let (major, minor) = (v.get(4..7).unwrap_or(""), v.get(8..11).unwrap_or(""));
                // RFC 6143 §7.1.1: 3.3, 3.7 and 3.8; other 3.x below 3.7 are 3.3, above 3.8 are 3.8.
                self.minor = match minor.parse::<u32>() {
                    Ok(m) if major == "003" && m >= 8 => 8,
                    Ok(7) if major == "003" => 7,
                    Ok(_) if major == "003" => 3,
                    _ => return Err(RfbError::Version(v.trim_end().to_owned())),
                };
                self.outbuf
                    .extend_from_slice(format!("RFB 003.00{}\n", self.minor).as_bytes());
                self.state = match self.minor {
                    3 => State::SecurityType33,
                    _ => State::SecurityTypes,
                };
            }
            State::SecurityType33 => {
                let Some(ty) = c.u32() else { return Ok(false) };
                match ty {
                    0 => {
                        let Some(reason) = self.reason(c)? else {
                            return Ok(false);
                        };
                        return Err(RfbError::Refused(reason));
                    }
                    1 => {
                        self.config.password = None;
                        self.client_init();
                    }
                    2 if self.config.password.is_some() => self.state = State::VncAuthChallenge,
                    2 => return Err(RfbError::PasswordRequired),
                    other => return Err(RfbError::Security(vec![other.min(255) as u8])),
                }
            }
            State::SecurityTypes => {
                let Some(n) = c.u8() else { return Ok(false) };
                if n == 0 {
                    let Some(reason) = self.reason(c)? else {
                        return Ok(false);
                    };
                    return Err(RfbError::Refused(reason));
                }
                let Some(types) = c.take(n.into()) else {
                    return Ok(false);
                };
                if types.contains(&2) && self.config.password.is_some() {
                    self.outbuf.push(2);
                    self.state = State::VncAuthChallenge;
                } else if types.contains(&1) {
                    self.outbuf.push(1);
                    self.config.password = None;
                    // RFB 3.7 sends no SecurityResult for None.
                    match self.minor {
                        8 => self.state = State::SecurityResult,
                        _ => self.client_init(),
                    }
                } else if types.contains(&2) {
                    return Err(RfbError::PasswordRequired);
                } else {
                    return Err(RfbError::Security(types.to_vec()));
                }
            }
            State::VncAuthChallenge => {
                let Some(ch) = c.take(16) else { return Ok(false) };
                let mut challenge = [0u8; 16];
                challenge.copy_from_slice(ch);
                // The password is needed for this response only: dropping it here zeroes it.
                let pw = self.config.password.take();
                let pw = pw.as_ref().map(|p| p.expose().as_str()).unwrap_or("");
                self.outbuf.extend_from_slice(&vnc_auth_response(pw, &challenge));
                self.state = State::SecurityResult;
            }
            State::SecurityResult => {
                let Some(result) = c.u32() else { return Ok(false) };
                if result != 0 && self.minor < 8 {
                    // No reason before RFB 3.8.
                    return Err(RfbError::AuthFailed("wrong password".into()));
                }
                if result != 0 {
                    let reason = self.reason(c)?;
                    let Some(reason) = reason else { return Ok(false) };
                    return Err(RfbError::AuthFailed(if reason.is_empty() {
                        "wrong password".into()
                    } else {
                        reason
                    }));
                }
                self.client_init();
            }
            State::ServerInit => {
                let (Some(w), Some(h), Some(_pf), Some(len)) = (c.u16(), c.u16(), c.take(16), c.u32()) else {
                    return Ok(false);
                };
                if len as usize > MAX_NAME {
                    return Err(RfbError::TooLarge {
                        what: "desktop name",
                        size: len as usize,
                    });
                }
                let Some(name) = c.take(len as usize) else {
                    return Ok(false);
                };
                self.check_size(w, h)?;
                self.width = w;
                self.height = h;
                self.send_setup();
                self.events.push_back(RfbEvent::Connected {
                    width: w,
                    height: h,
                    name: latin1(name),
                });
                self.state = State::Normal;
            }
            State::Normal => return self.server_message(c),
            State::Update(0) => {
                self.events.push_back(RfbEvent::UpdateEnd);
                self.state = State::Normal;
            }
            State::Update(left) => return self.rect(c, left),
            State::Failed => return Err(protocol("the connection already failed")),
        }
        Ok(true)
    }

    /// A reason string (`u32` length + text); `Ok(None)` = need more.
    fn reason(&self, c: &mut Cursor<'_>) -> Result<Option<String>, RfbError> {
        let Some(len) = c.u32() else { return Ok(None) };
        if len as usize > MAX_NAME {
            return Err(RfbError::TooLarge {
                what: "reason",
                size: len as usize,
            });
        }
        Ok(c.take(len as usize).map(latin1))
    }

    fn check_size(&self, w: u16, h: u16) -> Result<(), RfbError> {
        if w == 0 || h == 0 {
            return Err(protocol(format!("framebuffer size {w}x{h} out of range")));
        }
        let limit = self.config.max_desktop;
        if !limit.allows(w, h) {
            return Err(RfbError::DesktopTooLarge {
                width: w,
                height: h,
                limit,
            });
        }
        Ok(())
    }

    fn client_init(&mut self) {
        self.outbuf.push(u8::from(self.config.shared));
        self.state = State::ServerInit;
    }

    fn send_setup(&mut self) {
        // SetPixelFormat: 32 bpp, depth 24, little-endian, true colour, 255 max, shifts R0 G8 B16.
        self.outbuf
            .extend_from_slice(&[0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0]);
        self.send_encodings();
        self.request_update(false);
    }

    fn server_message(&mut self, c: &mut Cursor<'_>) -> Result<bool, RfbError> {
        let Some(ty) = c.u8() else { return Ok(false) };
        match ty {
            0 => {
                let (Some(_pad), Some(n)) = (c.u8(), c.u16()) else {
                    return Ok(false);
                };
                self.state = State::Update(n);
            }
            1 => {
                // SetColourMapEntries: not used with true colour, but must be skipped whole.
                let (Some(_), Some(_), Some(n)) = (c.u8(), c.u16(), c.u16()) else {
                    return Ok(false);
                };
                if c.take(usize::from(n) * 6).is_none() {
                    return Ok(false);
                }
            }
            2 => self.events.push_back(RfbEvent::Bell),
            3 => {
                let (Some(_), Some(len)) = (c.take(3), c.i32()) else {
                    return Ok(false);
                };
                if len < 0 && self.config.encodings.contains(&encoding::EXTENDED_CLIPBOARD) {
                    let n = len.unsigned_abs() as usize;
                    if n > MAX_CUT_TEXT {
                        return Err(RfbError::TooLarge {
                            what: "server clipboard message",
                            size: n,
                        });
                    }
                    let Some(payload) = c.take(n) else {
                        return Ok(false);
                    };
                    self.ext_clipboard_in(payload)?;
                    return Ok(true);
                }
                let len = len as u32;
                if len as usize > MAX_CUT_TEXT {
                    return Err(RfbError::TooLarge {
                        what: "server clipboard text",
                        size: len as usize,
                    });
                }
                let Some(text) = c.take(len as usize) else {
                    return Ok(false);
                };
                self.events.push_back(RfbEvent::CutText(latin1(text)));
            }
            other => return Err(protocol(format!("unknown server message type {other}"))),
        }
        Ok(true)
    }

    fn rect(&mut self, c: &mut Cursor<'_>, left: u16) -> Result<bool, RfbError> {
        let (Some(x), Some(y), Some(w), Some(h), Some(enc)) = (c.u16(), c.u16(), c.u16(), c.u16(), c.i32()) else {
            return Ok(false);
        };
        let in_bounds = |fw: u16, fh: u16| {
            u32::from(x) + u32::from(w) <= u32::from(fw) && u32::from(y) + u32::from(h) <= u32::from(fh)
        };
        let pixels = usize::from(w) * usize::from(h);
        let outcome = self.rect_body(c, x, y, w, h, enc, pixels, in_bounds)?;
        if outcome == RectOutcome::NeedMore {
            return Ok(false);
        }
        match self.rect_counts.iter_mut().find(|(e, _)| *e == enc) {
            Some((_, n)) => *n += 1,
            None => self.rect_counts.push((enc, 1)),
        }
        self.state = if outcome == RectOutcome::Last {
            State::Update(0)
        } else {
            State::Update(left - 1)
        };
        Ok(true)
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one rectangle header")]
    fn rect_body(
        &mut self,
        c: &mut Cursor<'_>,
        x: u16,
        y: u16,
        w: u16,
        h: u16,
        enc: i32,
        pixels: usize,
        in_bounds: impl Fn(u16, u16) -> bool,
    ) -> Result<RectOutcome, RfbError> {
        use RectOutcome::NeedMore;
        match enc {
            encoding::RAW | encoding::COPY_RECT | encoding::ZRLE | encoding::TIGHT
                if !in_bounds(self.width, self.height) =>
            {
                return Err(protocol(format!(
                    "rectangle {w}x{h}+{x}+{y} outside the {}x{} framebuffer",
                    self.width, self.height
                )));
            }
            encoding::RAW => {
                let Some(data) = c.take(pixels * 4) else {
                    return Ok(NeedMore);
                };
                let mut rgba = data.to_vec();
                rgba.chunks_exact_mut(4).for_each(|p| p[3] = 255);
                self.events.push_back(RfbEvent::Rect {
                    x,
                    y,
                    width: w,
                    height: h,
                    rgba,
                });
            }
            encoding::COPY_RECT => {
                let (Some(src_x), Some(src_y)) = (c.u16(), c.u16()) else {
                    return Ok(NeedMore);
                };
                if !(u32::from(src_x) + u32::from(w) <= u32::from(self.width)
                    && u32::from(src_y) + u32::from(h) <= u32::from(self.height))
                {
                    return Err(protocol("copy source outside the framebuffer"));
                }
                self.events.push_back(RfbEvent::Copy {
                    src_x,
                    src_y,
                    x,
                    y,
                    width: w,
                    height: h,
                });
            }
            encoding::ZRLE => {
                let Some(len) = c.u32() else { return Ok(NeedMore) };
                if len as usize > data_limit(zrle_limit(pixels)) {
                    return Err(RfbError::TooLarge {
                        what: "zrle rectangle",
                        size: len as usize,
                    });
                }
                let Some(data) = c.take(len as usize) else {
                    return Ok(NeedMore);
                };
                let raw = self.inflate(data, pixels)?;
                let rgba = decode_zrle(&raw, w, h)?;
                self.events.push_back(RfbEvent::Rect {
                    x,
                    y,
                    width: w,
                    height: h,
                    rgba,
                });
            }
            encoding::TIGHT => {
                let Some(event) = self.tight(c, x, y, w, h)? else {
                    return Ok(NeedMore);
                };
                self.events.push_back(event);
            }
            encoding::CURSOR => {
                // The position is the hotspot, within the image (or at its edge); the image is small.
                if w > MAX_CURSOR_SIDE || h > MAX_CURSOR_SIDE {
                    return Err(RfbError::CursorTooLarge { width: w, height: h });
                }
                if x > w || y > h {
                    return Err(protocol(format!("cursor hotspot {x},{y} outside its {w}x{h} image")));
                }
                let mask_len = usize::from(w).div_ceil(8) * usize::from(h);
                let Some(data) = c.take(pixels * 4 + mask_len) else {
                    return Ok(NeedMore);
                };
                let (px, mask) = data.split_at(pixels * 4);
                let mut rgba = px.to_vec();
                for (i, p) in rgba.chunks_exact_mut(4).enumerate() {
                    let (row, col) = (i / usize::from(w), i % usize::from(w));
                    let bit = mask[row * usize::from(w).div_ceil(8) + col / 8] & (0x80 >> (col % 8));
                    p[3] = if bit != 0 { 255 } else { 0 };
                }
                self.events.push_back(RfbEvent::Cursor {
                    hot_x: x,
                    hot_y: y,
                    width: w,
                    height: h,
                    rgba,
                });
            }
            encoding::DESKTOP_SIZE => self.resize(w, h)?,
            encoding::EXTENDED_DESKTOP_SIZE => {
                let Some(n) = c.u8() else { return Ok(NeedMore) };
                let Some(screens) = c.take(3 + usize::from(n) * 16) else {
                    return Ok(NeedMore);
                };
                if n > 0 {
                    let id = &screens[3..7];
                    self.screen_id = Some(u32::from_be_bytes([id[0], id[1], id[2], id[3]]));
                }
                // x = 1 answers our request, with the status in y; otherwise y = 0 is a change on the server.
                if x == 1 && y != 0 {
                    self.events.push_back(RfbEvent::ResizeRefused(match y {
                        1 => "resizing is prohibited",
                        2 => "out of resources",
                        3 => "invalid screen layout",
                        _ => "refused",
                    }));
                } else if y == 0 || (w, h) != (self.width, self.height) {
                    self.resize(w, h)?;
                }
            }
            encoding::LAST_RECT => return Ok(RectOutcome::Last),
            other => {
                return Err(protocol(format!(
                    "the server sent encoding {other}, which was not requested"
                )));
            }
        }
        Ok(RectOutcome::Done)
    }

    fn resize(&mut self, w: u16, h: u16) -> Result<(), RfbError> {
        self.check_size(w, h)?;
        if (w, h) != (self.width, self.height) {
            self.width = w;
            self.height = h;
            self.events.push_back(RfbEvent::Resize { width: w, height: h });
        }
        Ok(())
    }

    /// Inflate one rectangle's worth from the connection-wide zlib stream.
    fn inflate(&mut self, data: &[u8], pixels: usize) -> Result<Vec<u8>, RfbError> {
        inflate(&mut self.zlib, data, zrle_limit(pixels))
    }

    /// One Tight rectangle ([rfbproto: Tight]); `Ok(None)` = need more bytes.
    ///
    /// [rfbproto: Tight]: https://github.com/rfbproto/rfbproto/blob/master/rfbproto.rst#tight-encoding
    fn tight(&mut self, c: &mut Cursor<'_>, x: u16, y: u16, w: u16, h: u16) -> Result<Option<RfbEvent>, RfbError> {
        let Some(ctl) = c.u8() else { return Ok(None) };
        let compact_len = |c: &mut Cursor<'_>, limit: usize| -> Result<Option<usize>, RfbError> {
            let mut len = 0usize;
            for i in 0..3 {
                let Some(b) = c.u8() else { return Ok(None) };
                let bits = if i == 2 { usize::from(b) } else { usize::from(b & 0x7f) };
                len |= bits << (7 * i);
                if i < 2 && b & 0x80 == 0 {
                    break;
                }
            }
            if len > data_limit(limit) {
                return Err(RfbError::TooLarge {
                    what: "tight rectangle",
                    size: len,
                });
            }
            Ok(Some(len))
        };
        let (wu, hu) = (usize::from(w), usize::from(h));
        let event = match ctl >> 4 {
            8 => {
                let Some(p) = c.take(3) else { return Ok(None) };
                RfbEvent::Fill {
                    x,
                    y,
                    width: w,
                    height: h,
                    rgb: [p[0], p[1], p[2]],
                }
            }
            9 => {
                // A JPEG is smaller than the raw pixels it encodes (plus its headers).
                let Some(len) = compact_len(c, wu * hu * 4 + 64 * 1024)? else {
                    return Ok(None);
                };
                let Some(data) = c.take(len) else { return Ok(None) };
                RfbEvent::Jpeg {
                    x,
                    y,
                    width: w,
                    height: h,
                    data: data.to_vec(),
                }
            }
            comp @ 0..=7 => {
                let filter = if comp & 4 != 0 {
                    let Some(f) = c.u8() else { return Ok(None) };
                    f
                } else {
                    0
                };
                let palette: Option<Vec<u8>> = match filter {
                    0 | 2 => None,
                    1 => {
                        let Some(n) = c.u8() else { return Ok(None) };
                        let Some(p) = c.take((usize::from(n) + 1) * 3) else {
                            return Ok(None);
                        };
                        Some(p.to_vec())
                    }
                    other => return Err(protocol(format!("unknown tight filter {other}"))),
                };
                let raw_len = match &palette {
                    Some(p) if p.len() == 6 => wu.div_ceil(8) * hu,
                    Some(_) => wu * hu,
                    None => wu * hu * 3,
                };
                let raw = if raw_len < 12 {
                    let Some(d) = c.take(raw_len) else { return Ok(None) };
                    reset_streams(&mut self.tight_zlib, ctl);
                    d.to_vec()
                } else {
                    let Some(len) = compact_len(c, raw_len)? else {
                        return Ok(None);
                    };
                    let Some(data) = c.take(len) else { return Ok(None) };
                    // Resets apply before this rectangle's data, and only once it is complete.
                    reset_streams(&mut self.tight_zlib, ctl);
                    let raw = inflate(&mut self.tight_zlib[usize::from(comp & 3)], data, raw_len)?;
                    if raw.len() != raw_len {
                        return Err(RfbError::Compression(format!(
                            "tight rectangle inflated to {} bytes instead of {raw_len}",
                            raw.len()
                        )));
                    }
                    raw
                };
                let rgba = match (&palette, filter) {
                    (Some(p), _) => tight_palette(&raw, p, wu, hu),
                    (None, 2) => tight_gradient(&raw, wu, hu),
                    (None, _) => raw.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
                };
                RfbEvent::Rect {
                    x,
                    y,
                    width: w,
                    height: h,
                    rgba,
                }
            }
            other => return Err(protocol(format!("unknown tight compression type {other}"))),
        };
        if ctl >> 4 >= 8 {
            reset_streams(&mut self.tight_zlib, ctl);
        }
        Ok(Some(event))
    }
}

/// The largest ZRLE payload of `pixels` once inflated: raw tiles, 1 byte of sub-encoding per 64x64 tile
/// plus 3 bytes per pixel.
fn zrle_limit(pixels: usize) -> usize {
    pixels * 3 + pixels / (64 * 64) + 1024
}

/// The largest compressed payload accepted for data of at most `raw` bytes: deflate's worst case is a few
/// bytes per stored block, so a quarter more is generous; never more than [`MAX_RECT_DATA`].
fn data_limit(raw: usize) -> usize {
    (raw + raw / 4 + 1024).min(MAX_RECT_DATA)
}

/// Reset the Tight zlib streams whose bits are set in the control byte's low nibble.
fn reset_streams(streams: &mut [flate2::Decompress; 4], ctl: u8) {
    for (i, z) in streams.iter_mut().enumerate() {
        if ctl & (1 << i) != 0 {
            *z = flate2::Decompress::new(true);
        }
    }
}

/// Tight palette data: 1 bit per pixel (rows padded to bytes) for 2 colours, else 1 byte per pixel.
fn tight_palette(raw: &[u8], palette: &[u8], w: usize, h: usize) -> Vec<u8> {
    let colour = |i: usize| match palette.get(i * 3..i * 3 + 3) {
        Some(p) => [p[0], p[1], p[2], 255],
        None => [0, 0, 0, 255],
    };
    let mut out = Vec::with_capacity(w * h * 4);
    if palette.len() == 6 {
        let row_bytes = w.div_ceil(8);
        for y in 0..h {
            for x in 0..w {
                let bit = (raw[y * row_bytes + x / 8] >> (7 - x % 8)) & 1;
                out.extend_from_slice(&colour(bit.into()));
            }
        }
    } else {
        for &i in raw {
            out.extend_from_slice(&colour(i.into()));
        }
    }
    out
}

/// Tight gradient filter: each channel is predicted as left + up - up-left (clamped) plus the data.
fn tight_gradient(raw: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                let at = |xx: usize, yy: usize| i32::from(rgb[(yy * w + xx) * 3 + ch]);
                let left = if x > 0 { at(x - 1, y) } else { 0 };
                let up = if y > 0 { at(x, y - 1) } else { 0 };
                let up_left = if x > 0 && y > 0 { at(x - 1, y - 1) } else { 0 };
                let predicted = (left + up - up_left).clamp(0, 255);
                let i = (y * w + x) * 3 + ch;
                rgb[i] = (predicted as u8).wrapping_add(raw[i]);
            }
        }
    }
    rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect()
}

/// Inflate `data` (a sync-flushed piece of a zlib stream) into at most `limit` bytes.
fn inflate(z: &mut flate2::Decompress, data: &[u8], limit: usize) -> Result<Vec<u8>, RfbError> {
    {
        let mut out = Vec::with_capacity(limit.min(16 * 1024 * 1024));
        let start = z.total_in();
        loop {
            let consumed = (z.total_in() - start) as usize;
            if consumed >= data.len() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                if out.len() >= limit {
                    return Err(RfbError::TooLarge {
                        what: "inflated rectangle",
                        size: out.len(),
                    });
                }
                out.reserve((limit - out.len()).min(1024 * 1024));
            }
            let before = (z.total_in(), out.len());
            z.decompress_vec(&data[consumed..], &mut out, flate2::FlushDecompress::Sync)
                .map_err(|e| RfbError::Compression(e.to_string()))?;
            if (z.total_in(), out.len()) == before {
                return Err(RfbError::Compression("no progress".into()));
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RectOutcome {
    NeedMore,
    Done,
    /// The LastRect pseudo-rectangle: the update ends here whatever its count said.
    Last,
}

/// Flags of the extended clipboard ([rfbproto: Extended Clipboard]).
///
/// [rfbproto: Extended Clipboard]: https://github.com/rfbproto/rfbproto/blob/master/rfbproto.rst#extended-clipboard-pseudo-encoding
mod ext_clip {
    pub const TEXT: u32 = 1;
    pub const CAPS: u32 = 1 << 24;
    pub const REQUEST: u32 = 1 << 25;
    pub const NOTIFY: u32 = 1 << 27;
    pub const PROVIDE: u32 = 1 << 28;
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Decode ZRLE tiles ([RFC 6143 §7.7.6]) with 3-byte CPIXELs (`R G B`) into RGBA.
fn decode_zrle(data: &[u8], w: u16, h: u16) -> Result<Vec<u8>, RfbError> {
    let (w, h) = (usize::from(w), usize::from(h));
    let mut out = vec![255u8; w * h * 4];
    let mut c = Cursor { buf: data, pos: 0 };
    let short = || RfbError::Compression("zrle data ends inside a tile".into());
    let cpixel = |c: &mut Cursor<'_>| c.take(3).map(|p| [p[0], p[1], p[2], 255]).ok_or_else(short);
    for ty in (0..h).step_by(64) {
        for tx in (0..w).step_by(64) {
            let (tw, th) = ((w - tx).min(64), (h - ty).min(64));
            let mut put = |i: usize, px: [u8; 4]| {
                let (row, col) = (ty + i / tw, tx + i % tw);
                let o = (row * w + col) * 4;
                out[o..o + 4].copy_from_slice(&px);
            };
            let sub = c.u8().ok_or_else(short)?;
            match sub {
                0 => {
                    for i in 0..tw * th {
                        put(i, cpixel(&mut c)?);
                    }
                }
                1 => {
                    let px = cpixel(&mut c)?;
                    for i in 0..tw * th {
                        put(i, px);
                    }
                }
                2..=16 => {
                    let palette: Vec<[u8; 4]> = (0..sub).map(|_| cpixel(&mut c)).collect::<Result<_, _>>()?;
                    let bits = match sub {
                        2 => 1,
                        3..=4 => 2,
                        _ => 4,
                    };
                    let row_bytes = (tw * bits).div_ceil(8);
                    let packed = c.take(row_bytes * th).ok_or_else(short)?;
                    for row in 0..th {
                        for col in 0..tw {
                            let bit = col * bits;
                            let byte = packed[row * row_bytes + bit / 8];
                            let idx = (byte >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                            let px = *palette
                                .get(usize::from(idx))
                                .ok_or_else(|| RfbError::Compression("palette index out of range".into()))?;
                            put(row * tw + col, px);
                        }
                    }
                }
                128 | 130..=255 => {
                    let palette: Vec<[u8; 4]> = if sub == 128 {
                        Vec::new()
                    } else {
                        (0..sub - 128).map(|_| cpixel(&mut c)).collect::<Result<_, _>>()?
                    };
                    let mut i = 0;
                    while i < tw * th {
                        let (px, run) = if sub == 128 {
                            (cpixel(&mut c)?, true)
                        } else {
                            let idx = c.u8().ok_or_else(short)?;
                            let px = *palette
                                .get(usize::from(idx & 0x7f))
                                .ok_or_else(|| RfbError::Compression("palette index out of range".into()))?;
                            (px, idx & 0x80 != 0)
                        };
                        let mut len = 1;
                        if run {
                            loop {
                                let b = c.u8().ok_or_else(short)?;
                                len += usize::from(b);
                                if b != 255 {
                                    break;
                                }
                            }
                        }
                        if i + len > tw * th {
                            return Err(RfbError::Compression("zrle run past the end of a tile".into()));
                        }
                        for k in i..i + len {
                            put(k, px);
                        }
                        i += len;
                    }
                }
                other => return Err(RfbError::Compression(format!("unknown zrle sub-encoding {other}"))),
            }
        }
    }
    if c.pos != data.len() {
        return Err(RfbError::Compression("trailing bytes after the last zrle tile".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn handshake(client: &mut RfbClient, security: &[u8], w: u16, h: u16) {
        client.handle_input(b"RFB 003.008\n").unwrap();
        assert_eq!(client.poll_transmit().unwrap(), b"RFB 003.008\n");
        let mut st = vec![security.len() as u8];
        st.extend_from_slice(security);
        client.handle_input(&st).unwrap();
        let chosen = client.poll_transmit().unwrap();
        if chosen == [2] {
            client.handle_input(&[7; 16]).unwrap();
            assert_eq!(client.poll_transmit().unwrap().len(), 16);
        }
        client.handle_input(&0u32.to_be_bytes()).unwrap();
        assert_eq!(client.poll_transmit().unwrap(), [1], "shared flag");
        let mut init = Vec::new();
        init.extend_from_slice(&w.to_be_bytes());
        init.extend_from_slice(&h.to_be_bytes());
        init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        init.extend_from_slice(&4u32.to_be_bytes());
        init.extend_from_slice(b"test");
        // Split the message to check "need more" handling.
        client.handle_input(&init[..7]).unwrap();
        assert!(client.poll_event().is_none());
        client.handle_input(&init[7..]).unwrap();
        assert_eq!(
            client.poll_event(),
            Some(RfbEvent::Connected {
                width: w,
                height: h,
                name: "test".into()
            })
        );
        let setup = client.poll_transmit().unwrap();
        assert_eq!(setup[0], 0, "SetPixelFormat first");
    }

    fn rect_header(x: u16, y: u16, w: u16, h: u16, enc: i32) -> Vec<u8> {
        [x.to_be_bytes(), y.to_be_bytes(), w.to_be_bytes(), h.to_be_bytes()]
            .concat()
            .into_iter()
            .chain(enc.to_be_bytes())
            .collect()
    }

    #[test]
    fn vnc_auth_response_properties() {
        // The real check is the integration test against TigerVNC's Xvnc (tests/tests/vnc.rs).
        let r = vnc_auth_response("password", &[0; 16]);
        assert_eq!(
            hex::encode(&r[..8]),
            hex::encode(&r[8..]),
            "ecb: equal blocks give equal output"
        );
        assert_ne!(r, [0; 16]);
        assert_ne!(vnc_auth_response("passwore", &[0; 16]), r);
        // Only the first 8 characters count.
        assert_eq!(vnc_auth_response("password-and-more", &[0; 16]), r);
    }

    /// The encodings of a SetEncodings message.
    fn set_encodings(msg: &[u8]) -> Vec<i32> {
        assert_eq!(msg[..2], [2, 0], "SetEncodings");
        let n = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
        assert_eq!(msg.len(), 4 + 4 * n);
        msg[4..]
            .chunks_exact(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn lossless_leaves_the_jpeg_quality_out_and_keeps_the_level_for_later() {
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 64, 48);
        let jpeg = |encs: &[i32]| encs.iter().copied().find(|e| encoding::JPEG_QUALITY.contains(e));
        c.set_lossless(true);
        let encs = set_encodings(&c.poll_transmit().unwrap());
        assert_eq!(jpeg(&encs), None, "{encs:?}");
        assert!(encs.contains(&encoding::TIGHT) && encs.contains(&encoding::COPY_RECT));
        // The same state again sends nothing; a quality change while lossless is kept, not sent.
        c.set_lossless(true);
        c.set_jpeg_quality(2);
        assert!(c.poll_transmit().is_none());
        assert!(c.is_lossless());
        c.set_lossless(false);
        let encs = set_encodings(&c.poll_transmit().unwrap());
        assert_eq!(jpeg(&encs), Some(encoding::JPEG_QUALITY_0 + 2), "{encs:?}");
        c.set_jpeg_quality(5);
        assert_eq!(
            jpeg(&set_encodings(&c.poll_transmit().unwrap())),
            Some(encoding::JPEG_QUALITY_0 + 5)
        );
    }

    #[test]
    fn input_before_the_handshake_is_over_is_dropped() {
        // A browser that types, moves or pastes while the server still checks the password must not put
        // bytes into the handshake: the server would read them as ClientInit and what follows, and a server
        // that refuses the password closes with them unread (a reset that loses its reason).
        let mut c = RfbClient::new(RfbConfig {
            password: Some(Secret::new("pw".into())),
            ..RfbConfig::default()
        });
        c.handle_input(b"RFB 003.008\n").unwrap();
        c.handle_input(&[1, 2]).unwrap();
        c.handle_input(&[9; 16]).unwrap();
        let handshake: Vec<u8> = std::iter::from_fn(|| c.poll_transmit()).flatten().collect();
        assert_eq!(handshake.len(), 12 + 1 + 16, "version, security type, response");
        c.key(0x61, true);
        c.pointer(1, 2, 0);
        c.cut_text("early");
        assert!(c.poll_transmit().is_none(), "nothing before the security result");
        c.handle_input(&0u32.to_be_bytes()).unwrap();
        let mut init = vec![0, 64, 0, 48];
        init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        init.extend_from_slice(&0u32.to_be_bytes());
        c.handle_input(&init).unwrap();
        assert!(c.is_connected());
        let _setup: Vec<u8> = std::iter::from_fn(|| c.poll_transmit()).flatten().collect();
        c.key(0x61, true);
        assert_eq!(c.poll_transmit(), Some(vec![4, 1, 0, 0, 0, 0, 0, 0x61]));
    }

    #[test]
    fn the_password_is_dropped_once_the_handshake_no_longer_needs_it() {
        let with_password = || RfbConfig {
            password: Some(Secret::new("hunter2".into())),
            ..RfbConfig::default()
        };
        // VncAuth: held until the challenge arrives, gone once the response is computed.
        let mut c = RfbClient::new(with_password());
        c.handle_input(b"RFB 003.008\n").unwrap();
        c.handle_input(&[2, 1, 2]).unwrap();
        assert!(c.holds_password(), "needed for the challenge");
        c.handle_input(&[7; 16]).unwrap();
        assert!(!c.holds_password(), "dropped with the response");
        // The server picks no authentication: not needed at all.
        let mut c = RfbClient::new(with_password());
        c.handle_input(b"RFB 003.008\n").unwrap();
        c.handle_input(&[1, 1]).unwrap();
        assert!(!c.holds_password());
        // The handshake fails.
        let mut c = RfbClient::new(with_password());
        c.handle_input(b"RFB 003.008\n").unwrap();
        assert_eq!(c.handle_input(&[1, 19]), Err(RfbError::Security(vec![19])));
        assert!(!c.holds_password());
        let mut c = RfbClient::new(with_password());
        assert!(c.handle_input(b"HTTP/1.1 200").is_err());
        assert!(!c.holds_password());
        // A full handshake through VncAuth ends with no password.
        let mut c = RfbClient::new(with_password());
        handshake(&mut c, &[2], 4, 2);
        assert!(!c.holds_password() && c.is_connected());
    }

    #[test]
    fn raw_copy_cursor_and_update_boundaries() {
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        let mut msg = vec![0, 0, 0, 3];
        msg.extend(rect_header(0, 0, 2, 1, encoding::RAW));
        msg.extend([1, 2, 3, 0, 4, 5, 6, 0]);
        msg.extend(rect_header(2, 0, 2, 1, encoding::COPY_RECT));
        msg.extend([0, 0, 0, 0]);
        msg.extend(rect_header(1, 1, 2, 1, encoding::CURSOR));
        msg.extend([9, 9, 9, 0, 8, 8, 8, 0, 0b1000_0000]);
        for b in &msg {
            c.handle_input(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(
            c.poll_event(),
            Some(RfbEvent::Rect {
                x: 0,
                y: 0,
                width: 2,
                height: 1,
                rgba: vec![1, 2, 3, 255, 4, 5, 6, 255]
            })
        );
        assert_eq!(
            c.poll_event(),
            Some(RfbEvent::Copy {
                src_x: 0,
                src_y: 0,
                x: 2,
                y: 0,
                width: 2,
                height: 1
            })
        );
        assert_eq!(
            c.poll_event(),
            Some(RfbEvent::Cursor {
                hot_x: 1,
                hot_y: 1,
                width: 2,
                height: 1,
                rgba: vec![9, 9, 9, 255, 8, 8, 8, 0]
            })
        );
        assert_eq!(c.poll_event(), Some(RfbEvent::UpdateEnd));
        assert_eq!(c.poll_event(), None);
    }

    #[test]
    fn zrle_tiles_decode() {
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 70, 2);
        // Two tiles: 64x2 solid red, then 6x2 palette of 2 (blue/green) alternating per column.
        let mut tiles = vec![1, 255, 0, 0];
        tiles.extend([2, 0, 0, 255, 0, 255, 0]);
        tiles.extend([0b0101_0100, 0b0101_0100]);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&tiles).unwrap();
        let data = z.flush_finish().unwrap();
        let mut msg = vec![0, 0, 0, 1];
        msg.extend(rect_header(0, 0, 70, 2, encoding::ZRLE));
        msg.extend((data.len() as u32).to_be_bytes());
        msg.extend(&data);
        c.handle_input(&msg).unwrap();
        let Some(RfbEvent::Rect { rgba, .. }) = c.poll_event() else {
            panic!("no rect")
        };
        let px = |x: usize, y: usize| &rgba[(y * 70 + x) * 4..(y * 70 + x) * 4 + 4];
        assert_eq!(px(0, 0), [255, 0, 0, 255]);
        assert_eq!(px(63, 1), [255, 0, 0, 255]);
        assert_eq!(px(64, 0), [0, 0, 255, 255]);
        assert_eq!(px(65, 0), [0, 255, 0, 255]);
        assert_eq!(px(69, 1), [0, 255, 0, 255]);
        assert_eq!(c.poll_event(), Some(RfbEvent::UpdateEnd));
    }

    /// A ServerCutText in the extended format.
    fn ext_server_msg(flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![3, 0, 0, 0];
        m.extend_from_slice(&(-((4 + payload.len()) as i32)).to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn extended_clipboard_carries_utf8_both_ways() {
        use std::io::Read as _;
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        let _ = c.poll_transmit();
        // Without the server's capabilities: classic Latin-1.
        c.cut_text("é✓");
        assert_eq!(c.poll_transmit().unwrap(), [6, 0, 0, 0, 0, 0, 0, 2, 0xe9, b'?']);
        // The server announces UTF-8 text; the client answers with its own capabilities.
        c.handle_input(&ext_server_msg(
            ext_clip::CAPS | ext_clip::TEXT | ext_clip::PROVIDE,
            &[0, 0, 0x10, 0],
        ))
        .unwrap();
        assert!(c.has_utf8_clipboard());
        let caps = c.poll_transmit().unwrap();
        assert_eq!(&caps[..4], [6, 0, 0, 0]);
        assert_eq!(i32::from_be_bytes(caps[4..8].try_into().unwrap()), -8);
        // Client → server: notify, the server requests, the client provides zlib'd, NUL-terminated CRLF text.
        c.cut_text("grüße ✓\nzwei");
        let notify = c.poll_transmit().unwrap();
        assert_eq!(
            u32::from_be_bytes(notify[8..12].try_into().unwrap()),
            ext_clip::NOTIFY | ext_clip::TEXT
        );
        c.handle_input(&ext_server_msg(ext_clip::REQUEST | ext_clip::TEXT, &[]))
            .unwrap();
        let provide = c.poll_transmit().unwrap();
        assert_eq!(
            u32::from_be_bytes(provide[8..12].try_into().unwrap()),
            ext_clip::PROVIDE | ext_clip::TEXT
        );
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&provide[12..])
            .read_to_end(&mut raw)
            .unwrap();
        let want = "grüße ✓\r\nzwei\0";
        assert_eq!(u32::from_be_bytes(raw[..4].try_into().unwrap()) as usize, want.len());
        assert_eq!(&raw[4..], want.as_bytes());
        // Server → client: notify, the client requests, the server provides.
        c.handle_input(&ext_server_msg(ext_clip::NOTIFY | ext_clip::TEXT, &[]))
            .unwrap();
        let request = c.poll_transmit().unwrap();
        assert_eq!(
            u32::from_be_bytes(request[8..12].try_into().unwrap()),
            ext_clip::REQUEST | ext_clip::TEXT
        );
        let text = "naïve ✓\r\nline\0";
        let mut body = (text.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(text.as_bytes());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&body).unwrap();
        c.handle_input(&ext_server_msg(
            ext_clip::PROVIDE | ext_clip::TEXT,
            &z.finish().unwrap(),
        ))
        .unwrap();
        assert_eq!(c.poll_event(), Some(RfbEvent::CutText("naïve ✓\nline".into())));
    }

    #[test]
    fn tight_fill_palette_and_jpeg() {
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        let mut msg = vec![0, 0, 0, 3];
        // Fill (0x80) with a reset of stream 0.
        msg.extend(rect_header(0, 0, 4, 2, encoding::TIGHT));
        msg.extend([0x81, 10, 20, 30]);
        // Basic, explicit filter (0x40): palette of 2 colours, 1 bit per pixel, 2 bytes (< 12: no zlib).
        msg.extend(rect_header(0, 0, 4, 2, encoding::TIGHT));
        msg.extend([0x40, 1, 1, 255, 0, 0, 0, 0, 255, 0b1010_0000, 0b0101_0000]);
        // JPEG (0x90), compact length 3: passed through undecoded.
        msg.extend(rect_header(0, 0, 4, 2, encoding::TIGHT));
        msg.extend([0x90, 3, 0xff, 0xd8, 0xff]);
        c.handle_input(&msg).unwrap();
        assert_eq!(
            c.poll_event(),
            Some(RfbEvent::Fill {
                x: 0,
                y: 0,
                width: 4,
                height: 2,
                rgb: [10, 20, 30]
            })
        );
        let (r, b) = ([255, 0, 0, 255], [0, 0, 255, 255]);
        let want: Vec<u8> = [b, r, b, r, r, b, r, b].concat();
        assert_eq!(
            c.poll_event(),
            Some(RfbEvent::Rect {
                x: 0,
                y: 0,
                width: 4,
                height: 2,
                rgba: want
            })
        );
        assert_eq!(
            c.poll_event(),
            Some(RfbEvent::Jpeg {
                x: 0,
                y: 0,
                width: 4,
                height: 2,
                data: vec![0xff, 0xd8, 0xff]
            })
        );
        c.handle_input(&[]).unwrap();
        assert_eq!(c.poll_event(), Some(RfbEvent::UpdateEnd));
    }

    #[test]
    fn rfb_3_3_and_3_7_handshakes_and_a_refusal_with_its_reason() {
        let server_init = |c: &mut RfbClient| {
            let mut init = vec![0, 64, 0, 48];
            init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
            init.extend_from_slice(&0u32.to_be_bytes());
            c.handle_input(&init).unwrap();
            assert!(c.is_connected());
        };
        let sent = |c: &mut RfbClient| -> Vec<u8> { std::iter::from_fn(|| c.poll_transmit()).flatten().collect() };
        // 3.3, no authentication: the server picks the type; no security result follows.
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.003\n").unwrap();
        c.handle_input(&1u32.to_be_bytes()).unwrap();
        assert_eq!(sent(&mut c), b"RFB 003.003\n\x01", "version, then the shared flag");
        server_init(&mut c);
        // 3.3, VNC authentication and a failure without a reason.
        let mut c = RfbClient::new(RfbConfig {
            password: Some(Secret::new("pw".into())),
            ..RfbConfig::default()
        });
        c.handle_input(b"RFB 003.003\n").unwrap();
        c.handle_input(&2u32.to_be_bytes()).unwrap();
        c.handle_input(&[5; 16]).unwrap();
        assert_eq!(sent(&mut c).len(), 12 + 16);
        assert_eq!(
            c.handle_input(&1u32.to_be_bytes()),
            Err(RfbError::AuthFailed("wrong password".into()))
        );
        // 3.3 refusal (TigerVNC answers so when it has blacklisted the address): the reason is kept.
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.003\n").unwrap();
        let mut refusal = 0u32.to_be_bytes().to_vec();
        refusal.extend_from_slice(&27u32.to_be_bytes());
        refusal.extend_from_slice(b"Too many security failures");
        refusal.push(b'!');
        assert_eq!(
            c.handle_input(&refusal),
            Err(RfbError::Refused("Too many security failures!".into()))
        );
        // The same refusal one byte at a time (a server that writes in pieces): the same error, at the
        // last byte only.
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.003\n").unwrap();
        let (last, head) = refusal.split_last().unwrap();
        for b in head {
            c.handle_input(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(
            c.handle_input(std::slice::from_ref(last)),
            Err(RfbError::Refused("Too many security failures!".into()))
        );
        // A 3.3 handshake to the end, one byte at a time.
        let mut c = RfbClient::new(RfbConfig::default());
        let mut all = b"RFB 003.003\n".to_vec();
        all.extend_from_slice(&1u32.to_be_bytes());
        all.extend_from_slice(&[0, 64, 0, 48, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        all.extend_from_slice(&0u32.to_be_bytes());
        for b in &all {
            c.handle_input(std::slice::from_ref(b)).unwrap();
        }
        assert!(c.is_connected());
        // 3.7, None: no security result either.
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.007\n").unwrap();
        c.handle_input(&[1, 1]).unwrap();
        assert_eq!(sent(&mut c), b"RFB 003.007\n\x01\x01", "version, type, shared flag");
        server_init(&mut c);
        // Versions between are 3.3; above 3.8 are 3.8.
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.005\n").unwrap();
        assert_eq!(sent(&mut c), b"RFB 003.003\n");
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.889\n").unwrap();
        assert_eq!(sent(&mut c), b"RFB 003.008\n");
    }

    #[test]
    fn a_lying_server_gets_a_clear_error() {
        let mut c = RfbClient::new(RfbConfig::default());
        assert!(matches!(c.handle_input(b"HTTP/1.1 200"), Err(RfbError::NotRfb(_))));
        let mut c = RfbClient::new(RfbConfig::default());
        assert!(matches!(c.handle_input(b"RFB 004.001\n"), Err(RfbError::Version(_))));
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.008\n").unwrap();
        assert_eq!(c.handle_input(&[1, 2]), Err(RfbError::PasswordRequired));
        let mut c = RfbClient::new(RfbConfig::default());
        c.handle_input(b"RFB 003.008\n").unwrap();
        assert_eq!(c.handle_input(&[1, 19]), Err(RfbError::Security(vec![19])));
        // Rectangles outside the framebuffer, unrequested encodings, oversized payloads.
        for (hdr, extra) in [
            (rect_header(3, 0, 2, 1, encoding::RAW), vec![]),
            (rect_header(0, 0, 1, 1, 5), vec![]),
            (rect_header(0, 0, 1, 1, encoding::TIGHT), vec![0xf0]),
            (rect_header(0, 0, 1, 1, encoding::TIGHT), vec![0x40, 9]),
            (
                rect_header(0, 0, 1, 1, encoding::ZRLE),
                (MAX_RECT_DATA as u32 + 1).to_be_bytes().to_vec(),
            ),
        ] {
            let mut c = RfbClient::new(RfbConfig::default());
            handshake(&mut c, &[1], 4, 2);
            let mut msg = vec![0, 0, 0, 1];
            msg.extend(hdr);
            msg.extend(extra);
            assert!(c.handle_input(&msg).is_err());
            assert!(c.handle_input(&[0]).is_err(), "a failed client stays failed");
        }
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        assert!(matches!(c.handle_input(&[99]), Err(RfbError::Protocol(_))));
    }

    /// A client through security None, fed a ServerInit of `w` x `h`.
    fn server_init(config: RfbConfig, w: u16, h: u16) -> (RfbClient, Result<(), RfbError>) {
        let mut c = RfbClient::new(config);
        c.handle_input(b"RFB 003.008\n").unwrap();
        c.handle_input(&[1, 1]).unwrap();
        c.handle_input(&0u32.to_be_bytes()).unwrap();
        let mut init = Vec::new();
        init.extend_from_slice(&w.to_be_bytes());
        init.extend_from_slice(&h.to_be_bytes());
        init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
        init.extend_from_slice(&0u32.to_be_bytes());
        let res = c.handle_input(&init);
        (c, res)
    }

    #[test]
    fn a_desktop_over_the_limit_is_refused_at_connect_and_on_resize() {
        // ServerInit: the default limit is 4K in either orientation.
        let (_, res) = server_init(RfbConfig::default(), 16384, 16384);
        let err = res.unwrap_err();
        assert!(matches!(
            err,
            RfbError::DesktopTooLarge {
                width: 16384,
                height: 16384,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "the server's desktop of 16384x16384 exceeds the limit of 4096x2160"
        );
        assert!(server_init(RfbConfig::default(), 4097, 1000).1.is_err());
        assert!(server_init(RfbConfig::default(), 4096, 2161).1.is_err());
        assert!(server_init(RfbConfig::default(), 4096, 2160).1.is_ok());
        assert!(server_init(RfbConfig::default(), 2160, 4096).1.is_ok());
        // The limit is configurable.
        let small = || RfbConfig {
            max_desktop: MaxDesktop {
                width: 800,
                height: 600,
            },
            ..RfbConfig::default()
        };
        assert!(matches!(
            server_init(small(), 1024, 768).1,
            Err(RfbError::DesktopTooLarge { .. })
        ));
        // DesktopSize and ExtendedDesktopSize.
        for enc in [encoding::DESKTOP_SIZE, encoding::EXTENDED_DESKTOP_SIZE] {
            let (mut c, res) = server_init(small(), 800, 600);
            res.unwrap();
            let mut msg = vec![0, 0, 0, 1];
            msg.extend(rect_header(0, 0, 801, 600, enc));
            if enc == encoding::EXTENDED_DESKTOP_SIZE {
                msg.extend([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 33, 2, 88, 0, 0, 0, 0]);
            }
            assert!(
                matches!(c.handle_input(&msg), Err(RfbError::DesktopTooLarge { width: 801, .. })),
                "encoding {enc}"
            );
        }
        // Resize requests are clamped to the limit.
        let (mut c, res) = server_init(small(), 640, 480);
        res.unwrap();
        let mut msg = vec![0, 0, 0, 1];
        msg.extend(rect_header(0, 0, 640, 480, encoding::EXTENDED_DESKTOP_SIZE));
        msg.extend([1, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 2, 128, 1, 224, 0, 0, 0, 0]);
        c.handle_input(&msg).unwrap();
        let _ = c.poll_transmit();
        assert!(c.set_desktop_size(3000, 2000));
        let req = c.poll_transmit().unwrap();
        assert_eq!(&req[2..6], [3, 32, 2, 88], "800x600");
    }

    #[test]
    fn a_cursor_over_the_limit_or_with_its_hotspot_outside_is_refused() {
        for (x, y, w, h, ok) in [
            (0, 0, MAX_CURSOR_SIDE, MAX_CURSOR_SIDE, true),
            (0, 0, MAX_CURSOR_SIDE + 1, 1, false),
            (0, 0, 16384, 16384, false),
            (5, 5, 4, 4, false),
            (4, 4, 4, 4, true),
            (0, 0, 0, 0, true),
        ] {
            let mut c = RfbClient::new(RfbConfig::default());
            handshake(&mut c, &[1], 4, 2);
            let mut msg = vec![0, 0, 0, 1];
            msg.extend(rect_header(x, y, w, h, encoding::CURSOR));
            let pixels = usize::from(w) * usize::from(h);
            msg.extend(vec![0; pixels * 4 + usize::from(w).div_ceil(8) * usize::from(h)]);
            let res = c.handle_input(&msg);
            assert_eq!(res.is_ok(), ok, "{w}x{h} hotspot {x},{y}: {res:?}");
            if ok {
                assert!(matches!(c.poll_event(), Some(RfbEvent::Cursor { .. })));
            } else if w > MAX_CURSOR_SIDE {
                assert_eq!(res, Err(RfbError::CursorTooLarge { width: w, height: h }));
            }
        }
        // The header alone is enough to refuse: nothing of the gigabyte that would follow is waited for.
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        let mut msg = vec![0, 0, 0, 1];
        msg.extend(rect_header(0, 0, 16384, 16384, encoding::CURSOR));
        assert!(
            c.handle_input(&msg)
                .unwrap_err()
                .to_string()
                .contains("cursor of 16384x16384")
        );
    }

    #[test]
    fn compressed_payloads_are_capped_by_the_rectangle_they_fill() {
        // A 2x2 Tight JPEG may not announce more than its pixels could ever need.
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        let mut msg = vec![0, 0, 0, 1];
        msg.extend(rect_header(0, 0, 2, 2, encoding::TIGHT));
        // Compact length of almost 4 MiB.
        msg.extend([0x90, 0x80, 0x80, 0xff]);
        assert!(matches!(
            c.handle_input(&msg),
            Err(RfbError::TooLarge {
                what: "tight rectangle",
                ..
            })
        ));
        // Same for ZRLE.
        let mut c = RfbClient::new(RfbConfig::default());
        handshake(&mut c, &[1], 4, 2);
        let mut msg = vec![0, 0, 0, 1];
        msg.extend(rect_header(0, 0, 2, 2, encoding::ZRLE));
        msg.extend((1u32 << 20).to_be_bytes());
        assert!(matches!(
            c.handle_input(&msg),
            Err(RfbError::TooLarge {
                what: "zrle rectangle",
                ..
            })
        ));
    }
}
