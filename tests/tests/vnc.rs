//! VNC through the bridge against real TigerVNC Xvnc and x11vnc: pixel truth, input truth, clipboard,
//! errors (wrong password, unreachable host, a server that lies), flow control and reattach.

use portico_proto::codes::CloseCode;
use std::time::Duration;

use portico_proto::wire::{self, ClientMsg};
use portico_tests::client::{Api, Screen, attach, ws_connect};
use portico_tests::peers::XDisplay as _;
use portico_tests::peers::{VncServer, free_port};
use portico_tests::portico::Portico;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::marker_path;

pub async fn vnc_connection(api: &Api, port: u16, password: Option<&str>) -> anyhow::Result<String> {
    let mut body = json!({ "name": format!("vnc {port}"), "protocol": "vnc", "host": "127.0.0.1", "port": port });
    if let Some(pw) = password {
        body["password"] = json!(pw);
    }
    api.create_connection(body).await
}

pub async fn open_screen(p: &Portico, api: &Api, conn: &str) -> anyhow::Result<(Value, Screen)> {
    let (s, ws) = attach(p, api, conn).await?;
    Ok((s, Screen::new(ws)))
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn desktop_pixels_arrive_and_follow_changes() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(Some("pw-1234"), 640, 400)?;
    xvnc.x("xsetroot", &["-solid", "#204060"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, Some("pw-1234")).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the root colour", WAIT, |c| {
        c.pixel(10, 10) == [0x20, 0x40, 0x60] && c.pixel(639, 399) == [0x20, 0x40, 0x60]
    })
    .await?;
    assert_eq!((s.canvas.width, s.canvas.height), (640, 400));
    assert!(
        s.term.statuses.iter().any(|st| st.state == "connected"),
        "{:?}",
        s.term.statuses
    );
    // An incremental update after the change.
    xvnc.x("xsetroot", &["-solid", "#a05010"])?;
    s.until("the new root colour", WAIT, |c| c.pixel(320, 200) == [0xa0, 0x50, 0x10])
        .await?;
    assert!(s.canvas.fills > 0, "a solid screen is sent as fills");
    // A two-colour pattern: lossless, exact pixels.
    xvnc.x("xsetroot", &["-mod", "4", "4", "-fg", "#ff0000", "-bg", "#0000ff"])?;
    s.until("the pattern", WAIT, |c| {
        let px: std::collections::HashSet<[u8; 3]> = (0..64).map(|x| c.pixel(x, 7)).collect();
        px.len() == 2 && px.contains(&[0xff, 0, 0]) && px.contains(&[0, 0, 0xff])
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn x11vnc_desktop_arrives() -> anyhow::Result<()> {
    let server = VncServer::x11vnc(None, 400, 300)?;
    server.x("xsetroot", &["-solid", "#336699"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, server.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the root colour", WAIT, |c| c.pixel(200, 150) == [0x33, 0x66, 0x99])
        .await?;
    assert_eq!((s.canvas.width, s.canvas.height), (400, 300));
    Ok(())
}

/// Type `text` as key presses (ASCII maps to keysyms one to one; '\n' is Return).
async fn type_text(s: &mut Screen, text: &str) -> anyhow::Result<()> {
    for ch in text.chars() {
        let keysym = if ch == '\n' { 0xff0d } else { u32::from(ch) };
        s.term
            .send(ClientMsg::Key {
                keysym,
                down: true,
                scancode: 0,
            })
            .await?;
        s.term
            .send(ClientMsg::Key {
                keysym,
                down: false,
                scancode: 0,
            })
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_and_clicks_reach_the_right_window() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 800, 600)?;
    xvnc.x("xsetroot", &["-solid", "#000000"])?;
    let _left = xvnc.spawn(
        "xterm",
        &["-geometry", "40x10+0+0", "-title", "left", "-bg", "white", "-e", "sh"],
    )?;
    let _right = xvnc.spawn(
        "xterm",
        &["-geometry", "40x10+420+300", "-title", "right", "-bg", "white"],
    )?;
    portico_tests::peers::wait_for("both xterms mapped", WAIT, || {
        ["left", "right"]
            .iter()
            .all(|t| xvnc.x("xdotool", &["search", "--onlyvisible", "--name", t]).is_ok())
    })?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the white xterms", WAIT, |c| {
        c.pixel(100, 60) == [255, 255, 255] && c.pixel(500, 350) == [255, 255, 255]
    })
    .await?;
    // Keyboard: without a window manager, focus follows the pointer; the shell runs what is typed.
    s.term
        .send(ClientMsg::Pointer {
            x: 100,
            y: 60,
            buttons: 0,
        })
        .await?;
    let file = marker_path("vnc-keys");
    type_text(&mut s, &format!("echo typed-$((6*7)) > {file}\n")).await?;
    portico_tests::peers::wait_for("the typed command's file", WAIT, || {
        std::fs::read_to_string(&file).is_ok_and(|c| c.trim() == "typed-42")
    })?;
    let _ = std::fs::remove_file(&file);
    // Mouse: a click at a known place lands on the window that is there.
    let select = xvnc.spawn("xdotool", &["selectwindow"])?;
    tokio::time::sleep(Duration::from_millis(500)).await; // Let it grab the pointer.
    for buttons in [0, 1, 0] {
        s.term
            .send(ClientMsg::Pointer {
                x: 500,
                y: 350,
                buttons,
            })
            .await?;
    }
    let clicked = tokio::task::spawn_blocking(move || select.output(Duration::from_secs(10))).await??;
    let right = xvnc.x("xdotool", &["search", "--onlyvisible", "--name", "right"])?;
    assert_eq!(clicked.trim(), right.trim(), "the click landed on another window");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn clipboard_both_ways() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 320, 200)?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the first frame", WAIT, |c| c.frames > 0).await?;
    // UTF-8 both ways: TigerVNC has the extended clipboard.
    // Browser → remote: the X selection owned by Xvnc holds the text.
    s.term
        .send(ClientMsg::Clipboard("from the browser: café ✓ 中文".into()))
        .await?;
    portico_tests::peers::wait_for("the remote clipboard", WAIT, || {
        xvnc.x("xclip", &["-o", "-selection", "clipboard"])
            .is_ok_and(|t| t == "from the browser: café ✓ 中文")
    })?;
    // Remote → browser: a program on the display sets the clipboard.
    let _owner = xvnc.spawn(
        "sh",
        &[
            "-c",
            "printf 'from the desktop: naïve ✓' | xclip -i -selection clipboard -loops 3",
        ],
    )?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        s.pump(Duration::from_millis(200)).await?;
        if s.term.clipboard.iter().any(|t| t == "from the desktop: naïve ✓") {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no remote clipboard: {:?}",
            s.term.clipboard
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unreachable_host_are_clear_errors() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(Some("right-pw"), 200, 100)?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let wrong = vnc_connection(&api, xvnc.port, Some("wrong-pw")).await?;
    let (_, mut s) = open_screen(&p, &api, &wrong).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::AuthFailed, "{closed:?}");
    assert!(
        s.term
            .errors
            .iter()
            .any(|e| e.code == CloseCode::AuthFailed && e.message.contains("authentication")),
        "{:?}",
        s.term.errors
    );
    let missing = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &missing).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::AuthFailed);
    assert!(closed.reason.contains("password"), "{closed:?}");
    let unreachable = vnc_connection(&api, free_port(), None).await?;
    let (_, mut s) = open_screen(&p, &api, &unreachable).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::Unreachable, "{closed:?}");
    Ok(())
}

