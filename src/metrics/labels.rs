//! The label sets of tokengate's metric families, typed.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// The statuses counted in their own series (code and label); any other is `other`.
pub(super) const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (204, "204"),
    (307, "307"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (414, "414"),
    (429, "429"),
    (431, "431"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteStatus {
    pub(super) route: &'static str,
    pub(super) status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteLabel {
    pub(super) route: &'static str,
}

/// `outcome`, and `key` (the key's label) for `ok` only.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct AuthLabels {
    pub(super) outcome: &'static str,
    pub(super) key: Option<Arc<str>>,
}

impl EncodeLabelSet for AuthLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.key {
            None => [("outcome", self.outcome)].as_slice().encode(encoder),
            Some(key) => [("outcome", self.outcome), ("key", key)]
                .as_slice()
                .encode(encoder),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeyLabel {
    pub(super) key: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ProtocolLabel {
    pub(super) protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabel {
    pub(super) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabel {
    pub(super) version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StatusLabel {
    pub(super) status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub(super) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct GrpcLabels {
    pub(super) method: &'static str,
    pub(super) outcome: &'static str,
}
