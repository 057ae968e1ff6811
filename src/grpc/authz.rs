//! `envoy.service.auth.v3.Authorization/Check`: what of a `CheckRequest`
//! the guard reads, and the `CheckResponse` for its decision. The decision
//! itself is the HTTP routes' ([`crate::app::App`] calls the guard).

use std::collections::HashMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use http::{HeaderMap, HeaderName, Method};
use prost::Message;

use super::{Code, Status};
use crate::keys::Key;
use crate::limits::{Checked, Limits};

/// What the guard needs of a `CheckRequest`.
#[derive(Debug)]
pub(crate) struct Checking {
    pub(crate) method: Method,
    /// The path (no query), normalised as `/auth/verify` normalises it.
    pub(crate) path: String,
    /// The token header and `authorization`, if Envoy sent them.
    pub(crate) headers: HeaderMap,
    /// `attributes.source.address`: the client, as Envoy saw it.
    pub(crate) source: Option<IpAddr>,
    /// The route's `context_extensions` say `tokengate_limits:
    /// rate_limit_service`: Envoy's rate-limit filter asks
    /// `ShouldRateLimit`, so Check does not count the key's limits too.
    pub(crate) limits_elsewhere: bool,
}

/// The context extension that hands the limits to the rate-limit service.
const LIMITS_EXTENSION: (&str, &str) = ("tokengate_limits", "rate_limit_service");

const UNREADABLE: Status = Status::new(
    Code::InvalidArgument,
    "a CheckRequest needs attributes.request.http with a method and a path",
);

/// Reads `request`: the method, the path, the credential headers (from
/// `headers`, or `header_map` with Envoy's `encode_raw_headers`) and the
/// source address. A request whose path could not be checked as
/// `/auth/verify` checks it (a fragment, an unsafe path) is refused.
pub(crate) fn checking(
    request: &CheckRequest,
    token_header: &HeaderName,
) -> Result<Checking, Status> {
    let attributes = request.attributes.as_ref().ok_or(UNREADABLE)?;
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or(UNREADABLE)?;
    let method = Method::from_bytes(http.method.as_bytes()).map_err(|_| UNREADABLE)?;
    if !crate::forward_auth::is_target(&http.path) {
        return Err(UNREADABLE);
    }
    let path = crate::forward_auth::target_path(&http.path)
        .ok_or(Status::new(
            Code::InvalidArgument,
            "the path is not one tokengate checks",
        ))?
        .into_owned();
    let mut headers = HeaderMap::new();
    let wanted = [token_header, &http::header::AUTHORIZATION];
    let mut keep = |name: &str, value: &[u8]| {
        if let Some(name) = wanted
            .iter()
            .find(|w| w.as_str().eq_ignore_ascii_case(name))
            && let Ok(value) = http::HeaderValue::from_bytes(value)
        {
            headers.append((*name).clone(), value);
        }
    };
    // Envoy's `headers` map has lower-case keys (header names are
    // lower-case in Envoy): two look-ups, whatever else it carries.
    for name in wanted {
        if let Some(value) = http.headers.get(name.as_str()) {
            keep(name.as_str(), value.as_bytes());
        }
    }
    if let Some(map) = &http.header_map {
        for header in &map.headers {
            let value = if header.raw_value.is_empty() {
                header.value.as_bytes()
            } else {
                &header.raw_value
            };
            keep(&header.key, value);
        }
    }
    let source = attributes
        .source
        .as_ref()
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| match &address.address {
            Some(AddressKind::SocketAddress(socket)) => socket.address.parse().ok(),
            _ => None,
        });
    let limits_elsewhere = attributes
        .context_extensions
        .get(LIMITS_EXTENSION.0)
        .is_some_and(|v| v == LIMITS_EXTENSION.1);
    Ok(Checking {
        method,
        path,
        headers,
        source,
        limits_elsewhere,
    })
}

