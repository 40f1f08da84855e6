//! Resource exhaustion from servers: a fake VNC server that announces a huge desktop, a huge cursor, or
//! floods one update with tiny rectangles, against the real `portico` binary. The session of a server over
//! the caps ends with `target_error`; the bridge's memory grows by less than 100 MiB whatever the server
//! does; a server within the limits still works.

use portico_proto::codes::CloseCode;
use std::time::Duration;

use portico_proto::rfb::encoding;
use portico_proto::wire::{ClientMsg, ServerMsg};
use portico_tests::client::{Api, Screen, Term, attach};
use portico_tests::peers::{RdpServer, ShadowAuth};
use portico_tests::portico::{Options, Portico};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::vnc::vnc_connection;

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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let updates = updates.clone();
            tokio::spawn(serve(tcp, width, height, updates));
        }
    });
    Ok(port)
}

async fn serve(mut tcp: TcpStream, width: u16, height: u16, updates: Vec<Update>) -> anyhow::Result<()> {
    let mut buf = [0u8; 12];
    tcp.write_all(b"RFB 003.008\n").await?;
    tcp.read_exact(&mut buf).await?;
    tcp.write_all(&[1, 1]).await?; // One security type: None.
    tcp.read_exact(&mut buf[..1]).await?;
    tcp.write_all(&[0, 0, 0, 0]).await?; // SecurityResult OK.
    tcp.read_exact(&mut buf[..1]).await?; // ClientInit.
    let mut init = Vec::new();
    init.extend_from_slice(&width.to_be_bytes());
    init.extend_from_slice(&height.to_be_bytes());
    init.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    init.extend_from_slice(&4u32.to_be_bytes());
    init.extend_from_slice(b"fake");
    tcp.write_all(&init).await?;
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
    let (_, ws) = attach(p, api, &conn).await?;
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
    let growth = rss_growth(p.pid(), base)?;
    Ok((t, growth))
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
    while per_frame.len() < usize::from(rounds) {
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
    // The last round's pixels arrived.
    let i = 65534u32;
    let (x, y) = ((i * 7 % u32::from(w)) as usize, (i * 13 % u32::from(h)) as usize);
    assert_eq!(s.canvas.pixel(x, y), [i as u8, rounds - 1, (i >> 8) as u8]);
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
