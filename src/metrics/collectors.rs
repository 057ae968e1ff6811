//! The series read at scrape time rather than counted: dropped access-log
//! lines, readiness, each key's client networks.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

use super::DroppedSource;
use super::labels::KeyLabel;
use super::networks::KeyNetworks;

/// `tokengate_access_log_dropped_lines_total`, read from the access-log
/// writer at scrape time.
pub(super) struct DroppedLines(pub(super) DroppedSource);

/// `tokengate_ready`: 1 while serving, 0 from the moment the drain begins
/// (what `/readyz` says), read at scrape time.
#[derive(Debug)]
pub(super) struct Ready(pub(super) Arc<crate::lifecycle::Lifecycle>);

impl Collector for Ready {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let serving = self.0.phase() == crate::lifecycle::Phase::Serving;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(i64::from(serving));
        let metric = encoder.encode_descriptor(
            "ready",
            "1 while the server takes traffic, 0 once shutdown began (as /readyz)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// `tokengate_key_client_networks{key}`, estimated at scrape time.
#[derive(Debug)]
pub(super) struct ClientNetworks(pub(super) Arc<KeyNetworks>);

impl Collector for ClientNetworks {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut family = encoder.encode_descriptor(
            "key_client_networks",
            "Distinct client networks (/24, /48) that used each key in the last 30 to 60 minutes (HyperLogLog, about 5 % error)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (key, estimate) in self.0.estimates(now) {
            let gauge = prometheus_client::metrics::gauge::ConstGauge::new(estimate.round() as i64);
            gauge.encode(family.encode_family(&KeyLabel { key })?)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for DroppedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DroppedLines")
    }
}

impl Collector for DroppedLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new((self.0)());
        let metric = encoder.encode_descriptor(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer could not keep up",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}