/// A header Envoy sets, replacing any of the same name (a client or an
/// upstream cannot forge it).
fn set(name: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn object(fields: HashMap<String, Value>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

/// The `dynamic_metadata` of an allowed request: `tokengate_key` (the
/// label, which Envoy's rate-limit filter sends back as a descriptor),
/// `owner`, and the limits (`rate`: `count`, `window_seconds`, `burst`;
/// `quota`: `count`, `period`).
fn metadata(key: &Key) -> Struct {
    let mut fields = HashMap::from([
        ("tokengate_key".to_owned(), string(key.label())),
        ("owner".to_owned(), string(&**key.owner())),
    ]);
    let Limits { rate, quota } = *key.limits();
    if let Some(rate) = rate {
        fields.insert(
            "rate".to_owned(),
            object(HashMap::from([
                ("count".to_owned(), number(f64::from(rate.count))),
                ("window_seconds".to_owned(), number(rate.window as f64)),
                ("burst".to_owned(), number(f64::from(rate.burst))),
            ])),
        );
    }
    if let Some(quota) = quota {
        fields.insert(
            "quota".to_owned(),
            object(HashMap::from([
                ("count".to_owned(), number(quota.count as f64)),
                ("period".to_owned(), string(quota.period.name())),
            ])),
        );
    }
    Struct { fields }
}

/// The rate-limit fields for an allowed request's client response, as the
/// part of an encoded `CheckResponse` that follows [`allowed`]'s: protobuf
/// merges a message field that comes twice (the encoding spec: "the parser
/// merges multiple instances of the same field"), so the two parts are one
/// `ok_response` with both.
/// With `sunset` (a key expiring within `--expiry-notice`), `Sunset` too.
/// Empty when there is neither.
pub(crate) fn notices_part(limit: Option<&Checked>, sunset: Option<&http::HeaderValue>) -> Vec<u8> {
    let mut headers = Vec::new();
    if let Some(limit) = limit {
        headers.push(set("ratelimit-policy", limit.policy.as_bytes()));
        headers.push(set("ratelimit", limit.remaining.as_bytes()));
    }
    if let Some(at) = sunset {
        headers.push(set("sunset", at.as_bytes()));
    }
    if headers.is_empty() {
        return Vec::new();
    }
    let part = CheckResponse {
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            response_headers_to_add: headers,
            ..OkHttpResponse::default()
        })),
        ..CheckResponse::default()
    };
    part.encode_to_vec()
}

/// The encoded "allow" of `key`, built once per key: OK, `x-auth-key-label`
/// set, the credential headers removed, the key's metadata.
pub(crate) fn allowed_encoded<'k>(key: &'k Key, token_header: &HeaderName) -> &'k bytes::Bytes {
    key.allow_check(|key| allowed(key, token_header).encode_to_vec().into())
}

/// OK: the request goes on with `x-auth-key-label` and without the
/// credential headers (the rate-limit fields: [`notices_part`]).
fn allowed(key: &Key, token_header: &HeaderName) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: Code::Ok as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(metadata(key)),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![set("x-auth-key-label", key.label().as_bytes())],
            headers_to_remove: vec![token_header.as_str().to_owned(), "authorization".to_owned()],
            ..OkHttpResponse::default()
        })),
    }
}

/// A denial: `code`, and the HTTP answer the client gets — the status, the
/// headers and the body tokengate's own HTTP refusal has.
pub(crate) fn denied(code: Code, answer: &http::Response<bytes::Bytes>) -> CheckResponse {
    let headers = answer
        .headers()
        .iter()
        .filter(|(name, _)| *name != http::header::CONTENT_LENGTH)
        .map(|(name, value)| set(name.as_str(), value.as_bytes()))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(answer.status().as_u16()),
            }),
            headers,
            body: String::from_utf8_lossy(answer.body()).into_owned(),
        })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };

    fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(Address {
                        address: Some(AddressKind::SocketAddress(SocketAddress {
                            address: "192.0.2.7".to_owned(),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..Peer::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: method.to_owned(),
                        path: path.to_owned(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                            .collect(),
                        ..HttpRequest::default()
                    }),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    #[test]
    fn the_credential_method_path_and_source_are_read() {
        let token = HeaderName::from_static("x-token");
        let r = request(
            "DELETE",
            "/reports/%41?x=1",
            &[
                ("x-token", "k"),
                ("cookie", "c"),
                ("authorization", "Bearer b"),
            ],
        );
        let c = checking(&r, &token).unwrap();
        assert_eq!(c.method, Method::DELETE);
        assert_eq!(c.path, "/reports/A");
        assert_eq!(c.headers.len(), 2, "only the credential headers");
        assert_eq!(c.headers["x-token"], "k");
        assert_eq!(c.source, Some("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn unreadable_or_unsafe_requests_are_invalid_arguments() {
        let token = HeaderName::from_static("x-token");
        for (method, path) in [
            ("GET", ""),
            ("GET", "reports"),
            ("", "/"),
            ("GET", "/a/../admin"),
            ("GET", "/a#b"),
            ("GET", "/%2e%2e/admin"),
        ] {
            let err = checking(&request(method, path, &[]), &token).unwrap_err();
            assert_eq!(err.code, Code::InvalidArgument, "{method} {path:?}");
        }
        assert!(checking(&CheckRequest::default(), &token).is_err());
    }
}
