//! The bridge's metrics: one [`Registry`] and its typed handles, shared by the upgrade handler, the
//! session registry and every protocol actor (see `portico_proto::metrics`).

use std::sync::Arc;

use portico_proto::codes::CloseCode;
use portico_proto::metrics::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramVec, LATENCY_BUCKETS, Registry,
};
use portico_proto::token::Protocol;

/// Frame acknowledgement round trips, seconds: from a frame's end leaving the bridge to its ack.
const ACK_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Delivery rates of the browser's link, bytes per second (64 kbit/s .. 1 Gbit/s).
const RATE_BUCKETS: &[f64] = &[
    8e3, 32e3, 64e3, 128e3, 256e3, 512e3, 1e6, 2e6, 4e6, 8e6, 16e6, 32e6, 64e6, 128e6,
];
/// JPEG quality levels (0..=9).
const LEVEL_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];

pub struct BridgeMetrics {
    pub registry: Arc<Registry>,
    /// Live sessions by protocol.
    pub sessions: GaugeVec,
    /// Live sessions without a browser (waiting for a reattach), by protocol.
    pub detached: GaugeVec,
    pub sessions_started: CounterVec,
    /// Ended sessions by protocol and close code.
    pub sessions_ended: CounterVec,
    /// WebSocket upgrades accepted, by kind (`new`, `reattach`, `ended`).
    pub upgrades: CounterVec,
    /// Refused WebSocket credentials by reason.
    pub token_refusals: CounterVec,
    /// Token claims through the control plane, by result.
    pub claim_seconds: HistogramVec,
    pub bytes_to_browser: CounterVec,
    pub bytes_from_browser: CounterVec,
    frames: CounterVec,
    frame_ack_seconds: HistogramVec,
    quality_level: HistogramVec,
    link_rate: HistogramVec,
    link_rtt: HistogramVec,
    frames_merged: CounterVec,
    passthrough_images: CounterVec,
    passthrough_decoded: CounterVec,
    recorded_bytes: CounterVec,
    recording_dropped: CounterVec,
    viewers: GaugeVec,
    viewer_input_dropped: CounterVec,
    encoder_waiting: Gauge,
    encoder_busy: Gauge,
    encoder_width: Gauge,
}

