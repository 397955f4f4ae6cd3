//! What `/metrics` shows, as typed values ([`Family`], [`Sample`],
//! [`Value`]), and their Prometheus text exposition (format 0.0.4,
//! [`write_text`]). The engine builds the families from its counters
//! and histograms; this module alone decides how they are written, so a
//! metric cannot be half-written or named twice in two styles.
//!
//! The format, as written here: each family is one `# HELP name text`
//! line, one `# TYPE name counter|gauge|histogram` line, then its samples,
//! `name{label="value",...} number`. A histogram's sample is its cumulative
//! buckets (`name_bucket{...,le="0.005"}`, the last `le="+Inf"`), then
//! `name_sum` and `name_count`; its count is the `+Inf` bucket by
//! construction (the buckets are summed, never counted apart), so the two
//! always agree. Label values are escaped (`\\`, `\"`, `\n`), help texts
//! too (`\\`, `\n`).
//!
//! [`parse_text`] reads the format back, strictly (every line a comment
//! or a sample, every sample of a family that was typed before it, no
//! series twice): the unit tests and the engine's integration tests check
//! every scrape with it.

use std::collections::HashSet;
use std::io::Write;

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (its name ends in `_total`).
    Counter,
    /// A value now.
    Gauge,
    /// Observations in fixed buckets, with their sum and count.
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

/// One metric family: a name, its help, its type, and a sample per label
/// set. A family with no samples is still written (its `HELP` and `TYPE`),
/// so a scrape names every metric the server has.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// `switchboard_...` (`_total` for counters, the unit last).
    pub name: &'static str,
    /// What it measures (its `# HELP` line).
    pub help: &'static str,
    /// Its type; every sample's value must be of it.
    pub kind: Kind,
    /// One per label set.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Family {
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample with `labels`.
    pub fn push(&mut self, labels: Vec<Label>, value: Value) {
        self.samples.push(Sample { labels, value });
    }
}

/// One label of a sample: a name and a value (escaped when written).
pub type Label = (&'static str, String);

/// One series of a family.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its labels, in the order written.
    pub labels: Vec<Label>,
    /// Its value.
    pub value: Value,
}

/// A sample's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A counter's or a gauge's count.
    Int(u64),
    /// A gauge with fractions (seconds, a ratio).
    Float(f64),
    /// A histogram's buckets, sum and count.
    Histogram(Histogram),
}

/// A histogram's state: observations per bucket, and their sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// The buckets' upper bounds (`le`), increasing, in the family's unit
    /// (the `+Inf` bucket is implied).
    pub bounds: &'static [f64],
    /// Observations per bucket, not cumulative: `bounds.len() + 1`
    /// entries, the last for those above every bound.
    pub counts: Vec<u64>,
    /// The sum of the observations, in the family's unit.
    pub sum: f64,
}

