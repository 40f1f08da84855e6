//! Prometheus metrics: counters, gauges and histograms with labels, kept in a [`Registry`] and rendered in
//! the text exposition format 0.0.4 ([`CONTENT_TYPE`]).
//!
//! Every tier owns one registry and one struct of typed handles built on it (`portico_bridge::metrics`,
//! `portico_webapp::metrics`, `portico_agent::metrics`); nothing else formats metrics. Handles are cheap
//! clones of shared atomics: look a labelled series up once (`CounterVec::with`) and keep its handle on
//! hot paths. Histograms take values in the unit of their name (seconds, levels): the caller measures.
//! A handle made with `Default` belongs to no registry (tests, sessions without metrics).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets for latencies in seconds, from 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Mirror a monotonic count kept elsewhere (read at scrape time).
    pub fn set_total(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// A value that goes up and down (stored as an `f64`).
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicU64>);

impl Default for Gauge {
    fn default() -> Self {
        Gauge(Arc::new(AtomicU64::new(0f64.to_bits())))
    }
}

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn add(&self, d: f64) {
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some((f64::from_bits(b) + d).to_bits())
        });
    }

    pub fn inc(&self) {
        self.add(1.0);
    }

    pub fn dec(&self) {
        self.add(-1.0);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistogramCore {
    /// Upper bounds, ascending, finite; `+Inf` is implied.
    bounds: Arc<[f64]>,
    /// Per bucket (not cumulative), the last one for `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// Observations counted into buckets by upper bound, with their sum and count.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramCore>);

impl Default for Histogram {
    /// A detached histogram with only the `+Inf` bucket.
    fn default() -> Self {
        Histogram::with_bounds(Arc::from(Vec::new()))
    }
}

impl Histogram {
    fn with_bounds(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramCore {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    pub fn observe(&self, v: f64) {
        let h = &self.0;
        // `le` is inclusive: the first bucket whose bound is >= v.
        let i = h.bounds.partition_point(|b| *b < v);
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = h.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some((f64::from_bits(b) + v).to_bits())
        });
    }

    /// Observe a duration in seconds.
    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    labels: Vec<String>,
    bounds: Arc<[f64]>,
    series: Mutex<BTreeMap<Vec<String>, Series>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Family {
    fn new_series(&self) -> Series {
        match self.kind {
            Kind::Counter => Series::Counter(Counter::default()),
            Kind::Gauge => Series::Gauge(Gauge::default()),
            Kind::Histogram => Series::Histogram(Histogram::with_bounds(self.bounds.clone())),
        }
    }

    /// The series of `values` (one per label name; missing ones are empty, extra ones ignored), created
    /// when it does not exist yet.
    fn get(&self, values: &[&str]) -> Series {
        debug_assert_eq!(values.len(), self.labels.len(), "label values of {}", self.name);
        let key: Vec<String> = (0..self.labels.len())
            .map(|i| values.get(i).copied().unwrap_or_default().to_owned())
            .collect();
        lock(&self.series)
            .entry(key)
            .or_insert_with(|| self.new_series())
            .clone()
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for (values, series) in lock(&self.series).iter() {
            let labels = label_pairs(&self.labels, values);
            match series {
                Series::Counter(c) => sample(out, &self.name, "", &labels, None, &c.get().to_string()),
                Series::Gauge(g) => sample(out, &self.name, "", &labels, None, &fmt_f64(g.get())),
                Series::Histogram(h) => {
                    // Read each bucket once: the cumulative counts and `_count` agree with each other.
                    let counts: Vec<u64> = h.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                    let mut cumulative = 0u64;
                    for (i, n) in counts.iter().enumerate() {
                        cumulative += n;
                        let le = h.0.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| fmt_f64(*b));
                        sample(out, &self.name, "_bucket", &labels, Some(&le), &cumulative.to_string());
                    }
                    sample(out, &self.name, "_sum", &labels, None, &fmt_f64(h.sum()));
                    sample(out, &self.name, "_count", &labels, None, &cumulative.to_string());
                }
            }
        }
    }
}

/// `name="value"` pairs, values escaped, joined by commas.
fn label_pairs(names: &[String], values: &[String]) -> String {
    let mut s = String::new();
    for (n, v) in names.iter().zip(values) {
        if !s.is_empty() {
            s.push(',');
        }
        let _ = write!(s, "{n}=\"{}\"", escape_label(v));
    }
    s
}

fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, le: Option<&str>, value: &str) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "le=\"{le}\"");
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A HELP text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as Prometheus parses it (`+Inf`, `-Inf`, `NaN`, else the shortest exact decimal).
pub fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn valid_name(name: &str, colons: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// Counters with labels; [`CounterVec::with`] gives one series.
#[derive(Debug, Clone)]
pub struct CounterVec(Arc<Family>);

impl CounterVec {
    pub fn with(&self, values: &[&str]) -> Counter {
        match self.0.get(values) {
            Series::Counter(c) => c,
            _ => Counter::default(),
        }
    }
}

/// Gauges with labels.
#[derive(Debug, Clone)]
pub struct GaugeVec(Arc<Family>);

impl GaugeVec {
    pub fn with(&self, values: &[&str]) -> Gauge {
        match self.0.get(values) {
            Series::Gauge(g) => g,
            _ => Gauge::default(),
        }
    }

    /// Forget every series (a gauge set from a fresh reading at scrape time: what is gone disappears).
    pub fn clear(&self) {
        lock(&self.0.series).clear();
    }
}

/// Histograms with labels.
#[derive(Debug, Clone)]
pub struct HistogramVec(Arc<Family>);

impl HistogramVec {
    pub fn with(&self, values: &[&str]) -> Histogram {
        match self.0.get(values) {
            Series::Histogram(h) => h,
            _ => Histogram::default(),
        }
    }
}

/// The metric families of one tier, in registration order.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<Vec<Arc<Family>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The family `name`, registered now, or the one registered before under that name with the same kind
    /// and labels. Names and labels are checked in debug builds; a clash gives a family that is not rendered.
    fn family(&self, name: &str, help: &str, kind: Kind, labels: &[&str], bounds: &[f64]) -> Arc<Family> {
        debug_assert!(valid_name(name, true), "metric name {name:?}");
        debug_assert!(
            labels
                .iter()
                .all(|l| valid_name(l, false) && !l.starts_with("__") && !(kind == Kind::Histogram && *l == "le")),
            "label names of {name}: {labels:?}"
        );
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]) && bounds.iter().all(|b| b.is_finite()),
            "buckets of {name}"
        );
        let make = || {
            Arc::new(Family {
                name: name.to_owned(),
                help: help.to_owned(),
                kind,
                labels: labels.iter().map(|l| (*l).to_owned()).collect(),
                bounds: Arc::from(bounds),
                series: Mutex::new(BTreeMap::new()),
            })
        };
        let mut families = lock(&self.families);
        if let Some(f) = families.iter().find(|f| f.name == name) {
            debug_assert!(
                f.kind == kind && f.labels == labels,
                "metric {name} registered twice differently"
            );
            return if f.kind == kind && f.labels == labels {
                f.clone()
            } else {
                make()
            };
        }
        let f = make();
        if labels.is_empty() {
            // A series without labels exists from the start (0 until something happens).
            f.get(&[]);
        }
        families.push(f.clone());
        f
    }

    pub fn counter(&self, name: &str, help: &str) -> Counter {
        CounterVec(self.family(name, help, Kind::Counter, &[], &[])).with(&[])
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        CounterVec(self.family(name, help, Kind::Counter, labels, &[]))
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        GaugeVec(self.family(name, help, Kind::Gauge, &[], &[])).with(&[])
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        GaugeVec(self.family(name, help, Kind::Gauge, labels, &[]))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        HistogramVec(self.family(name, help, Kind::Histogram, &[], buckets)).with(&[])
    }

    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        HistogramVec(self.family(name, help, Kind::Histogram, labels, buckets))
    }

    /// Append every family in the text format to `out`.
    pub fn render_into(&self, out: &mut String) {
        let families: Vec<Arc<Family>> = lock(&self.families).clone();
        for f in families {
            f.render(out);
        }
    }

    /// Every family in the text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_render_with_help_and_type() {
        let r = Registry::new();
        let c = r.counter("portico_things_total", "Things that happened.");
        c.inc();
        c.add(2);
        let g = r.gauge("portico_level", "A level.");
        g.set(2.5);
        g.dec();
        let v = r.gauge_vec("portico_sessions", "Live sessions.", &["protocol"]);
        v.with(&["vnc"]).inc();
        v.with(&["ssh"]).add(2.0);
        assert_eq!(
            r.render(),
            "# HELP portico_things_total Things that happened.\n\
             # TYPE portico_things_total counter\n\
             portico_things_total 3\n\
             # HELP portico_level A level.\n\
             # TYPE portico_level gauge\n\
             portico_level 1.5\n\
             # HELP portico_sessions Live sessions.\n\
             # TYPE portico_sessions gauge\n\
             portico_sessions{protocol=\"ssh\"} 2\n\
             portico_sessions{protocol=\"vnc\"} 1\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let r = Registry::new();
        let v = r.counter_vec(
            "portico_refusals_total",
            "Refusals \\ by \"reason\"\nper line.",
            &["reason", "x"],
        );
        v.with(&["a \"quoted\" back\\slash\nnewline", "plain"]).inc();
        let text = r.render();
        assert!(
            text.contains("# HELP portico_refusals_total Refusals \\\\ by \"reason\"\\nper line.\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "portico_refusals_total{reason=\"a \\\"quoted\\\" back\\\\slash\\nnewline\",x=\"plain\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3, "one line per sample: {text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let r = Registry::new();
        let h = r.histogram_vec("portico_rtt_seconds", "Round trips.", &["protocol"], &[0.1, 0.5, 1.0]);
        let vnc = h.with(&["vnc"]);
        for v in [0.05, 0.1, 0.3, 0.7, 2.0, 3.0] {
            vnc.observe(v);
        }
        assert_eq!(vnc.count(), 6);
        let text = r.render();
        let expected = "# HELP portico_rtt_seconds Round trips.\n\
                        # TYPE portico_rtt_seconds histogram\n\
                        portico_rtt_seconds_bucket{protocol=\"vnc\",le=\"0.1\"} 2\n\
                        portico_rtt_seconds_bucket{protocol=\"vnc\",le=\"0.5\"} 3\n\
                        portico_rtt_seconds_bucket{protocol=\"vnc\",le=\"1\"} 4\n\
                        portico_rtt_seconds_bucket{protocol=\"vnc\",le=\"+Inf\"} 6\n\
                        portico_rtt_seconds_sum 6.15\n\
                        portico_rtt_seconds_count 6\n";
        // The sum of floats: compare the lines that are exact, then the sum as a number.
        let (got_sum, want_sum) = (
            text.lines().find(|l| l.starts_with("portico_rtt_seconds_sum")).unwrap(),
            expected
                .lines()
                .find(|l| l.starts_with("portico_rtt_seconds_sum"))
                .unwrap(),
        );
        assert!(
            got_sum.starts_with("portico_rtt_seconds_sum{protocol=\"vnc\"} "),
            "{got_sum}"
        );
        let sum: f64 = got_sum.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((sum - 6.15).abs() < 1e-9, "{want_sum} vs {got_sum}");
        for line in expected
            .lines()
            .filter(|l| !l.contains("_sum") && !l.contains("_count"))
        {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            text.contains("portico_rtt_seconds_count{protocol=\"vnc\"} 6\n"),
            "{text}"
        );
    }

    #[test]
    fn an_unlabelled_histogram_has_only_le_and_starts_at_zero() {
        let r = Registry::new();
        let h = r.histogram("portico_health_seconds", "Health.", &[0.01]);
        let text = r.render();
        assert!(
            text.contains("portico_health_seconds_bucket{le=\"0.01\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("portico_health_seconds_bucket{le=\"+Inf\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("portico_health_seconds_sum 0\nportico_health_seconds_count 0\n"),
            "{text}"
        );
        h.observe_duration(std::time::Duration::from_millis(5));
        assert!(r.render().contains("portico_health_seconds_bucket{le=\"0.01\"} 1\n"));
    }

    #[test]
    fn registering_twice_gives_the_same_series_and_clear_forgets() {
        let r = Registry::new();
        r.counter("portico_a_total", "A.").inc();
        r.counter("portico_a_total", "A.").inc();
        assert!(r.render().contains("portico_a_total 2\n"));
        let g = r.gauge_vec("portico_states", "States.", &["state"]);
        g.with(&["active"]).set(3.0);
        g.clear();
        g.with(&["pending"]).set(1.0);
        let text = r.render();
        assert!(
            !text.contains("active") && text.contains("portico_states{state=\"pending\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn special_values_render_as_prometheus_reads_them() {
        assert_eq!(fmt_f64(f64::INFINITY), "+Inf");
        assert_eq!(fmt_f64(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_f64(f64::NAN), "NaN");
        assert_eq!(fmt_f64(0.001), "0.001");
        assert_eq!(fmt_f64(3.0), "3");
        assert_eq!(fmt_f64(1e-9), "0.000000001");
        let detached = Counter::default();
        detached.inc();
        assert_eq!(detached.get(), 1);
        assert_eq!(Histogram::default().count(), 0);
    }
}
