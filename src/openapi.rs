//! `GET /openapi.json`: an OpenAPI 3.1 document of tokengate's routes, built
//! from the route table and the configuration (the token header, whether
//! `/metrics` is public) at its first request, then served from memory.
//! FastAPI serves one by default; clients of the seed app expect it.

use std::sync::OnceLock;

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::responses::Prebuilt;
use crate::routes::{Access, Handler, Route};

/// What the document depends on besides the route table.
#[derive(Clone, Debug)]
pub(crate) struct DocOptions {
    /// The header that carries the key (`--token-header`).
    pub token_header: String,
    /// `--metrics-public`.
    pub metrics_public: bool,
    /// `--metrics off`: no `/metrics`.
    pub metrics_off: bool,
    /// Gateway mode: the contract routes belong to the upstream.
    pub gateway: bool,
}

fn detail_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Detail"}}}
    })
}

fn challenge_header() -> Value {
    json!({"WWW-Authenticate": {
        "description": "RFC 6750 challenge: Bearer realm=\"…\" (, error=\"invalid_token\" | \"insufficient_scope\")",
        "schema": {"type": "string"}
    }})
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers),
/// sent to keys with `rate=` or `quota=` only.
fn limit_headers() -> Value {
    json!({
        "RateLimit-Policy": {"description": "The key's limits, e.g. \"rate\";q=100;w=1, \"day\";q=10000;w=86400 (keys with rate= or quota= only)", "schema": {"type": "string"}},
        "RateLimit": {"description": "What remains of each limit and when it resets, e.g. \"rate\";r=57;t=1 (keys with rate= or quota= only)", "schema": {"type": "string"}}
    })
}

fn auth_errors(responses: &mut Map<String, Value>) {
    let mut unauthorized = detail_response("No credential, a wrong one, or an expired key");
    unauthorized["headers"] = challenge_header();
    responses.insert("401".into(), unauthorized);
    let mut forbidden = detail_response(
        "A valid key whose scopes do not cover the request; on /auth/verify also a client over a limit (x-tokengate-reason: throttled, rate-limited or quota-exhausted, with Retry-After) or contradicting forwarded headers",
    );
    forbidden["headers"] = challenge_header();
    responses.insert("403".into(), forbidden);
    let mut throttled = detail_response(
        "The client address is over its failed-credential limit, or the key over its rate= or quota=",
    );
    let mut headers = limit_headers();
    headers["Retry-After"] = json!({"description": "Seconds to wait (for a quota: until its period resets)", "schema": {"type": "integer"}});
    throttled["headers"] = headers;
    responses.insert("429".into(), throttled);
}

/// The error statuses every operation may answer (head limits and rules).
fn common_errors(responses: &mut Map<String, Value>) {
    for (code, text) in [
        (
            "400",
            "Missing or repeated Host, or a request target that is not origin-form",
        ),
        ("404", "Not found (a path that is no route)"),
        ("414", "Request target over 8 KiB"),
        ("431", "Request header fields over the limit"),
    ] {
        responses.insert(code.into(), detail_response(text));
    }
}

fn success(handler: Handler) -> Value {
    match handler {
        Handler::Message(_) => json!({
            "description": "The message",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}
        }),
        Handler::Health | Handler::Ready => json!({
            "description": "Status",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}
        }),
        Handler::Metrics => json!({
            "description": "Prometheus / OpenMetrics text exposition",
            "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}
        }),
        Handler::ForwardAuth => json!({
            "description": "Allowed: the key covers the original request. Empty body.",
            "headers": {
                "x-auth-key-label": {"description": "The label of the accepted key", "required": true, "schema": {"type": "string"}},
                "x-envoy-auth-headers-to-remove": {"description": "Headers Envoy strips before the upstream", "required": true, "schema": {"type": "string"}}
            }
        }),
        Handler::OpenApi => json!({
            "description": "This document",
            "content": {"application/json": {"schema": {"type": "object"}}}
        }),
    }
}