impl Histogram {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Writes `families` in the text format (see the module doc).
pub fn write_text(out: &mut Vec<u8>, families: &[Family]) {
    for family in families {
        debug_assert!(valid_name(family.name), "{}", family.name);
        debug_assert!(
            family.kind != Kind::Counter || family.name.ends_with("_total"),
            "counter {} must end in _total",
            family.name
        );
        out.extend_from_slice(b"# HELP ");
        out.extend_from_slice(family.name.as_bytes());
        out.push(b' ');
        for ch in family.help.chars() {
            match ch {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                ch => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        let _ = writeln!(out, "\n# TYPE {} {}", family.name, family.kind.as_str());
        for sample in &family.samples {
            write_sample(out, family, sample);
        }
    }
}

fn write_sample(out: &mut Vec<u8>, family: &Family, sample: &Sample) {
    let name = family.name;
    match (&sample.value, family.kind) {
        (Value::Int(n), Kind::Counter | Kind::Gauge) => {
            write_series(out, name, "", &sample.labels, None);
            let _ = writeln!(out, " {n}");
        }
        (Value::Float(x), Kind::Gauge) => {
            write_series(out, name, "", &sample.labels, None);
            out.push(b' ');
            write_float(out, *x);
            out.push(b'\n');
        }
        (Value::Histogram(h), Kind::Histogram) => {
            debug_assert_eq!(h.counts.len(), h.bounds.len() + 1, "{name}");
            let mut cumulative = 0;
            for (i, count) in h.counts.iter().enumerate() {
                cumulative += count;
                let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                write_series(out, name, "_bucket", &sample.labels, Some(le));
                let _ = writeln!(out, " {cumulative}");
            }
            write_series(out, name, "_sum", &sample.labels, None);
            out.push(b' ');
            write_float(out, h.sum);
            out.push(b'\n');
            write_series(out, name, "_count", &sample.labels, None);
            let _ = writeln!(out, " {cumulative}");
        }
        (value, kind) => debug_assert!(false, "{name}: a {kind:?} with value {value:?}"),
    }
}

/// `name{a="x",b="y",le="0.5"}` (no braces without labels).
fn write_series(out: &mut Vec<u8>, name: &str, suffix: &str, labels: &[Label], le: Option<f64>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push(b'{');
    for (i, (label, value)) in labels.iter().enumerate() {
        debug_assert!(valid_name(label) && *label != "le", "{label}");
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(label.as_bytes());
        out.extend_from_slice(b"=\"");
        for ch in value.chars() {
            match ch {
                '\\' => out.extend_from_slice(b"\\\\"),
                '"' => out.extend_from_slice(b"\\\""),
                '\n' => out.extend_from_slice(b"\\n"),
                ch => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out.push(b'"');
    }
    if let Some(le) = le {
        if !labels.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"le=\"");
        write_float(out, le);
        out.push(b'"');
    }
    out.push(b'}');
}

/// A float as the format spells it: `+Inf`, `-Inf`, `NaN`, else Rust's
/// shortest round-trip decimal (never an exponent).
fn write_float(out: &mut Vec<u8>, x: f64) {
    if x.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if x == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if x == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else {
        let _ = write!(out, "{x}");
    }
}

/// A metric or label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// One sample line read back by [`parse_text`].
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The sample's name (with a histogram's `_bucket`, `_sum` or
    /// `_count`).
    pub name: String,
    /// Its family's name.
    pub family: String,
    /// Its family's type.
    pub kind: Kind,
    /// Its labels, unescaped, in the order written.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Parsed {
    /// The value of label `name`, if it has one.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the text format strictly: every line is `# HELP`, `# TYPE` or a
/// sample; a family's `HELP` and `TYPE` come once each, before its
/// samples; a sample's name is its family's (a histogram's with its
/// suffixes); counters end in `_total`; no series (name and labels)
/// appears twice; values parse. The error names the line.
pub fn parse_text(text: &str) -> Result<Vec<Parsed>, String> {
    let mut out = Vec::new();
    let mut typed: Vec<(String, Kind)> = Vec::new();
    let mut helped: HashSet<String> = HashSet::new();
    let mut series: HashSet<String> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| Err(format!("line {}: {why}: {line:?}", n + 1));
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_name(name) || !helped.insert(name.to_string()) {
                return fail("a HELP line for a bad or repeated name");
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next()) else {
                return fail("a TYPE line is `# TYPE name kind`");
            };
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                _ => return fail("an unknown type"),
            };
            if !valid_name(name) || typed.iter().any(|(t, _)| t == name) {
                return fail("a TYPE line for a bad or repeated name");
            }
            if kind == Kind::Counter && !name.ends_with("_total") {
                return fail("a counter whose name does not end in _total");
            }
            if !helped.contains(name) {
                return fail("a TYPE line without its HELP line before it");
            }
            typed.push((name.to_string(), kind));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return fail("neither HELP, TYPE nor a sample");
        }
        let (series_text, value) = match line.rsplit_once(' ') {
            Some(parts) => parts,
            None => return fail("a sample is `name{labels} value`"),
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => return fail("a value that is not a number"),
            },
        };
        let (name, labels) = match series_text.split_once('{') {
            None => (series_text, Vec::new()),
            Some((name, rest)) => match rest.strip_suffix('}').map(parse_labels) {
                Some(Ok(labels)) => (name, labels),
                Some(Err(why)) => return fail(&why),
                None => return fail("labels not closed by `}`"),
            },
        };
        if !valid_name(name) {
            return fail("a bad metric name");
        }
        let Some((family, kind)) = typed.last().cloned() else {
            return fail("a sample before any TYPE line");
        };
        let suffix_ok = match kind {
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family.as_str())),
            Kind::Counter | Kind::Gauge => name == family,
        };
        if !suffix_ok {
            return fail(&format!("a sample that is not of family {family}"));
        }
        if name.ends_with("_bucket") && !labels.iter().any(|(l, _)| l == "le") {
            return fail("a bucket without `le`");
        }
        if !series.insert(series_text.to_string()) {
            return fail("a series written twice");
        }
        out.push(Parsed {
            name: name.to_string(),
            family,
            kind,
            labels,
            value,
        });
    }
    Ok(out)
}