/// A browser that keeps sending while its session fails still hears why: the bridge forwards the final
/// error and close even when the session ended between two of the browser's messages (before, the close
/// was lost and the browser kept trying to reattach to a session that no longer existed).
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_session_says_why_even_to_a_chatty_browser() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let unreachable = vnc_connection(&api, free_port(), None).await?;
    for round in 0..25 {
        let (_, mut s) = open_screen(&p, &api, &unreachable).await?;
        for i in 0..40u32 {
            if s.term.send(ClientMsg::Ping(u64::from(i).to_be_bytes())).await.is_err() {
                break;
            }
        }
        let closed = s.term.closed_within(WAIT).await?;
        let closed = closed.unwrap_or_else(|| panic!("round {round}: the socket closed without saying why"));
        assert_eq!(closed.code, CloseCode::Unreachable, "round {round}: {closed:?}");
        assert!(
            s.term
                .errors
                .iter()
                .any(|e| e.fatal && e.message.contains("cannot reach")),
            "round {round}: {:?}",
            s.term.errors
        );
    }
    Ok(())
}

/// A VNC server that completes the handshake (no auth, 64x64) and then sends `lie`.
async fn lying_server(lie: Vec<u8>) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let lie = lie.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 12];
                tcp.write_all(b"RFB 003.008\n").await?;
                tcp.read_exact(&mut buf).await?;
                tcp.write_all(&[1, 1]).await?; // One security type: None.
                tcp.read_exact(&mut buf[..1]).await?;
                tcp.write_all(&[0, 0, 0, 0]).await?; // SecurityResult OK.
                tcp.read_exact(&mut buf[..1]).await?; // ClientInit.
                let mut init = vec![0, 64, 0, 64, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0];
                init.extend_from_slice(&4u32.to_be_bytes());
                init.extend_from_slice(b"liar");
                tcp.write_all(&init).await?;
                tcp.write_all(&lie).await?;
                let mut sink = vec![0u8; 4096];
                while tcp.read(&mut sink).await? > 0 {}
                anyhow::Ok(())
            });
        }
    });
    Ok(port)
}