fn forward_auth_parameters() -> Value {
    let method = json!({"type": "string", "pattern": "^[A-Z]{1,32}$"});
    let uri = json!({"type": "string", "pattern": "^/[!-~]*$"});
    let url = json!({"type": "string", "pattern": "^https?://[a-z0-9.-]+(:[0-9]{1,5})?/[!-~]*$"});
    json!([
        {"name": "X-Forwarded-Method", "in": "header", "required": false, "schema": method, "description": "Original method (Traefik, Caddy)"},
        {"name": "X-Original-Method", "in": "header", "required": false, "schema": method, "description": "Original method (nginx, HAProxy)"},
        {"name": "X-Forwarded-Uri", "in": "header", "required": false, "schema": uri, "description": "Original path and query (Traefik, Caddy)"},
        {"name": "X-Original-URI", "in": "header", "required": false, "schema": uri, "description": "Original path and query (nginx)"},
        {"name": "X-Original-URL", "in": "header", "required": false, "schema": url, "description": "Original URL (some HAProxy setups)"}
    ])
}

/// The document's response, built at its first request.
///
/// Built at start-up, the document cost every server ~1.4 ms of start-up and
/// ~0.2 MiB of resident memory (the thread arena its temporaries came from),
/// though most servers are never asked for it (`scripts/footprint`).
#[derive(Debug)]
pub(crate) struct Lazy {
    table: Vec<Route>,
    options: DocOptions,
    built: OnceLock<Prebuilt>,
}

impl Lazy {
    /// The document of `table` as configured; nothing is built yet.
    pub(crate) fn new(table: &[Route], options: DocOptions) -> Self {
        Lazy {
            table: table.to_vec(),
            options,
            built: OnceLock::new(),
        }
    }

    /// The `200 application/json` response; the first call builds it (~1 ms,
    /// once; concurrent first callers wait for the one that builds).
    pub(crate) fn response(&self) -> &Prebuilt {
        self.built.get_or_init(|| {
            Prebuilt::json_bytes(StatusCode::OK, serialized(&self.table, &self.options))
        })
    }
}

/// The document, serialised, built on a short-lived thread of its own.
///
/// The `Value` tree takes many times the 50 KB of JSON it becomes; built on a
/// long-lived thread, its freed memory stayed resident in that thread's heap,
/// pinned by what was allocated after it: 1.4 MiB of RSS (`scripts/footprint`).
/// A thread's allocations come from an arena of their own, which the allocator
/// gives back once they are all freed. If no thread can be started, it is built
/// on this one.
pub(crate) fn serialized(table: &[Route], options: &DocOptions) -> &'static [u8] {
    let build = || serde_json::to_vec(&document(table, options));
    let built = std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("tokengate-openapi".into())
            .spawn_scoped(scope, build)
        {
            Ok(thread) => thread.join(),
            Err(_) => Ok(build()),
        }
    });
    let json = match built {
        // Serialising a `Value` into a Vec cannot fail: string keys, no I/O.
        Ok(json) => json.expect("serialising a json Value cannot fail"),
        // A panic while building is a bug: pass it on, as if it had happened
        // on this thread.
        Err(panic) => std::panic::resume_unwind(panic),
    };
    // Copied here, so the thread's arena holds nothing.
    let body: &'static [u8] = Box::leak(json.as_slice().to_vec().into_boxed_slice());
    drop(json);
    body
}

