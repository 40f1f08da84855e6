//! The file transfer benchmark (`portico-bench files`): one SSH session moves a file through the bridge
//! (SFTP on the session's connection, the browser's side played over the wire with both windows), side by
//! side with OpenSSH's own `sftp` client talking to the same sshd directly (its connection and login, timed
//! with a batch that moves nothing, taken off): MiB/s each way (medians of `--repeats`), and the bridge's
//! CPU per GiB moved.

use std::process::Command;
use std::time::Instant;

use portico_proto::files::FileEvent;
use portico_tests::client::{Term, attach};
use portico_tests::peers::Sshd;
use serde_json::json;

use crate::{Args, clk_tck, median_range, portico_with_ssh, tree_ticks};

pub const HEADER: &str =
    "| transfer (64 MiB, loopback) | Portico (bridge) | OpenSSH sftp, direct | bridge CPU |\n|---|---|---|---|";

const SIZE: usize = 64 * 1024 * 1024;

/// CPU seconds the process tree used between two readings.
fn cpu_secs(before: &std::collections::HashMap<u32, u64>, after: &std::collections::HashMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, a)| a.saturating_sub(*before.get(pid).unwrap_or(&0)))
        .sum();
    ticks as f64 / clk_tck()
}

/// OpenSSH's sftp client (with the user's key) on a batch of commands; its wall time.
fn sftp_direct(sshd: &Sshd, batch: &str) -> anyhow::Result<f64> {
    let file = std::env::temp_dir().join(format!("portico-bench-sftp-{}", uuid::Uuid::new_v4()));
    std::fs::write(&file, batch)?;
    let started = Instant::now();
    let out = Command::new("sftp")
        .args([
            "-q",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-i",
        ])
        .arg(&sshd.client_key_path)
        .args(["-P", &sshd.port.to_string(), "-b"])
        .arg(&file)
        .arg(format!("{}@127.0.0.1", sshd.user.name))
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(out.status.success(), "sftp: {}", String::from_utf8_lossy(&out.stderr));
    Ok(secs)
}

pub async fn run(args: &Args) -> anyhow::Result<Vec<String>> {
    let sshd = Sshd::start()?;
    let (p, api, conn) = portico_with_ssh(&sshd, json!({"files": "both", "files_max_mb": 4096})).await?;
    let dir = format!("/tmp/portico-bench-files-{}", uuid::Uuid::new_v4());
    std::fs::create_dir_all(&dir)?;
    let home = std::fs::metadata(&sshd.user.home)?;
    std::os::unix::fs::chown(&dir, Some(std::os::unix::fs::MetadataExt::uid(&home)), None)?;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 + i / 251) as u8).collect();
    let local = format!("{dir}/local.bin");
    std::fs::write(&local, &data)?;
    let (_, ws) = attach(&p, &api, &conn).await?;
    let mut t = Term::new(ws);
    t.connected().await?;
    let mib = SIZE as f64 / (1024.0 * 1024.0);
    let gib = SIZE as f64 / (1024.0 * 1024.0 * 1024.0);
    let (mut up, mut down, mut up_cpu, mut down_cpu, mut d_up, mut d_down) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut id = 0;
    for r in 0..args.repeats {
        let remote = format!("{dir}/through-portico-{r}.bin");
        id += 1;
        let before = tree_ticks(p.pid());
        let started = Instant::now();
        let end = t.upload(id, &remote, &data).await?;
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(end == FileEvent::Done { bytes: SIZE as u64 }, "upload: {end:?}");
        up.push(mib / secs);
        up_cpu.push(cpu_secs(&before, &tree_ticks(p.pid())) / gib);
        id += 1;
        let before = tree_ticks(p.pid());
        let started = Instant::now();
        let (end, got) = t.download(id, &remote).await?;
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            end == FileEvent::Done { bytes: SIZE as u64 } && got == data,
            "download: {end:?}"
        );
        down.push(mib / secs);
        down_cpu.push(cpu_secs(&before, &tree_ticks(p.pid())) / gib);
        let direct = format!("{dir}/direct-{r}.bin");
        // sftp's own connection and login are not the transfer: a batch that moves nothing is taken off.
        let setup = sftp_direct(&sshd, "pwd\n")?;
        d_up.push(mib / (sftp_direct(&sshd, &format!("put {local} {direct}\n"))? - setup).max(1e-3));
        d_down.push(mib / (sftp_direct(&sshd, &format!("get {direct} {dir}/back-{r}.bin\n"))? - setup).max(1e-3));
        eprintln!(
            "  run {r}: upload {:.0} MiB/s (direct {:.0}), download {:.0} MiB/s (direct {:.0})",
            up[r], d_up[r], down[r], d_down[r]
        );
        for f in [remote, direct, format!("{dir}/back-{r}.bin")] {
            let _ = std::fs::remove_file(f);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let row = |what: &str, ours: Vec<f64>, direct: Vec<f64>, cpu: Vec<f64>| {
        let (m, lo, hi) = median_range(ours);
        let (dm, dlo, dhi) = median_range(direct);
        let (c, _, _) = median_range(cpu);
        format!(
            "| {what} | {m:.0} MiB/s (range {lo:.0}–{hi:.0}) | {dm:.0} MiB/s (range {dlo:.0}–{dhi:.0}) | {c:.2} CPU s per GiB |"
        )
    };
    Ok(vec![
        row("upload", up, d_up, up_cpu),
        row("download", down, d_down, down_cpu),
    ])
}
