//! `GET /metrics`: the agent's counters in the Prometheus text exposition format 0.0.4.
//!
//! [`render`] writes three families for one model, then any extra gauges:
//!
//! ```text
//! # HELP prediction_latency_seconds Engine time per inference, in seconds.
//! # TYPE prediction_latency_seconds histogram
//! prediction_latency_seconds_bucket{model_name="kws-dscnn",le="0.000001"} 0
//! ...
//! prediction_latency_seconds_bucket{model_name="kws-dscnn",le="10"} 1200
//! prediction_latency_seconds_bucket{model_name="kws-dscnn",le="+Inf"} 1200
//! prediction_latency_seconds_sum{model_name="kws-dscnn"} 1.0464
//! prediction_latency_seconds_count{model_name="kws-dscnn"} 1200
//! # HELP prediction_total Inference requests answered, by outcome.
//! # TYPE prediction_total counter
//! prediction_total{model_name="kws-dscnn",status="ok"} 1198
//! prediction_total{model_name="kws-dscnn",status="error"} 2
//! # HELP perch_uptime_seconds Seconds since the agent started.
//! # TYPE perch_uptime_seconds gauge
//! perch_uptime_seconds 3600
//! ```
//!
//! With several models ([`render_models`]) each family holds a series per model, and
//! `perch_model_ready{model_name}` follows. Extra families follow, each a single value
//! without labels: gauges, or counters for names ending in `_total` (the agent's:
//! `perch_uptime_seconds`, `perch_models_memory_bytes`, `perch_memory_budget_bytes`, `process_resident_memory_bytes`, `perch_report_backlog`,
//! `perch_spool_dropped_reports_total`). `deploy/prometheus/perch-rules.yml` and
//! `deploy/grafana/perch.json` use these names; `firmware/tests/monitoring.rs` checks that
//! every name they use is exported.
//!
//! # Buckets
//!
//! The `le` bounds are the core histogram's 71 bucket boundaries
//! ([`BOUNDARIES_NS`]: ten per decade from 1 µs to 10 s), written as exact decimal
//! seconds, then `+Inf`. The same bounds appear on every scrape, so `rate()` and
//! `histogram_quantile()` work across scrapes and across devices. A core bucket excludes
//! its upper boundary where Prometheus's `le` includes it: a sample of exactly 1 ms is
//! counted from `le="0.001259"` on, not at `le="0.001"`. At nanosecond resolution this
//! matters only for synthetic latencies.
//!
//! # `_sum` is an estimate
//!
//! The core histogram keeps counts, not sums, so `_sum` is `Σ count × m` where `m` is
//! each bucket's geometric midpoint `sqrt(lo × hi)` (1 µs for the underflow bucket, 10 s
//! for the overflow bucket — the values [`Histogram::quantile`] reports). For samples
//! within 1 µs..10 s the estimate is within 12.22 % of the true sum (the histogram's
//! per-sample error bound); `_sum / _count` is a fair mean latency, not an exact one.
//!
//! ```
//! use std::time::Duration;
//! use perch_runtime::histogram::Histogram;
//!
//! let mut latency = Histogram::new();
//! latency.record(Duration::from_micros(850));
//! let text = perch_firmware::prometheus::render(
//!     "kws-dscnn", &latency, 1, 0,
//!     &[("perch_uptime_seconds", "Seconds since the agent started.", 12.0)],
//! );
//! assert!(text.contains("prediction_latency_seconds_count{model_name=\"kws-dscnn\"} 1\n"));
//! assert!(text.contains("perch_uptime_seconds 12\n"));
//! ```

use std::fmt::Write;

use perch_runtime::histogram::{Histogram, BOUNDARIES_NS, BUCKETS};

/// The `Content-Type` of [`render`]'s output, for the HTTP response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the metrics of one model in the text exposition format 0.0.4 (see the
/// [module docs](self) for the exact families).
///
/// - `model_name` becomes the `model_name` label, escaped (`\\`, `\"`, `\n`), so any
///   string is safe.
/// - `latency_cumulative` is every latency since the agent started (not one interval):
///   Prometheus histograms are cumulative counters.
/// - `ok_total` and `error_total` become `prediction_total{status="ok"|"error"}`.
/// - `extra` are values without labels, in the given order, each with its help text,
///   such as `("perch_uptime_seconds", "Seconds since the agent started.", uptime)`;
///   a name ending in `_total` is typed `counter` (the Prometheus naming convention),
///   any other `gauge`:
///   `promtool check metrics` wants a `# HELP` on every family. Help text is escaped
///   (`\\`, `\n`).
///   An entry whose name is not a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or
///   repeats an earlier one is left out, since one bad line would make Prometheus
///   reject the whole scrape. Values print as Prometheus floats (`NaN`, `+Inf`, `-Inf`).
///
/// The output ends with a newline, as the format requires.
pub fn render(
    model_name: &str,
    latency_cumulative: &Histogram,
    ok_total: u64,
    error_total: u64,
    extra: &[(&str, &str, f64)],
) -> String {
    let model = ModelSeries {
        name: model_name,
        latency: latency_cumulative,
        ok: ok_total,
        errors: error_total,
        ready: None,
    };
    render_models(&[model], extra)
}

