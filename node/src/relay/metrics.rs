//! `/metrics`: Prometheus text exposition of what the relay holds and did, on a loopback
//! address only. Counters count since the process started; gauges come from the store.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use instaconnect_store::RelayStore;

use super::driver::Shared;

/// Every rejection reason, so each series exists (at 0) from the start.
pub const REASONS: [&str; 10] = [
    "unknown_mailbox",
    "bad_signature",
    "stale",
    "mailbox_full",
    "disk_full",
    "rate_limited",
    "too_large",
    "too_many",
    "unavailable",
    "malformed",
];

#[derive(Clone)]
pub struct MetricsState {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn RelayStore>,
}

pub fn router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(s): State<MetricsState>) -> impl IntoResponse {
    let body = render(&s);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

fn render(s: &MetricsState) -> String {
    let m = s
        .shared
        .metrics
        .lock()
        .map(|g| g.clone())
        .unwrap_or_default();
    let totals = s.store.totals().unwrap_or_default();
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {v}");
    };
    one(
        "instaconnect_relay_envelopes",
        "gauge",
        "Sealed envelopes held.",
        totals.envelopes,
    );
    one(
        "instaconnect_relay_bytes",
        "gauge",
        "Bytes of sealed envelopes held.",
        totals.bytes,
    );
    one(
        "instaconnect_relay_mailboxes",
        "gauge",
        "Mailboxes held.",
        totals.mailboxes,
    );
    one(
        "instaconnect_relay_deposits_total",
        "counter",
        "Envelopes deposited (acknowledged after the flush).",
        m.deposits,
    );
    one(
        "instaconnect_relay_fetches_total",
        "counter",
        "Fetch requests answered.",
        m.fetches,
    );
    one(
        "instaconnect_relay_commits_total",
        "counter",
        "Store flushes that released answers (group commits).",
        m.commits,
    );
    one(
        "instaconnect_relay_committed_outputs_total",
        "counter",
        "Answers and notifications released by those flushes.",
        m.committed_outputs,
    );
    one(
        "instaconnect_relay_deletes_total",
        "counter",
        "Delete requests by mailbox owners.",
        m.deletes,
    );
    one(
        "instaconnect_relay_purges_total",
        "counter",
        "Purges by deletion secret and of whole mailboxes.",
        m.purges,
    );
    one(
        "instaconnect_relay_expired_total",
        "counter",
        "Envelopes removed because their TTL passed.",
        m.expired,
    );
    let _ = writeln!(
        out,
        "# HELP instaconnect_relay_rejections_total Requests refused, by reason; nothing changed."
    );
    let _ = writeln!(out, "# TYPE instaconnect_relay_rejections_total counter");
    for reason in REASONS {
        let v = m.rejections.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "instaconnect_relay_rejections_total{{reason=\"{reason}\"}} {v}"
        );
    }
    for (reason, v) in &m.rejections {
        if !REASONS.contains(reason) {
            let _ = writeln!(
                out,
                "instaconnect_relay_rejections_total{{reason=\"{reason}\"}} {v}"
            );
        }
    }
    out
}
