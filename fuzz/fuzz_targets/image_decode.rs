//! Tight JPEG passthrough images: the bridge decodes them into its framebuffer (`jpeg_pixels`) and later
//! re-encodes damaged regions (`encode_rect`: fill, PNG or JPEG). Input: `[width(2), height(2), level,
//! jpeg...]`. A decoded image has exactly the rectangle's size, and its re-encoding decodes back to the
//! same pixels (PNG, fill) or the same size (JPEG).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_bridge::display::{encode_rect, jpeg_pixels};
use portico_proto::wire::{ImageFormat, Rect, ServerMsg};

/// zune-jpeg 0.5.15 panics on some crafted images; `jpeg_pixels` catches that as an invalid image (see its
/// regression test). libFuzzer's panic hook would abort first: it lets panics from zune-jpeg's own source
/// through to that catch, and every other panic stays a crash.
fn tolerate_decoder_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("zune-jpeg")) {
                return;
            }
            fuzzer_hook(info);
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    tolerate_decoder_panics();
    let Some((head, jpeg)) = data.split_first_chunk::<5>() else {
        return;
    };
    // Up to 512x512: larger rectangles only cost time per run.
    let width = 1 + u16::from_be_bytes([head[0], head[1]]) % 512;
    let height = 1 + u16::from_be_bytes([head[2], head[3]]) % 512;
    let Some(rgba) = jpeg_pixels(jpeg, width, height) else {
        return;
    };
    assert_eq!(rgba.len(), usize::from(width) * usize::from(height) * 4);
    let rect = Rect {
        x: 0,
        y: 0,
        width,
        height,
    };
    match encode_rect(rect, &rgba, head[4] % 10) {
        ServerMsg::Fill { rgb, .. } => assert!(rgba.chunks_exact(4).all(|p| p[..3] == rgb)),
        ServerMsg::Image {
            format: ImageFormat::Png,
            data,
            ..
        } => {
            let mut reader = png::Decoder::new(std::io::Cursor::new(data))
                .read_info()
                .expect("our png decodes");
            let mut rgb = vec![0; reader.output_buffer_size().expect("png size")];
            let info = reader.next_frame(&mut rgb).expect("our png decodes");
            assert_eq!((info.width, info.height), (u32::from(width), u32::from(height)));
            let want: Vec<u8> = rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            assert!(rgb[..info.buffer_size()] == want[..], "png round trip");
        }
        ServerMsg::Image {
            format: ImageFormat::Jpeg,
            data,
            ..
        } => assert!(jpeg_pixels(&data, width, height).is_some(), "our jpeg decodes"),
        other => panic!("unexpected {other:?}"),
    }
});