impl std::fmt::Debug for BridgeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeMetrics")
    }
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BridgeMetrics {
    pub fn new() -> Self {
        let r = Arc::new(Registry::new());
        let m = BridgeMetrics {
            sessions: r.gauge_vec("portico_bridge_sessions", "Live sessions on this bridge.", &["protocol"]),
            detached: r.gauge_vec(
                "portico_bridge_sessions_detached",
                "Live sessions without a browser attached (before the first attach, or waiting for a reattach within the grace period).",
                &["protocol"],
            ),
            sessions_started: r.counter_vec(
                "portico_bridge_sessions_started_total",
                "Sessions started on this bridge (token verified and claimed).",
                &["protocol"],
            ),
            sessions_ended: r.counter_vec(
                "portico_bridge_sessions_ended_total",
                "Sessions ended on this bridge, by close code (ended, idle_timeout, auth_failed, unreachable...).",
                &["protocol", "code"],
            ),
            upgrades: r.counter_vec(
                "portico_bridge_websocket_upgrades_total",
                "WebSocket upgrades accepted: new (a claimed token), reattach (a resume token), ended (a reattach told how its session ended).",
                &["kind"],
            ),
            token_refusals: r.counter_vec(
                "portico_bridge_token_refusals_total",
                "WebSocket upgrades refused before the upgrade, by reason (bad_signature, expired, wrong_audience, already_used, bad_resume_token...).",
                &["reason"],
            ),
            claim_seconds: r.histogram_vec(
                "portico_bridge_claim_duration_seconds",
                "Time to claim a session token through the control plane, by result (ok, refused, error).",
                &["result"],
                LATENCY_BUCKETS,
            ),
            bytes_to_browser: r.counter_vec(
                "portico_bridge_bytes_to_browser_total",
                "WebSocket message bytes sent to browsers.",
                &["protocol"],
            ),
            bytes_from_browser: r.counter_vec(
                "portico_bridge_bytes_from_browser_total",
                "WebSocket message bytes received from browsers.",
                &["protocol"],
            ),
            frames: r.counter_vec(
                "portico_bridge_frames_sent_total",
                "Display frames sent to browsers (graphical sessions).",
                &["protocol"],
            ),
            frame_ack_seconds: r.histogram_vec(
                "portico_bridge_frame_ack_seconds",
                "Round trip from a frame sent to its acknowledgement by the browser.",
                &["protocol"],
                ACK_BUCKETS,
            ),
            quality_level: r.histogram_vec(
                "portico_bridge_frame_quality_level",
                "JPEG quality level (0..9) of lossy regions at each frame sent; the quality control lowers it when acknowledgements are slow.",
                &["protocol"],
                LEVEL_BUCKETS,
            ),
            link_rate: r.histogram_vec(
                "portico_bridge_link_rate_bytes",
                "The browser link's delivery rate as the flow control estimates it (bytes/s, the largest recent sample of bytes acknowledged per interval), at each acknowledgement.",
                &["protocol"],
                RATE_BUCKETS,
            ),
            link_rtt: r.histogram_vec(
                "portico_bridge_link_rtt_seconds",
                "The browser link's round trip as the flow control estimates it (the smallest recent acknowledgement round trip), at each acknowledgement.",
                &["protocol"],
                ACK_BUCKETS,
            ),
            frames_merged: r.counter_vec(
                "portico_bridge_frames_merged_total",
                "Server updates merged into a pending frame because the frames in flight filled the link's budget (the delivery rate times the latency target).",
                &["protocol"],
            ),
            passthrough_images: r.counter_vec(
                "portico_bridge_passthrough_images_total",
                "Server images passed through to the browser as they came (VNC Tight JPEG), kept undecoded in the framebuffer.",
                &["protocol"],
            ),
            passthrough_decoded: r.counter_vec(
                "portico_bridge_passthrough_decoded_total",
                "Passed-through images the bridge had to decode after all (their pixels were read: a copy, a region re-encoded over them, a full picture for a reattach).",
                &["protocol"],
            ),
            recorded_bytes: r.counter_vec(
                "portico_bridge_recorded_bytes_total",
                "Bytes appended to session recordings (chunks written to the recording storage).",
                &["protocol"],
            ),
            recording_dropped: r.counter_vec(
                "portico_bridge_recording_dropped_total",
                "Messages left out of a recording because its queue to the storage was full (the recording has a gap until its next keyframe).",
                &["protocol"],
            ),
            viewers: r.gauge_vec(
                "portico_bridge_viewers",
                "Viewers attached to shared sessions.",
                &["protocol"],
            ),
            viewer_input_dropped: r.counter_vec(
                "portico_bridge_viewer_input_dropped_total",
                "Input messages from view-only viewers, dropped at the bridge.",
                &["protocol"],
            ),
            encoder_waiting: r.gauge(
                "portico_bridge_encoder_queue_depth",
                "Image encode/decode jobs waiting for the encoder pool.",
            ),
            encoder_busy: r.gauge("portico_bridge_encoder_busy", "Encoder pool slots in use."),
            encoder_width: r.gauge("portico_bridge_encoder_slots", "Encoder pool width (slots)."),
            registry: r,
        };
        // Every protocol's series exists from the start (a query for 0 sessions finds a 0, not nothing).
        for p in [Protocol::Ssh, Protocol::Vnc, Protocol::Rdp] {
            m.session(p);
        }
        m
    }

    /// Read what lives outside the registry (the process-wide encoder pool); called before each scrape.
    pub fn refresh(&self) {
        let pool = crate::pool::encoder_pool_stats();
        self.encoder_waiting.set(pool.waiting as f64);
        self.encoder_busy.set(pool.busy as f64);
        self.encoder_width.set(pool.width as f64);
    }

    /// The handles a session of `protocol` uses.
    pub fn session(&self, protocol: Protocol) -> SessionMetrics {
        let p = [protocol.as_str()];
        SessionMetrics {
            protocol: protocol.as_str(),
            live: self.sessions.with(&p),
            detached: self.detached.with(&p),
            ended: Some(self.sessions_ended.clone()),
            to_browser: self.bytes_to_browser.with(&p),
            from_browser: self.bytes_from_browser.with(&p),
            recorded: self.recorded_bytes.with(&p),
            recording_dropped: self.recording_dropped.with(&p),
            viewers: self.viewers.with(&p),
            viewer_input_dropped: self.viewer_input_dropped.with(&p),
            // Terminals have no frames.
            display: match protocol {
                Protocol::Ssh => DisplayMetrics::default(),
                _ => DisplayMetrics {
                    frames: self.frames.with(&p),
                    ack_seconds: self.frame_ack_seconds.with(&p),
                    quality: self.quality_level.with(&p),
                    link_rate: self.link_rate.with(&p),
                    link_rtt: self.link_rtt.with(&p),
                    merged: self.frames_merged.with(&p),
                    passthrough_images: self.passthrough_images.with(&p),
                    passthrough_decoded: self.passthrough_decoded.with(&p),
                },
            },
        }
    }
}

