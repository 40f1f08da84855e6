//! RDP through the bridge against real servers: FreeRDP's shadow server (TLS, and NLA against a SAM file)
//! and xrdp with xorgxrdp sessions for a real local user. Pixel truth, input truth (scancodes and Unicode),
//! clipboard both ways, resize, certificate pinning and trust on first use, credentials asked at connect
//! time, and the errors (wrong password, unreachable host, a server that lies).

use portico_proto::codes::CloseCode;
use std::time::Duration;

use portico_proto::wire::{CAPS_H264, ClientMsg, Credentials};
use portico_tests::client::{Api, Screen, attach};
use portico_tests::peers::XDisplay as _;
use portico_tests::peers::{RdpServer, ShadowAuth, free_port, wait_for};
use portico_tests::portico::Portico;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::marker_path;
use crate::vnc::open_screen;

const WAIT: Duration = Duration::from_secs(30);
/// xrdp starts an Xorg session for the user on the first login: give it time.
const SESSION_WAIT: Duration = Duration::from_secs(45);

pub(crate) async fn rdp_connection(
    api: &Api,
    server: &RdpServer,
    password: &str,
    settings: Value,
) -> anyhow::Result<String> {
    api.create_connection(json!({
        "name": format!("rdp {} {}", server.port, uuid::Uuid::new_v4()),
        "protocol": "rdp",
        "host": "127.0.0.1",
        "port": server.port,
        "username": server.user.name,
        "password": password,
        "settings": settings,
    }))
    .await
}

/// The set-1 scancode of an ASCII character on a US layout, and whether it needs Shift.
fn us_scancode(ch: char) -> Option<(u16, bool)> {
    const ROW: &[(char, u16)] = &[
        ('1', 0x02),
        ('2', 0x03),
        ('3', 0x04),
        ('4', 0x05),
        ('5', 0x06),
        ('6', 0x07),
        ('7', 0x08),
        ('8', 0x09),
        ('9', 0x0a),
        ('0', 0x0b),
        ('-', 0x0c),
        ('=', 0x0d),
        ('q', 0x10),
        ('w', 0x11),
        ('e', 0x12),
        ('r', 0x13),
        ('t', 0x14),
        ('y', 0x15),
        ('u', 0x16),
        ('i', 0x17),
        ('o', 0x18),
        ('p', 0x19),
        ('a', 0x1e),
        ('s', 0x1f),
        ('d', 0x20),
        ('f', 0x21),
        ('g', 0x22),
        ('h', 0x23),
        ('j', 0x24),
        ('k', 0x25),
        ('l', 0x26),
        (';', 0x27),
        ('\'', 0x28),
        ('z', 0x2c),
        ('x', 0x2d),
        ('c', 0x2e),
        ('v', 0x2f),
        ('b', 0x30),
        ('n', 0x31),
        ('m', 0x32),
        (',', 0x33),
        ('.', 0x34),
        ('/', 0x35),
        (' ', 0x39),
        ('\n', 0x1c),
    ];
    const SHIFTED: &[(char, char)] = &[
        ('!', '1'),
        ('@', '2'),
        ('#', '3'),
        ('$', '4'),
        ('%', '5'),
        ('^', '6'),
        ('&', '7'),
        ('*', '8'),
        ('(', '9'),
        (')', '0'),
        ('_', '-'),
        ('+', '='),
        ('>', '.'),
        ('<', ','),
        ('?', '/'),
        (':', ';'),
    ];
    if let Some(&(_, base)) = SHIFTED.iter().find(|(c, _)| *c == ch) {
        return us_scancode(base).map(|(code, _)| (code, true));
    }
    if ch.is_ascii_uppercase() {
        return us_scancode(ch.to_ascii_lowercase()).map(|(code, _)| (code, true));
    }
    ROW.iter().find(|(c, _)| *c == ch).map(|&(_, code)| (code, false))
}

async fn key(s: &mut Screen, scancode: u16, keysym: u32, down: bool) -> anyhow::Result<()> {
    s.term.send(ClientMsg::Key { keysym, down, scancode }).await
}

/// Type ASCII text as physical keys (scancodes), as the web client does for a US keyboard.
async fn type_scancodes(s: &mut Screen, text: &str) -> anyhow::Result<()> {
    const SHIFT: u16 = 0x2a;
    for ch in text.chars() {
        let (code, shift) = us_scancode(ch).ok_or_else(|| anyhow::anyhow!("no scancode for {ch:?}"))?;
        let keysym = if ch == '\n' { 0xff0d } else { u32::from(ch) };
        if shift {
            key(s, SHIFT, 0xffe1, true).await?;
        }
        key(s, code, keysym, true).await?;
        key(s, code, keysym, false).await?;
        if shift {
            key(s, SHIFT, 0xffe1, false).await?;
        }
    }
    Ok(())
}

