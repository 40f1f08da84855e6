//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-<name>`: small, valid
//! inputs of each message kind, so the fuzzers start past the framing. Run it after changing a target's
//! input format: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use ironrdp_cliprdr::pdu::{
    Capabilities, ClipboardFormat, ClipboardFormatId, ClipboardGeneralCapabilityFlags, ClipboardPdu,
    ClipboardProtocolVersion, FileContentsFlags, FileContentsRequest, FormatDataRequest, FormatDataResponse,
    FormatList, FormatListResponse, LockDataId,
};
use portico_proto::codes::CloseCode;
use portico_proto::token::{Protocol, SessionClaims, TokenSigner};
use portico_proto::wire::{ClientMsg, Closed, Credentials, ErrorInfo, Hello, ImageFormat, Rect, ServerMsg, Status};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut n = 0;
    let mut put = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        n += 1;
    };
    for (name, data) in rfb() {
        put("rfb_client", &name, &data);
    }
    for (i, m) in client_msgs().iter().enumerate() {
        put("wire_client_msg", &i.to_string(), &m.encode());
        // The same messages, each length-prefixed, drive the RDP input path.
    }
    put(
        "rdp_input",
        "keys-and-pointer",
        &prefixed(client_msgs().iter().map(ClientMsg::encode)),
    );
    put(
        "rdp_input",
        "buttons-and-wheel",
        &prefixed([1u8, 3, 8, 0, 16, 24, 32, 64, 0, 7].map(|b| {
            ClientMsg::Pointer {
                x: 3000,
                y: u16::from(b) * 10,
                buttons: b,
            }
            .encode()
        })),
    );
    for (i, m) in server_msgs().iter().enumerate() {
        put("wire_server_msg", &i.to_string(), &m.encode());
    }
    for (name, data) in tokens() {
        put("token_verify", &name, &data);
    }
    for (name, data) in proxy() {
        put("proxy_header", &name, &data);
    }
    for (name, data) in cliprdr() {
        put("cliprdr", &name, &data);
    }
    for (name, data) in images() {
        put("image_decode", &name, &data);
    }
    println!("wrote {n} seeds under {}", root.display());
}

/// Pieces, each prefixed with its `u16` length.
fn prefixed(pieces: impl IntoIterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(&p);
    }
    out
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(data).unwrap();
    z.flush().unwrap();
    z.get_ref().clone()
}

fn rect_header(x: u16, y: u16, w: u16, h: u16, enc: i32) -> Vec<u8> {
    [x, y, w, h]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .chain(enc.to_be_bytes())
        .collect()
}

/// A FramebufferUpdate of these rectangles (header and body each).
fn update(rects: &[Vec<u8>]) -> Vec<u8> {
    let mut m = vec![0, 0];
    m.extend_from_slice(&(rects.len() as u16).to_be_bytes());
    for r in rects {
        m.extend_from_slice(r);
    }
    m
}

fn rect(x: u16, y: u16, w: u16, h: u16, enc: i32, body: &[u8]) -> Vec<u8> {
    let mut r = rect_header(x, y, w, h, enc);
    r.extend_from_slice(body);
    r
}

/// A Tight compact length.
fn compact(len: usize) -> Vec<u8> {
    let mut out = vec![(len & 0x7f) as u8];
    if len > 0x7f {
        out[0] |= 0x80;
        out.push((len >> 7 & 0x7f) as u8);
        if len > 0x3fff {
            out[1] |= 0x80;
            out.push((len >> 14) as u8);
        }
    }
    out
}

fn jpeg(w: u16, h: u16, quality: u8, setup: impl FnOnce(&mut jpeg_encoder::Encoder<&mut Vec<u8>>)) -> Vec<u8> {
    let rgb: Vec<u8> = (0..usize::from(w) * usize::from(h))
        .flat_map(|i| {
            let (x, y) = (i % usize::from(w), i / usize::from(w));
            [(x * 7 + y * 3) as u8, (x * y) as u8, 255u8.wrapping_sub((x * 5) as u8)]
        })
        .collect();
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, quality);
    setup(&mut enc);
    enc.encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

