//! Resource exhaustion from servers: a fake VNC server that announces a huge desktop, a huge cursor, or
//! floods one update with tiny rectangles, against the real `portico` binary. The session of a server over
//! the caps ends with `target_error`; the bridge's memory grows by less than 100 MiB whatever the server
//! does; a server within the limits still works; a server that stops reading cannot keep a session (or
//! the browser's socket) open against an order to end; RFB 3.3 servers that refuse, lie or work, eight
//! sessions at once. And from the browser's side: forged frame acknowledgements from six browsers at once.

use portico_proto::codes::CloseCode;
use std::time::Duration;

use portico_proto::rfb::encoding;
use portico_proto::wire::{ClientMsg, ServerMsg};
use portico_tests::client::{Api, Screen, Term, attach};
use portico_tests::peers::XDisplay as _;
use portico_tests::peers::{RdpServer, ShadowAuth, VncServer};
use portico_tests::portico::{Options, Portico};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::vnc::{open_screen, vnc_connection};

const WAIT: Duration = Duration::from_secs(60);
/// What one session may cost the bridge, whatever its server sends.
const MAX_GROWTH_KIB: u64 = 100 * 1024;

/// One FramebufferUpdate the fake server sends per update request: `head` followed by `zeros` zero bytes
/// (streamed, so a gigabyte-sized lie costs the test no memory).
#[derive(Clone)]
struct Update {
    head: Vec<u8>,
    zeros: usize,
}

/// A fake VNC server (RFB 3.8, security None) with a `width` x `height` desktop, answering the client's
/// update requests with `updates` in turn (then nothing). Returns its port.
async fn fake_server(width: u16, height: u16, updates: Vec<Update>) -> anyhow::Result<u16> {
    listen(width, height, updates, false).await
}

/// A fake VNC server that answers the first update request with a small fill, then never reads again
/// and never closes (its sockets live as long as the test's runtime). Returns its port.
async fn deaf_server(width: u16, height: u16) -> anyhow::Result<u16> {
    let fill = Update {
        head: update_of(1, tight_fill(0, 0, width, height, [30, 60, 90])),
        zeros: 0,
    };
    listen(width, height, vec![fill], true).await
}

async fn listen(width: u16, height: u16, updates: Vec<Update>, deaf: bool) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let updates = updates.clone();
            tokio::spawn(serve(tcp, width, height, updates, deaf));
        }
    });
    Ok(port)
}

/// RFB 3.8 with security None up to the ServerInit of a `width` x `height` desktop named "fake".
async fn handshake(tcp: &mut TcpStream, width: u16, height: u16) -> anyhow::Result<()> {
    let mut buf = [0u8; 12];
    tcp.write_all(b"RFB 003.008\n").await?;
    tcp.read_exact(&mut buf).await?;
    tcp.write_all(&[1, 1]).await?; // One security type: None.
    tcp.read_exact(&mut buf[..1]).await?;
    tcp.write_all(&[0, 0, 0, 0]).await?; // SecurityResult OK.
    server_init(tcp, width, height).await
}

/// ClientInit in, ServerInit out.
async fn server_init(tcp: &mut TcpStream, width: u16, height: u16) -> anyhow::Result<()> {
    let mut buf = [0u8; 1];
    tcp.read_exact(&mut buf).await?; // ClientInit.
    let mut init = Vec::new();
    init.extend_from_slice(&width.to_be_bytes());
    init.extend_from_slice(&height.to_be_bytes());
    init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    init.extend_from_slice(&4u32.to_be_bytes());
    init.extend_from_slice(b"fake");
    tcp.write_all(&init).await?;
    Ok(())
}

/// Serve one client; `deaf`: after the first update, hold the socket without reading it again.
async fn serve(mut tcp: TcpStream, width: u16, height: u16, updates: Vec<Update>, deaf: bool) -> anyhow::Result<()> {
    handshake(&mut tcp, width, height).await?;
    answer(tcp, updates, deaf).await
}

