//! Sound of workspace sessions.
//!
//! A workspace image that plays sound runs an audio server on [`AUDIO_PORT`] (Portico's images:
//! PulseAudio's null sink, its monitor read by `parec`, served by `portico-audio`): after one line with
//! the workspace's one-time password it streams raw PCM, signed 16-bit little-endian, 48 kHz, stereo,
//! and closes the connection on a wrong password. The bridge encodes it as Opus ([`AudioEncoder`], sans
//! IO: PCM bytes in, packets out) and sends 20 ms packets to the browser as `AUDIO` messages.
//!
//! The display always goes first: a packet is sent only while the browser's queue is at most half full
//! (else it is dropped; the browser conceals the gap), nothing is sent while the session is silent
//! (PulseAudio's monitor then yields zeros) or while the browser has the sound muted (`AUDIO_CONTROL`).

use std::time::Duration;

use portico_proto::Secret;
use portico_proto::wire::{AUDIO_CHANNELS, AUDIO_FRAME_SAMPLES, AUDIO_SAMPLE_RATE, MAX_AUDIO_PACKET, ServerMsg};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::lifecycle::{CLIENT_QUEUE, ClientTx};

pub use portico_proto::control::AUDIO_PORT;

/// Bytes of one 20 ms frame of PCM (s16le, stereo).
pub const FRAME_BYTES: usize = AUDIO_FRAME_SAMPLES * AUDIO_CHANNELS as usize * 2;
/// Opus bit rate: transparent for stereo music at a fraction of PCM's 1536 kbit/s.
pub const BITRATE: i32 = 64_000;
/// A frame whose samples all stay within this of zero is silence: not encoded, not sent.
const SILENCE: i16 = 8;
/// Real time is 50 frames a second; a server may run ahead by this much (bursts, catching up)...
const BURST_FRAMES: f64 = 25.0;
/// ...and send at most this much faster than real time for long: frames beyond it are not encoded (a
/// container cannot make the bridge spend its CPU on sound nobody could hear).
const PACE: f64 = 1.25;
/// How long the audio server may take to come up after the desktop (PulseAudio starts after Xvnc).
const CONNECT_WINDOW: Duration = Duration::from_secs(30);
/// Between two attempts to reach it.
const RETRY: Duration = Duration::from_millis(250);

/// Why the encoder could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("opus encoder: {0}")]
    Encoder(&'static str),
}

/// PCM in, Opus packets out (sans IO). Frames are numbered whether sent or not, so the browser sees a
/// silence or a drop as a gap in `seq`.
pub struct AudioEncoder {
    opus: opus_rs::OpusEncoder,
    pending: Vec<u8>,
    seq: u32,
    packet: Vec<u8>,
    /// Frames that may be encoded now (a token bucket refilled at [`PACE`] × real time).
    budget: f64,
    at: Option<std::time::Instant>,
    /// Frames not encoded because the server ran too far ahead of real time.
    pub over_pace: u64,
}

impl std::fmt::Debug for AudioEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioEncoder")
            .field("pending", &self.pending.len())
            .field("seq", &self.seq)
            .finish()
    }
}

impl AudioEncoder {
    pub fn new() -> Result<AudioEncoder, AudioError> {
        let mut opus = opus_rs::OpusEncoder::new(
            AUDIO_SAMPLE_RATE as i32,
            usize::from(AUDIO_CHANNELS),
            opus_rs::Application::Audio,
        )
        .map_err(AudioError::Encoder)?;
        opus.bitrate_bps = BITRATE;
        Ok(AudioEncoder {
            opus,
            pending: Vec::with_capacity(FRAME_BYTES),
            seq: 0,
            packet: vec![0; MAX_AUDIO_PACKET],
            budget: BURST_FRAMES,
            at: None,
            over_pace: 0,
        })
    }

    fn refill(&mut self, now: std::time::Instant) {
        if let Some(at) = self.at {
            let frames = now.saturating_duration_since(at).as_secs_f64() * 50.0 * PACE;
            self.budget = (self.budget + frames).min(BURST_FRAMES);
        }
        self.at = Some(now);
    }