/// One model's series in [`render_models`].
#[derive(Debug, Clone, Copy)]
pub struct ModelSeries<'a> {
    /// The `model_name` label.
    pub name: &'a str,
    /// Every latency since the model was loaded.
    pub latency: &'a Histogram,
    /// `prediction_total{status="ok"}`.
    pub ok: u64,
    /// `prediction_total{status="error"}`.
    pub errors: u64,
    /// `perch_model_ready{model_name}` (1 or 0); `None` leaves the family out.
    pub ready: Option<bool>,
}

/// [`render`] for several models: each family holds one series per model (one
/// `# HELP` and `# TYPE` per family, as the format requires), then
/// `perch_model_ready{model_name}` for the models that give `ready`, then `extra`.
pub fn render_models(models: &[ModelSeries<'_>], extra: &[(&str, &str, f64)]) -> String {
    let mut out = String::with_capacity(models.len() * BUCKETS * 100 + 512);
    out.push_str("# HELP prediction_latency_seconds Engine time per inference, in seconds.\n");
    out.push_str("# TYPE prediction_latency_seconds histogram\n");
    for model in models {
        let label = escape_label_value(model.name);
        let mut cumulative: u64 = 0;
        for (count, &bound_ns) in model.latency.counts().iter().zip(&BOUNDARIES_NS) {
            cumulative += u64::from(*count);
            let _ = writeln!(
                out,
                "prediction_latency_seconds_bucket{{model_name=\"{label}\",le=\"{}\"}} {cumulative}",
                decimal_seconds(bound_ns),
            );
        }
        let total = model.latency.count();
        let _ = writeln!(
            out,
            "prediction_latency_seconds_bucket{{model_name=\"{label}\",le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(
            out,
            "prediction_latency_seconds_sum{{model_name=\"{label}\"}} {}",
            float(estimated_sum_seconds(model.latency)),
        );
        let _ = writeln!(
            out,
            "prediction_latency_seconds_count{{model_name=\"{label}\"}} {total}"
        );
    }

    out.push_str("# HELP prediction_total Inference requests answered, by outcome.\n");
    out.push_str("# TYPE prediction_total counter\n");
    for model in models {
        let label = escape_label_value(model.name);
        for (status, value) in [("ok", model.ok), ("error", model.errors)] {
            let _ = writeln!(
                out,
                "prediction_total{{model_name=\"{label}\",status=\"{status}\"}} {value}"
            );
        }
    }
    if models.iter().any(|m| m.ready.is_some()) {
        out.push_str("# HELP perch_model_ready Whether the model is ready (1) or not (0).\n");
        out.push_str("# TYPE perch_model_ready gauge\n");
        for model in models {
            if let Some(ready) = model.ready {
                let label = escape_label_value(model.name);
                let _ = writeln!(
                    out,
                    "perch_model_ready{{model_name=\"{label}\"}} {}",
                    u8::from(ready)
                );
            }
        }
    }

    let ready_family = models.iter().any(|m| m.ready.is_some());
    let reserved = [
        "prediction_latency_seconds",
        "prediction_total",
        if ready_family {
            "perch_model_ready"
        } else {
            "prediction_total"
        },
    ];
    for (i, &(name, help, value)) in extra.iter().enumerate() {
        let repeated = extra[..i].iter().any(|&(earlier, _, _)| earlier == name);
        let clashes = reserved.iter().any(|r| name.starts_with(r));
        if !is_metric_name(name) || repeated || clashes {
            continue;
        }
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {name} {help}");
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {}", float(value));
    }
    out
}

/// Writes `# HELP` and `# TYPE` of a family (`kind`: `counter`, `gauge`, `histogram`),
/// for families with labels that other modules render (the experiments').
pub fn write_family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one series of a histogram family on the core histogram's bounds, as
/// [`render_models`] writes `prediction_latency_seconds`: `labels` are
/// `(key, value)` pairs, the values escaped here.
pub fn write_histogram(
    out: &mut String,
    family: &str,
    labels: &[(&str, &str)],
    histogram: &Histogram,
) {
    let labels = label_pairs(labels);
    let mut cumulative: u64 = 0;
    for (count, &bound_ns) in histogram.counts().iter().zip(&BOUNDARIES_NS) {
        cumulative += u64::from(*count);
        let _ = writeln!(
            out,
            "{family}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            decimal_seconds(bound_ns)
        );
    }
    let total = histogram.count();
    let _ = writeln!(out, "{family}_bucket{{{labels},le=\"+Inf\"}} {total}");
    let sum = float(estimated_sum_seconds(histogram));
    let _ = writeln!(out, "{family}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{family}_count{{{labels}}} {total}");
}

/// Writes one sample `name{labels} value`, the label values escaped here.
pub fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let _ = writeln!(out, "{name}{{{}}} {}", label_pairs(labels), float(value));
}