/// Read client messages; each update request gets the next of `updates`.
async fn answer(mut tcp: TcpStream, updates: Vec<Update>, deaf: bool) -> anyhow::Result<()> {
    let mut updates = updates.into_iter();
    let zeros = vec![0u8; 1024 * 1024];
    loop {
        // Client messages; an update request gets the next update.
        let mut ty = [0u8; 1];
        tcp.read_exact(&mut ty).await?;
        match ty[0] {
            0 => skip(&mut tcp, 19).await?,
            2 => {
                let mut h = [0u8; 3];
                tcp.read_exact(&mut h).await?;
                skip(&mut tcp, 4 * usize::from(u16::from_be_bytes([h[1], h[2]]))).await?;
            }
            3 => {
                skip(&mut tcp, 9).await?;
                if let Some(u) = updates.next() {
                    tcp.write_all(&u.head).await?;
                    let mut left = u.zeros;
                    while left > 0 {
                        let n = left.min(zeros.len());
                        tcp.write_all(&zeros[..n]).await?;
                        left -= n;
                    }
                    if deaf {
                        std::future::pending::<()>().await;
                    }
                }
            }
            4 => skip(&mut tcp, 7).await?,
            5 => skip(&mut tcp, 5).await?,
            6 => {
                let mut h = [0u8; 7];
                tcp.read_exact(&mut h).await?;
                let len = i32::from_be_bytes([h[3], h[4], h[5], h[6]]);
                skip(&mut tcp, len.unsigned_abs() as usize).await?;
            }
            251 => {
                let mut h = [0u8; 7];
                tcp.read_exact(&mut h).await?;
                skip(&mut tcp, 16 * usize::from(h[5])).await?;
            }
            other => anyhow::bail!("unexpected client message {other}"),
        }
    }
}

async fn skip(tcp: &mut TcpStream, n: usize) -> anyhow::Result<()> {
    let mut b = vec![0u8; n];
    tcp.read_exact(&mut b).await?;
    Ok(())
}

fn rect_header(x: u16, y: u16, w: u16, h: u16, enc: i32) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&enc.to_be_bytes());
    m
}

fn update_of(rects: u16, body: Vec<u8>) -> Vec<u8> {
    let mut m = vec![0, 0];
    m.extend_from_slice(&rects.to_be_bytes());
    m.extend(body);
    m
}

/// A Tight fill of `w` x `h`: four bytes whatever the size.
fn tight_fill(x: u16, y: u16, w: u16, h: u16, rgb: [u8; 3]) -> Vec<u8> {
    let mut m = rect_header(x, y, w, h, encoding::TIGHT);
    m.push(0x80);
    m.extend_from_slice(&rgb);
    m
}

/// A line of `/proc/<pid>/status` in KiB.
fn proc_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} in /proc/{pid}/status"))
}

/// The process's resident memory now, with its peak reset to it (so a later peak is this session's).
fn rss_baseline(pid: u32) -> anyhow::Result<u64> {
    // "5" resets VmHWM to the current RSS (Linux ≥ 4.0); without it the peak is since the start.
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    proc_kib(pid, "VmRSS:")
}

/// How far the process's peak resident memory rose above `base`, in KiB.
fn rss_growth(pid: u32, base: u64) -> anyhow::Result<u64> {
    Ok(proc_kib(pid, "VmHWM:")?.saturating_sub(base))
}

/// Open a session to a fake server, wait until it closes (or `WAIT`), and return the browser's view
/// with the bridge's peak memory growth in KiB.
async fn attack(p: &Portico, api: &Api, port: u16) -> anyhow::Result<(Term, u64)> {
    let conn = vnc_connection(api, port, None).await?;
    let base = rss_baseline(p.pid())?;
    let t = until_closed(p, api, &conn).await?;
    let growth = rss_growth(p.pid(), base)?;
    Ok((t, growth))
}

/// Open a session on `conn` and acknowledge frames like a browser until it closes (or `WAIT`).
async fn until_closed(p: &Portico, api: &Api, conn: &str) -> anyhow::Result<Term> {
    let (_, ws) = attach(p, api, conn).await?;
    let mut t = Term::new(ws);
    let deadline = tokio::time::Instant::now() + WAIT;
    // Acknowledge frames like a browser, until the session closes.
    while tokio::time::Instant::now() < deadline {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let open = t.pump(left.min(Duration::from_millis(500))).await.unwrap_or(false);
        for m in std::mem::take(&mut t.display) {
            if let ServerMsg::FrameEnd { frame_id } = m {
                let _ = t.send(ClientMsg::FrameAck { frame_id }).await;
            }
        }
        if !open || t.closed.is_some() {
            break;
        }
    }
    Ok(t)
}

