//! Counters, gauges and histograms, and their Prometheus text exposition.
//!
//! Owns the in-memory metric values and their rendering in text format 0.0.4
//! for `GET /metrics`. It must not do I/O, read a clock or know which metrics
//! the registry and the webhook dispatcher declare: callers measure durations
//! with their own `now` and hand seconds in.
//!
//! The process has one thread, so values are plain integers and floats (no
//! atomics, no locks). Families are declared once at start-up; callers resolve
//! the series they touch to a `SeriesId` once and then update it in O(1) by
//! index. Rendering walks families in name order and series in label-value
//! order, so the exposition is byte-for-byte deterministic (tests compare it
//! exactly) and never depends on `HashMap` iteration order.
//!
//! Series live in a slab with a free list and per-slot generations: removing a
//! webhook's series frees its slots, and an id still held by an in-flight
//! delivery (which finishes on the configuration it started with) then turns
//! into a no-op instead of writing into whichever series reuses the slot.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Media type of the exposition produced by [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram bounds in seconds for both inbound HTTP request latency and
/// webhook delivery latency: from 0.5 ms (a cached manifest HEAD) to 30 s
/// (the longest sensible webhook `timeout_ms` plus retries), roughly
/// 1-2.5-5 per decade so `histogram_quantile` interpolates within a factor
/// of 2.5 anywhere in that range.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bound on series per family. Label values come from configuration (webhook
/// and event names) or from small fixed sets (method, route, status), so this
/// is never reached by a correct caller; it stops a caller that labels by
/// something client-controlled from growing memory and the scrape without
/// limit. Beyond it `series` hands back [`SeriesId::NONE`].
pub const SERIES_PER_FAMILY_MAX: usize = 4096;

/// A declared metric family (one name, one kind, fixed label names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FamilyId(u32);

/// One series (a family plus label values). Cheap to copy and store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesId {
    slot: u32,
    generation: u32,
}

impl SeriesId {
    /// A series that is never stored: every operation on it is a no-op. For
    /// fields that need a value before metrics are wired, and what `series`
    /// returns past [`SERIES_PER_FAMILY_MAX`].
    pub const NONE: SeriesId = SeriesId {
        slot: u32::MAX,
        generation: 0,
    };
}

/// The kind of a family, which decides its `# TYPE` line and which
/// operations apply to its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
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

/// A snapshot of one series, for tests and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    Counter(u64),
    Gauge(f64),
    Histogram { count: u64, sum: f64 },
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    label_names: &'static [&'static str],
    /// Upper bounds, strictly increasing and finite; `+Inf` is implicit.
    buckets: &'static [f64],
    /// Label values and slot index, sorted by label values: lookup is a binary
    /// search without allocating, and rendering walks it in order. Insertion
    /// is O(n) but happens once per series.
    series: Vec<(Box<[Box<str>]>, u32)>,
    /// So a runaway caller logs one warning per family, not one per request.
    warned_full: bool,
}

struct Slot {
    /// Bumped on removal so stale `SeriesId`s stop matching.
    generation: u32,
    /// `None` while the slot is on the free list.
    value: Option<Value>,
}

enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Histogram),
}

struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts, one more than `bounds` for `+Inf`;
    /// `observe` touches one cell and `render` accumulates.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        // First bound with `value <= le` (Prometheus buckets are inclusive
        // upper bounds). Written as `!(value <= b)` so NaN lands in `+Inf`
        // rather than in the first bucket.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let index = self.bounds.partition_point(|&b| !(value <= b));
        self.counts[index] = self.counts[index].saturating_add(1);
        self.count = self.count.saturating_add(1);
        self.sum += value;
    }
}

