//! The RDP benchmark (`portico-bench rdp`): the standard scrolling-text and moving-image workloads of
//! ../shared/bench/README.md on an Xvfb 1280x720 shared by FreeRDP's shadow server, relayed by the Portico
//! bridge to N instant-ack clients (N sessions share one desktop, as the VNC benchmark does).
//!
//! The shadow server encodes once per client; its CPU is reported beside the bridge's.

use portico_proto::wire::CAPS_H264;
use portico_tests::client::Api;
use portico_tests::peers::{RdpServer, ShadowAuth};
use portico_tests::portico::Portico;
use serde_json::json;

use crate::Args;
use crate::median_range;
use crate::vnc::{HEIGHT, Sample, WIDTH, Workload, end_all, lat, on_link, portico_run, scene};

pub const HEADER: &str = "| workload | path | N | Portico bridge cores/session (range) | shadow server cores/session | fps | KiB/s | RSS KiB/session |\n|---|---|---|---|---|---|---|---|";

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    let p = Portico::start()?;
    let api = Api::admin(&p).await?;
    // The workloads by default (text-heavy, full-screen video); the 640x360 video on request.
    let default = [Workload::TextHeavy, Workload::VideoFull];
    for w in [Workload::TextHeavy, Workload::Video, Workload::VideoFull]
        .into_iter()
        .filter(|w| {
            if args.workloads.is_empty() {
                default.contains(w)
            } else {
                args.workloads.iter().any(|n| n == w.name())
            }
        })
    {
        eprintln!("== rdp {}", w.name());
        let scene = scene(RdpServer::shadow(ShadowAuth::None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pids().first().copied().unwrap_or(0);
        let conn = api
            .create_connection(json!({
                "name": format!("bench rdp {}", w.name()), "protocol": "rdp", "host": "127.0.0.1",
                "port": scene.server.port, "username": "bench", "password": "bench",
                "settings": {"width": WIDTH, "height": HEIGHT, "danger_accept_any_certificate": true, "h264": true},
            }))
            .await?;
        for &n in &args.sessions {
            // Side by side in one run: today's bitmap path (no CAPS: the bridge encodes images) and the
            // graphics pipeline with the server's H.264 passed through.
            for (path, caps) in [("bitmap", None), ("h264", Some(CAPS_H264))] {
                let mut ours: Vec<Sample> = Vec::new();
                for r in 0..args.repeats {
                    let a = portico_run(&p, &api, &conn, server_pid, n, args, caps).await?;
                    eprintln!(
                        "  {path} N={n} run {r} portico: {:.4} cores, shadow {:.4}, {:.0} KiB/s, {:.1} fps, +{:.0} KiB RSS per session, {:.0} % of frames with video",
                        a.proxy_cores,
                        a.server_cores,
                        a.kib_s,
                        a.fps,
                        a.rss_kib,
                        a.video_share * 100.0
                    );
                    anyhow::ensure!(
                        caps.is_none() || a.video_share > 0.5 || a.fps < 0.5,
                        "the h264 run got no H.264 (bridge log:\n{})",
                        p.log()
                    );
                    ours.push(a);
                }
                let med = |f: fn(&Sample) -> f64| median_range(ours.iter().map(f).collect());
                let (pc, lo, hi) = med(|s| s.proxy_cores);
                let (sc, _, _) = med(|s| s.server_cores);
                let (fps, _, _) = med(|s| s.fps);
                let (kib, _, _) = med(|s| s.kib_s);
                let (rss, _, _) = med(|s| s.rss_kib);
                rows.push(format!(
                    "| {} | {path} | {n} | {pc:.4} ({lo:.4}–{hi:.4}) | {sc:.4} | {fps:.1} | {kib:.0} | {rss:.0} |",
                    w.name()
                ));
            }
        }
        end_all(&api).await?;
    }
    Ok(rows)
}

pub const LINK_HEADER: &str = "| link (80 ms RTT) | workload | path | Portico fps (worst second) | KiB/s | latency p50 / p95 / max, ms | bridge cores | shadow server cores |\n|---|---|---|---|---|---|---|---|";

/// The RDP display on emulated links (`--links 4mbit,1mbit`, run inside the bench's namespace, see
/// `portico_tests::link`): per workload and link, one session on the bitmap path and one on the graphics
/// pipeline with H.264, side by side; latency is a ping's round trip behind the frames (one at a time,
/// every 250 ms over the window). No other gateway passes RDP to a browser here to compare with.
pub async fn run_links(args: &Args) -> anyhow::Result<Vec<String>> {
    let (link, p, api) = on_link(args).await?;
    let mut rows = Vec::new();
    let workloads = [Workload::TextHeavy, Workload::VideoFull];
    for w in workloads
        .into_iter()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|n| n == w.name()))
    {
        let scene = scene(RdpServer::shadow(ShadowAuth::None, WIDTH, HEIGHT)?, w)?;
        let server_pid = scene.server.pids().first().copied().unwrap_or(0);
        let conn = api
            .create_connection(json!({
                "name": format!("link rdp {}", w.name()), "protocol": "rdp", "host": "127.0.0.1",
                "port": scene.server.port, "username": "bench", "password": "bench",
                "settings": {"width": WIDTH, "height": HEIGHT, "danger_accept_any_certificate": true, "h264": true},
            }))
            .await?;
        for rate in &args.links {
            link.rate(rate)?;
            for (path, caps) in [("bitmap", None), ("h264", Some(CAPS_H264))] {
                eprintln!("== rdp {} on {rate}, 80 ms, {path}", w.name());
                let mut ours: Vec<Sample> = Vec::new();
                for r in 0..args.repeats {
                    let a = portico_run(&p, &api, &conn, server_pid, 1, args, caps).await?;
                    eprintln!(
                        "  run {r}: {:.1} fps (worst second {:.0}) {:.0} KiB/s latency {} ms, bridge {:.4} cores, shadow {:.4}",
                        a.fps,
                        a.worst_second_fps,
                        a.kib_s,
                        lat(&mut a.latency_ms.clone()),
                        a.proxy_cores,
                        a.server_cores
                    );
                    ours.push(a);
                }
                let med = |f: fn(&Sample) -> f64| median_range(ours.iter().map(f).collect()).0;
                let mut la: Vec<f64> = ours.iter().flat_map(|s| s.latency_ms.clone()).collect();
                let worst = ours.iter().map(|s| s.worst_second_fps).fold(f64::MAX, f64::min);
                rows.push(format!(
                    "| {rate} | {} | {path} | {:.1} ({worst:.0}) | {:.0} | {} | {:.4} | {:.4} |",
                    w.name(),
                    med(|s| s.fps),
                    med(|s| s.kib_s),
                    lat(&mut la),
                    med(|s| s.proxy_cores),
                    med(|s| s.server_cores),
                ));
            }
        }
        end_all(&api).await?;
    }
    Ok(rows)
}