fn rfb() -> Vec<(String, Vec<u8>)> {
    use portico_proto::rfb::encoding::*;
    let (w, h) = (64u16, 32u16);
    // Scenario 0 (security None, 1 + size % 256 per side, default limit) at 64x32.
    let head = |scenario: u8| {
        let mut d = vec![scenario];
        d.extend_from_slice(&(w - 1).to_be_bytes());
        d.extend_from_slice(&(h - 1).to_be_bytes());
        d
    };
    let op = |kind: u8, payload: &[u8]| {
        let mut o = vec![kind];
        o.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        o.extend_from_slice(payload);
        o
    };
    let feed = |scenario: u8, msgs: &[Vec<u8>]| {
        let mut d = head(scenario);
        for m in msgs {
            d.extend(op(0, m));
        }
        d
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, data: Vec<u8>| out.push((name.to_owned(), data));

    let raw = rect(0, 0, 2, 2, RAW, &[9; 16]);
    add("raw", feed(0, &[update(std::slice::from_ref(&raw))]));
    add("raw-vncauth", feed(1, &[update(std::slice::from_ref(&raw))]));
    add("raw-bytewise", {
        let mut d = head(0);
        d.extend(op(1, &update(std::slice::from_ref(&raw))));
        d
    });
    add(
        "copy",
        feed(0, &[update(&[rect(10, 10, 8, 8, COPY_RECT, &[0, 0, 0, 0])])]),
    );
    let mut cursor = vec![200; 4 * 4 * 4];
    cursor.extend_from_slice(&[0xf0, 0x60, 0x60, 0xf0]);
    add("cursor", feed(0, &[update(&[rect(1, 1, 4, 4, CURSOR, &cursor)])]));
    add("empty-cursor", feed(0, &[update(&[rect(0, 0, 0, 0, CURSOR, &[])])]));

    // ZRLE: one 64x32 tile in each sub-encoding (one zlib stream across the messages).
    let px = |i: u8| [i, i.wrapping_mul(3), 255 - i];
    let tiles: Vec<Vec<u8>> = vec![
        [vec![1], px(7).to_vec()].concat(),
        [vec![0], (0..64 * 32).flat_map(|i| px(i as u8)).collect()].concat(),
        [vec![2], px(1).to_vec(), px(2).to_vec(), vec![0b1010_1010; 8 * 32]].concat(),
        [vec![16], (0..16).flat_map(px).collect(), vec![0x12; 32 * 32]].concat(),
        [
            vec![128],
            px(3).to_vec(),
            vec![255, 255, 255, 255, 255, 255, 255, 255, 7],
        ]
        .concat(),
        [
            vec![130],
            px(4).to_vec(),
            px(5).to_vec(),
            vec![0x80, 255, 255, 255, 255, 255, 255, 255, 255, 7],
        ]
        .concat(),
    ];
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let mut zrle = Vec::new();
    for t in &tiles {
        let before = z.get_ref().len();
        z.write_all(t).unwrap();
        z.flush().unwrap();
        let data = z.get_ref()[before..].to_vec();
        let mut body = (data.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&data);
        zrle.push(update(&[rect(0, 0, 64, 32, ZRLE, &body)]));
    }
    add("zrle", feed(0, &zrle));

    // Tight: fill, basic without zlib (< 12 bytes), basic zlib, palettes, gradient, JPEG.
    let tight = |w: u16, h: u16, body: Vec<u8>| update(&[rect(0, 0, w, h, TIGHT, &body)]);
    let copy_data: Vec<u8> = (0..16 * 8 * 3).map(|i| (i * 7) as u8).collect();
    let zc = zlib(&copy_data);
    let two = zlib(&[0xaa; 2 * 8]);
    let many: Vec<u8> = (0..16 * 8).map(|i| (i % 5) as u8).collect();
    let zm = zlib(&many);
    let zg = zlib(&copy_data);
    let j = jpeg(16, 8, 60, |_| {});
    add(
        "tight",
        feed(
            0,
            &[
                tight(8, 8, vec![0x80, 1, 2, 3]),
                tight(1, 2, vec![0x00, 1, 2, 3, 4, 5, 6]),
                tight(16, 8, [vec![0x01], compact(zc.len()), zc].concat()),
                tight(
                    16,
                    8,
                    [vec![0x41, 1, 1, 255, 0, 0, 0, 0, 255], compact(two.len()), two].concat(),
                ),
                tight(
                    16,
                    8,
                    [vec![0x50, 1, 4], (0..15).collect(), compact(zm.len()), zm].concat(),
                ),
                tight(16, 8, [vec![0x60, 2], compact(zg.len()), zg].concat()),
                tight(16, 8, [vec![0x90], compact(j.len()), j].concat()),
            ],
        ),
    );
    // Desktop changes, the resize flow, LastRect.
    let screen = |w: u16, h: u16| {
        let mut s = vec![1, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0];
        s.extend_from_slice(&w.to_be_bytes());
        s.extend_from_slice(&h.to_be_bytes());
        s.extend_from_slice(&[0, 0, 0, 0]);
        s
    };
    add(
        "resize",
        [
            head(0),
            op(
                0,
                &update(&[rect(0, 0, 64, 32, EXTENDED_DESKTOP_SIZE, &screen(64, 32))]),
            ),
            op(2, &[0, 100, 0, 50]),
            op(
                0,
                &update(&[rect(1, 0, 100, 50, EXTENDED_DESKTOP_SIZE, &screen(100, 50))]),
            ),
            op(
                0,
                &update(&[rect(1, 3, 64, 32, EXTENDED_DESKTOP_SIZE, &screen(64, 32))]),
            ),
            op(0, &update(&[rect(0, 0, 32, 16, DESKTOP_SIZE, &[])])),
            op(0, &[0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x20]),
        ]
        .concat(),
    );
    add("resize-limit", {
        let mut d = vec![6];
        d.extend_from_slice(&[2, 0x80, 1, 0xe0]);
        d.extend(op(0, &update(&[rect(0, 0, 800, 600, DESKTOP_SIZE, &[])])));
        d
    });
    // Other server messages: bell, colour map, cut text, the extended clipboard.
    let ext = |flags: u32, payload: &[u8]| {
        let mut m = vec![3, 0, 0, 0];
        m.extend_from_slice(&(-((4 + payload.len()) as i32)).to_be_bytes());
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(payload);
        m
    };
    let text = b"caf\xc3\xa9\r\nline\0";
    let mut provide = (text.len() as u32).to_be_bytes().to_vec();
    provide.extend_from_slice(text);
    let mut zp = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zp.write_all(&provide).unwrap();
    let provide = zp.finish().unwrap();
    add(
        "messages",
        [
            head(0),
            op(0, &[2]),
            op(0, &[1, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6]),
            op(0, &[3, 0, 0, 0, 0, 0, 0, 3, b'a', 0xe9, b'c']),
            op(3, "grüße".as_bytes()),
            op(0, &ext(1 << 24 | 1, &[0, 0, 0x10, 0])),
            op(3, "grüße ✓\nzwei".as_bytes()),
            op(0, &ext(1 << 25 | 1, &[])),
            op(0, &ext(1 << 27 | 1, &[])),
            op(0, &ext(1 << 28 | 1, &provide)),
            op(4, &[0, 0, 0xff, 0x0d, 0, 1, 5]),
            op(5, &[1, 7]),
        ]
        .concat(),
    );
    // The handshake itself (scenario bit 7): None, VncAuth, a refusal, a failed authentication.
    let greeting = b"RFB 003.008\n".to_vec();
    let init = {
        let mut i = vec![0, 64, 0, 32, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
        i.extend_from_slice(&[0, 0, 0, 4]);
        i.extend_from_slice(b"name");
        i
    };
    add(
        "handshake-none",
        [
            vec![0x80, 0, 0, 0, 0],
            op(0, &[greeting.clone(), vec![2, 1, 2, 0, 0, 0, 0], init.clone()].concat()),
        ]
        .concat(),
    );
    add(
        "handshake-vncauth",
        [
            vec![0x81, 0, 0, 0, 0],
            op(
                0,
                &[greeting.clone(), vec![1, 2], vec![3; 16], vec![0, 0, 0, 0], init].concat(),
            ),
        ]
        .concat(),
    );
    add(
        "handshake-refused",
        [
            vec![0x80, 0, 0, 0, 0],
            op(1, &[greeting.clone(), vec![0, 0, 0, 0, 2, b'n', b'o']].concat()),
        ]
        .concat(),
    );
    add(
        "handshake-auth-failed",
        [
            vec![0x81, 0, 0, 0, 0],
            op(
                0,
                &[greeting, vec![1, 2], vec![0; 16], vec![0, 0, 0, 1, 0, 0, 0, 1, b'x']].concat(),
            ),
        ]
        .concat(),
    );
    out
}

fn client_msgs() -> Vec<ClientMsg> {
    vec![
        ClientMsg::TermInput(b"ls\r".to_vec()),
        ClientMsg::Resize {
            cols: 80,
            rows: 24,
            width_px: 1280,
            height_px: 720,
        },
        ClientMsg::Ping(*b"pingping"),
        ClientMsg::FrameAck { frame_id: 3 },
        ClientMsg::Clipboard("héllo".into()),
        ClientMsg::Disconnect,
        ClientMsg::Key {
            keysym: 0x61,
            down: true,
            scancode: 0x1e,
        },
        ClientMsg::Key {
            keysym: 0x61,
            down: false,
            scancode: 0x1e,
        },
        ClientMsg::Key {
            keysym: 0x0100_20ac,
            down: true,
            scancode: 0,
        },
        ClientMsg::Key {
            keysym: 0xff51,
            down: true,
            scancode: 0xe04b,
        },
        ClientMsg::Pointer {
            x: 10,
            y: 20,
            buttons: 1,
        },
        ClientMsg::Caps { flags: 1 },
        ClientMsg::FileRequest(portico_proto::files::FileRequest {
            id: 2,
            op: portico_proto::files::FileOp::Upload {
                path: "a.txt".into(),
                size: 3,
            },
        }),
        ClientMsg::FileChunk {
            id: 2,
            data: b"abc".to_vec(),
        },
        ClientMsg::AudioControl { play: false },
        ClientMsg::Pointer {
            x: 10,
            y: 20,
            buttons: 8,
        },
        ClientMsg::Credentials(Credentials {
            username: "alice".into(),
            password: "pw".into(),
            domain: Some("CORP".into()),
        }),
    ]
}

fn server_msgs() -> Vec<ServerMsg> {
    let rect = Rect {
        x: 1,
        y: 2,
        width: 3,
        height: 4,
    };
    vec![
        ServerMsg::Hello(Hello {
            session_id: "s".into(),
            protocol: "vnc".into(),
            resume_token: "r".into(),
            grace_seconds: 60,
            reattached: false,
            recording: true,
        }),
        ServerMsg::TermOutput(b"$ ".to_vec()),
        ServerMsg::Status(Status {
            state: "connected".into(),
            message: "ok".into(),
            graphics: Some("h264".into()),
            files: Some(portico_proto::files::FilePolicy::Both),
            audio: Some("opus".into()),
        }),
        ServerMsg::Audio {
            seq: 7,
            data: vec![0xfc, 0xff, 0xfe],
        },
        ServerMsg::FileReply(portico_proto::files::FileReply {
            id: 1,
            event: portico_proto::files::FileEvent::Progress { bytes: 32768 },
        }),
        ServerMsg::FileData {
            id: 1,
            data: vec![1, 2, 3],
        },
        ServerMsg::Error(ErrorInfo {
            code: CloseCode::AuthFailed,
            message: "no".into(),
            fatal: true,
        }),
        ServerMsg::Closed(Closed {
            code: CloseCode::Ended,
            reason: "bye".into(),
        }),
        ServerMsg::Pong(*b"pongpong"),
        ServerMsg::DisplaySize {
            width: 1280,
            height: 720,
        },
        ServerMsg::Image {
            rect,
            format: ImageFormat::Jpeg,
            data: vec![0xff, 0xd8],
        },
        ServerMsg::Copy {
            src_x: 0,
            src_y: 0,
            rect,
        },
        ServerMsg::Fill { rect, rgb: [1, 2, 3] },
        ServerMsg::Cursor {
            hot_x: 1,
            hot_y: 1,
            png: vec![0x89, b'P'],
        },
        ServerMsg::FrameEnd { frame_id: 9 },
        ServerMsg::Video {
            stream: 0,
            x: 0,
            y: 0,
            key: true,
            rects: vec![Rect {
                x: 0,
                y: 0,
                width: 64,
                height: 64,
            }],
            data: vec![0, 0, 0, 1, 0x67, 0x64, 0, 0x20, 0, 0, 1, 0x65],
        },
        ServerMsg::CacheStore {
            slot: 1,
            rect: Rect {
                x: 0,
                y: 0,
                width: 8,
                height: 8,
            },
        },
        ServerMsg::CacheDraw { slot: 1, x: 4, y: 4 },
        ServerMsg::RemoteClipboard("ré".into()),
    ]
}

fn tokens() -> Vec<(String, Vec<u8>)> {
    let key = SigningKey::from_bytes(&[7; 32]);
    let now = 1_700_000_000i64;
    let claims = SessionClaims {
        iss: "portico".into(),
        aud: "zone:default".into(),
        sub: "u1".into(),
        sid: "s1".into(),
        jti: "j1".into(),
        iat: now,
        nbf: now,
        exp: now + 60,
        proto: Protocol::Vnc,
        dst_host: "10.0.0.5".into(),
        dst_port: 5900,
        idle_timeout: 0,
        max_duration: 0,
        grace: 60,
        viewer: None,
    };
    let token = TokenSigner::new(key.clone()).sign(&claims);
    let json = serde_json::to_vec(&claims).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let other_kid = format!(
        r#"{{"alg":"EdDSA","typ":"JWT","cty":"portico-session+v1","kid":"{}"}}"#,
        "0".repeat(16)
    );
    let unsigned = format!("{}.{}", b64.encode(other_kid), b64.encode(&json));
    let signed_other = format!("{unsigned}.{}", b64.encode(key.sign(unsigned.as_bytes()).to_bytes()));
    vec![
        ("valid".into(), [vec![0], token.clone().into_bytes()].concat()),
        ("unknown-kid".into(), [vec![0], signed_other.into_bytes()].concat()),
        ("garbage".into(), b"\x00a.b.c".to_vec()),
        (
            "claims".into(),
            [vec![1], (now + 10).to_be_bytes().to_vec(), json.clone()].concat(),
        ),
        (
            "claims-expired".into(),
            [vec![1], (now + 100).to_be_bytes().to_vec(), json].concat(),
        ),
        ("edits".into(), vec![2, 0, 5, b'x', 0, 40, 0]),
        ("times".into(), times(now + 10, now, now + 60, 0)),
        ("times-late".into(), times(now + 66, now, now + 60, 0)),
        ("times-audience".into(), times(now, now, now + 30, 1)),
    ]
}

/// Mode 3 of `token_verify`: the clock, the window and the audience/session flags.
fn times(now: i64, nbf: i64, exp: i64, flags: u8) -> Vec<u8> {
    let mut d = vec![3];
    for t in [now, nbf, exp] {
        d.extend_from_slice(&t.to_be_bytes());
    }
    d.push(flags);
    d
}

fn proxy() -> Vec<(String, Vec<u8>)> {
    use portico_proto::proxy::{SIGNATURE, encode};
    let v4 = encode("10.1.2.3:4000".parse().unwrap(), "10.0.0.1:443".parse().unwrap());
    let v6 = encode("[2001:db8::1]:5".parse().unwrap(), "[2001:db8::2]:443".parse().unwrap());
    let mut local = SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let mut tlv = v4.clone();
    tlv[15] += 4;
    tlv.extend_from_slice(&[0x04, 0, 1, 0xaa]);
    let mut unix = SIGNATURE.to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0, 4, 1, 2, 3, 4]);
    vec![
        ("v4".into(), [v4, b"\x16\x03\x01".to_vec()].concat()),
        ("v6".into(), v6),
        ("local".into(), local),
        ("tlv".into(), tlv),
        ("unix".into(), unix),
    ]
}