fn assert_target_error(t: &Term, what: &str, expect: &str) {
    let closed = t
        .closed
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: no CLOSED; errors {:?}", t.errors));
    assert_eq!(closed.code, CloseCode::TargetError, "{what}: {closed:?}");
    assert!(closed.reason.contains(expect), "{what}: {closed:?}");
    assert!(
        t.errors.iter().any(|e| e.code == CloseCode::TargetError && e.fatal),
        "{what}: {:?}",
        t.errors
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_server_announcing_a_huge_desktop_is_refused() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    // 16384x16384 and one four-byte Tight fill over all of it.
    let fill = Update {
        head: update_of(1, tight_fill(0, 0, 16384, 16384, [200, 10, 10])),
        zeros: 0,
    };
    let port = fake_server(16384, 16384, vec![fill]).await?;
    let (t, growth) = attack(&p, &api, port).await?;
    println!("huge desktop: bridge peak rss grew by {} MiB", growth / 1024);
    assert_target_error(&t, "huge desktop", "16384x16384");
    assert!(growth < MAX_GROWTH_KIB, "the bridge grew by {} MiB", growth / 1024);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_server_sending_a_huge_cursor_is_refused() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    // A 16384x16384 cursor: 1 GiB of pixels and 32 MiB of mask follow its header.
    let (w, h) = (16384u16, 16384u16);
    let cursor = Update {
        head: update_of(1, rect_header(0, 0, w, h, encoding::CURSOR)),
        zeros: usize::from(w) * usize::from(h) * 4 + usize::from(w).div_ceil(8) * usize::from(h),
    };
    let port = fake_server(1920, 1080, vec![cursor]).await?;
    let (t, growth) = attack(&p, &api, port).await?;
    println!("huge cursor: bridge peak rss grew by {} MiB", growth / 1024);
    assert_target_error(&t, "huge cursor", "cursor");
    assert!(growth < MAX_GROWTH_KIB, "the bridge grew by {} MiB", growth / 1024);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_server_flooding_an_update_with_rectangles_costs_one_repaint() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    // Updates of 65535 tiny fills each (the most one FramebufferUpdate can announce).
    let (w, h) = (1920u16, 1080u16);
    let flood = |round: u8| {
        let mut body = Vec::with_capacity(65535 * 16);
        for i in 0..65535u32 {
            let (x, y) = ((i * 7 % u32::from(w)) as u16, (i * 13 % u32::from(h)) as u16);
            body.extend(tight_fill(x, y, 1, 1, [i as u8, round, (i >> 8) as u8]));
        }
        Update {
            head: update_of(65535, body),
            zeros: 0,
        }
    };
    let rounds = 8u8;
    let port = fake_server(w, h, (0..rounds).map(flood).collect()).await?;
    let conn = vnc_connection(&api, port, None).await?;
    let base = rss_baseline(p.pid())?;
    let (_, ws) = attach(&p, &api, &conn).await?;
    let mut s = Screen::new(ws);
    let mut per_frame = Vec::new();
    let mut in_frame = 0usize;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Until the last round's pixels arrived (rounds that came while the browser was behind merge into
    // one frame).
    let i = 65534u32;
    let (x, y) = ((i * 7 % u32::from(w)) as usize, (i * 13 % u32::from(h)) as usize);
    let last = [i as u8, rounds - 1, (i >> 8) as u8];
    while per_frame.is_empty() || s.canvas.pixel(x, y) != last {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "timed out after {} frames; errors {:?}, closed {:?}",
            per_frame.len(),
            s.term.errors,
            s.term.closed
        );
        anyhow::ensure!(
            s.term.pump(left.min(Duration::from_millis(500))).await?,
            "socket closed: errors {:?}, closed {:?}",
            s.term.errors,
            s.term.closed
        );
        for m in std::mem::take(&mut s.term.display) {
            if let Some(id) = s.canvas.apply(&m)? {
                per_frame.push(in_frame);
                in_frame = 0;
                s.term.send(ClientMsg::FrameAck { frame_id: id }).await?;
            } else {
                in_frame += 1;
            }
        }
    }
    let growth = rss_growth(p.pid(), base)?;
    println!(
        "rectangle flood: {} messages per frame, bridge peak rss grew by {} MiB",
        per_frame.iter().map(ToString::to_string).collect::<Vec<_>>().join("/"),
        growth / 1024
    );
    assert!(
        s.term.closed.is_none() && s.term.errors.is_empty(),
        "{:?}",
        s.term.errors
    );
    // Each frame collapsed into a repaint: a handful of messages, not 65535 fills.
    assert!(per_frame.iter().all(|&n| n <= 8), "messages per frame: {per_frame:?}");
    assert!(
        per_frame.len() <= usize::from(rounds),
        "{} frames for {rounds} updates",
        per_frame.len()
    );
    assert!(growth < MAX_GROWTH_KIB, "the bridge grew by {} MiB", growth / 1024);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_server_within_the_limits_works() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let (w, h) = (1920u16, 1080u16);
    // A full-screen fill and a 32x32 cursor.
    let mut body = tight_fill(0, 0, w, h, [20, 140, 60]);
    body.extend(rect_header(3, 4, 32, 32, encoding::CURSOR));
    body.extend(std::iter::repeat_n([255u8, 0, 0, 0], 32 * 32).flatten());
    body.extend(std::iter::repeat_n(0xffu8, 4 * 32));
    let first = Update {
        head: update_of(2, body),
        zeros: 0,
    };
    let port = fake_server(w, h, vec![first]).await?;
    let conn = vnc_connection(&api, port, None).await?;
    let base = rss_baseline(p.pid())?;
    let (_, ws) = attach(&p, &api, &conn).await?;
    let mut s = Screen::new(ws);
    s.until("the green desktop and the cursor", WAIT, |c| {
        c.pixel(0, 0) == [20, 140, 60] && c.pixel(1919, 1079) == [20, 140, 60] && c.cursor.is_some()
    })
    .await?;
    assert_eq!((s.canvas.width, s.canvas.height), (1920, 1080));
    assert_eq!(s.canvas.cursor.map(|c| (c.0, c.1)), Some((3, 4)));
    assert!(s.term.errors.is_empty(), "{:?}", s.term.errors);
    let growth = rss_growth(p.pid(), base)?;
    println!("within limits: bridge peak rss grew by {} MiB", growth / 1024);
    assert!(growth < MAX_GROWTH_KIB, "the bridge grew by {} MiB", growth / 1024);
    Ok(())
}