    /// How long to wait at `now` before reading more: the server may not run further ahead of real time
    /// (the task stops reading, and TCP holds the server back).
    pub fn wait(&mut self, now: std::time::Instant) -> Option<Duration> {
        self.refill(now);
        (self.budget < 1.0).then(|| Duration::from_secs_f64((1.0 - self.budget) / (50.0 * PACE)))
    }

    /// Take PCM bytes (any split) that arrived at `now`; every whole frame that is not silence becomes a
    /// packet `(seq, bytes)`, within the pace of real time. With `encode` false (nobody listens) frames
    /// are counted and paced but neither converted nor encoded.
    pub fn push(&mut self, now: std::time::Instant, mut pcm: &[u8], encode: bool, out: &mut Vec<(u32, Vec<u8>)>) {
        self.refill(now);
        let mut samples = [0i16; AUDIO_FRAME_SAMPLES * AUDIO_CHANNELS as usize];
        while !pcm.is_empty() {
            let take = (FRAME_BYTES - self.pending.len()).min(pcm.len());
            self.pending.extend_from_slice(&pcm[..take]);
            pcm = &pcm[take..];
            if self.pending.len() < FRAME_BYTES {
                break;
            }
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            if self.budget < 1.0 {
                self.pending.clear();
                self.over_pace += 1;
                continue;
            }
            self.budget -= 1.0;
            if !encode {
                self.pending.clear();
                continue;
            }
            for (s, b) in samples.iter_mut().zip(self.pending.chunks_exact(2)) {
                *s = i16::from_le_bytes([b[0], b[1]]);
            }
            self.pending.clear();
            if samples.iter().all(|s| s.unsigned_abs() <= SILENCE as u16) {
                continue;
            }
            match self.opus.encode_i16(&samples, AUDIO_FRAME_SAMPLES, &mut self.packet) {
                Ok(n) if n > 0 => out.push((seq, self.packet[..n].to_vec())),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = e, "Opus could not encode a frame"),
            }
        }
    }
}

/// What the session's actor tells the audio task.
#[derive(Debug)]
pub enum AudioCmd {
    /// The browser attached (or went): packets go to this one.
    Client(Option<ClientTx>),
    /// The browser's `AUDIO_CONTROL`.
    Play(bool),
}

/// The session's audio task (aborted when dropped).
pub struct Audio {
    tx: mpsc::Sender<AudioCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Audio {
    /// Start reaching the audio server at `host:port` with the workspace's password (kept until the first
    /// connection, then dropped), sending packets to `client`.
    pub fn start(host: String, port: u16, password: Secret<String>, client: Option<ClientTx>) -> Audio {
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(host, port, password, client, rx));
        Audio { tx, task }
    }

    pub fn command(&self, cmd: AudioCmd) {
        // A full queue means the task is busy with the same kind of news: the latest wins soon enough.
        let _ = self.tx.try_send(cmd);
    }
}

impl Drop for Audio {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the bridge proves it knows: SHA-256 of `portico-audio:<password>`, hex (the password itself never
/// crosses the network in the clear; VNC authentication is challenge-response).
pub fn audio_token(password: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("portico-audio:{password}")))
}

/// Connect (retrying until `deadline`: the server starts after the desktop) and present the token.
async fn connect(
    host: &str,
    port: u16,
    token: &Secret<String>,
    deadline: tokio::time::Instant,
) -> Option<tokio::net::TcpStream> {
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(mut tcp)) => {
                let _ = tcp.set_nodelay(true);
                let hello = format!("PORTICO-AUDIO {}\n", token.expose());
                if tcp.write_all(hello.as_bytes()).await.is_ok() {
                    return Some(tcp);
                }
                last = "the audio server closed the connection".into();
            }
            Ok(Err(e)) => last = e.to_string().to_lowercase(),
            Err(_) => last = "connect timed out".into(),
        }
        tokio::time::sleep(RETRY).await;
    }
    tracing::info!(%host, port, error = %last, "No sound: the workspace's audio server did not answer");
    None
}

