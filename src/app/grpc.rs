//! gRPC calls ([`App::grpc`]): the message read within the call's deadline,
//! the method answered with the guard and the limits the HTTP routes use,
//! and the call recorded like any request (route `grpc`, and its outcome).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use http::{Request, Response};
use http_body_util::BodyExt;
use prost::Message;

use super::App;
use super::record::{Key, Line};
use crate::grpc::{self, CallOutcome, Code, GrpcBody, GrpcMethod, Status, authz, ratelimit};
use crate::keys::Outcome;
use crate::lifecycle::Phase;
use crate::limits::Stored;
use crate::responses::{self, Body};

/// At most this many descriptors in one `ShouldRateLimit` (each may be a
/// store call).
const MAX_DESCRIPTORS: usize = 64;

/// What a call answered, for the record.
struct Called {
    response: Response<GrpcBody>,
    outcome: Option<CallOutcome>,
    /// Check: the decision, and the request it was about.
    auth: Option<Outcome>,
    original: Option<(http::Method, String)>,
    /// Check: the client Envoy names.
    client: Option<IpAddr>,
}

impl Called {
    fn failed(status: Status) -> Self {
        Called {
            response: grpc::fail(status),
            outcome: Some(status.code.into()),
            auth: None,
            original: None,
            client: None,
        }
    }
}

impl App {
    /// Whether `req` is a gRPC call this listener answers.
    #[inline]
    pub(crate) fn wants_grpc<B>(&self, req: &Request<B>) -> bool {
        self.grpc.is_some() && grpc::wants(req)
    }

    /// Answers a gRPC call from `peer` and records it.
    pub(crate) async fn grpc<B>(
        self: Arc<Self>,
        req: Request<B>,
        peer: IpAddr,
    ) -> Response<GrpcBody>
    where
        B: http_body::Body<Data = bytes::Bytes>,
    {
        let start = Instant::now();
        let (parts, body) = req.into_parts();
        let method = GrpcMethod::of(parts.uri.path());
        let called = if !grpc::is_grpc_type(&parts.headers) {
            Called {
                response: grpc::unsupported_media_type(),
                outcome: None,
                auth: None,
                original: None,
                client: None,
            }
        } else {
            match grpc::deadline(&parts.headers) {
                Err(status) => Called::failed(status),
                Ok(deadline) => {
                    // Without a deadline, the message is awaited as long as a
                    // request head is.
                    let limit = deadline.unwrap_or(self.grpc.unwrap_or(Duration::ZERO));
                    let work = self.answer_grpc(method, body, peer);
                    match tokio::time::timeout(limit, work).await {
                        Ok(called) => called,
                        Err(_) => Called::failed(Status::new(
                            Code::DeadlineExceeded,
                            "the deadline passed",
                        )),
                    }
                }
            }
        };
        if let (Some(outcome), Some(metrics)) = (called.outcome, self.metrics.grpc())
            && self.metrics_on
        {
            metrics.count(method, outcome);
        }
        self.record(self.grpc_route, &called.response, start.elapsed(), || {
            Some(Line {
                peer,
                client: called.client.unwrap_or(peer),
                upstream: false,
                original: called
                    .original
                    .as_ref()
                    .map(|(m, p)| (m.as_str(), p.as_str())),
                method: &parts.method,
                path: parts.uri.path(),
                version: parts.version,
                key: Key::from(called.auth),
                grpc: called.outcome.map(CallOutcome::label),
            })
        });
        called.response
    }

    async fn answer_grpc<B>(&self, method: GrpcMethod, body: B, peer: IpAddr) -> Called
    where
        B: http_body::Body<Data = bytes::Bytes>,
    {
        if method == GrpcMethod::Other {
            return Called::failed(Status::new(Code::Unimplemented, "unknown method"));
        }
        let message = match grpc::read_message(body).await {
            Ok(message) => message,
            Err(status) => return Called::failed(status),
        };
        match method {
            GrpcMethod::Check => self.check(&message, peer).await,
            GrpcMethod::ShouldRateLimit => self.should_rate_limit(&message).await,
            GrpcMethod::Health => {
                let (response, outcome) =
                    grpc::health(&message, self.lifecycle.phase() == Phase::Serving);
                Called {
                    response,
                    outcome: Some(outcome),
                    auth: None,
                    original: None,
                    client: None,
                }
            }
            GrpcMethod::Other => Called::failed(Status::new(Code::Unimplemented, "unknown method")),
        }
    }