/// RDP: the desktop size comes from the server (FreeRDP's shadow server shows its whole X screen whatever
/// the client asks for); over the bridge's limit (`--max-desktop`), the session ends with `target_error`.
#[tokio::test(flavor = "multi_thread")]
async fn an_rdp_server_imposing_a_desktop_over_the_limit_is_refused() -> anyhow::Result<()> {
    let shadow = RdpServer::shadow(ShadowAuth::None, 800, 600)?;
    let p = Portico::start_with(Options {
        extra_args: vec!["--max-desktop".into(), "640x480".into()],
        ..Options::default()
    })?;
    let api = Api::admin(&p).await?;
    let conn = api
        .create_connection(json!({
            "name": format!("rdp {}", shadow.port),
            "protocol": "rdp",
            "host": "127.0.0.1",
            "port": shadow.port,
            "username": shadow.user.name,
            "password": "any",
            "settings": { "width": 800, "height": 600 },
        }))
        .await?;
    let (_, ws) = attach(&p, &api, &conn).await?;
    let mut t = Term::new(ws);
    let closed = t.closed_within(WAIT).await?;
    let closed = closed.unwrap_or_else(|| panic!("no CLOSED; errors {:?}", t.errors));
    assert_eq!(closed.code, CloseCode::TargetError, "{closed:?}");
    assert!(
        closed.reason.contains("800x600 exceeds the limit of 640x480"),
        "{closed:?}"
    );
    assert!(
        t.errors.iter().any(|e| e.code == CloseCode::TargetError && e.fatal),
        "{:?}",
        t.errors
    );
    Ok(())
}