fn cliprdr() -> Vec<(String, Vec<u8>)> {
    let enc = |pdu: ClipboardPdu<'_>| ironrdp_core::encode_vec(&pdu).unwrap();
    let caps = enc(ClipboardPdu::Capabilities(Capabilities::new(
        ClipboardProtocolVersion::V2,
        ClipboardGeneralCapabilityFlags::USE_LONG_FORMAT_NAMES,
    )));
    let ready = enc(ClipboardPdu::MonitorReady);
    let list = |ids: &[u32], long: bool| {
        let formats: Vec<ClipboardFormat> = ids
            .iter()
            .map(|&i| ClipboardFormat::new(ClipboardFormatId(i)))
            .collect();
        enc(ClipboardPdu::FormatList(
            FormatList::new_unicode(&formats, long).unwrap(),
        ))
    };
    let unicode: Vec<u8> = "remote ✓\r\ntext\0".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let data = |d: &[u8]| {
        enc(ClipboardPdu::FormatDataResponse(FormatDataResponse::new_data(
            d.to_vec(),
        )))
    };
    let request = |id: u32| {
        enc(ClipboardPdu::FormatDataRequest(FormatDataRequest {
            format: ClipboardFormatId(id),
        }))
    };
    let file = enc(ClipboardPdu::FileContentsRequest(FileContentsRequest {
        stream_id: 1,
        index: 0,
        flags: FileContentsFlags::SIZE,
        position: 0,
        requested_size: 8,
        data_id: None,
    }));
    let start = [caps.clone(), ready.clone()];
    vec![
        (
            "paste-unicode".into(),
            [
                vec![3],
                prefixed(start.iter().cloned().chain([list(&[13, 1], true), data(&unicode)])),
            ]
            .concat(),
        ),
        (
            "paste-ascii".into(),
            [
                vec![2],
                prefixed(start.iter().cloned().chain([list(&[1], false), data(b"latin text\0")])),
            ]
            .concat(),
        ),
        (
            "copy-requests".into(),
            [
                vec![5],
                prefixed(start.iter().cloned().chain([
                    enc(ClipboardPdu::FormatListResponse(FormatListResponse::Ok)),
                    request(13),
                    request(1),
                    request(8),
                    file,
                    enc(ClipboardPdu::LockData(LockDataId(4))),
                    enc(ClipboardPdu::UnlockData(LockDataId(4))),
                    enc(ClipboardPdu::FormatListResponse(FormatListResponse::Fail)),
                ])),
            ]
            .concat(),
        ),
        (
            "error-response".into(),
            [
                vec![2],
                prefixed(start.iter().cloned().chain([
                    list(&[13, 49_000], true),
                    enc(ClipboardPdu::FormatDataResponse(FormatDataResponse::new_error())),
                ])),
            ]
            .concat(),
        ),
    ]
}

fn images() -> Vec<(String, Vec<u8>)> {
    // `[width - 1 (2), height - 1 (2), level, jpeg]`: the target adds 1 to each side (mod 512).
    let head = |w: u16, h: u16, level: u8| {
        let mut d = (w - 1).to_be_bytes().to_vec();
        d.extend_from_slice(&(h - 1).to_be_bytes());
        d.push(level);
        d
    };
    let mut out = Vec::new();
    for (name, w, h, data) in [
        ("baseline", 16, 8, jpeg(16, 8, 60, |_| {})),
        ("photo", 72, 64, jpeg(72, 64, 90, |_| {})),
        ("420-restart", 33, 17, {
            jpeg(33, 17, 40, |e| {
                e.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
                e.set_restart_interval(2);
            })
        }),
        ("progressive", 24, 24, jpeg(24, 24, 75, |e| e.set_progressive(true))),
        (
            "optimized",
            9,
            9,
            jpeg(9, 9, 95, |e| e.set_optimized_huffman_tables(true)),
        ),
    ] {
        out.push((name.to_owned(), [head(w, h, 4), data].concat()));
    }
    out
}