fn update_header(x: u16, y: u16, w: u16, h: u16, encoding: i32) -> Vec<u8> {
    let mut m = vec![0, 0, 0, 1];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&encoding.to_be_bytes());
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_server_ends_its_session_only() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 320, 200)?;
    xvnc.x("xsetroot", &["-solid", "#00ff00"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let good = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut bystander) = open_screen(&p, &api, &good).await?;
    bystander
        .until("the bystander's desktop", WAIT, |c| c.pixel(5, 5) == [0, 255, 0])
        .await?;

    let outside = update_header(60, 60, 10, 10, 0); // Raw, beyond the 64x64 framebuffer.
    let mut oversized = update_header(0, 0, 64, 64, 16); // ZRLE announcing 1 GiB.
    oversized.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let mut garbage = update_header(0, 0, 8, 8, 16);
    garbage.extend_from_slice(&8u32.to_be_bytes());
    garbage.extend_from_slice(b"notzlib!");
    let unknown_message = vec![77u8, 1, 2, 3];
    for (lie, expect) in [
        (outside, "outside"),
        (oversized, "exceeds the limit"),
        (garbage, "corrupt"),
        (unknown_message, "unknown server message"),
    ] {
        let port = lying_server(lie).await?;
        let conn = vnc_connection(&api, port, None).await?;
        let (_, mut s) = open_screen(&p, &api, &conn).await?;
        let closed = s.term.closed_within(WAIT).await?.expect("closed message");
        assert_eq!(closed.code, CloseCode::TargetError, "{closed:?}");
        assert!(closed.reason.contains(expect), "{expect}: {closed:?}");
    }
    // The bystander still gets updates.
    xvnc.x("xsetroot", &["-solid", "#ff00ff"])?;
    bystander
        .until("the bystander's next frame", WAIT, |c| c.pixel(5, 5) == [255, 0, 255])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_that_does_not_acknowledge_gets_no_more_frames() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 320, 200)?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.ack = false;
    // Something that changes the screen continuously (bounded: 3000 colour changes).
    let _painter = xvnc.spawn(
        "sh",
        &[
            "-c",
            "for i in $(seq 1 1500); do xsetroot -solid '#ff0000'; xsetroot -solid '#0000ff'; done",
        ],
    )?;
    s.pump_for(Duration::from_secs(3)).await?;
    let unacked = s.canvas.frames;
    assert!(unacked >= 1, "no frame at all");
    assert!(unacked <= 2, "{unacked} frames sent without acknowledgement");
    s.acknowledge_and_flow(WAIT).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reattached_browser_gets_the_whole_screen() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 320, 200)?;
    xvnc.x("xsetroot", &["-solid", "#102030"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let (session, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the desktop", WAIT, |c| c.pixel(1, 1) == [0x10, 0x20, 0x30])
        .await?;
    let resume = s.term.hello.as_ref().expect("hello").resume_token.clone();
    drop(s);
    // Changes while nobody watches.
    xvnc.x("xsetroot", &["-solid", "#405060"])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ws_url = session["ws_url"].as_str().unwrap_or_default();
    let ws = ws_connect(ws_url, &p.cert_sha256, &[format!("{}{resume}", wire::RESUME_PREFIX)])
        .await?
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
    let mut s = Screen::new(ws);
    s.until("the current desktop", WAIT, |c| c.pixel(300, 190) == [0x40, 0x50, 0x60])
        .await?;
    assert!(s.term.hello.as_ref().is_some_and(|h| h.reattached));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn photographic_regions_arrive_as_jpeg_close_to_the_truth() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 640, 400)?;
    xvnc.x("xsetroot", &["-solid", "#000000"])?;
    let _photo = crate::rfb::show_photo(&xvnc, 100, 100, 320, 200)?;
    let truth = crate::rfb::full_frame(xvnc.port, None, vec![portico_proto::rfb::encoding::RAW])
        .await?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    // Lossy, but close: mean absolute error per channel over the photo, and exact black around it.
    let mean_error = |c: &portico_tests::client::Canvas| {
        let mut err = 0u64;
        for y in 110..290 {
            for x in 110..410 {
                let (got, want) = (c.pixel(x, y), truth.pixel(x, y));
                err += (0..3).map(|i| u64::from(got[i].abs_diff(want[i]))).sum::<u64>();
            }
        }
        err as f64 / (180.0 * 300.0 * 3.0)
    };
    let res = s
        .until("the photo, close to the truth", WAIT, |c| {
            c.jpegs > 0 && mean_error(c) < 8.0
        })
        .await;
    let mean = mean_error(&s.canvas);
    res.map_err(|e| anyhow::anyhow!("{e}; mean error {mean:.2}, {} jpeg images", s.canvas.jpegs))?;
    assert_eq!(s.canvas.pixel(5, 5), [0, 0, 0]);
    assert_eq!(s.canvas.pixel(630, 390), [0, 0, 0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_browser_can_resize_the_remote_desktop() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 640, 400)?;
    xvnc.x("xsetroot", &["-solid", "#008080"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the desktop", WAIT, |c| c.pixel(1, 1) == [0, 0x80, 0x80])
        .await?;
    s.term
        .send(ClientMsg::Resize {
            cols: 0,
            rows: 0,
            width_px: 900,
            height_px: 500,
        })
        .await?;
    s.until("the new size", WAIT, |c| c.width == 900 && c.height == 500)
        .await?;
    xvnc.x("xsetroot", &["-solid", "#808000"])?;
    s.until("pixels across the new size", WAIT, |c| {
        c.pixel(899, 499) == [0x80, 0x80, 0]
    })
    .await?;
    let info = xvnc.x("xdpyinfo", &[])?;
    assert!(info.contains("900x500 pixels"), "{info}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_refuses_resizing_says_so_and_keeps_going() -> anyhow::Result<()> {
    let server = VncServer::x11vnc(None, 400, 300)?;
    server.x("xsetroot", &["-solid", "#224466"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, server.port, None).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the desktop", WAIT, |c| c.pixel(1, 1) == [0x22, 0x44, 0x66])
        .await?;
    s.term
        .send(ClientMsg::Resize {
            cols: 0,
            rows: 0,
            width_px: 900,
            height_px: 500,
        })
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !s
        .term
        .errors
        .iter()
        .any(|e| e.code == CloseCode::ResizeUnsupported && !e.fatal)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no resize_unsupported error: {:?}",
            s.term.errors
        );
        s.pump(Duration::from_millis(200)).await?;
    }
    server.x("xsetroot", &["-solid", "#664422"])?;
    s.until("later updates", WAIT, |c| c.pixel(1, 1) == [0x66, 0x44, 0x22])
        .await?;
    assert_eq!((s.canvas.width, s.canvas.height), (400, 300));
    Ok(())
}
