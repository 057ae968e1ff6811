//! Prometheus metrics. Every label set is resolved once — at start-up, or
//! when keys are reloaded — into a handle kept in an array, so recording a
//! request is an index and an atomic increment, never a label lookup.
//! `prometheus-client` owns the metric types and the text exposition format.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::auth::KeySet;

type Labels = Vec<(String, String)>;

/// Reads the access-log writer's count of dropped lines.
pub type DroppedSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Route labels: the route table's paths, then `other` (404s, redirects,
/// requests rejected before routing).
pub const ROUTE_LABELS: &[&str] = &[
    "public",
    "protected",
    "healthz",
    "readyz",
    "metrics",
    "other",
];
/// Index of the `other` route label.
pub const OTHER_ROUTE: usize = ROUTE_LABELS.len() - 1;
const STATUSES: &[u16] = &[200, 204, 307, 400, 401, 404, 405, 414, 429, 431, 503];

/// How a connection's protocol is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x over cleartext.
    H1,
    /// HTTP/2 with prior knowledge over cleartext.
    H2,
    /// A TLS handshake completed.
    Tls,
}

/// What the guard decided, as a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMetric {
    /// A key was accepted; its index in the live key set.
    Ok(usize),
    /// No credential.
    Missing,
    /// A wrong credential.
    Invalid,
    /// Over the failed-credential limit.
    Throttled,
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    /// `[route][status]`; the last status column is `other`.
    requests: Vec<Counter>,
    durations: Vec<Histogram>,
    auth_family: Family<Labels, Counter>,
    missing: Counter,
    invalid: Counter,
    throttled: Counter,
    open_connections: Gauge,
    accepted: [Counter; 3],
    reloads_ok: Counter,
    reloads_failed: Counter,
    keys_loaded: Gauge,
    log_dropped: Counter,
    /// Lines the access-log writer reports dropped, and how many were counted.
    log_dropped_source: Mutex<Option<(DroppedSource, u64)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric and resolves every fixed label set.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokengate");

        let requests_family = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            requests_family.clone(),
        );
        let mut requests = Vec::new();
        for route in ROUTE_LABELS {
            for status in STATUSES
                .iter()
                .map(u16::to_string)
                .chain(["other".to_owned()])
            {
                requests.push(
                    requests_family
                        .get_or_create_owned(&labels(&[("route", route), ("status", &status)])),
                );
            }
        }

        let durations_family = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
            ])
        });
        registry.register(
            "request_duration_seconds",
            "Time spent answering a request in the handler, by route",
            durations_family.clone(),
        );
        let durations = ROUTE_LABELS
            .iter()
            .map(|r| durations_family.get_or_create_owned(&labels(&[("route", r)])))
            .collect();

        let auth_family = Family::<Labels, Counter>::default();
        registry.register(
            "auth",
            "Credential checks on protected routes, by outcome (and key label for ok)",
            auth_family.clone(),
        );
        let missing = auth_family.get_or_create_owned(&labels(&[("outcome", "missing")]));
        let invalid = auth_family.get_or_create_owned(&labels(&[("outcome", "invalid")]));
        let throttled = auth_family.get_or_create_owned(&labels(&[("outcome", "throttled")]));

        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections currently open",
            open_connections.clone(),
        );
        let accepted_family = Family::<Labels, Counter>::default();
        registry.register(
            "connections_accepted",
            "Connections accepted, by protocol (h1 and h2 counted at their first request)",
            accepted_family.clone(),
        );
        let accepted = ["h1", "h2", "tls"]
            .map(|p| accepted_family.get_or_create_owned(&labels(&[("protocol", p)])));

        let reloads_family = Family::<Labels, Counter>::default();
        registry.register(
            "key_reloads",
            "Key-file reloads, by result",
            reloads_family.clone(),
        );
        let reloads_ok = reloads_family.get_or_create_owned(&labels(&[("result", "success")]));
        let reloads_failed = reloads_family.get_or_create_owned(&labels(&[("result", "failure")]));
        let keys_loaded = Gauge::default();
        registry.register(
            "keys_loaded",
            "Keys currently accepted",
            keys_loaded.clone(),
        );

        let log_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer could not keep up",
            log_dropped.clone(),
        );

        let build = Family::<Labels, Gauge>::default();
        registry.register("build_info", "Build information", build.clone());
        build
            .get_or_create(&labels(&[("version", env!("CARGO_PKG_VERSION"))]))
            .set(1);

        Metrics {
            registry,
            requests,
            durations,
            auth_family,
            missing,
            invalid,
            throttled,
            open_connections,
            accepted,
            reloads_ok,
            reloads_failed,
            keys_loaded,
            log_dropped,
            log_dropped_source: Mutex::new(None),
        }
    }

    /// Resolves the `ok` counter of every key (at start-up and on reload).
    pub fn key_counters(&self, keys: &KeySet) -> Vec<Counter> {
        self.keys_loaded
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        keys.keys()
            .iter()
            .map(|k| {
                self.auth_family
                    .get_or_create_owned(&labels(&[("outcome", "ok"), ("key", k.label())]))
            })
            .collect()
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&self, route: usize, status: StatusCode, elapsed: Duration) {
        let column = STATUSES
            .iter()
            .position(|&s| s == status.as_u16())
            .unwrap_or(STATUSES.len());
        let route = route.min(OTHER_ROUTE);
        self.requests[route * (STATUSES.len() + 1) + column].inc();
        self.durations[route].observe(elapsed.as_secs_f64());
    }

    /// Records what the guard decided.
    #[inline]
    pub fn record_auth(&self, outcome: AuthMetric, ok_counters: &[Counter]) {
        match outcome {
            AuthMetric::Ok(i) => {
                if let Some(c) = ok_counters.get(i) {
                    c.inc();
                }
            }
            AuthMetric::Missing => {
                self.missing.inc();
            }
            AuthMetric::Invalid => {
                self.invalid.inc();
            }
            AuthMetric::Throttled => {
                self.throttled.inc();
            }
        }
    }

    /// A connection opened.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.open_connections.dec();
    }

    /// A connection's protocol became known.
    pub fn accepted(&self, protocol: Protocol) {
        let i = match protocol {
            Protocol::H1 => 0,
            Protocol::H2 => 1,
            Protocol::Tls => 2,
        };
        self.accepted[i].inc();
    }

    /// A key reload finished.
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
    }

    /// Where the access-log writer reports its dropped lines.
    pub fn set_log_dropped_source(&self, source: DroppedSource) {
        *self
            .log_dropped_source
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((source, 0));
    }

    /// The text exposition (Prometheus text format 0.0.4 / OpenMetrics text).
    pub fn render(&self) -> String {
        if let Some((source, counted)) = &mut *self
            .log_dropped_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            let now = source();
            self.log_dropped.inc_by(now.saturating_sub(*counted));
            *counted = now;
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Digest, Key, KeySource};

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        let mut keys = KeySet::new();
        keys.insert(Key::new(Digest::of(b"a"), "ci-bot", KeySource::Env))
            .expect("unique");
        let ok = m.key_counters(&keys);
        m.record(0, StatusCode::OK, Duration::from_micros(20));
        m.record(1, StatusCode::UNAUTHORIZED, Duration::from_micros(30));
        m.record(9, StatusCode::IM_A_TEAPOT, Duration::from_micros(30));
        m.record_auth(AuthMetric::Ok(0), &ok);
        m.record_auth(AuthMetric::Invalid, &ok);
        m.connection_opened();
        m.accepted(Protocol::H2);
        m.reloaded(false);
        let text = m.render();
        for needle in [
            r#"tokengate_requests_total{route="public",status="200"} 1"#,
            r#"tokengate_requests_total{route="protected",status="401"} 1"#,
            r#"tokengate_requests_total{route="other",status="other"} 1"#,
            r#"tokengate_auth_total{outcome="ok",key="ci-bot"} 1"#,
            r#"tokengate_auth_total{outcome="invalid"} 1"#,
            r#"tokengate_request_duration_seconds_bucket{le="0.000025",route="public"} 1"#,
            "tokengate_open_connections 1",
            r#"tokengate_connections_accepted_total{protocol="h2"} 1"#,
            r#"tokengate_key_reloads_total{result="failure"} 1"#,
            "tokengate_keys_loaded 1",
            r#"tokengate_build_info{version=""#,
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
