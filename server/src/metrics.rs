//! The server's counters and gauges, shared by the HTTP side and the model thread, and their
//! Prometheus text form (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Default)]
pub struct Metrics {
    /// Answered requests by (endpoint, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queue_depth: AtomicUsize,
    pub slots_busy: AtomicUsize,
    pub slots_total: AtomicUsize,
    /// Forward passes run, and the sequences and tokens they carried.
    pub steps: AtomicU64,
    pub step_sequences: AtomicU64,
    pub step_tokens: AtomicU64,
    /// Requests that ended because their client went away.
    pub cancelled: AtomicU64,
    /// Requests turned away because the queue was full.
    pub rejected: AtomicU64,
}

/// The endpoints counted by name; anything else is "other" (so a scan cannot grow the table).
const ENDPOINTS: [&str; 5] = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"];

impl Metrics {
    pub fn count_request(&self, path: &str, status: u16) {
        let endpoint = ENDPOINTS.iter().find(|e| **e == path).copied().unwrap_or("other");
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry((endpoint, status)).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        out.push_str("# HELP tern_requests_total Requests answered, by endpoint and HTTP status.\n");
        out.push_str("# TYPE tern_requests_total counter\n");
        for ((endpoint, code), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "tern_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}");
        }
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric("tern_prompt_tokens_total", "counter", "Prompt tokens processed.", load(&self.prompt_tokens));
        metric("tern_generated_tokens_total", "counter", "Tokens generated.", load(&self.generated_tokens));
        metric("tern_queue_depth", "gauge", "Requests waiting for a slot.", gauge(&self.queue_depth) as u64);
        metric(
            "tern_slots_busy",
            "gauge",
            "Slots with a sequence in progress.",
            gauge(&self.slots_busy) as u64,
        );
        metric(
            "tern_slots_total",
            "gauge",
            "Sequences decoded together at most (--parallel).",
            gauge(&self.slots_total) as u64,
        );
        metric("tern_steps_total", "counter", "Forward passes run.", load(&self.steps));
        metric(
            "tern_step_sequences_total",
            "counter",
            "Sequences carried by forward passes.",
            load(&self.step_sequences),
        );
        metric(
            "tern_step_tokens_total",
            "counter",
            "Tokens carried by forward passes.",
            load(&self.step_tokens),
        );
        metric(
            "tern_cancelled_total",
            "counter",
            "Requests ended because the client went away.",
            load(&self.cancelled),
        );
        metric(
            "tern_rejected_total",
            "counter",
            "Requests refused with 503 because the queue was full.",
            load(&self.rejected),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_counts_by_endpoint() {
        let m = Metrics::default();
        m.count_request("/v1/completions", 200);
        m.count_request("/v1/completions", 200);
        m.count_request("/nope", 404);
        m.generated_tokens.fetch_add(42, Ordering::Relaxed);
        m.queue_depth.store(3, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains("tern_requests_total{endpoint=\"/v1/completions\",code=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("tern_requests_total{endpoint=\"other\",code=\"404\"} 1\n"));
        assert!(
            text.contains("# TYPE tern_generated_tokens_total counter\ntern_generated_tokens_total 42\n")
        );
        assert!(text.contains("tern_queue_depth 3\n"));
        // Every sample line is `name{labels} value` or `name value` with a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