/// The metric registry. One per process, owned by the reactor.
pub struct Metrics {
    families: Vec<Family>,
    /// Name to family: deduplicates declarations and orders rendering.
    by_name: BTreeMap<&'static str, FamilyId>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            families: Vec::new(),
            by_name: BTreeMap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
        }
    }

    /// Declares a counter; its name must end in `_total` (the convention
    /// `promtool check metrics` enforces and the seed's PromQL relies on).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
    ) -> FamilyId {
        debug_assert!(name.ends_with("_total"), "counter {name} must end in _total");
        self.declare(Kind::Counter, name, help, label_names, &[])
    }

    /// Declares a gauge.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
    ) -> FamilyId {
        self.declare(Kind::Gauge, name, help, label_names, &[])
    }

    /// Declares a histogram with the given upper bounds (strictly increasing,
    /// finite; `+Inf` is added). Durations are in seconds and the name should
    /// end in `_seconds`.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        buckets: &'static [f64],
    ) -> FamilyId {
        debug_assert!(
            buckets.iter().all(|b| b.is_finite()) && buckets.windows(2).all(|w| w[0] < w[1]),
            "histogram {name}: buckets must be finite and strictly increasing"
        );
        // `le` is added by the exposition; a caller's own `le` would clash.
        debug_assert!(!label_names.contains(&"le"), "histogram {name}: `le` is reserved");
        self.declare(Kind::Histogram, name, help, label_names, buckets)
    }

    fn declare(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        buckets: &'static [f64],
    ) -> FamilyId {
        if let Some(&id) = self.by_name.get(name) {
            // Declaring twice is allowed so independent components (and a
            // reload) can each declare what they use without coordinating.
            let family = &self.families[id.0 as usize];
            debug_assert_eq!(family.kind, kind, "metric {name} redeclared with another kind");
            debug_assert_eq!(
                family.label_names, label_names,
                "metric {name} redeclared with other labels"
            );
            return id;
        }
        debug_assert!(valid_metric_name(name), "invalid metric name {name:?}");
        debug_assert!(
            label_names.iter().all(|l| valid_label_name(l)),
            "metric {name}: invalid label name in {label_names:?}"
        );
        let id = FamilyId(u32::try_from(self.families.len()).expect("fewer than 2^32 families"));
        self.families.push(Family {
            name,
            help,
            kind,
            label_names,
            buckets,
            series: Vec::new(),
            warned_full: false,
        });
        self.by_name.insert(name, id);
        id
    }

    /// The series of `family` with these label values (in declaration order),
    /// created at zero on first use. Resolve once and keep the id; the update
    /// methods are the hot path, this is not.
    pub fn series(&mut self, family: FamilyId, label_values: &[&str]) -> SeriesId {
        let Some(fam) = self.families.get_mut(family.0 as usize) else {
            debug_assert!(false, "unknown family {family:?}");
            return SeriesId::NONE;
        };
        debug_assert_eq!(
            label_values.len(),
            fam.label_names.len(),
            "metric {}: label values {label_values:?} do not match {:?}",
            fam.name,
            fam.label_names
        );
        if label_values.len() != fam.label_names.len() {
            // A mismatched series would render with misaligned labels.
            return SeriesId::NONE;
        }
        let index = match find_series(&fam.series, label_values) {
            Ok(i) => {
                let slot = fam.series[i].1;
                return SeriesId {
                    slot,
                    generation: self.slots[slot as usize].generation,
                };
            }
            Err(i) => i,
        };
        if fam.series.len() >= SERIES_PER_FAMILY_MAX {
            if !fam.warned_full {
                fam.warned_full = true;
                log::warn!(
                    "metric {}: more than {SERIES_PER_FAMILY_MAX} series, dropping new ones (last: {label_values:?})",
                    fam.name
                );
            }
            return SeriesId::NONE;
        }
        let value = match fam.kind {
            Kind::Counter => Value::Counter(0),
            Kind::Gauge => Value::Gauge(0.0),
            Kind::Histogram => Value::Histogram(Histogram::new(fam.buckets)),
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize].value = Some(value);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 series");
                // `u32::MAX` is `SeriesId::NONE`; never hand it out as a real slot.
                assert!(slot != u32::MAX, "series slab exhausted");
                self.slots.push(Slot {
                    generation: 0,
                    value: Some(value),
                });
                slot
            }
        };
        let key: Box<[Box<str>]> = label_values.iter().map(|v| Box::from(*v)).collect();
        fam.series.insert(index, (key, slot));
        SeriesId {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    /// Removes one series (e.g. the queue-depth gauge of a webhook that a
    /// reload deleted) so it disappears from the exposition. Ids still held
    /// for it become no-ops. Returns whether it existed.
    pub fn remove_series(&mut self, family: FamilyId, label_values: &[&str]) -> bool {
        let Some(fam) = self.families.get_mut(family.0 as usize) else {
            return false;
        };
        let Ok(index) = find_series(&fam.series, label_values) else {
            return false;
        };
        let (_, slot) = fam.series.remove(index);
        self.free_slot(slot);
        true
    }

    /// Removes every series of `family` whose label `label_name` equals
    /// `value` (e.g. all series of a deleted webhook, whatever their event).
    /// Returns how many were removed.
    pub fn remove_series_with_label(&mut self, family: FamilyId, label_name: &str, value: &str) -> usize {
        let Some(fam) = self.families.get_mut(family.0 as usize) else {
            return 0;
        };
        let Some(position) = fam.label_names.iter().position(|l| *l == label_name) else {
            debug_assert!(false, "metric {} has no label {label_name}", fam.name);
            return 0;
        };
        let mut freed = Vec::new();
        fam.series.retain(|(values, slot)| {
            let matches = &*values[position] == value;
            if matches {
                freed.push(*slot);
            }
            !matches
        });
        for &slot in &freed {
            self.free_slot(slot);
        }
        freed.len()
    }

    fn free_slot(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        entry.value = None;
        // Wrapping is fine: a stale id would need 2^32 reuses of one slot
        // while it is held to collide.
        entry.generation = entry.generation.wrapping_add(1);
        self.free_slots.push(slot);
    }

    fn value_mut(&mut self, id: SeriesId) -> Option<&mut Value> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// Adds one to a counter (or a gauge).
    pub fn inc(&mut self, id: SeriesId) {
        self.add(id, 1);
    }

    /// Adds `n` to a counter (or a gauge). Counters saturate rather than
    /// wrap: a wrap would look like a process restart to `rate()`.
    pub fn add(&mut self, id: SeriesId, n: u64) {
        match self.value_mut(id) {
            Some(Value::Counter(c)) => *c = c.saturating_add(n),
            Some(Value::Gauge(g)) => *g += n as f64,
            Some(Value::Histogram(_)) => debug_assert!(false, "add on a histogram series"),
            None => {}
        }
    }

    /// Sets a gauge.
    pub fn set(&mut self, id: SeriesId, value: f64) {
        match self.value_mut(id) {
            Some(Value::Gauge(g)) => *g = value,
            Some(_) => debug_assert!(false, "set on a series that is not a gauge"),
            None => {}
        }
    }

    /// Records one observation in a histogram (durations in seconds).
    pub fn observe(&mut self, id: SeriesId, value: f64) {
        match self.value_mut(id) {
            Some(Value::Histogram(h)) => h.observe(value),
            Some(_) => debug_assert!(false, "observe on a series that is not a histogram"),
            None => {}
        }
    }

    /// The current value of a series; `None` for removed or `NONE` ids.
    pub fn read(&self, id: SeriesId) -> Option<Reading> {
        let slot = self.slots.get(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        Some(match slot.value.as_ref()? {
            Value::Counter(c) => Reading::Counter(*c),
            Value::Gauge(g) => Reading::Gauge(*g),
            Value::Histogram(h) => Reading::Histogram {
                count: h.count,
                sum: h.sum,
            },
        })
    }

    /// Appends the text exposition (format 0.0.4) of every family to `out`:
    /// families by name, series by label values, `# HELP` and `# TYPE` even
    /// for families without series.
    pub fn render(&self, out: &mut String) {
        for &id in self.by_name.values() {
            let fam = &self.families[id.0 as usize];
            out.push_str("# HELP ");
            out.push_str(fam.name);
            out.push(' ');
            escape_help(out, fam.help);
            out.push_str("\n# TYPE ");
            out.push_str(fam.name);
            out.push(' ');
            out.push_str(fam.kind.as_str());
            out.push('\n');
            for (values, slot) in &fam.series {
                let Some(value) = &self.slots[*slot as usize].value else {
                    debug_assert!(false, "listed series points at a free slot");
                    continue;
                };
                match value {
                    Value::Counter(c) => {
                        out.push_str(fam.name);
                        write_labels(out, fam.label_names, values, None);
                        // Writing to a String cannot fail.
                        let _ = writeln!(out, " {c}");
                    }
                    Value::Gauge(g) => {
                        out.push_str(fam.name);
                        write_labels(out, fam.label_names, values, None);
                        out.push(' ');
                        write_float(out, *g);
                        out.push('\n');
                    }
                    Value::Histogram(h) => render_histogram(out, fam, values, h),
                }
            }
        }
    }
}

fn render_histogram(out: &mut String, fam: &Family, values: &[Box<str>], h: &Histogram) {
    let mut le = String::new();
    let mut cumulative: u64 = 0;
    for (i, count) in h.counts.iter().enumerate() {
        cumulative = cumulative.saturating_add(*count);
        le.clear();
        match h.bounds.get(i) {
            Some(bound) => write_float(&mut le, *bound),
            None => le.push_str("+Inf"),
        }
        out.push_str(fam.name);
        out.push_str("_bucket");
        write_labels(out, fam.label_names, values, Some(&le));
        let _ = writeln!(out, " {cumulative}");
    }
    out.push_str(fam.name);
    out.push_str("_sum");
    write_labels(out, fam.label_names, values, None);
    out.push(' ');
    write_float(out, h.sum);
    out.push('\n');
    out.push_str(fam.name);
    out.push_str("_count");
    write_labels(out, fam.label_names, values, None);
    let _ = writeln!(out, " {}", h.count);
}

/// Binary search of a family's sorted series by label values, comparing
/// element-wise so a lookup needs no allocation.
fn find_series(series: &[(Box<[Box<str>]>, u32)], label_values: &[&str]) -> Result<usize, usize> {
    series.binary_search_by(|(key, _)| key.iter().map(|k| &**k).cmp(label_values.iter().copied()))
}

/// `{a="x",b="y"}` plus an optional trailing `le`; nothing at all when there
/// are no labels, as the format allows.
fn write_labels(out: &mut String, names: &[&str], values: &[Box<str>], le: Option<&str>) {
    if names.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let pairs = names
        .iter()
        .copied()
        .zip(values.iter().map(|v| &**v))
        .chain(le.map(|le| ("le", le)));
    for (name, value) in pairs {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed (format 0.0.4);
/// webhook and repository names come from configuration and may hold any of
/// them.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes only backslash and line feed; a quote is literal there.
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Floats as Prometheus (Go's `ParseFloat`) reads them: `+Inf`, `-Inf`,
/// `NaN`; the shortest round-tripping decimal otherwise (`1`, not `1.0` nor
/// `1e0`, matching client_golang's `le` labels), switching to exponent form
/// only where Go's `%g` would, so huge or tiny values stay short.
fn write_float(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value != 0.0 && (value.abs() >= 1e21 || value.abs() < 1e-4) {
        let _ = write!(out, "{value:e}");
    } else {
        let _ = write!(out, "{value}");
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    // Names starting with `__` are reserved for Prometheus itself.
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    fn rendered(metrics: &Metrics) -> String {
        let mut out = String::new();
        metrics.render(&mut out);
        out
    }

    #[test]
    fn renders_counter_gauge_and_histogram_exactly() {
        let mut m = Metrics::new();
        let requests = m.counter(
            "http_requests_total",
            "HTTP requests served.",
            &["method", "status"],
        );
        let depth = m.gauge("queue_depth", "Queued deliveries.", &["webhook"]);
        let latency = m.histogram("latency_seconds", "Latency.", &["webhook"], &[0.1, 0.5, 1.0]);

        let get = m.series(requests, &["GET", "200"]);
        m.inc(get);
        m.add(get, 2);
        let put = m.series(requests, &["PUT", "201"]);
        m.inc(put);
        let audit = m.series(depth, &["audit"]);
        m.set(audit, 2.5);
        let h = m.series(latency, &["audit"]);
        // Binary fractions so the sum prints exactly; 0.5 sits on a bound and
        // must count in that bucket (bounds are inclusive).
        for v in [0.0625, 0.5, 0.25, 2.0] {
            m.observe(h, v);
        }

        let expected = "\
# HELP http_requests_total HTTP requests served.
# TYPE http_requests_total counter
http_requests_total{method=\"GET\",status=\"200\"} 3
http_requests_total{method=\"PUT\",status=\"201\"} 1
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{webhook=\"audit\",le=\"0.1\"} 1
latency_seconds_bucket{webhook=\"audit\",le=\"0.5\"} 3
latency_seconds_bucket{webhook=\"audit\",le=\"1\"} 3
latency_seconds_bucket{webhook=\"audit\",le=\"+Inf\"} 4
latency_seconds_sum{webhook=\"audit\"} 2.8125
latency_seconds_count{webhook=\"audit\"} 4
# HELP queue_depth Queued deliveries.
# TYPE queue_depth gauge
queue_depth{webhook=\"audit\"} 2.5
";
        assert_eq!(rendered(&m), expected);
        assert_eq!(m.read(get), Some(Reading::Counter(3)));
        assert_eq!(m.read(audit), Some(Reading::Gauge(2.5)));
        assert_eq!(
            m.read(h),
            Some(Reading::Histogram {
                count: 4,
                sum: 2.8125
            })
        );
    }

    #[test]
    fn unlabelled_series_and_empty_families() {
        let mut m = Metrics::new();
        let up = m.gauge("up", "Serving.", &[]);
        m.histogram("empty_seconds", "No series yet.", &["webhook"], &[1.0]);
        let h = m.histogram("d_seconds", "One bucket.", &[], &[1.0]);
        let s = m.series(up, &[]);
        m.set(s, 1.0);
        m.series(h, &[]);
        let expected = "\
# HELP d_seconds One bucket.
# TYPE d_seconds histogram
d_seconds_bucket{le=\"1\"} 0
d_seconds_bucket{le=\"+Inf\"} 0
d_seconds_sum 0
d_seconds_count 0
# HELP empty_seconds No series yet.
# TYPE empty_seconds histogram
# HELP up Serving.
# TYPE up gauge
up 1
";
        assert_eq!(rendered(&m), expected);
    }

    #[test]
    fn escapes_label_values_and_help() {
        let mut m = Metrics::new();
        let f = m.counter(
            "x_total",
            "A \"quoted\" back\\slash\nand a newline.",
            &["webhook"],
        );
        let s = m.series(f, &["a\\b\"c\nd"]);
        m.inc(s);
        let expected = "\
# HELP x_total A \"quoted\" back\\\\slash\\nand a newline.
# TYPE x_total counter
x_total{webhook=\"a\\\\b\\\"c\\nd\"} 1
";
        assert_eq!(rendered(&m), expected);
    }

    #[test]
    fn sorts_families_by_name_and_series_by_label_values() {
        let mut m = Metrics::new();
        let b = m.counter("b_total", "B.", &["x", "y"]);
        let a = m.gauge("a", "A.", &["x"]);
        for (x, y) in [("z", "1"), ("a", "2"), ("m", "0"), ("a", "10"), ("a", "1")] {
            let s = m.series(b, &[x, y]);
            m.inc(s);
        }
        for x in ["c", "b", "a"] {
            m.series(a, &[x]);
        }
        let expected = "\
# HELP a A.
# TYPE a gauge
a{x=\"a\"} 0
a{x=\"b\"} 0
a{x=\"c\"} 0
# HELP b_total B.
# TYPE b_total counter
b_total{x=\"a\",y=\"1\"} 1
b_total{x=\"a\",y=\"10\"} 1
b_total{x=\"a\",y=\"2\"} 1
b_total{x=\"m\",y=\"0\"} 1
b_total{x=\"z\",y=\"1\"} 1
";
        assert_eq!(rendered(&m), expected);
    }

    #[test]
    fn same_labels_give_same_series() {
        let mut m = Metrics::new();
        let f = m.counter("c_total", "C.", &["a"]);
        let s1 = m.series(f, &["x"]);
        let s2 = m.series(f, &["x"]);
        assert_eq!(s1, s2);
        m.inc(s1);
        m.inc(s2);
        assert_eq!(m.read(s1), Some(Reading::Counter(2)));
    }

    #[test]
    fn remove_series_drops_it_and_stale_ids_become_no_ops() {
        let mut m = Metrics::new();
        let depth = m.gauge("queue_depth", "Q.", &["webhook"]);
        let audit = m.series(depth, &["audit"]);
        let slack = m.series(depth, &["slack"]);
        m.set(audit, 3.0);
        m.set(slack, 1.0);

        assert!(m.remove_series(depth, &["audit"]));
        assert!(
            !m.remove_series(depth, &["audit"]),
            "second removal finds nothing"
        );
        assert_eq!(m.read(audit), None);
        assert_eq!(
            rendered(&m),
            "# HELP queue_depth Q.\n# TYPE queue_depth gauge\nqueue_depth{webhook=\"slack\"} 1\n"
        );

        // The freed slot is reused; the stale id must not write into it.
        let other = m.series(depth, &["other"]);
        m.set(audit, 99.0);
        assert_eq!(m.read(other), Some(Reading::Gauge(0.0)));

        // Re-creating the removed series starts from zero with a fresh id.
        let audit2 = m.series(depth, &["audit"]);
        assert_ne!(audit2, audit);
        assert_eq!(m.read(audit2), Some(Reading::Gauge(0.0)));
    }

    #[test]
    fn remove_series_with_label_removes_all_of_a_webhook() {
        let mut m = Metrics::new();
        let f = m.counter(
            "event_webhook_deliveries_total",
            "D.",
            &["webhook", "event", "result"],
        );
        for (w, e, r) in [
            ("audit", "push", "success"),
            ("audit", "delete", "error"),
            ("slack", "push", "success"),
        ] {
            let s = m.series(f, &[w, e, r]);
            m.inc(s);
        }
        assert_eq!(m.remove_series_with_label(f, "webhook", "audit"), 2);
        assert_eq!(
            rendered(&m),
            "# HELP event_webhook_deliveries_total D.\n# TYPE event_webhook_deliveries_total counter\n\
             event_webhook_deliveries_total{webhook=\"slack\",event=\"push\",result=\"success\"} 1\n"
        );
    }

    #[test]
    fn repeated_declaration_returns_the_same_family() {
        let mut m = Metrics::new();
        let a = m.counter("c_total", "C.", &["a"]);
        let b = m.counter("c_total", "C again.", &["a"]);
        assert_eq!(a, b);
        let s = m.series(b, &["x"]);
        m.inc(s);
        let out = rendered(&m);
        assert_eq!(out.matches("# TYPE c_total").count(), 1);
        assert!(
            out.contains("# HELP c_total C.\n"),
            "first declaration's help wins: {out}"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "redeclared with another kind")]
    fn redeclaration_with_another_kind_is_a_bug() {
        let mut m = Metrics::new();
        m.gauge("x_total", "X.", &[]);
        m.counter("x_total", "X.", &[]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "must end in _total")]
    fn counter_without_total_suffix_is_a_bug() {
        Metrics::new().counter("requests", "R.", &[]);
    }

    #[test]
    fn none_series_is_a_no_op() {
        let mut m = Metrics::new();
        m.counter("c_total", "C.", &[]);
        m.inc(SeriesId::NONE);
        m.set(SeriesId::NONE, 1.0);
        m.observe(SeriesId::NONE, 1.0);
        assert_eq!(m.read(SeriesId::NONE), None);
    }

    #[test]
    fn series_per_family_is_bounded() {
        let mut m = Metrics::new();
        let f = m.counter("c_total", "C.", &["a"]);
        for i in 0..SERIES_PER_FAMILY_MAX {
            assert_ne!(m.series(f, &[&i.to_string()]), SeriesId::NONE);
        }
        assert_eq!(m.series(f, &["one too many"]), SeriesId::NONE);
        // Existing series stay reachable at the bound.
        assert_ne!(m.series(f, &["0"]), SeriesId::NONE);
    }

    #[test]
    fn histogram_edges() {
        let mut m = Metrics::new();
        let f = m.histogram("h_seconds", "H.", &[], &[0.1, 1.0]);
        let s = m.series(f, &[]);
        m.observe(s, 0.0);
        m.observe(s, 0.1);
        m.observe(s, 1.5);
        m.observe(s, f64::INFINITY);
        let out = rendered(&m);
        assert!(out.contains("h_seconds_bucket{le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("h_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("h_seconds_sum +Inf\n"), "{out}");
        assert!(out.contains("h_seconds_count 4\n"), "{out}");
    }

    #[test]
    fn float_formatting() {
        let f = |v: f64| {
            let mut s = String::new();
            write_float(&mut s, v);
            s
        };
        assert_eq!(f(1.0), "1");
        assert_eq!(f(0.0), "0");
        assert_eq!(f(30.0), "30");
        assert_eq!(f(2.5), "2.5");
        assert_eq!(f(0.0005), "0.0005");
        assert_eq!(f(-3.0), "-3");
        assert_eq!(f(123456789012.0), "123456789012");
        assert_eq!(f(1e21), "1e21");
        assert_eq!(f(5e-5), "5e-5");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(f64::NAN), "NaN");
    }

    #[test]
    fn latency_buckets_are_valid() {
        assert!(LATENCY_BUCKETS_SECONDS.windows(2).all(|w| w[0] < w[1]));
        assert!(LATENCY_BUCKETS_SECONDS.iter().all(|b| b.is_finite() && *b > 0.0));
    }

    /// Runs `promtool check metrics` on `text`; `Ok` when it passes its lint,
    /// `Err(output)` otherwise. Fails the test when promtool is missing: a
    /// silent skip would let the exposition drift from what Prometheus accepts.
    fn promtool_check(text: &str) -> Result<(), String> {
        let mut child = match Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "promtool is not on PATH: install the Debian package `prometheus` \
                 (apt-get install -y prometheus), which provides /usr/bin/promtool"
            ),
            Err(e) => panic!("cannot run promtool: {e}"),
        };
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("write to promtool");
        let output = child.wait_with_output().expect("wait for promtool");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() && report.trim().is_empty() {
            Ok(())
        } else {
            Err(format!(
                "promtool {}: {report}\n--- input ---\n{text}",
                output.status
            ))
        }
    }

    /// The families the server exposes (SPEC section 6 and the seed's PromQL),
    /// with every kind, labels needing escapes, and unlabelled series.
    fn production_like_sample() -> String {
        let mut m = Metrics::new();
        let deliveries = m.counter(
            "event_webhook_deliveries_total",
            "Webhook deliveries by final result, after retries.",
            &["webhook", "event", "result"],
        );
        let duration = m.histogram(
            "event_webhook_delivery_duration_seconds",
            "Webhook delivery latency in seconds, including retries.",
            &["webhook", "event"],
            LATENCY_BUCKETS_SECONDS,
        );
        let queue = m.gauge(
            "event_webhook_queue_depth",
            "Async deliveries queued per webhook.",
            &["webhook"],
        );
        let requests = m.counter(
            "http_requests_total",
            "HTTP requests served.",
            &["method", "route", "status"],
        );
        let latency = m.histogram(
            "http_request_duration_seconds",
            "HTTP request latency in seconds.",
            &["method", "route"],
            LATENCY_BUCKETS_SECONDS,
        );
        let uploads = m.gauge("registry_upload_sessions", "Open upload sessions.", &[]);
        m.gauge("event_webhook_in_flight", "Declared but never set.", &[]);

        for (w, e, r, secs) in [
            ("audit", "manifest.push", "success", 0.012),
            ("audit", "manifest.push", "error", 31.0),
            ("we\"ird\\name\n", "tag.delete", "success", 0.0003),
        ] {
            let s = m.series(deliveries, &[w, e, r]);
            m.inc(s);
            let s = m.series(duration, &[w, e]);
            m.observe(s, secs);
        }
        let s = m.series(queue, &["audit"]);
        m.set(s, 7.0);
        let s = m.series(requests, &["GET", "manifest", "200"]);
        m.add(s, 12);
        let s = m.series(latency, &["GET", "manifest"]);
        m.observe(s, 0.004);
        let s = m.series(uploads, &[]);
        m.set(s, 0.0);
        rendered(&m)
    }

    #[test]
    fn promtool_accepts_every_metric_kind() {
        let text = production_like_sample();
        // Guard that the sample really holds each kind and each histogram part.
        for needle in [
            "# TYPE",
            " counter\n",
            " gauge\n",
            " histogram\n",
            "le=\"+Inf\"",
            "_sum{",
            "_count{",
        ] {
            assert!(text.contains(needle), "sample lacks {needle:?}");
        }
        if let Err(report) = promtool_check(&text) {
            panic!("promtool rejected the exposition: {report}");
        }
    }

    #[test]
    fn promtool_accepts_seconds_histograms_and_would_flag_other_units() {
        let mut m = Metrics::new();
        let f = m.histogram(
            "event_webhook_delivery_duration_seconds",
            "Latency.",
            &["webhook"],
            &[0.1, 1.0],
        );
        let s = m.series(f, &["audit"]);
        m.observe(s, 0.2);
        if let Err(report) = promtool_check(&rendered(&m)) {
            panic!("promtool rejected a _seconds histogram: {report}");
        }

        // Control: the unit lint is active, so the pass above means something.
        let mut m = Metrics::new();
        let f = m.histogram(
            "event_webhook_delivery_duration_milliseconds",
            "Latency.",
            &[],
            &[100.0],
        );
        m.series(f, &[]);
        let report = promtool_check(&rendered(&m)).expect_err("promtool should flag a milliseconds unit");
        assert!(report.contains("seconds"), "unexpected promtool report: {report}");
    }
}