    /// `Authorization/Check`: the guard's decision on the request Envoy
    /// describes, from the client Envoy names.
    async fn check(&self, message: &[u8], peer: IpAddr) -> Called {
        let Ok(request) = CheckRequest::decode(message) else {
            return Called::failed(Status::new(Code::InvalidArgument, "not a CheckRequest"));
        };
        let checking = match authz::checking(&request, &self.token_header) {
            Ok(checking) => checking,
            Err(status) => return Called::failed(status),
        };
        // Envoy is the peer: the client is whom it names.
        let client = checking.source.unwrap_or(peer);
        let metrics = self.metrics_on.then_some(&self.metrics);
        let (outcome, mut limit, pending, allowed, sunset) = {
            let decided = self.guard.decide(
                &checking.headers,
                client,
                &checking.method,
                &checking.path,
                metrics,
                !checking.limits_elsewhere,
            );
            let allowed = match (decided.outcome, decided.key()) {
                (Outcome::Valid(_), Some(key)) => {
                    Some(authz::allowed_encoded(key, &self.token_header).clone())
                }
                _ => None,
            };
            (
                decided.outcome,
                decided.limit,
                decided.pending,
                allowed,
                decided.sunset,
            )
        };
        let mut unavailable = false;
        let outcome = match pending {
            None => outcome,
            Some(pending) => match pending.ask().await {
                Stored::Unavailable => {
                    unavailable = true;
                    self.guard.settle(outcome, None, metrics)
                }
                Stored::Checked(checked) => {
                    let outcome = self.guard.settle(outcome, Some(&checked), metrics);
                    limit = Some(checked);
                    outcome
                }
            },
        };
        let (code, denial) = match outcome {
            _ if unavailable => (
                Code::Unavailable,
                Some(responses::with_retry_after(
                    self.responses.unavailable.respond(false),
                    Duration::from_secs(1),
                )),
            ),
            Outcome::Valid(_) => (Code::Ok, None),
            Outcome::Missing | Outcome::Invalid | Outcome::Expired(_) | Outcome::Canary(_) => {
                (Code::Unauthenticated, None)
            }
            Outcome::Forbidden(_) => (Code::PermissionDenied, None),
            Outcome::Throttled(_) | Outcome::Limited(..) => (Code::ResourceExhausted, None),
        };
        let response = match (denial, allowed) {
            (None, Some(ok)) if code == Code::Ok => {
                let notices = authz::notices_part(limit.as_ref(), sunset.as_ref());
                grpc::respond_encoded(&[&ok, &notices])
            }
            (denial, _) => {
                let mut denied = denial
                    .or_else(|| self.denial(&outcome, false, &self.responses.refusals))
                    .unwrap_or_else(|| self.responses.unauthorized_invalid.respond(false));
                super::limit_headers(&mut denied, limit.take());
                let answer = authz::denied(code, &collected(denied).await);
                grpc::respond(Some(&answer), Status::OK)
            }
        };
        Called {
            response,
            outcome: Some(code.into()),
            auth: Some(outcome),
            original: Some((checking.method, checking.path)),
            client: Some(client),
        }
    }

    /// `RateLimitService/ShouldRateLimit`: each descriptor naming a key
    /// counted against that key's limits, in the store HTTP requests use.
    async fn should_rate_limit(&self, message: &[u8]) -> Called {
        let Ok(request) = RateLimitRequest::decode(message) else {
            return Called::failed(Status::new(Code::InvalidArgument, "not a RateLimitRequest"));
        };
        if request.descriptors.len() > MAX_DESCRIPTORS {
            return Called::failed(Status::new(
                Code::InvalidArgument,
                "at most 64 descriptors in a request",
            ));
        }
        let mut statuses = Vec::with_capacity(request.descriptors.len());
        for (label, hits) in ratelimit::descriptors(&request) {
            let counted = match label {
                Some(label) => self.guard.count_hits(label, hits).await,
                None => None,
            };
            statuses.push(match counted {
                None => ratelimit::unlimited(),
                Some((limiter, Stored::Checked(checked))) => {
                    ratelimit::status(limiter.limits(), &checked)
                }
                // The store is down and `--limits-store-failure closed`:
                // Envoy's own failure mode decides.
                Some((_, Stored::Unavailable)) => {
                    return Called::failed(Status::new(
                        Code::Unavailable,
                        "the limits store is unavailable",
                    ));
                }
            });
        }
        let answer = ratelimit::response(statuses);
        let over = answer.overall_code
            == envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code::OverLimit
                as i32;
        Called {
            response: grpc::respond(Some(&answer), Status::OK),
            outcome: Some(if over {
                CallOutcome::OverLimit
            } else {
                CallOutcome::Ok
            }),
            auth: None,
            original: None,
            client: None,
        }
    }
}

/// A prebuilt answer with its body as bytes (the body is in memory).
async fn collected(response: Response<Body>) -> Response<bytes::Bytes> {
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    Response::from_parts(parts, bytes)
}