async fn run(
    host: String,
    port: u16,
    password: Secret<String>,
    mut client: Option<ClientTx>,
    mut rx: mpsc::Receiver<AudioCmd>,
) {
    let mut encoder = match AudioEncoder::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "No sound");
            return;
        }
    };
    // Nothing is sent until the browser says it plays (AUDIO_CONTROL): a page that cannot decode Opus,
    // or has it muted, costs nothing.
    let mut play = false;
    // Kept until the first sound arrives: a server that closes before that (PulseAudio not up yet) is
    // asked again, within the window.
    let mut token = Some(Secret::new(audio_token(password.expose())));
    drop(password);
    let deadline = tokio::time::Instant::now() + CONNECT_WINDOW;
    let mut buf = vec![0u8; 16 * 1024];
    let mut packets = Vec::new();
    let (mut sent, mut dropped) = (0u64, 0u64);
    'connection: while let Some(t) = token.as_ref() {
        let connected = tokio::select! {
            c = connect(&host, port, t, deadline) => c,
            () = follow(&mut rx, &mut client, &mut play) => None,
        };
        let Some(mut tcp) = connected else { break };
        loop {
            // Paced: while the server is ahead of real time, do not read (TCP holds it back).
            if let Some(wait) = encoder.wait(std::time::Instant::now()) {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    cmd = rx.recv() => match cmd {
                        None => break 'connection,
                        Some(cmd) => apply(cmd, &mut client, &mut play),
                    },
                }
                continue;
            }
            tokio::select! {
                read = tcp.read(&mut buf) => match read {
                    Ok(0) | Err(_) if token.is_some() && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(RETRY).await;
                        continue 'connection;
                    }
                    Ok(0) | Err(_) => break 'connection,
                    Ok(n) => {
                        if token.take().is_some() {
                            tracing::info!(%host, port, "Sound connected");
                        }
                        let listening = play && client.is_some();
                        encoder.push(std::time::Instant::now(), &buf[..n], listening, &mut packets);
                        for (seq, data) in packets.drain(..) {
                            let Some(c) = client.as_ref().filter(|_| play) else { continue };
                            // The display first: only while the browser's queue is at most half full.
                            if c.capacity() >= CLIENT_QUEUE / 2 && c.try_send(ServerMsg::Audio { seq, data }).is_ok() {
                                sent += 1;
                            } else {
                                dropped += 1;
                            }
                        }
                    }
                },
                cmd = rx.recv() => match cmd {
                    None => break 'connection,
                    Some(cmd) => apply(cmd, &mut client, &mut play),
                },
            }
        }
    }
    if token.is_some() {
        tracing::info!(%host, port, "No sound: the workspace's audio server sent none");
    }
    tracing::info!(sent, dropped, over_pace = encoder.over_pace, "Sound ended");
}

fn apply(cmd: AudioCmd, client: &mut Option<ClientTx>, play: &mut bool) {
    match cmd {
        AudioCmd::Client(c) => {
            // A new browser gets sound once it says it plays.
            *client = c;
            *play = false;
        }
        AudioCmd::Play(p) => *play = p,
    }
}

