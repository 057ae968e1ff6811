//! `tokengate_grpc_calls_total{method, outcome}`: gRPC calls by method and
//! by what they answered, each series created at its first call and then
//! kept at hand (a family lookup hashes and locks).

use std::sync::OnceLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::labels::GrpcLabels;
use crate::grpc::{CallOutcome, GrpcMethod};

/// The gRPC series (registered with gRPC on).
#[derive(Debug)]
pub(crate) struct GrpcMetrics {
    family: Family<GrpcLabels, Counter>,
    cells: [[OnceLock<Counter>; CallOutcome::LABELS.len()]; GrpcMethod::LABELS.len()],
}

impl GrpcMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let family = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "grpc_calls",
            "gRPC calls, by method (check, should_rate_limit, health, other) and outcome",
            family.clone(),
        );
        GrpcMetrics {
            family,
            cells: Default::default(),
        }
    }

    /// Counts one call.
    pub(crate) fn count(&self, method: GrpcMethod, outcome: CallOutcome) {
        self.cells[method as usize][outcome as usize]
            .get_or_init(|| {
                self.family.get_or_create_owned(&GrpcLabels {
                    method: method.label(),
                    outcome: outcome.label(),
                })
            })
            .inc();
    }
}
