//! The limits store's series (`tokengate_limits_store_*`), registered with a
//! Redis store only.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::labels::{KindLabel, ResultLabel};
use crate::limits::{STORE_ERROR_KINDS, StoreMetrics};

/// Registers the limits store's series.
pub(super) fn register(registry: &mut Registry) -> StoreMetrics {
    let up = Gauge::default();
    up.set(1);
    registry.register(
        "limits_store_up",
        "Whether the limits store answers (0: requests follow --limits-store-failure)",
        up.clone(),
    );
    let calls_family = Family::<ResultLabel, Counter>::default();
    registry.register(
        "limits_store_calls",
        "Calls to the limits store, by result (ok, error, timeout)",
        calls_family.clone(),
    );
    let calls = ["ok", "error", "timeout"]
        .map(|result| calls_family.get_or_create_owned(&ResultLabel { result }));
    let errors_family = Family::<KindLabel, Counter>::default();
    registry.register(
        "limits_store_errors",
        "Failed limits-store calls, by kind (timeout, io, auth, server, reply, other)",
        errors_family.clone(),
    );
    let errors =
        STORE_ERROR_KINDS.map(|kind| errors_family.get_or_create_owned(&KindLabel { kind }));
    let duration = Histogram::new([
        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    ]);
    registry.register(
        "limits_store_duration_seconds",
        "Time a successful limits-store call took",
        duration.clone(),
    );
    StoreMetrics {
        up,
        calls,
        errors,
        duration,
    }
}