fn label_pairs(labels: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    pairs.join(",")
}

/// Escapes a label value: backslash, double quote and line feed are the only characters
/// the format requires escaping.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Whether `name` matches `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whole nanoseconds as exact decimal seconds without trailing zeros: `1000` is
/// `0.000001`, `1259000` is `0.001259`, `10000000000` is `10`.
fn decimal_seconds(ns: u64) -> String {
    let (secs, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        return secs.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{secs}.{}", digits.trim_end_matches('0'))
}

/// A float as the exposition format spells it: `NaN`, `+Inf`, `-Inf`, or Rust's
/// shortest round-trip decimal.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        value.to_string()
    }
}

/// `Σ count × geometric midpoint` in seconds (see the [module docs](self)).
fn estimated_sum_seconds(histogram: &Histogram) -> f64 {
    histogram
        .counts()
        .iter()
        .enumerate()
        .map(|(bucket, &count)| f64::from(count) * midpoint_seconds(bucket))
        .sum()
}

/// The value that stands for every sample of `bucket`: the geometric midpoint of its
/// bounds, 1 µs for underflow, 10 s for overflow.
fn midpoint_seconds(bucket: usize) -> f64 {
    match bucket {
        0 => BOUNDARIES_NS[0] as f64 * 1e-9,
        b if b == BUCKETS - 1 => BOUNDARIES_NS[BUCKETS - 2] as f64 * 1e-9,
        b => (BOUNDARIES_NS[b - 1] as f64 * BOUNDARIES_NS[b] as f64).sqrt() * 1e-9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// One sample line: name, labels in order, value.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl Sample {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A strict parser for the subset of the text format `render` writes: comment lines
    /// `# HELP name text` / `# TYPE name type`, and `name{k="v",...} value` or
    /// `name value`, with label values unescaped. Panics on anything else.
    fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
        assert!(text.ends_with('\n'), "output must end with a newline");
        let (mut samples, mut types) = (Vec::new(), BTreeMap::new());
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a type");
                assert!(is_metric_name(name), "bad name in {line:?}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "{line:?}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "second TYPE for {name}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(
                    is_metric_name(name) && !types.contains_key(name),
                    "{line:?}"
                );
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            samples.push(parse_sample(line));
        }
        (samples, types)
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        assert!(is_metric_name(name), "bad name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices();
            let mut key = String::new();
            loop {
                let (_, c) = chars.next().expect("unterminated labels");
                match c {
                    '}' => {
                        rest = &after[chars.next().expect("value after labels").0..];
                        break;
                    }
                    ',' => assert!(!labels.is_empty() && key.is_empty(), "{line:?}"),
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("unterminated label value").1 {
                                '"' => break,
                                '\\' => match chars.next().expect("dangling escape").1 {
                                    '\\' => value.push('\\'),
                                    '"' => value.push('"'),
                                    'n' => value.push('\n'),
                                    other => panic!("bad escape \\{other} in {line:?}"),
                                },
                                '\n' => panic!("raw newline in {line:?}"),
                                c => value.push(c),
                            }
                        }
                        labels.push((std::mem::take(&mut key), value));
                    }
                    c => key.push(c),
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("one space before the value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        Sample {
            name: name.to_string(),
            labels,
            value,
        }
    }

    fn bucket_lines<'a>(samples: &'a [Sample], model: &str) -> Vec<&'a Sample> {
        samples
            .iter()
            .filter(|s| {
                s.name == "prediction_latency_seconds_bucket"
                    && s.label("model_name") == Some(model)
            })
            .collect()
    }

    fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .collect();
        assert_eq!(matching.len(), 1, "{name} {labels:?}");
        matching[0].value
    }

    fn spread_histogram() -> Histogram {
        let mut h = Histogram::new();
        for us in [0, 3, 90, 850, 850, 1_000, 12_000, 250_000] {
            h.record(Duration::from_micros(us));
        }
        h.record(Duration::from_secs(42));
        h
    }

    #[test]
    fn several_models_share_each_family_with_one_series_per_model() {
        let mut fast = Histogram::new();
        fast.record(Duration::from_micros(200));
        let slow = Histogram::new();
        let models = [
            ModelSeries {
                name: "kws",
                latency: &fast,
                ok: 1,
                errors: 0,
                ready: Some(true),
            },
            ModelSeries {
                name: "iris",
                latency: &slow,
                ok: 0,
                errors: 2,
                ready: Some(false),
            },
        ];
        let extra = [(
            "perch_model_ready",
            "clashes with the per-model family",
            1.0,
        )];
        let (samples, types) = parse(&render_models(&models, &extra));
        assert_eq!(types["perch_model_ready"], "gauge");
        let value = |name: &str, model: &str, status: Option<&str>| {
            let found: Vec<f64> = samples
                .iter()
                .filter(|s| s.name == name && s.label("model_name") == Some(model))
                .filter(|s| status.is_none() || s.label("status") == status)
                .map(|s| s.value)
                .collect();
            assert_eq!(found.len(), 1, "{name} {model} {status:?}");
            found[0]
        };
        assert_eq!(value("prediction_latency_seconds_count", "kws", None), 1.0);
        assert_eq!(value("prediction_latency_seconds_count", "iris", None), 0.0);
        assert_eq!(value("prediction_total", "iris", Some("error")), 2.0);
        assert_eq!(value("perch_model_ready", "kws", None), 1.0);
        assert_eq!(value("perch_model_ready", "iris", None), 0.0);
        assert!(
            !samples
                .iter()
                .any(|s| s.name == "perch_model_ready" && s.labels.is_empty()),
            "the unlabelled extra is left out"
        );
    }

    #[test]
    fn buckets_are_cumulative_and_inf_equals_count() {
        let h = spread_histogram();
        let (samples, types) = parse(&render("m", &h, 7, 2, &[]));
        assert_eq!(types["prediction_latency_seconds"], "histogram");
        assert_eq!(types["prediction_total"], "counter");

        let buckets = bucket_lines(&samples, "m");
        assert_eq!(buckets.len(), BUCKETS);
        let bounds: Vec<f64> = buckets
            .iter()
            .map(|s| match s.label("le").unwrap() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            })
            .collect();
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "le strictly increasing"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].value <= w[1].value),
            "cumulative"
        );
        assert_eq!(bounds[BUCKETS - 1], f64::INFINITY);

        let count = value_of(
            &samples,
            "prediction_latency_seconds_count",
            &[("model_name", "m")],
        );
        assert_eq!(buckets[BUCKETS - 1].value, count);
        assert_eq!(count, h.count() as f64);
    }

    #[test]
    fn each_bucket_counts_exactly_the_samples_below_its_bound() {
        let latencies_us = [
            0u64, 3, 90, 850, 850, 999, 1_000, 12_000, 250_000, 42_000_000,
        ];
        let mut h = Histogram::new();
        for &us in &latencies_us {
            h.record(Duration::from_micros(us));
        }
        let (samples, _) = parse(&render("m", &h, 0, 0, &[]));
        for bucket in bucket_lines(&samples, "m") {
            let le = bucket.label("le").unwrap();
            let expected = match le {
                "+Inf" => latencies_us.len(),
                le => {
                    let bound_s: f64 = le.parse().unwrap();
                    latencies_us
                        .iter()
                        .filter(|&&us| (us as f64) * 1e-6 < bound_s - 1e-12)
                        .count()
                }
            };
            assert_eq!(bucket.value, expected as f64, "le={le}");
        }
    }

    #[test]
    fn bounds_are_exact_decimals_from_one_microsecond_to_ten_seconds() {
        let (samples, _) = parse(&render("m", &Histogram::new(), 0, 0, &[]));
        let les: Vec<&str> = bucket_lines(&samples, "m")
            .iter()
            .map(|s| s.label("le").unwrap())
            .collect();
        assert_eq!(les[0], "0.000001");
        assert_eq!(les[1], "0.000001259");
        assert_eq!(les[30], "0.001");
        assert_eq!(les[31], "0.001259");
        assert_eq!(les[69], "7.943");
        assert_eq!(les[70], "10");
        assert_eq!(les[71], "+Inf");
    }

    #[test]
    fn the_sum_estimate_is_within_the_histogram_error_bound() {
        let latencies_us = [3u64, 90, 850, 850, 1_000, 12_000, 250_000, 2_500_000];
        let mut h = Histogram::new();
        for &us in &latencies_us {
            h.record(Duration::from_micros(us));
        }
        let (samples, _) = parse(&render("m", &h, 0, 0, &[]));
        let sum = value_of(
            &samples,
            "prediction_latency_seconds_sum",
            &[("model_name", "m")],
        );
        let exact: f64 = latencies_us.iter().map(|&us| us as f64 * 1e-6).sum();
        assert!(
            (sum - exact).abs() / exact <= 0.1222,
            "sum {sum} vs exact {exact}"
        );
        let empty = parse(&render("m", &Histogram::new(), 0, 0, &[])).0;
        assert_eq!(value_of(&empty, "prediction_latency_seconds_sum", &[]), 0.0);
    }

    #[test]
    fn prediction_totals_carry_model_and_status_labels() {
        let (samples, _) = parse(&render("kws", &Histogram::new(), 1_198, 2, &[]));
        let ok = [("model_name", "kws"), ("status", "ok")];
        let error = [("model_name", "kws"), ("status", "error")];
        assert_eq!(value_of(&samples, "prediction_total", &ok), 1_198.0);
        assert_eq!(value_of(&samples, "prediction_total", &error), 2.0);
    }

    #[test]
    fn model_names_with_quotes_backslashes_and_newlines_are_escaped_and_round_trip() {
        let name = "say \"hi\"\\n\nnext line \u{e9}";
        let text = render(name, &spread_histogram(), 3, 1, &[]);
        assert!(text.contains(r#"model_name="say \"hi\"\\n\nnext line é""#));
        let (samples, _) = parse(&text);
        assert!(samples
            .iter()
            .filter(|s| s.name.starts_with("prediction_"))
            .all(|s| s.label("model_name") == Some(name)));
        assert_eq!(bucket_lines(&samples, name).len(), BUCKETS);
    }

    #[test]
    fn extra_gauges_are_typed_and_valued_and_bad_names_are_left_out() {
        let extra = [
            (
                "process_resident_memory_bytes",
                "Resident memory.",
                123_456_789.0,
            ),
            ("perch_uptime_seconds", "Uptime.", 3_600.5),
            ("perch_spool_dropped", "Dropped.", f64::NAN),
            ("perch_odd", "Odd \\ help\ntext.", f64::NEG_INFINITY),
            ("bad name", "", 1.0),
            ("1starts_with_digit", "", 1.0),
            ("", "", 1.0),
            ("prediction_total", "", 5.0),
            ("perch_uptime_seconds", "", 9.0),
        ];
        let (samples, types) = parse(&render("m", &Histogram::new(), 0, 0, &extra));
        assert_eq!(
            value_of(&samples, "process_resident_memory_bytes", &[]),
            123_456_789.0
        );
        assert_eq!(value_of(&samples, "perch_uptime_seconds", &[]), 3_600.5);
        assert!(value_of(&samples, "perch_spool_dropped", &[]).is_nan());
        assert_eq!(value_of(&samples, "perch_odd", &[]), f64::NEG_INFINITY);
        for gauge in [
            "process_resident_memory_bytes",
            "perch_uptime_seconds",
            "perch_spool_dropped",
            "perch_odd",
        ] {
            assert_eq!(types[gauge], "gauge");
        }
        assert_eq!(types.len(), 6, "{types:?}");
        let counter = [("perch_spool_dropped_reports_total", "Dropped.", 3.0)];
        let (samples, types) = parse(&render("m", &Histogram::new(), 0, 0, &counter));
        assert_eq!(types["perch_spool_dropped_reports_total"], "counter");
        assert_eq!(
            value_of(&samples, "perch_spool_dropped_reports_total", &[]),
            3.0
        );
        let text = render("m", &Histogram::new(), 0, 0, &extra);
        assert!(
            text.contains("# HELP perch_odd Odd \\\\ help\\ntext.\n"),
            "{text}"
        );
        assert_eq!(
            value_of(&samples, "prediction_total", &[("status", "ok")]),
            0.0
        );
    }
}
