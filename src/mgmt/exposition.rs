//! A parser of the Prometheus text exposition format (version 0.0.4, the format `/metrics`
//! serves by default; OpenMetrics' `# EOF` and `# UNIT` lines are comments to it), for
//! `pcietun ctl watch`, which reads the appliance's own `/metrics` once per refresh.
//!
//! The body comes from the network, so it is hostile until parsed: every line is checked
//! against the grammar (metric and label names, quoted and escaped label values, a float value,
//! an optional integer timestamp), a malformed line is an error naming its number, and the
//! result is bounded ([`MAX_SAMPLES`], [`MAX_LABELS`] per sample). Nothing here allocates per
//! byte: names borrow from the text; only label values with escapes are copied.
//!
//! Why not a crate: the maintained parsers either pull a date-time stack (`prometheus-parse`:
//! chrono, regex, lazy_static) or target the OpenMetrics protobuf/ABNF in full; `ctl` needs the
//! sample lines of one well-known producer, about a hundred lines with property tests and a
//! fuzz target (`fuzz/fuzz_targets/mgmt_exposition.rs`).

use std::borrow::Cow;
use std::fmt;

/// Samples accepted from one body; more is an error (a body the client reads is at most
/// 16 MiB, see [`crate::mgmt::client`]; 256 functions and hosts need a few thousand).
pub const MAX_SAMPLES: usize = 200_000;
/// Labels accepted on one sample.
pub const MAX_LABELS: usize = 32;

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The metric name, suffix included (`pcietun_host_tlps_total`).
    pub name: &'a str,
    /// The labels in the order they were written.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Why a body is not the text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub what: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole body. Comment (`#`) and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample<'_>>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |what| ParseError { line: i + 1, what };
        let line = line.trim_matches(|c| c == ' ' || c == '\t');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() == MAX_SAMPLES {
            return Err(err("more samples than the client accepts"));
        }
        out.push(sample(line).map_err(err)?);
    }
    Ok(out)
}

fn is_name_start(b: u8, colon: bool) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':')
}

fn is_name_char(b: u8, colon: bool) -> bool {
    is_name_start(b, colon) || b.is_ascii_digit()
}

/// The name at the start of `s` (metric names may hold `:`, label names may not), and the rest.
fn name(s: &str, colon: bool) -> Result<(&str, &str), &'static str> {
    let b = s.as_bytes();
    if b.first().is_none_or(|&c| !is_name_start(c, colon)) {
        return Err(if colon {
            "no metric name"
        } else {
            "no label name"
        });
    }
    let end = b
        .iter()
        .position(|&c| !is_name_char(c, colon))
        .unwrap_or(b.len());
    Ok(s.split_at(end))
}

fn skip_blank(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

/// A quoted label value at the start of `s` (after its opening quote), and the rest.
fn quoted(s: &str) -> Result<(Cow<'_, str>, &str), &'static str> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let value = match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&s[..i]),
                };
                return Ok((value, &s[i + 1..]));
            }
            b'\\' => {
                let o = owned.get_or_insert_with(|| s[..i].to_string());
                match b.get(i + 1) {
                    Some(b'\\') => o.push('\\'),
                    Some(b'"') => o.push('"'),
                    Some(b'n') => o.push('\n'),
                    _ => return Err("bad escape in a label value"),
                }
                i += 2;
            }
            _ => {
                // Copy one whole UTF-8 character (the text is a &str, so `i` is on a boundary).
                let len = s[i..].chars().next().map_or(1, char::len_utf8);
                if let Some(o) = owned.as_mut() {
                    o.push_str(&s[i..i + len]);
                }
                i += len;
            }
        }
    }
    Err("unterminated label value")
}

fn labels<'a>(
    mut s: &'a str,
    out: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, &'static str> {
    loop {
        s = skip_blank(s);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let (n, rest) = name(s, false)?;
        let rest = skip_blank(rest)
            .strip_prefix('=')
            .ok_or("no '=' after a label name")?;
        let rest = skip_blank(rest)
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let (v, rest) = quoted(rest)?;
        if out.len() == MAX_LABELS {
            return Err("too many labels");
        }
        if out.iter().any(|(m, _)| *m == n) {
            return Err("label given twice");
        }
        out.push((n, v));
        s = skip_blank(rest);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label");
        }
    }
}

fn value(s: &str) -> Result<f64, &'static str> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        // Rust's parser also takes "inf", "infinity" and "nan" in any case; the format does not.
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) =>
        {
            Err("value is not a number")
        }
        _ => s.parse().map_err(|_| "value is not a number"),
    }
}

