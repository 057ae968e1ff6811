//! The services hyper drives for a connection: a standalone listener's
//! (prebuilt answers, gRPC calls) and a gateway listener's (its own answers,
//! or the upstream's), each counting its requests for the watchdog and
//! marking answers to an allowed browser origin.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures_util::{FutureExt, future};
use http::{Request, Response, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper::service::service_fn;

use super::conn::Context;
use super::watchdog::{Activity, bump};
use crate::app::{App, Call, GatewayService, Step};
use crate::gateway::proxy::ServiceBody;
use crate::grpc::GrpcBody;
use crate::metrics::Protocol;

/// Counts a request for the watchdog and, at the first, the protocol metric.
#[inline]
fn count_request<B>(app: &App, seen: &Activity, req: &Request<B>) {
    if seen.requests.load(Relaxed) == 0 {
        let protocol = if req.version() == Version::HTTP_2 {
            seen.h2.store(true, Relaxed);
            Protocol::H2
        } else {
            Protocol::H1
        };
        app.metrics().accepted(protocol);
    }
    bump(&seen.requests);
}

/// A standalone listener's body: a prebuilt answer, or a gRPC call's (boxed:
/// its trailers make it larger than a prebuilt body, and every answer would
/// carry that size).
type StandaloneBody = Either<crate::responses::Body, UnsyncBoxBody<bytes::Bytes, Infallible>>;

/// A gRPC call's answer.
type GrpcCall = Pin<Box<dyn Future<Output = Response<GrpcBody>> + Send>>;

/// The service of a standalone listener: every answer is prebuilt, at once
/// (with a Redis limits store, a key with limits after one store call), and
/// gRPC calls are read and answered.
pub(super) fn standalone_service(
    context: &Arc<Context>,
    activity: &Arc<Activity>,
    peer_ip: std::net::IpAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<StandaloneBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<StandaloneBody>, Infallible>> + Send + use<>,
> + Clone
+ use<> {
    let app = context.app.clone();
    let seen = activity.clone();
    service_fn(move |req: Request<Incoming>| {
        count_request(&app, &seen, &req);
        if app.wants_grpc(&req) {
            let call: GrpcCall = Box::pin(Arc::clone(&app).grpc(req, peer_ip));
            return future::Either::Right(future::Either::Right(
                call.map(|r| Ok(r.map(|body| Either::Right(body.boxed_unsync())))),
            ));
        }
        let origin = app.cors_origin(&req);
        // The request (and its body, unread) is dropped here: hyper then
        // closes an HTTP/1 connection whose body was not consumed.
        match app.call(&req, peer_ip) {
            Call::Ready(mut response) => {
                if let Some(origin) = origin {
                    crate::cors::Cors::decorate(&mut response, origin);
                }
                future::Either::Left(std::future::ready(Ok(response.map(Either::Left))))
            }
            Call::Pending(answer) => future::Either::Right(future::Either::Left(
                answer.map(|r| Ok(cors(r, origin).map(Either::Left))),
            )),
        }
    })
}

/// A gateway answer that waits for the limits store.
type Waiting = Pin<Box<dyn Future<Output = Result<Response<ServiceBody>, Infallible>> + Send>>;

/// The service of a gateway listener: tokengate's own answers, or the
/// upstream's, streamed.
pub(super) fn gateway_service(
    gateway: Arc<GatewayService>,
    tls: bool,
    activity: &Arc<Activity>,
    peer_ip: std::net::IpAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ServiceBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ServiceBody>, Infallible>> + Send + use<>,
> + Clone
+ use<> {
    let seen = activity.clone();
    let peer = crate::gateway::headers::Peer::new(peer_ip);
    service_fn(move |req: Request<Incoming>| {
        count_request(gateway.app(), &seen, &req);
        // A CORS preflight from an allowed origin: answered, never forwarded.
        if let Some(preflight) = gateway.app().preflight_any(&req, peer.ip) {
            return future::Either::Left(std::future::ready(Ok(preflight.map(Either::Left))));
        }
        let origin = gateway.app().cors_origin(&req);
        // Either future inline: a proxied request costs no boxed future.
        match gateway.step(&req, &peer, tls) {
            Step::Respond(response) => future::Either::Left(std::future::ready(Ok(cors(
                response, origin,
            )
            .map(Either::Left)))),
            Step::Forward(forward) => future::Either::Right(future::Either::Left(
                gateway
                    .forward(req, forward, &peer)
                    .map(move |r| Ok(cors(r, origin))),
            )),
            // A limits store counts the key first (boxed: only then).
            Step::Later(answer) => future::Either::Right(future::Either::Right(Box::pin(
                answer.map(move |r| Ok(cors(r, origin).map(Either::Left))),
            )
                as Waiting)),
            Step::Ask(ask) => future::Either::Right(future::Either::Right(Box::pin(
                Arc::clone(&gateway)
                    .after_store(req, *ask, peer.clone())
                    .map(move |r| Ok(cors(r, origin))),
            )
                as Waiting)),
        }
    })
}

/// An answer to a page of an allowed origin (`--cors-origin`) says so.
#[inline]
fn cors<B>(mut response: Response<B>, origin: Option<http::HeaderValue>) -> Response<B> {
    if let Some(origin) = origin {
        crate::cors::Cors::decorate(&mut response, origin);
    }
    response
}