/// Apply commands until the channel closes (used while connecting).
async fn follow(rx: &mut mpsc::Receiver<AudioCmd>, client: &mut Option<ClientTx>, play: &mut bool) {
    while let Some(cmd) = rx.recv().await {
        apply(cmd, client, play);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, frames: usize, amplitude: f64) -> Vec<u8> {
        (0..frames * AUDIO_FRAME_SAMPLES)
            .flat_map(|i| {
                let v = ((i as f64) * 2.0 * std::f64::consts::PI * freq / f64::from(AUDIO_SAMPLE_RATE)).sin();
                let s = (v * amplitude) as i16;
                let [a, b] = s.to_le_bytes();
                [a, b, a, b]
            })
            .collect()
    }

    #[test]
    fn frames_are_cut_from_any_split_and_numbered() {
        let mut enc = AudioEncoder::new().expect("encoder");
        let pcm = tone(440.0, 5, 8000.0);
        let mut out = Vec::new();
        let now = std::time::Instant::now();
        // Odd splits, even through a sample.
        for chunk in pcm.chunks(1001) {
            enc.push(now, chunk, true, &mut out);
        }
        let seqs: Vec<u32> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert!(out.iter().all(|(_, p)| !p.is_empty() && p.len() <= MAX_AUDIO_PACKET));
        // 64 kbit/s: about 160 bytes per 20 ms.
        let mean = out.iter().map(|(_, p)| p.len()).sum::<usize>() / out.len();
        assert!((60..=400).contains(&mean), "{mean} bytes per packet");
    }

    #[test]
    fn silence_is_not_sent_but_counted() {
        let mut enc = AudioEncoder::new().expect("encoder");
        let mut pcm = tone(440.0, 2, 8000.0);
        pcm.extend(tone(440.0, 3, 4.0)); // below the threshold: silence
        pcm.extend(tone(440.0, 1, 8000.0));
        let mut out = Vec::new();
        let now = std::time::Instant::now();
        enc.push(now, &pcm, true, &mut out);
        let seqs: Vec<u32> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [0, 1, 5]);
        // Half a frame waits for the rest.
        enc.push(now, &tone(440.0, 1, 8000.0)[..FRAME_BYTES / 2], true, &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn what_is_encoded_decodes_to_the_same_tone() {
        let mut enc = AudioEncoder::new().expect("encoder");
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        // Arriving in real time, 20 ms apart.
        for (i, frame) in tone(1000.0, 50, 12000.0).chunks(FRAME_BYTES).enumerate() {
            enc.push(start + Duration::from_millis(20 * i as u64), frame, true, &mut out);
        }
        assert_eq!(out.len(), 50);
        let mut dec = opus_rs::OpusDecoder::new(AUDIO_SAMPLE_RATE as i32, 2).expect("decoder");
        let mut pcm = vec![0f32; AUDIO_FRAME_SAMPLES * 2];
        let (mut crossings, mut prev, mut n) = (0usize, 0f32, 0usize);
        for (i, (_, p)) in out.iter().enumerate() {
            let got = dec.decode(p, AUDIO_FRAME_SAMPLES, &mut pcm).expect("decode");
            if i < 5 {
                continue; // the codec's start-up
            }
            for f in 0..got {
                let v = pcm[f * 2];
                if prev < 0.0 && v >= 0.0 {
                    crossings += 1;
                }
                prev = v;
                n += 1;
            }
        }
        let hz = crossings as f64 / (n as f64 / f64::from(AUDIO_SAMPLE_RATE));
        assert!((hz - 1000.0).abs() < 5.0, "{hz} Hz");
    }

    #[test]
    fn a_server_far_ahead_of_real_time_gets_only_its_burst_encoded() {
        let mut enc = AudioEncoder::new().expect("encoder");
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        // 10 s of sound in one go: the burst allowance is encoded, the rest is not.
        enc.push(start, &tone(440.0, 500, 8000.0), true, &mut out);
        assert_eq!(out.len(), BURST_FRAMES as usize);
        assert_eq!(enc.over_pace, 500 - BURST_FRAMES as u64);
        // Then twice as fast as real time for 2 s (5 frames every 50 ms): 1.25× real time is encoded.
        out.clear();
        let chunk = tone(440.0, 5, 8000.0);
        for i in 1..=40 {
            enc.push(start + Duration::from_millis(50 * i), &chunk, true, &mut out);
        }
        assert!((123..=126).contains(&out.len()), "{} of 200 frames encoded", out.len());
        // Numbering went on through what was not encoded.
        assert_eq!(out.first().map(|p| p.0), Some(500));
    }

    #[test]
    fn nobody_listening_costs_no_encoding_and_the_server_is_held_to_real_time() {
        let mut enc = AudioEncoder::new().expect("encoder");
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        enc.push(start, &tone(440.0, 10, 8000.0), false, &mut out);
        assert!(out.is_empty(), "muted: nothing encoded");
        enc.push(start, &tone(440.0, 1, 8000.0), true, &mut out);
        assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), [10], "numbering went on");
        // The burst spent: the task waits before reading more, about a frame's time at 1.25x.
        enc.push(start, &tone(440.0, 14, 8000.0), false, &mut out);
        let wait = enc.wait(start).expect("a wait");
        assert!(wait <= Duration::from_millis(20), "{wait:?}");
        assert!(enc.wait(start + Duration::from_millis(20)).is_none());
    }

    #[test]
    fn the_token_is_what_the_image_computes() {
        // scripts/workspace/start-vnc: printf 'portico-audio:%s' "$VNC_PASSWORD" | sha256sum
        assert_eq!(
            audio_token("secret12"),
            "d45a9c70d03e39879bde2117999a88e8722e0cebb303c50c802e6b3c3d06ffd4"
        );
    }
}