/// A VNC server that stops reading while the browser keeps sending (clipboard texts): the bridge's
/// writes to it block. The user's DELETE still closes the browser's socket within seconds, with the
/// reason (the actor stuck on the server is cancelled); left alone, the session ends by itself with a
/// clear error once the server has not read for the write limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_vnc_server_that_stops_reading_cannot_hold_a_session_open() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let port = deaf_server(640, 480).await?;
    let conn = vnc_connection(&api, port, None).await?;
    for delete in [true, false] {
        let (s, ws) = attach(&p, &api, &conn).await?;
        let sid = s["session_id"].as_str().unwrap_or_default().to_owned();
        let mut t = Term::new(ws);
        t.until("the first frame", WAIT, |t| {
            t.display.iter().any(|m| matches!(m, ServerMsg::FrameEnd { .. }))
        })
        .await?;
        // 60 KiB texts until the bridge stops taking them (bounded: at most 2000, about 120 MiB).
        let text = "x".repeat(60 * 1024);
        let mut sent = 0u32;
        let mut backed_up = false;
        while sent < 2000 {
            match tokio::time::timeout(Duration::from_secs(2), t.send(ClientMsg::Clipboard(text.clone()))).await {
                Ok(r) => {
                    r?;
                    sent += 1;
                }
                Err(_) => {
                    backed_up = true;
                    break;
                }
            }
        }
        anyhow::ensure!(backed_up, "the bridge took {sent} texts of 60 KiB without pushing back");
        let since = tokio::time::Instant::now();
        if delete {
            let (status, body) = api
                .request(reqwest::Method::DELETE, &format!("/api/v1/sessions/{sid}"), None)
                .await?;
            anyhow::ensure!((200..300).contains(&status), "DELETE: {status} {body}");
        }
        let closed = t.closed_within(Duration::from_secs(40)).await?;
        let took = since.elapsed();
        println!(
            "deaf server, {}: {sent} texts sent before the bridge pushed back; closed after {took:?}: {closed:?}",
            if delete { "DELETE" } else { "left alone" }
        );
        let closed = closed.ok_or_else(|| anyhow::anyhow!("socket closed without CLOSED; errors {:?}", t.errors))?;
        if delete {
            assert_eq!(closed.code, CloseCode::Ended, "{closed:?}");
            // The heartbeat that carries the order (under a second when the machine is not busy), then
            // the 5 s the actor is given; without the watchdog the write limit would end it as
            // `target_error` instead.
            assert!(took < Duration::from_secs(12), "closed {took:?} after the DELETE");
        } else {
            assert_eq!(closed.code, CloseCode::TargetError, "{closed:?}");
            assert!(closed.reason.contains("stopped reading"), "{closed:?}");
        }
    }
    Ok(())
}

/// How an RFB 3.3 fake server answers (in 3.3 the server picks the security type).
#[derive(Clone, Copy)]
enum Rfb33 {
    /// Type 0 with a reason.
    Refuse,
    /// Type 0 with a reason "of 4 GiB", then nothing.
    Lie,
    /// Type 1 (None), then a 640x480 desktop and one fill.
    NoAuth,
}

const REFUSAL: &str = "Too many security failures";

async fn rfb33_server(how: Rfb33) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve33(tcp, how));
        }
    });
    Ok(port)
}

async fn serve33(mut tcp: TcpStream, how: Rfb33) -> anyhow::Result<()> {
    let mut buf = [0u8; 12];
    tcp.write_all(b"RFB 003.003\n").await?;
    tcp.read_exact(&mut buf).await?;
    anyhow::ensure!(&buf == b"RFB 003.003\n", "the client answered {buf:?}");
    match how {
        Rfb33::Refuse => {
            // (Arrival in pieces is the sans-IO client's unit test: it is fed one byte at a time.)
            let mut refusal = 0u32.to_be_bytes().to_vec();
            refusal.extend_from_slice(&(REFUSAL.len() as u32).to_be_bytes());
            refusal.extend_from_slice(REFUSAL.as_bytes());
            tcp.write_all(&refusal).await?;
            // Held open: the client must end it.
            let _ = tcp.read(&mut buf).await;
        }
        Rfb33::Lie => {
            tcp.write_all(&0u32.to_be_bytes()).await?;
            tcp.write_all(&u32::MAX.to_be_bytes()).await?;
            let _ = tcp.read(&mut buf).await;
        }
        Rfb33::NoAuth => {
            tcp.write_all(&1u32.to_be_bytes()).await?;
            server_init(&mut tcp, 640, 480).await?;
            let fill = Update {
                head: update_of(1, tight_fill(0, 0, 640, 480, [40, 120, 200])),
                zeros: 0,
            };
            answer(tcp, vec![fill], false).await?;
        }
    }
    Ok(())
}