/// Type text as characters without keys (scancode 0): the bridge sends RDP Unicode keyboard events.
async fn type_unicode(s: &mut Screen, text: &str) -> anyhow::Result<()> {
    for ch in text.chars() {
        let keysym = 0x0100_0000 + u32::from(ch);
        key(s, 0, keysym, true).await?;
        key(s, 0, keysym, false).await?;
    }
    Ok(())
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 2)
}

const XRDP_GREEN: [u8; 3] = [0x30, 0x50, 0x30];

/// A logged-in xrdp session for the test user at 1024x768, its desktop on the canvas.
async fn xrdp_session(p: &Portico, api: &Api, xrdp: &RdpServer) -> anyhow::Result<Screen> {
    let conn = rdp_connection(api, xrdp, &xrdp.user.password, json!({"width": 1024, "height": 768})).await?;
    let (_, mut s) = open_screen(p, api, &conn).await?;
    s.until("the xrdp session's green desktop", SESSION_WAIT, |c| {
        close(c.pixel(1000, 740), XRDP_GREEN)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", xrdp.log()))?;
    Ok(s)
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_desktop_pixels_arrive_and_follow_changes() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::None, 800, 600)?;
    shadow.x("xsetroot", &["-solid", "#800080"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = rdp_connection(&api, &shadow, "any", json!({"width": 800, "height": 600})).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    // Lossless bitmaps: the exact colour.
    s.until("the purple desktop", WAIT, |c| {
        c.pixel(10, 10) == [0x80, 0, 0x80] && c.pixel(799, 599) == [0x80, 0, 0x80]
    })
    .await?;
    assert_eq!((s.canvas.width, s.canvas.height), (800, 600));
    assert!(
        s.term.statuses.iter().any(|st| st.state == "connected"),
        "{:?}",
        s.term.statuses
    );
    shadow.x("xsetroot", &["-solid", "#10a050"])?;
    s.until("the new colour", WAIT, |c| c.pixel(400, 300) == [0x10, 0xa0, 0x50])
        .await?;
    // Trust on first use: the certificate's fingerprint is now pinned on the connection.
    let c = api
        .ok(reqwest::Method::GET, &format!("/api/v1/connections/{conn}"), None)
        .await?;
    let fp = c["host_key_fingerprint"].as_str().unwrap_or_default();
    assert!(fp.starts_with("SHA256:"), "no fingerprint recorded: {c}");
    Ok(())
}

/// A browser on the graphics pipeline that stops acknowledging (a frozen tab, a link gone without a close):
/// the bridge can neither merge nor drop H.264 frames (each refers to the last), so once the frames in
/// flight reach the flow control's cap it tells the server to pause (Suppress Output). Frames stop while the
/// screen keeps changing (FreeRDP's shadow server, unacknowledged, only slows down), the session stays up,
/// and an acknowledgement resumes them.
#[tokio::test(flavor = "multi_thread")]
async fn an_h264_browser_that_stops_acknowledging_pauses_the_server() -> anyhow::Result<()> {
    use portico_bridge::display::MAX_FRAMES_IN_FLIGHT;
    let shadow = RdpServer::shadow(ShadowAuth::None, 800, 600)?;
    shadow.x("xsetroot", &["-solid", "#203040"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = rdp_connection(&api, &shadow, "any", json!({"width": 800, "height": 600, "h264": true})).await?;
    let (_, ws) = attach(&p, &api, &conn).await?;
    let mut s = Screen::new(ws);
    s.term.send(ClientMsg::Caps { flags: CAPS_H264 }).await?;
    s.until("the first H.264 frame", WAIT, |c| c.videos >= 1).await?;
    // The status naming the path follows the first frame.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !s.term.statuses.iter().any(|st| st.graphics.as_deref() == Some("h264")) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not on the graphics pipeline: {:?}",
            s.term.statuses
        );
        s.pump(Duration::from_millis(100)).await?;
    }
    // The screen changes continuously (150 s at most).
    let _painter = shadow.painter(3000)?;
    let flowing = s.canvas.frames;
    s.until("frames of the changing screen", WAIT, |c| c.frames >= flowing + 5)
        .await?;
    // The browser stops acknowledging: the frames in flight grow to the cap (the loopback link's byte
    // budget is far larger), and the bridge pauses the server there.
    s.ack = false;
    let stopped = s.canvas.frames;
    let cap = MAX_FRAMES_IN_FLIGHT;
    s.until(
        "the flow control's cap of frames in flight",
        Duration::from_secs(60),
        |c| c.frames >= stopped + cap,
    )
    .await?;
    // What the server had on its way when it was told still arrives; then nothing for 3 s.
    s.pump_for(Duration::from_secs(1)).await?;
    let (paused, paused_bytes) = (s.canvas.frames, s.canvas.video_bytes);
    s.pump_for(Duration::from_secs(3)).await?;
    let (more, more_bytes) = (s.canvas.frames - paused, s.canvas.video_bytes - paused_bytes);
    println!(
        "unacknowledged: {} frames before the pause settled, then {more} ({more_bytes} bytes of H.264) in 3 s",
        paused - stopped
    );
    assert!(
        more == 0,
        "{more} frames ({more_bytes} bytes) kept coming to a browser that acknowledges nothing"
    );
    assert!(
        paused - stopped <= cap + 2,
        "{} frames went to a browser that acknowledges nothing (cap {cap})",
        paused - stopped
    );
    anyhow::ensure!(
        s.term.closed.is_none() && s.term.errors.is_empty(),
        "the session ended: {:?} {:?}",
        s.term.errors,
        s.term.closed
    );
    s.acknowledge_and_flow(WAIT).await
}

#[tokio::test(flavor = "multi_thread")]
async fn nla_refuses_a_wrong_password_and_accepts_the_right_one() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::Nla, 640, 480)?;
    shadow.x("xsetroot", &["-solid", "#204080"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let nla = json!({"security": "nla", "width": 640, "height": 480});
    let wrong = rdp_connection(&api, &shadow, "not-the-password", nla.clone()).await?;
    let (_, mut s) = open_screen(&p, &api, &wrong).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::AuthFailed, "{closed:?}");
    assert!(closed.reason.contains("refused the credentials"), "{closed:?}");
    assert!(
        s.term.errors.iter().any(|e| e.code == CloseCode::AuthFailed),
        "{:?}",
        s.term.errors
    );

    let right = rdp_connection(&api, &shadow, &shadow.user.password, nla).await?;
    let (_, mut s) = open_screen(&p, &api, &right).await?;
    s.until("the desktop after nla", WAIT, |c| {
        c.pixel(320, 240) == [0x20, 0x40, 0x80]
    })
    .await?;
    // TLS only against a server that requires NLA: a clear negotiation error.
    let tls = rdp_connection(&api, &shadow, &shadow.user.password, json!({"security": "tls"})).await?;
    let (_, mut s) = open_screen(&p, &api, &tls).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::TargetError, "{closed:?}");
    assert!(closed.reason.contains("negotiation"), "{closed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_asked_at_connect_time_are_used_once() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::Nla, 640, 480)?;
    shadow.x("xsetroot", &["-solid", "#602020"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    // No stored password: the bridge asks the browser.
    let conn = api
        .create_connection(json!({
            "name": "ask", "protocol": "rdp", "host": "127.0.0.1", "port": shadow.port,
            "settings": {"ask_credentials": true, "security": "nla", "width": 640, "height": 480},
        }))
        .await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.term
        .until("the credentials prompt", WAIT, |t| {
            t.statuses.iter().any(|st| st.state == "credentials")
        })
        .await?;
    s.term
        .send(ClientMsg::Credentials(Credentials {
            username: shadow.user.name.clone(),
            password: shadow.user.password.clone(),
            domain: None,
        }))
        .await?;
    s.until("the desktop", WAIT, |c| c.pixel(100, 100) == [0x60, 0x20, 0x20])
        .await?;
    // Nothing was stored.
    let c = api
        .ok(reqwest::Method::GET, &format!("/api/v1/connections/{conn}"), None)
        .await?;
    assert_eq!(c["has_password"], json!(false), "{c}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_certificate_is_enforced() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::None, 320, 240)?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let conn = api
        .create_connection(json!({
            "name": "pinned", "protocol": "rdp", "host": "127.0.0.1", "port": shadow.port,
            "username": "x", "password": "y", "host_key_fingerprint": other,
            "settings": {"width": 320, "height": 240},
        }))
        .await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::HostKeyMismatch, "{closed:?}");
    assert!(closed.reason.contains("does not match the pinned"), "{closed:?}");
    // The pin is not replaced by what the server showed.
    let c = api
        .ok(reqwest::Method::GET, &format!("/api/v1/connections/{conn}"), None)
        .await?;
    assert_eq!(c["host_key_fingerprint"], json!(other));
    // The named danger option connects anyway.
    let danger = api
        .create_connection(json!({
            "name": "danger", "protocol": "rdp", "host": "127.0.0.1", "port": shadow.port,
            "username": "x", "password": "y", "host_key_fingerprint": other,
            "settings": {"width": 320, "height": 240, "danger_accept_any_certificate": true},
        }))
        .await?;
    let (_, mut s) = open_screen(&p, &api, &danger).await?;
    s.until("a frame", WAIT, |c| c.frames > 0).await?;
    Ok(())
}

/// A "server" that answers the X.224 connection request with garbage.
async fn lying_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let _ = tcp.read(&mut buf).await?;
                // A TPKT header announcing 9000 bytes, then junk.
                tcp.write_all(&[3, 0, 0x23, 0x28, 0xde, 0xad, 0xbe, 0xef]).await?;
                tcp.write_all(&[0x55; 64]).await?;
                tcp.shutdown().await?;
                anyhow::Ok(())
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_and_lying_servers_are_clear_errors() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::None, 320, 240)?;
    shadow.x("xsetroot", &["-solid", "#00ff00"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let good = rdp_connection(&api, &shadow, "x", json!({"width": 320, "height": 240})).await?;
    let (_, mut bystander) = open_screen(&p, &api, &good).await?;
    bystander
        .until("the bystander's desktop", WAIT, |c| c.pixel(5, 5) == [0, 255, 0])
        .await?;

    let unreachable = api
        .create_connection(
            json!({"name": "nowhere", "protocol": "rdp", "host": "127.0.0.1", "port": free_port(),
            "username": "x", "password": "y", "settings": {"width": 320, "height": 240}}),
        )
        .await?;
    let (_, mut s) = open_screen(&p, &api, &unreachable).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::Unreachable, "{closed:?}");
    assert!(closed.reason.contains("cannot reach"), "{closed:?}");

    let liar = api
        .create_connection(
            json!({"name": "liar", "protocol": "rdp", "host": "127.0.0.1", "port": lying_server().await?,
            "username": "x", "password": "y", "settings": {"width": 320, "height": 240}}),
        )
        .await?;
    let (_, mut s) = open_screen(&p, &api, &liar).await?;
    let closed = s.term.closed_within(WAIT).await?.expect("closed message");
    assert_eq!(closed.code, CloseCode::TargetError, "{closed:?}");
    assert!(!closed.reason.is_empty(), "{closed:?}");
    // The bystander still gets updates.
    shadow.x("xsetroot", &["-solid", "#ff00ff"])?;
    bystander
        .until("the bystander's next frame", WAIT, |c| c.pixel(5, 5) == [255, 0, 255])
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn xrdp_session_keyboard_mouse_clipboard_and_resize() -> anyhow::Result<()> {
    let xrdp = RdpServer::xrdp()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let mut s = xrdp_session(&p, &api, &xrdp).await?;
    // The stored credentials were injected: the session belongs to the test user (no xrdp login dialog).
    let xterm = xrdp.x("xdotool", &["search", "--onlyvisible", "--class", "xterm"])?;
    assert!(!xterm.trim().is_empty(), "no xterm in the session");

    // Keyboard (scancodes): a click into the xterm, then a command that leaves a file.
    for buttons in [0, 1, 0] {
        s.term
            .send(ClientMsg::Pointer {
                x: 200,
                y: 100,
                buttons,
            })
            .await?;
    }
    let file = marker_path("rdp-keys");
    type_scancodes(&mut s, &format!("echo typed-$((6*7)) > {file}\n")).await?;
    wait_for("the typed command's file", WAIT, || {
        std::fs::read_to_string(&file).is_ok_and(|c| c.trim() == "typed-42")
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", xrdp.log()))?;
    let owner = std::process::Command::new("stat").args(["-c", "%U", &file]).output()?;
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), xrdp.user.name);
    let _ = std::fs::remove_file(&file);

    // Unicode input (characters without a key): xrdp types ASCII ones.
    let file = marker_path("rdp-unicode");
    type_unicode(&mut s, &format!("echo uni > {file}")).await?;
    type_scancodes(&mut s, "\n").await?;
    wait_for("the unicode-typed command's file", WAIT, || {
        std::fs::read_to_string(&file).is_ok_and(|c| c.trim() == "uni")
    })?;
    let _ = std::fs::remove_file(&file);

    // Clipboard, browser → remote: the X clipboard of the session holds the text.
    s.term
        .send(ClientMsg::Clipboard("from the browser: café ✓".into()))
        .await?;
    wait_for("the remote clipboard", WAIT, || {
        xrdp.x("xclip", &["-o", "-selection", "clipboard"])
            .is_ok_and(|t| t == "from the browser: café ✓")
    })?;
    // Remote → browser.
    let _owner = xrdp.spawn(
        "sh",
        &[
            "-c",
            "printf 'from the desktop: naïve ✓' | xclip -i -selection clipboard -loops 3",
        ],
    )?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !s.term.clipboard.iter().any(|t| t == "from the desktop: naïve ✓") {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no remote clipboard: {:?}",
            s.term.clipboard
        );
        s.pump(Duration::from_millis(200)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn xrdp_desktop_follows_the_browser_size_and_a_wrong_password_shows_xrdp_s_dialog() -> anyhow::Result<()> {
    let xrdp = RdpServer::xrdp()?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    // No fixed size: the first RESIZE of the browser decides, later ones resize (Display Control).
    let conn = rdp_connection(&api, &xrdp, &xrdp.user.password, json!({})).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.term
        .send(ClientMsg::Resize {
            cols: 0,
            rows: 0,
            width_px: 900,
            height_px: 640,
        })
        .await?;
    s.until("the desktop at the browser's size", SESSION_WAIT, |c| {
        (c.width, c.height) == (900, 640) && close(c.pixel(880, 620), XRDP_GREEN)
    })
    .await?;
    s.term
        .send(ClientMsg::Resize {
            cols: 0,
            rows: 0,
            width_px: 1200,
            height_px: 700,
        })
        .await?;
    s.until("the resized desktop", WAIT, |c| {
        (c.width, c.height) == (1200, 700) && close(c.pixel(1180, 680), XRDP_GREEN)
    })
    .await?;
    drop(s);

    // xrdp 0.9 has no NLA: a wrong password does not fail the connection, xrdp shows its own dialog.
    let wrong = rdp_connection(&api, &xrdp, "wrong-password", json!({"width": 800, "height": 600})).await?;
    let (_, mut s) = open_screen(&p, &api, &wrong).await?;
    s.until("a frame", WAIT, |c| c.frames > 0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.pump(Duration::from_millis(500)).await?;
    assert!(
        !close(s.canvas.pixel(780, 580), XRDP_GREEN),
        "a wrong password reached the user's desktop"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scrolling_arrives_as_copies_and_the_canvas_matches_the_screen() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::None, 800, 600)?;
    shadow.x("xsetroot", &["-solid", "#000000"])?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = rdp_connection(&api, &shadow, "x", json!({"width": 800, "height": 600})).await?;
    let (_, mut s) = open_screen(&p, &api, &conn).await?;
    s.until("the black desktop", WAIT, |c| c.pixel(400, 500) == [0, 0, 0])
        .await?;
    let script = "sleep 1; i=0; while [ $i -lt 300 ]; do echo \"line $i of scrolling text\"; i=$((i+1)); sleep 0.02; done; sleep 120";
    let _xterm = shadow.spawn(
        "xterm",
        &[
            "-geometry",
            "80x30+0+0",
            "-bg",
            "white",
            "-fg",
            "black",
            "+sb",
            "-e",
            "sh",
            "-c",
            script,
        ],
    )?;
    s.until("scroll copies", WAIT, |c| c.copies > 10).await?;
    // Let the output finish (300 lines at 50 per second), then compare the canvas with the X screen.
    let settle = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < settle {
        s.pump(Duration::from_millis(200)).await?;
    }
    let shot = std::env::temp_dir().join(format!("portico-rdp-scroll-{}.rgb", uuid::Uuid::new_v4()));
    shadow.x(
        "import",
        &["-window", "root", "-depth", "8", &format!("rgb:{}", shot.display())],
    )?;
    let truth = std::fs::read(&shot)?;
    let _ = std::fs::remove_file(&shot);
    anyhow::ensure!(
        truth.len() == 800 * 600 * 3,
        "unexpected screenshot size {}",
        truth.len()
    );
    let mut differ = 0usize;
    let mut rows = std::collections::BTreeMap::new();
    for y in 0..600 {
        for x in 0..800 {
            let t = &truth[(y * 800 + x) * 3..][..3];
            let c = s.canvas.pixel(x, y);
            if t.iter().zip(c).any(|(a, b)| a.abs_diff(b) > 48) {
                differ += 1;
                *rows.entry(y / 10 * 10).or_insert(0) += 1;
            }
        }
    }
    assert!(
        differ < 800 * 600 / 500,
        "{differ} pixels differ from the screen (copies {}, jpegs {}, images {}), by row band: {rows:?}",
        s.canvas.copies,
        s.canvas.jpegs,
        s.canvas.images
    );
    Ok(())
}
