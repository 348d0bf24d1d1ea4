//! The Prometheus text format (0.0.4; OpenMetrics text parses too), read into flat samples.
//!
//! One parser for the workspace: `a3s-code stats` builds its view from it, and `test-support`
//! compiles this same file (`#[path]`) for its `metric()` helper. It needs only `std`, so
//! neither crate depends on the other. Crates on crates.io were tried and rejected: see
//! `quoted_commas_and_histogram_series_survive` for what `prometheus-parse` got wrong.

use std::collections::BTreeMap;

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Parses the Prometheus text format (0.0.4; OpenMetrics text parses too). Comments, blank
/// and malformed lines are skipped.
pub(crate) fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // key
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let samples = parse_prometheus(
            "# EOF\nup 1\nx_bucket{le=\"+Inf\",a=\"q\\\"uo\\\\te\"} 7\nbad line\nx{a=\"1\"} +Inf\n",
        );
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "up");
        assert_eq!(samples[1].labels["le"], "+Inf");
        assert_eq!(samples[1].labels["a"], "q\"uo\\te");
        assert_eq!(samples[1].value, 7.0);
        assert!(samples[2].value.is_infinite());
    }

    /// What `prometheus-parse` 0.2.5 got wrong when it was tried here: it kept the escapes, cut
    /// `b` at its comma, and folded the histogram's buckets into one sample.
    #[test]
    fn quoted_commas_and_histogram_series_survive() {
        let samples = parse_prometheus(concat!(
            "# HELP a3s_task_latency_seconds Latency.\n",
            "# TYPE a3s_task_latency_seconds histogram\n",
            "a3s_task_latency_seconds_bucket{session=\"s\",lane=\"query\",le=\"0.005\"} 3\n",
            "a3s_task_latency_seconds_bucket{session=\"s\",lane=\"query\",le=\"+Inf\"} 7\n",
            "a3s_task_latency_seconds_sum{session=\"s\",lane=\"query\"} 0.25\n",
            "a3s_task_latency_seconds_count{session=\"s\",lane=\"query\"} 7\n",
            "c_total{b=\"x,y=z}\"} 5\n",
            "# EOF\n",
        ));
        let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a3s_task_latency_seconds_bucket",
                "a3s_task_latency_seconds_bucket",
                "a3s_task_latency_seconds_sum",
                "a3s_task_latency_seconds_count",
                "c_total",
            ]
        );
        assert_eq!(samples[1].labels["le"], "+Inf");
        assert_eq!(samples[1].labels["lane"], "query");
        assert_eq!(samples[1].value, 7.0);
        assert_eq!(samples[2].value, 0.25);
        assert_eq!(samples[4].labels.len(), 1);
        assert_eq!(samples[4].labels["b"], "x,y=z}");
    }
}