fn sample(line: &str) -> Result<Sample<'_>, &'static str> {
    let (name, rest) = name(line, true)?;
    let mut labels_out = Vec::new();
    let rest = match skip_blank(rest).strip_prefix('{') {
        Some(r) => labels(r, &mut labels_out)?,
        None => rest,
    };
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err("no blank between the name and the value");
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let v = value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| "timestamp is not an integer")?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Sample {
        name,
        labels: labels_out,
        value: v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_the_format_allows() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\n\
                    a_total{function=\"nvme0\",direction=\"up\"} 42\n\
                    b 1.5e3 1700000000000\n\
                    c{x=\"q\\\"uo\\\\te\\n\",} -Inf\n\
                    d{} NaN\n\
                    \n  e:f{ y = \"ü\" }\t+Inf\n# EOF\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].label("function"), Some("nvme0"));
        assert_eq!(s[0].label("direction"), Some("up"));
        assert_eq!(s[0].value, 42.0);
        assert_eq!((s[1].name, s[1].value), ("b", 1500.0));
        assert_eq!(s[2].label("x"), Some("q\"uo\\te\n"));
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        assert!(s[3].value.is_nan() && s[3].labels.is_empty());
        assert_eq!((s[4].name, s[4].label("y")), ("e:f", Some("ü")));
        assert_eq!(s[4].value, f64::INFINITY);
    }

    #[test]
    fn refuses_malformed_lines_naming_them() {
        for (text, what) in [
            ("1a 2", "no metric name"),
            ("a{1=\"x\"} 2", "no label name"),
            ("a{b\"x\"} 2", "no '=' after a label name"),
            ("a{b=x} 2", "label value not quoted"),
            ("a{b=\"x} 2", "unterminated label value"),
            ("a{b=\"\\t\"} 2", "bad escape in a label value"),
            ("a{b=\"x\" c=\"y\"} 2", "expected ',' or '}' after a label"),
            ("a{b=\"x\",b=\"y\"} 2", "label given twice"),
            ("a", "no value"),
            ("a{b=\"x\"}", "no value"),
            ("a x", "value is not a number"),
            ("a inf", "value is not a number"),
            ("a 1 x", "timestamp is not an integer"),
            ("a 1 2 3", "text after the timestamp"),
            ("a{b=\"x\"}2", "no blank between the name and the value"),
        ] {
            let e = parse(&format!("ok 1\n{text}\n")).unwrap_err();
            assert_eq!(e, ParseError { line: 2, what }, "{text}");
        }
        let many: String = (0..=MAX_LABELS).map(|i| format!("l{i}=\"v\",")).collect();
        let e = parse(&format!("a{{{many}}} 1")).unwrap_err();
        assert_eq!(e.what, "too many labels");
    }

    #[test]
    fn bounds_the_number_of_samples() {
        let text = "a 1\n".repeat(MAX_SAMPLES);
        assert_eq!(parse(&text).unwrap().len(), MAX_SAMPLES);
        let e = parse(&format!("{text}a 1\n")).unwrap_err();
        assert_eq!(e.line, MAX_SAMPLES + 1);
    }

    fn write(name: &str, labels: &[(String, String)], value: f64) -> String {
        let mut s = name.to_string();
        if !labels.is_empty() {
            s.push('{');
            for (i, (n, v)) in labels.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                s.push_str(&format!("{n}=\"{v}\""));
            }
            s.push('}');
        }
        let v = match value {
            f64::INFINITY => "+Inf".to_string(),
            f64::NEG_INFINITY => "-Inf".to_string(),
            v => format!("{v:?}"),
        };
        s.push_str(&format!(" {v}\n"));
        s
    }

    proptest! {
        #[test]
        fn what_is_written_is_read_back(
            name in "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            labels in proptest::collection::btree_map("[a-zA-Z_][a-zA-Z0-9_]{0,10}", any::<String>(), 0..6),
            value in any::<f64>().prop_filter("NaN has no equality", |v| !v.is_nan()),
        ) {
            let labels: Vec<(String, String)> = labels.into_iter().collect();
            let text = write(&name, &labels, value);
            let s = parse(&text).unwrap();
            prop_assert_eq!(s.len(), 1);
            prop_assert_eq!(s[0].name, name.as_str());
            prop_assert_eq!(s[0].value, value);
            let got: Vec<(String, String)> = s[0].labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            prop_assert_eq!(got, labels);
        }

        #[test]
        fn any_text_parses_or_errs_without_panicking(text in ".{0,200}") {
            if let Ok(s) = parse(&text) {
                prop_assert!(s.len() <= text.lines().count());
            }
        }
    }
}
