//! The sans-IO RFB client (`portico_proto::rfb`) against a real TigerVNC Xvnc: handshake with None and
//! VncAuth, pixel truth for what the harness paints, and ZRLE decoding equal to Raw.

use std::time::Duration;

use portico_proto::Secret;
use portico_proto::rfb::{RfbClient, RfbConfig, RfbError, RfbEvent, encoding};
use portico_tests::peers::VncServer;
use portico_tests::peers::XDisplay as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A framebuffer assembled from the client's events.
pub struct Screen {
    pub width: usize,
    pub rgba: Vec<u8>,
    /// Rectangles per encoding in this update.
    rect_counts: Vec<(i32, u64)>,
}

impl Screen {
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 4] {
        let o = (y * self.width + x) * 4;
        [self.rgba[o], self.rgba[o + 1], self.rgba[o + 2], self.rgba[o + 3]]
    }
}

/// Connect, take one full update, return the screen (or the client's error).
pub async fn full_frame(
    port: u16,
    password: Option<&str>,
    encodings: Vec<i32>,
) -> anyhow::Result<Result<Screen, RfbError>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut client = RfbClient::new(RfbConfig {
        password: password.map(|p| Secret::new(p.to_owned())),
        shared: true,
        encodings,
        ..RfbConfig::default()
    });
    let mut screen: Option<Screen> = None;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(out) = client.poll_transmit() {
            tcp.write_all(&out).await?;
        }
        while let Some(ev) = client.poll_event() {
            match ev {
                RfbEvent::Connected { width, height, .. } | RfbEvent::Resize { width, height } => {
                    screen = Some(Screen {
                        width: width.into(),
                        rgba: vec![0; usize::from(width) * usize::from(height) * 4],
                        rect_counts: Vec::new(),
                    });
                }
                RfbEvent::Rect { x, y, width, rgba, .. } => {
                    let s = screen.as_mut().expect("rect before connect");
                    for (row, line) in rgba.chunks_exact(usize::from(width) * 4).enumerate() {
                        let o = ((usize::from(y) + row) * s.width + usize::from(x)) * 4;
                        s.rgba[o..o + line.len()].copy_from_slice(line);
                    }
                }
                RfbEvent::UpdateEnd => {
                    let mut s = screen.expect("update before connect");
                    s.rect_counts = client.rect_counts().to_vec();
                    return Ok(Ok(s));
                }
                _ => {}
            }
        }
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "server closed the connection");
        if let Err(e) = client.handle_input(&buf[..n]) {
            return Ok(Err(e));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pixels_painted_on_the_display_arrive() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 320, 200)?;
    xvnc.x("xsetroot", &["-solid", "#204060"])?;
    let screen = full_frame(xvnc.port, None, vec![encoding::ZRLE, encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (x, y) in [(0, 0), (160, 100), (319, 199)] {
        assert_eq!(screen.pixel(x, y), [0x20, 0x40, 0x60, 255], "pixel at {x},{y}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn zrle_and_raw_decode_to_the_same_pixels() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 300, 170)?;
    // A two-colour grid exercises palette tiles; the odd size exercises partial tiles.
    xvnc.x("xsetroot", &["-mod", "3", "5", "-fg", "#ff8000", "-bg", "#003366"])?;
    let raw = full_frame(xvnc.port, None, vec![encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let zrle = full_frame(xvnc.port, None, vec![encoding::ZRLE, encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        zrle.rect_counts.iter().any(|&(e, n)| e == encoding::ZRLE && n > 0),
        "no zrle rectangles: {:?}",
        zrle.rect_counts
    );
    assert!(
        raw.rect_counts.iter().all(|&(e, _)| e == encoding::RAW),
        "{:?}",
        raw.rect_counts
    );
    assert!(raw.rgba == zrle.rgba, "zrle and raw framebuffers differ");
    let colours: std::collections::HashSet<[u8; 4]> =
        raw.rgba.chunks_exact(4).map(|p| [p[0], p[1], p[2], p[3]]).collect();
    assert!(
        colours.contains(&[0xff, 0x80, 0x00, 255]) && colours.contains(&[0x00, 0x33, 0x66, 255]),
        "{colours:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vnc_password_right_and_wrong() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(Some("s3cret-pw"), 200, 100)?;
    xvnc.x("xsetroot", &["-solid", "#00ff00"])?;
    let ok = full_frame(xvnc.port, Some("s3cret-pw"), vec![encoding::ZRLE, encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(ok.pixel(10, 10), [0, 255, 0, 255]);
    let wrong = full_frame(xvnc.port, Some("not-it"), vec![encoding::RAW]).await?;
    assert!(matches!(wrong, Err(RfbError::AuthFailed(_))), "{:?}", wrong.err());
    let none = full_frame(xvnc.port, None, vec![encoding::RAW]).await?;
    assert!(matches!(none, Err(RfbError::PasswordRequired)), "{:?}", none.err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn x11vnc_on_xvfb_pixels_and_password() -> anyhow::Result<()> {
    let server = VncServer::x11vnc(Some("x11-pw"), 320, 200)?;
    server.x("xsetroot", &["-solid", "#123456"])?;
    // x11vnc polls the X screen: the new root colour shows up in its framebuffer a moment later.
    let mut seen = Vec::new();
    for _ in 0..20 {
        let screen = full_frame(server.port, Some("x11-pw"), vec![encoding::ZRLE, encoding::RAW])
            .await?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        seen.push(screen.pixel(5, 5));
        if screen.pixel(5, 5) == [0x12, 0x34, 0x56, 255] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(seen.last(), Some(&[0x12, 0x34, 0x56, 255]), "pixels seen: {seen:?}");
    let wrong = full_frame(server.port, Some("wrong-pw"), vec![encoding::RAW]).await?;
    assert!(matches!(wrong, Err(RfbError::AuthFailed(_))), "{:?}", wrong.err());
    Ok(())
}

/// A photographic image shown at (`x`, `y`) on the display, made with ImageMagick's plasma fractal.
pub fn show_photo(
    server: &VncServer,
    x: u16,
    y: u16,
    w: u16,
    h: u16,
) -> anyhow::Result<portico_tests::peers::Background> {
    let file = crate::marker_path("plasma") + ".png";
    let out = std::process::Command::new("/usr/bin/convert")
        .args(["-seed", "7", "-size", &format!("{w}x{h}"), "plasma:fractal", &file])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "convert (install imagemagick): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer = server.spawn("display", &["-geometry", &format!("+{x}+{y}"), &file])?;
    portico_tests::peers::wait_for("the image window", Duration::from_secs(20), || {
        server
            .x("xdotool", &["search", "--onlyvisible", "--name", "ImageMagick"])
            .is_ok()
    })?;
    std::thread::sleep(Duration::from_millis(500)); // Let it paint.
    Ok(viewer)
}

#[tokio::test(flavor = "multi_thread")]
async fn tight_without_jpeg_decodes_to_the_same_pixels_as_raw() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 500, 300)?;
    xvnc.x("xsetroot", &["-mod", "3", "5", "-fg", "#ff8000", "-bg", "#003366"])?;
    let _photo = show_photo(&xvnc, 20, 20, 300, 200)?;
    let raw = full_frame(xvnc.port, None, vec![encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tight = full_frame(xvnc.port, None, vec![encoding::TIGHT, encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(
        tight.rect_counts.iter().any(|&(e, n)| e == encoding::TIGHT && n > 0),
        "no tight rectangles: {:?}",
        tight.rect_counts
    );
    assert!(raw.rgba == tight.rgba, "tight and raw framebuffers differ");
    Ok(())
}