/// One session's handles (cheap clones of the bridge's series of its protocol).
#[derive(Debug, Clone, Default)]
pub struct SessionMetrics {
    pub protocol: &'static str,
    pub live: Gauge,
    pub detached: Gauge,
    /// `None`: a session outside any bridge (tests) counts its end nowhere.
    ended: Option<CounterVec>,
    pub to_browser: Counter,
    pub from_browser: Counter,
    pub recorded: Counter,
    pub recording_dropped: Counter,
    pub viewers: Gauge,
    pub viewer_input_dropped: Counter,
    pub display: DisplayMetrics,
}

impl SessionMetrics {
    pub fn ended(&self, code: CloseCode) {
        if let Some(e) = &self.ended {
            e.with(&[self.protocol, code.as_str()]).inc();
        }
    }
}

/// The display pipeline's handles ([`crate::display::Flow`]).
#[derive(Debug, Clone, Default)]
pub struct DisplayMetrics {
    pub frames: Counter,
    pub ack_seconds: Histogram,
    pub quality: Histogram,
    /// The link estimates of [`crate::display::LinkEstimate`] at each acknowledgement.
    pub link_rate: Histogram,
    pub link_rtt: Histogram,
    pub merged: Counter,
    /// Images passed through undecoded, and those decoded after all (see [`crate::display::LazyCounts`]).
    pub passthrough_images: Counter,
    pub passthrough_decoded: Counter,
}

impl BridgeMetrics {
    /// A WebSocket upgrade refused before the upgrade, for `reason`.
    pub fn refused(&self, reason: &str) {
        self.token_refusals.with(&[reason]).inc();
    }
}

/// The refusal reason of a token that did not verify.
pub fn token_reason(e: &portico_proto::token::TokenError) -> &'static str {
    use portico_proto::token::TokenError as E;
    match e {
        E::Malformed(_) => "malformed",
        E::WrongType => "wrong_type",
        E::UnknownKey => "unknown_key",
        E::BadSignature => "bad_signature",
        E::Expired => "expired",
        E::NotYetValid => "not_yet_valid",
        E::LifetimeTooLong => "lifetime_too_long",
        E::WrongAudience => "wrong_audience",
        E::WrongSession => "wrong_session",
        _ => "invalid",
    }
}

/// The refusal reason of a claim the control plane refused.
pub fn claim_reason(e: &portico_proto::control::ControlError) -> &'static str {
    use portico_proto::control::ControlError as E;
    match e {
        E::AlreadyUsed => "already_used",
        E::Ended => "session_ended",
        E::NotFound => "session_not_found",
        // Expired, or assigned to another bridge.
        E::Refused(_) => "claim_refused",
        _ => "claim_failed",
    }
}