/// The document for `table` as configured.
pub(crate) fn document(table: &[Route], options: &DocOptions) -> Value {
    let mut paths = Map::new();
    for route in table {
        if options.metrics_off && route.handler == Handler::Metrics {
            continue;
        }
        if options.gateway && matches!(route.handler, Handler::Message(_)) {
            continue;
        }
        let protected = match route.handler {
            Handler::Metrics => !options.metrics_public,
            Handler::ForwardAuth => true,
            _ => route.access == Access::Protected,
        };
        let mut responses = Map::new();
        responses.insert("200".into(), success(route.handler));
        if route.handler == Handler::Ready {
            responses.insert(
                "503".into(),
                json!({"description": "Shutting down: {\"status\":\"draining\"}",
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}),
            );
        }
        if protected {
            auth_errors(&mut responses);
            if route.handler != Handler::Metrics {
                // A limited key's answers carry its RateLimit fields.
                let ok = &mut responses["200"];
                match ok.get_mut("headers").and_then(Value::as_object_mut) {
                    Some(headers) => {
                        if let Value::Object(limits) = limit_headers() {
                            headers.extend(limits);
                        }
                    }
                    None => ok["headers"] = limit_headers(),
                }
            }
        }
        common_errors(&mut responses);
        let mut operation = json!({
            "summary": summary(route.handler),
            "operationId": route.label,
            "responses": responses,
        });
        if protected {
            operation["security"] = json!([{"apiKey": []}, {"bearer": []}]);
        }
        if route.handler == Handler::ForwardAuth {
            operation["parameters"] = forward_auth_parameters();
        }
        let methods: Vec<&str> = if route.methods.is_empty() {
            vec!["get", "head", "post", "put", "patch", "delete", "options"]
        } else {
            route
                .methods
                .iter()
                .map(|m| method_key(m.as_str()))
                .collect()
        };
        let mut item = Map::new();
        for m in methods {
            let mut op = operation.clone();
            op["operationId"] = json!(format!("{}_{m}", route.label));
            if m == "head" {
                // HEAD answers carry no body.
                strip_content(&mut op);
            }
            item.insert(m.into(), op);
        }
        paths.insert(route.path.into(), Value::Object(item.clone()));
        if route.subtree {
            for op in item.values_mut() {
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                let mut params = params;
                params.push(json!({"name": "original_path", "in": "path", "required": true,
                                   "schema": {"type": "string"},
                                   "description": "The original path, appended (Envoy path_prefix)"}));
                op["parameters"] = Value::Array(params);
                if let Some(id) = op["operationId"].as_str() {
                    op["operationId"] = json!(format!("{id}_subtree"));
                }
            }
            paths.insert(
                format!("{}/{{original_path}}", route.path),
                Value::Object(item),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tokengate",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A token-protected HTTP server and forward-auth endpoint. Every error body is {\"detail\": \"...\"}."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": options.token_header},
                "bearer": {"type": "http", "scheme": "bearer"}
            },
            "schemas": {
                "Message": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}, "additionalProperties": false},
                "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok", "ready", "draining"]}}, "additionalProperties": false},
                "Detail": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}, "additionalProperties": false}
            }
        }
    })
}

fn strip_content(op: &mut Value) {
    if let Some(responses) = op["responses"].as_object_mut() {
        for r in responses.values_mut() {
            if let Some(r) = r.as_object_mut() {
                r.remove("content");
            }
        }
    }
}

fn method_key(m: &str) -> &'static str {
    match m {
        "GET" => "get",
        "HEAD" => "head",
        "POST" => "post",
        "PUT" => "put",
        "DELETE" => "delete",
        "PATCH" => "patch",
        _ => "options",
    }
}

fn summary(handler: Handler) -> &'static str {
    match handler {
        Handler::Message(_) => "A message (the FastAPI contract)",
        Handler::Health => "Liveness",
        Handler::Ready => "Readiness",
        Handler::Metrics => "Prometheus metrics",
        Handler::ForwardAuth => "Forward auth: may the original request pass?",
        Handler::OpenApi => "This OpenAPI document",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;

    #[test]
    fn every_route_is_described() {
        let doc = document(
            ROUTES,
            &DocOptions {
                token_header: "x-token".into(),
                metrics_public: false,
                metrics_off: false,
                gateway: false,
            },
        );
        for route in ROUTES {
            assert!(doc["paths"][route.path].is_object(), "{}", route.path);
        }
        assert!(doc["paths"]["/auth/verify/{original_path}"]["post"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["apiKey"]["name"],
            "x-token"
        );
        assert!(doc["paths"]["/protected"]["get"]["security"].is_array());
        assert!(doc["paths"]["/public"]["get"]["security"].is_null());
    }

    #[test]
    fn the_document_is_built_at_its_first_request_and_kept() {
        let options = DocOptions {
            token_header: "x-api-key".into(),
            metrics_public: false,
            metrics_off: false,
            gateway: false,
        };
        let expected = serde_json::to_vec(&document(ROUTES, &options)).expect("serialisable");
        let lazy = Lazy::new(ROUTES, options);
        assert!(lazy.built.get().is_none(), "nothing is built at start-up");
        let first = lazy.response().respond(false);
        let again = lazy.response().respond(false);
        assert!(lazy.built.get().is_some());
        for response in [first, again] {
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.into_body();
            let bytes = http_body_util::BodyExt::collect(body);
            let bytes = futures_util::FutureExt::now_or_never(bytes)
                .expect("a full body is ready")
                .expect("infallible")
                .to_bytes();
            assert_eq!(bytes.as_ref(), expected.as_slice());
        }
    }
}