/// RFB 3.3, where the server picks the security type, from eight sessions at once against each server:
/// a refusal reaches the browser with the server's reason; a reason "of 4 GiB" is
/// refused at the cap; no authentication works (the fill arrives). The bridge's memory stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn rfb_3_3_servers_that_refuse_lie_or_work_in_parallel() -> anyhow::Result<()> {
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let refuse = vnc_connection(&api, rfb33_server(Rfb33::Refuse).await?, None).await?;
    let lie = vnc_connection(&api, rfb33_server(Rfb33::Lie).await?, None).await?;
    let works = vnc_connection(&api, rfb33_server(Rfb33::NoAuth).await?, None).await?;
    let base = rss_baseline(p.pid())?;
    const AT_ONCE: usize = 8;
    let (refused, lied) = tokio::join!(
        futures_util::future::join_all((0..AT_ONCE).map(|_| until_closed(&p, &api, &refuse))),
        futures_util::future::join_all((0..AT_ONCE).map(|_| until_closed(&p, &api, &lie))),
    );
    for t in refused {
        let t = t?;
        assert_target_error(&t, "rfb 3.3 refusal", REFUSAL);
    }
    for t in lied {
        let t = t?;
        assert_target_error(&t, "rfb 3.3 reason of 4 GiB", "reason of 4294967295 exceeds the limit");
    }
    let screens = futures_util::future::join_all((0..AT_ONCE).map(|_| async {
        let (_, ws) = attach(&p, &api, &works).await?;
        let mut s = Screen::new(ws);
        s.until("the rfb 3.3 desktop", WAIT, |c| {
            c.pixel(0, 0) == [40, 120, 200] && c.pixel(639, 479) == [40, 120, 200]
        })
        .await?;
        anyhow::Ok(s)
    }))
    .await;
    for s in screens {
        let s = s?;
        assert!(
            s.term.closed.is_none() && s.term.errors.is_empty(),
            "{:?}",
            s.term.errors
        );
    }
    let growth = rss_growth(p.pid(), base)?;
    println!(
        "rfb 3.3: {AT_ONCE} sessions of each at once, bridge peak rss grew by {} MiB",
        growth / 1024
    );
    assert!(growth < MAX_GROWTH_KIB, "the bridge grew by {} MiB", growth / 1024);
    Ok(())
}

/// Forged acknowledgements, from six browsers at once on a screen that changes continuously, each
/// reading nothing for 3 s: acks of frames not sent yet (the next thousand ids: the bridge cannot tell
/// them from a fast browser's once it has sent those frames, so they let frames out to the browser that
/// forged them), of the largest id, of frame 0, repeated. They cost the bridge bounded memory, end no
/// session, and each session goes on once its browser acknowledges what it received.
#[tokio::test(flavor = "multi_thread")]
async fn forged_frame_acks_from_browsers_at_once_open_no_window() -> anyhow::Result<()> {
    let xvnc = VncServer::xvnc(None, 320, 200)?;
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    let conn = vnc_connection(&api, xvnc.port, None).await?;
    let base = rss_baseline(p.pid())?;
    let _painter = xvnc.spawn(
        "sh",
        &[
            "-c",
            "for i in $(seq 1 3000); do xsetroot -solid '#ff0000'; xsetroot -solid '#0000ff'; done",
        ],
    )?;
    let one = || async {
        let (_, mut s) = open_screen(&p, &api, &conn).await?;
        s.ack = false;
        s.until("the first frame", WAIT, |c| c.frames >= 1).await?;
        // Acks of what was not sent (ids ahead, the largest), of nothing (0), and the same again.
        let forged = (s.canvas.last_frame + 1..s.canvas.last_frame + 1000)
            .chain([u32::MAX, 0, u32::MAX])
            .chain(std::iter::repeat_n(s.canvas.last_frame + 1, 100));
        for frame_id in forged {
            s.term.send(ClientMsg::FrameAck { frame_id }).await?;
        }
        // Nothing read for 3 s, then what came.
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.pump_for(Duration::from_secs(1)).await?;
        let unacked = s.canvas.frames;
        anyhow::ensure!(
            s.term.closed.is_none() && s.term.errors.is_empty(),
            "forged acknowledgements ended the session: {:?} {:?}",
            s.term.errors,
            s.term.closed
        );
        s.acknowledge_and_flow(WAIT).await?;
        anyhow::Ok(unacked)
    };
    let results = futures_util::future::join_all((0..6).map(|_| one())).await;
    let unacked: Vec<u32> = results.into_iter().collect::<anyhow::Result<_>>()?;
    let growth = rss_growth(p.pid(), base)?;
    println!(
        "forged acknowledgements: frames out before a true one, per browser: {unacked:?}; bridge peak rss grew by {} MiB",
        growth / 1024
    );
    assert!(growth < MAX_GROWTH_KIB, "the bridge grew by {} MiB", growth / 1024);
    Ok(())
}