/// `a="x",b="y"` (the text between the braces), unescaped.
fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once("=\"") else {
            return Err("a label is `name=\"value\"`".into());
        };
        if !valid_name(name) || labels.iter().any(|(n, _)| n == name) {
            return Err(format!("a bad or repeated label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("a label value not closed by `\"`".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err("a bad escape in a label value".into()),
                },
                Some((_, ch)) => value.push(ch),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) if !r.is_empty() => r,
            Some(_) => return Err("a trailing comma".into()),
            None if rest.is_empty() => rest,
            None => return Err("labels are separated by `,`".into()),
        };
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.001, 0.01, 0.1];

    fn families() -> Vec<Family> {
        let mut requests = Family::new(
            "switchboard_requests_total",
            "Requests answered.",
            Kind::Counter,
        );
        requests.push(
            vec![
                ("shard", "0".into()),
                ("endpoint", "send".into()),
                ("outcome", "ok".into()),
            ],
            Value::Int(3),
        );
        requests.push(
            vec![
                ("shard", "1".into()),
                ("endpoint", "send".into()),
                ("outcome", "not_friends".into()),
            ],
            Value::Int(1),
        );
        let mut lag = Family::new(
            "switchboard_loop_lag_last_seconds",
            "How late the last tick fired.",
            Kind::Gauge,
        );
        lag.push(vec![("shard", "0".into())], Value::Float(0.0005));
        let mut rss = Family::new(
            "process_resident_memory_bytes",
            "Resident memory.",
            Kind::Gauge,
        );
        rss.push(Vec::new(), Value::Int(12_345_678));
        let mut latency = Family::new(
            "switchboard_request_duration_seconds",
            "Request latency.",
            Kind::Histogram,
        );
        latency.push(
            vec![("shard", "0".into()), ("endpoint", "send".into())],
            Value::Histogram(Histogram {
                bounds: BOUNDS,
                counts: vec![2, 0, 1, 1],
                sum: 0.75,
            }),
        );
        let empty = Family::new("switchboard_mysql_pool_waiting", "Waiting.", Kind::Gauge);
        vec![requests, lag, rss, latency, empty]
    }

    #[test]
    fn families_are_written_in_the_text_format() {
        let mut out = Vec::new();
        write_text(&mut out, &families());
        let expected = "\
# HELP switchboard_requests_total Requests answered.
# TYPE switchboard_requests_total counter
switchboard_requests_total{shard=\"0\",endpoint=\"send\",outcome=\"ok\"} 3
switchboard_requests_total{shard=\"1\",endpoint=\"send\",outcome=\"not_friends\"} 1
# HELP switchboard_loop_lag_last_seconds How late the last tick fired.
# TYPE switchboard_loop_lag_last_seconds gauge
switchboard_loop_lag_last_seconds{shard=\"0\"} 0.0005
# HELP process_resident_memory_bytes Resident memory.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 12345678
# HELP switchboard_request_duration_seconds Request latency.
# TYPE switchboard_request_duration_seconds histogram
switchboard_request_duration_seconds_bucket{shard=\"0\",endpoint=\"send\",le=\"0.001\"} 2
switchboard_request_duration_seconds_bucket{shard=\"0\",endpoint=\"send\",le=\"0.01\"} 2
switchboard_request_duration_seconds_bucket{shard=\"0\",endpoint=\"send\",le=\"0.1\"} 3
switchboard_request_duration_seconds_bucket{shard=\"0\",endpoint=\"send\",le=\"+Inf\"} 4
switchboard_request_duration_seconds_sum{shard=\"0\",endpoint=\"send\"} 0.75
switchboard_request_duration_seconds_count{shard=\"0\",endpoint=\"send\"} 4
# HELP switchboard_mysql_pool_waiting Waiting.
# TYPE switchboard_mysql_pool_waiting gauge
";
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        let parsed = parse_text(expected).unwrap();
        assert_eq!(parsed.len(), 10);
        let inf = parsed
            .iter()
            .find(|p| p.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(
            (inf.family.as_str(), inf.kind, inf.value),
            ("switchboard_request_duration_seconds", Kind::Histogram, 4.0)
        );
    }

    #[test]
    fn label_values_and_help_are_escaped_and_read_back() {
        let mut family = Family::new("odd_total", "A \\ and a\nnewline.", Kind::Counter);
        family.push(
            vec![("path", "a\"b\\c\nd".into()), ("x", String::new())],
            Value::Int(1),
        );
        let mut out = Vec::new();
        write_text(&mut out, &[family]);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "# HELP odd_total A \\\\ and a\\nnewline.\n# TYPE odd_total counter\n\
             odd_total{path=\"a\\\"b\\\\c\\nd\",x=\"\"} 1\n"
        );
        let parsed = parse_text(&text).unwrap();
        assert_eq!(parsed[0].label("path"), Some("a\"b\\c\nd"));
        assert_eq!(parsed[0].label("x"), Some(""));
    }

    /// Each malformed exposition, with the reason `parse_text` gives.
    #[test]
    fn the_parser_is_strict_about_every_line() {
        let typed = "# HELP a_total x\n# TYPE a_total counter\n";
        let table: &[(String, &str)] = &[
            ("a_total 1\n".into(), "a sample before any TYPE line"),
            (format!("{typed}b_total 1\n"), "not of family a_total"),
            (
                format!("{typed}a_total{{x=\"1\"}} 1\na_total{{x=\"1\"}} 2\n"),
                "written twice",
            ),
            (format!("{typed}a_total one\n"), "not a number"),
            (format!("{typed}a_total{{x=1}} 1\n"), "a label is"),
            (format!("{typed}a_total{{x=\"1\",}} 1\n"), "trailing comma"),
            (format!("{typed}a_total{{x=\"1\" 1\n"), "not closed"),
            (
                format!("{typed}a_total{{x=\"1\",x=\"2\"}} 1\n"),
                "repeated label",
            ),
            (format!("{typed}\n"), "neither HELP"),
            (
                "# HELP a x\n# TYPE a counter\n".into(),
                "does not end in _total",
            ),
            ("# TYPE a gauge\n".into(), "without its HELP"),
            (
                "# HELP h x\n# TYPE h histogram\nh_bucket 1\n".into(),
                "without `le`",
            ),
            (format!("{typed}# TYPE a_total counter\n"), "repeated name"),
            ("# HELP 1a x\n".into(), "bad or repeated name"),
        ];
        for (text, why) in table {
            let got = parse_text(text).expect_err(text);
            assert!(got.contains(why), "{text:?}: {got}");
        }
    }

    #[test]
    fn floats_are_written_without_exponents() {
        let check = |x: f64, expected: &str| {
            let mut out = Vec::new();
            write_float(&mut out, x);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{x}");
        };
        check(0.0001, "0.0001");
        check(1e-7, "0.0000001");
        check(2.5, "2.5");
        check(60.0, "60");
        check(f64::INFINITY, "+Inf");
        check(f64::NAN, "NaN");
    }
}
