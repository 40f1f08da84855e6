//! Server bytes into the sans-IO RFB client, past a well-formed handshake (so the fuzzer spends its time on
//! the encodings), interleaved with the calls the bridge makes (resize, clipboard, keys, quality).
//!
//! Input: `[scenario, width(2), height(2), op...]`, each op `[kind, len(2), payload(len)]`.
//! Scenario bits: 0 = VncAuth with a password (else None), 1 = the ServerInit size as given (else
//! 1..=256 per side), 2 = a 640x480 desktop limit (else the default), 7 = no handshake (the ops start at
//! the greeting: the handshake itself is fuzzed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proto::Secret;
use portico_proto::rfb::{MAX_CURSOR_SIDE, MAX_CUT_TEXT, MaxDesktop, RfbClient, RfbConfig, RfbEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&scenario, rest)) = data.split_first() else {
        return;
    };
    let Some((size, mut ops)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let max = if scenario & 4 != 0 {
        MaxDesktop {
            width: 640,
            height: 480,
        }
    } else {
        MaxDesktop::DEFAULT
    };
    let mut c = RfbClient::new(RfbConfig {
        password: (scenario & 1 != 0).then(|| Secret::new("fuzzpass".to_owned())),
        max_desktop: max,
        ..RfbConfig::default()
    });
    let mut fb = (0u16, 0u16);
    if scenario & 0x80 == 0 {
        let (mut w, mut h) = (
            u16::from_be_bytes([size[0], size[1]]),
            u16::from_be_bytes([size[2], size[3]]),
        );
        if scenario & 2 == 0 {
            (w, h) = (1 + w % 256, 1 + h % 256);
        }
        let mut server = b"RFB 003.008\n".to_vec();
        server.extend_from_slice(&[1, if scenario & 1 != 0 { 2 } else { 1 }]);
        if scenario & 1 != 0 {
            server.extend_from_slice(&[0x5a; 16]);
        }
        server.extend_from_slice(&[0, 0, 0, 0]);
        server.extend_from_slice(&w.to_be_bytes());
        server.extend_from_slice(&h.to_be_bytes());
        server.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0, 0, 0, 0, 4]);
        server.extend_from_slice(b"fuzz");
        let res = c.handle_input(&server);
        if !max.allows(w, h) {
            assert!(res.is_err(), "a desktop of {w}x{h} over {max} was accepted");
            return;
        }
        res.expect("a well-formed handshake is accepted");
        assert!(c.is_connected() && !c.holds_password());
        drain(&mut c, &mut fb, max);
    }
    while let Some((&kind, rest)) = ops.split_first() {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        ops = rest;
        let u16_at = |i: usize| u16::from_be_bytes([*payload.get(i).unwrap_or(&0), *payload.get(i + 1).unwrap_or(&0)]);
        let res = match kind % 6 {
            0 => c.handle_input(payload),
            1 => payload.iter().try_for_each(|b| c.handle_input(std::slice::from_ref(b))),
            2 => {
                c.set_desktop_size(u16_at(0), u16_at(2));
                Ok(())
            }
            3 => {
                c.cut_text(&String::from_utf8_lossy(payload));
                Ok(())
            }
            4 => {
                c.key(u32::from(u16_at(0)) << 16 | u32::from(u16_at(2)), u16_at(4) & 1 != 0);
                c.pointer(u16_at(0), u16_at(2), payload.get(4).copied().unwrap_or(0));
                Ok(())
            }
            _ => {
                c.request_update(payload.first().is_some_and(|b| b & 1 != 0));
                c.set_jpeg_quality(payload.get(1).copied().unwrap_or(0));
                Ok(())
            }
        };
        drain(&mut c, &mut fb, max);
        if res.is_err() {
            assert!(c.handle_input(b"x").is_err(), "a failed client stays failed");
            assert!(!c.holds_password());
            return;
        }
    }
});

/// Take every event and transmission, checking what the bridge relies on.
fn drain(c: &mut RfbClient, fb: &mut (u16, u16), max: MaxDesktop) {
    let inside = |fb: (u16, u16), x: u16, y: u16, w: u16, h: u16| {
        u32::from(x) + u32::from(w) <= u32::from(fb.0) && u32::from(y) + u32::from(h) <= u32::from(fb.1)
    };
    while let Some(ev) = c.poll_event() {
        match ev {
            RfbEvent::Connected { width, height, .. } | RfbEvent::Resize { width, height } => {
                assert!(max.allows(width, height), "desktop {width}x{height} over {max}");
                *fb = (width, height);
            }
            RfbEvent::Rect {
                x,
                y,
                width,
                height,
                rgba,
            } => {
                assert!(inside(*fb, x, y, width, height), "rect outside the framebuffer");
                assert_eq!(rgba.len(), usize::from(width) * usize::from(height) * 4);
            }
            RfbEvent::Fill {
                x, y, width, height, ..
            } => assert!(inside(*fb, x, y, width, height), "fill outside the framebuffer"),
            RfbEvent::Jpeg {
                x,
                y,
                width,
                height,
                data,
            } => {
                assert!(inside(*fb, x, y, width, height), "jpeg outside the framebuffer");
                assert!(data.len() <= usize::from(width) * usize::from(height) * 4 + 64 * 1024 + 1024 * 1024);
            }
            RfbEvent::Copy {
                src_x,
                src_y,
                x,
                y,
                width,
                height,
            } => {
                assert!(inside(*fb, x, y, width, height), "copy outside the framebuffer");
                assert!(
                    inside(*fb, src_x, src_y, width, height),
                    "copy source outside the framebuffer"
                );
            }
            RfbEvent::Cursor {
                hot_x,
                hot_y,
                width,
                height,
                rgba,
            } => {
                assert!(width <= MAX_CURSOR_SIDE && height <= MAX_CURSOR_SIDE);
                assert!(hot_x <= width && hot_y <= height);
                assert_eq!(rgba.len(), usize::from(width) * usize::from(height) * 4);
            }
            RfbEvent::CutText(text) => assert!(text.len() <= 3 * (MAX_CUT_TEXT + 4)),
            RfbEvent::ResizeRefused(_) | RfbEvent::UpdateEnd | RfbEvent::Bell => {}
        }
    }
    while c.poll_transmit().is_some() {}
}
