//! Prometheus metrics. Every label set is resolved once — at start-up, or
//! when keys are reloaded — into a handle kept in an array, so recording a
//! request is an index and an atomic increment, never a label lookup.
//! `prometheus-client` owns the metric types and the text exposition format;
//! label sets are typed (`labels`).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::keys::Outcome;
use crate::limits::{LimitKind, StoreMetrics};
use crate::routes::RouteIndex;
use labels::{
    AuthLabels, KeyLabel, KindLabel, ProtocolLabel, ResultLabel, RouteLabel, RouteStatus, STATUSES,
    StatusLabel, VersionLabel,
};
use networks::KeyNetworks;

mod collectors;
mod grpc;
mod keys;
mod labels;
mod networks;
mod store;

use collectors::{ClientNetworks, DroppedLines, Ready};
pub(crate) use grpc::GrpcMetrics;
pub(crate) use keys::KeyCounters;

/// Reads the access-log writer's count of dropped lines.
pub type DroppedSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Why a request to the upstream failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Refused or unreachable (502).
    Connect,
    /// No response head within `--upstream-timeout` (504).
    Timeout,
    /// Any other failure of the exchange (502).
    Other,
}

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

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    /// With a Redis limits store.
    store: Option<StoreMetrics>,
    /// With gRPC on.
    grpc: Option<GrpcMetrics>,
    /// `[route][status]`; the last status column is `other`, the last route `other`.
    requests: Vec<Counter>,
    durations: Vec<Histogram>,
    auth_family: Family<AuthLabels, Counter>,
    missing: Counter,
    invalid: Counter,
    expired: Counter,
    forbidden: Counter,
    throttled: Counter,
    /// `tokengate_key_expiry_timestamp_seconds{key}`, per key with `expires=`.
    key_expiry: Family<KeyLabel, Gauge>,
    canary_hits: Family<KeyLabel, Counter>,
    key_last_used: Family<KeyLabel, Gauge>,
    /// Each used key's client-network sketch (read at scrape time).
    networks: Arc<KeyNetworks>,
    upstream_requests: Family<StatusLabel, Counter>,
    /// The upstream statuses of [`STATUSES`] resolved once (a family lookup
    /// hashes and locks).
    upstream_known: Vec<Counter>,
    upstream_errors: [Counter; 3],
    upstream_duration: Histogram,
    open_connections: Gauge,
    /// Client addresses tracked by the failed-credential throttle.
    pub(crate) throttle_tracked: Gauge,
    accepted: [Counter; 3],
    reloads_ok: Counter,
    reloads_failed: Counter,
    keys_loaded: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    /// Registers every metric and resolves every fixed label set.
    /// `route_labels` are the route table's labels, `other` last; `dropped`
    /// reads the access log's dropped lines (absent without `--access-log`:
    /// the counter then reads 0).
    pub(crate) fn new(
        route_labels: &[&'static str],
        dropped: Option<DroppedSource>,
        store: bool,
        grpc: bool,
    ) -> Self {
        let mut registry = Registry::with_prefix("tokengate");
        let store = store.then(|| store::register(&mut registry));
        let grpc = grpc.then(|| GrpcMetrics::register(&mut registry));

        let requests_family = Family::<RouteStatus, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route and status",
            requests_family.clone(),
        );
        let status_labels = STATUSES.iter().map(|&(_, label)| label).chain(["other"]);
        let mut requests = Vec::new();
        for &route in route_labels {
            for status in status_labels.clone() {
                requests.push(requests_family.get_or_create_owned(&RouteStatus { route, status }));
            }
        }

        let durations_family = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
            ])
        });
        registry.register(
            "request_duration_seconds",
            "Time spent answering a request in the handler, by route",
            durations_family.clone(),
        );
        let durations = route_labels
            .iter()
            .map(|&route| durations_family.get_or_create_owned(&RouteLabel { route }))
            .collect();

        let auth_family = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth",
            "Credential checks on protected routes, by outcome (and key label for ok)",
            auth_family.clone(),
        );
        let outcome = |outcome| auth_family.get_or_create_owned(&AuthLabels { outcome, key: None });
        let (missing, invalid, expired, forbidden, throttled) = (
            outcome("missing"),
            outcome("invalid"),
            outcome("expired"),
            outcome("forbidden"),
            outcome("throttled"),
        );
        let upstream_requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests the gateway passed on, by the upstream's status",
            upstream_requests.clone(),
        );
        let upstream_known = STATUSES
            .iter()
            .map(|&(status, _)| upstream_requests.get_or_create_owned(&StatusLabel { status }))
            .collect();
        let upstream_errors_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests the upstream did not answer, by kind (connect, timeout, other)",
            upstream_errors_family.clone(),
        );
        let upstream_errors = ["connect", "timeout", "other"]
            .map(|kind| upstream_errors_family.get_or_create_owned(&KindLabel { kind }));
        let upstream_duration = Histogram::new([
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
        ]);
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response head (or failure)",
            upstream_duration.clone(),
        );
        let key_expiry = Family::<KeyLabel, Gauge>::default();
        registry.register(
            "key_expiry_timestamp_seconds",
            "When each key with an expiry stops being accepted (Unix time)",
            key_expiry.clone(),
        );
        let canary_hits = Family::<KeyLabel, Counter>::default();
        registry.register(
            "canary_hits",
            "Uses of each canary key (refused as a wrong key, and logged)",
            canary_hits.clone(),
        );
        let key_last_used = Family::<KeyLabel, Gauge>::default();
        registry.register(
            "key_last_used_timestamp_seconds",
            "When each key was last accepted (Unix time, to the second)",
            key_last_used.clone(),
        );

        let throttle_tracked = Gauge::default();
        registry.register(
            "throttle_tracked_addresses",
            "Client addresses whose failed-credential bucket is tracked (at most the table's capacity, 65536)",
            throttle_tracked.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections currently open",
            open_connections.clone(),
        );
        let accepted_family = Family::<ProtocolLabel, Counter>::default();
        registry.register(
            "connections_accepted",
            "Connections accepted, by protocol (h1 and h2 counted at their first request)",
            accepted_family.clone(),
        );
        let accepted = ["h1", "h2", "tls"]
            .map(|protocol| accepted_family.get_or_create_owned(&ProtocolLabel { protocol }));

        let reloads_family = Family::<ResultLabel, Counter>::default();
        registry.register(
            "key_reloads",
            "Key-file reloads, by result",
            reloads_family.clone(),
        );
        let reloads_ok = reloads_family.get_or_create_owned(&ResultLabel { result: "success" });
        let reloads_failed = reloads_family.get_or_create_owned(&ResultLabel { result: "failure" });
        let keys_loaded = Gauge::default();
        registry.register(
            "keys_loaded",
            "Keys currently accepted",
            keys_loaded.clone(),
        );

        registry.register_collector(Box::new(DroppedLines(
            dropped.unwrap_or_else(|| Arc::new(|| 0)),
        )));
        let networks = Arc::new(KeyNetworks::default());
        registry.register_collector(Box::new(ClientNetworks(Arc::clone(&networks))));

        let build = Family::<VersionLabel, Gauge>::default();
        registry.register("build_info", "Build information", build.clone());
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        Metrics {
            registry,
            store,
            grpc,
            requests,
            durations,
            auth_family,
            missing,
            invalid,
            expired,
            forbidden,
            throttled,
            key_expiry,
            canary_hits,
            key_last_used,
            networks,
            upstream_requests,
            upstream_known,
            upstream_errors,
            upstream_duration,
            open_connections,
            throttle_tracked,
            accepted,
            reloads_ok,
            reloads_failed,
            keys_loaded,
        }
    }

    /// Resolves the `ok` counter of every key (at start-up and on reload).
    /// The limits store's series (with a Redis store only).
    pub(crate) fn store(&self) -> Option<&StoreMetrics> {
        self.store.as_ref()
    }

    /// Reports `lifecycle`'s phase as `tokengate_ready`.
    pub(crate) fn watch_phase(&mut self, lifecycle: Arc<crate::lifecycle::Lifecycle>) {
        self.registry.register_collector(Box::new(Ready(lifecycle)));
    }

    /// The gRPC series (with gRPC on).
    pub(crate) fn grpc(&self) -> Option<&GrpcMetrics> {
        self.grpc.as_ref()
    }

    /// Records one answered request.
    #[inline]
    pub fn record(&self, route: RouteIndex, status: StatusCode, elapsed: Duration) {
        let column = STATUSES
            .iter()
            .position(|&(code, _)| code == status.as_u16())
            .unwrap_or(STATUSES.len());
        let route = route.0.min(self.durations.len() - 1);
        self.requests[route * (STATUSES.len() + 1) + column].inc();
        self.durations[route].observe(elapsed.as_secs_f64());
    }

    /// Records what the guard decided; `ok_counters` are the per-key
    /// counters aligned with the key set that decided.
    #[inline]
    pub(crate) fn record_auth(&self, outcome: &Outcome, key_counters: &[KeyCounters]) {
        let counter = match outcome {
            Outcome::Valid(id) => match key_counters.get(id.index()) {
                Some(c) => &c.ok,
                None => return,
            },
            Outcome::Canary(id) => {
                if let Some(hits) = key_counters.get(id.index()).and_then(|c| c.canary.as_ref()) {
                    hits.inc();
                }
                &self.invalid
            }
            Outcome::Limited(id, kind, _) => {
                match key_counters
                    .get(id.index())
                    .and_then(|c| c.limited.as_ref())
                {
                    Some([rate, quota]) => match kind {
                        LimitKind::Rate => rate,
                        LimitKind::Quota => quota,
                    },
                    None => return,
                }
            }
            Outcome::Missing => &self.missing,
            Outcome::Invalid => &self.invalid,
            Outcome::Expired(_) => &self.expired,
            Outcome::Forbidden(_) => &self.forbidden,
            Outcome::Throttled(_) => &self.throttled,
        };
        counter.inc();
    }

    /// The upstream answered with `status` after `elapsed`.
    pub fn upstream_answered(&self, status: StatusCode, elapsed: Duration) {
        match STATUSES
            .iter()
            .position(|&(code, _)| code == status.as_u16())
        {
            Some(i) => {
                self.upstream_known[i].inc();
            }
            None => {
                self.upstream_requests
                    .get_or_create(&StatusLabel {
                        status: status.as_u16(),
                    })
                    .inc();
            }
        }
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    /// The upstream did not answer.
    pub fn upstream_failed(&self, kind: UpstreamFailure, elapsed: Duration) {
        self.upstream_errors[kind as usize].inc();
        self.upstream_duration.observe(elapsed.as_secs_f64());
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
        self.accepted[protocol as usize].inc();
    }

    /// A key reload finished.
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
    }

    /// The text exposition (Prometheus text format 0.0.4 / OpenMetrics text).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Digest, Key, KeyId, KeySet, KeySource};

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new(
            &crate::routes::Router::labels(crate::routes::ROUTES),
            Some(Arc::new(|| 7)),
            true,
            true,
        );
        let mut keys = KeySet::new();
        keys.insert(Key::new(Digest::of(b"a"), "ci-bot", KeySource::Env))
            .expect("unique");
        let ok = m.key_counters(&keys);
        m.record(RouteIndex(0), StatusCode::OK, Duration::from_micros(20));
        m.record(
            RouteIndex(1),
            StatusCode::UNAUTHORIZED,
            Duration::from_micros(30),
        );
        m.record(
            RouteIndex(9),
            StatusCode::IM_A_TEAPOT,
            Duration::from_micros(30),
        );
        m.record_auth(&Outcome::Valid(KeyId::new(0)), &ok);
        m.record_auth(&Outcome::Invalid, &ok);
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
            "tokengate_access_log_dropped_lines_total 7",
            r#"tokengate_build_info{version=""#,
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }
}
