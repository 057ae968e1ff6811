//! gRPC beside HTTP, on hyper's HTTP/2 server: Envoy's external
//! authorization (`Authorization/Check`), its rate-limit service
//! (`RateLimitService/ShouldRateLimit`) and `grpc.health.v1.Health/Check`.
//! Unary calls only, so the framing is small: one message behind a 5-byte
//! prefix each way, the status in the trailers. The message types are
//! Envoy's and gRPC's generated ones (`envoy-types`, `tonic-health`).

pub(crate) mod authz;
pub(crate) mod ratelimit;

use std::convert::Infallible;
use std::future::Ready;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};

/// The response body of a call: the message (or nothing), then the trailers.
pub(crate) type GrpcBody = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;

/// The largest request message read (a `CheckRequest` carries the request's
/// headers; Envoy's default `max_request_bytes` for a body is 8 KiB).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// The methods served, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrpcMethod {
    /// `envoy.service.auth.v3.Authorization/Check`.
    Check,
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
    ShouldRateLimit,
    /// `grpc.health.v1.Health/Check`.
    Health,
    /// Anything else: UNIMPLEMENTED.
    Other,
}

impl GrpcMethod {
    /// The `method` label of each, in the order of the variants.
    pub(crate) const LABELS: [&'static str; 4] = ["check", "should_rate_limit", "health", "other"];

    /// The method a request path names.
    pub(crate) fn of(path: &str) -> Self {
        match path {
            "/envoy.service.auth.v3.Authorization/Check" => GrpcMethod::Check,
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" => {
                GrpcMethod::ShouldRateLimit
            }
            "/grpc.health.v1.Health/Check" => GrpcMethod::Health,
            _ => GrpcMethod::Other,
        }
    }

    /// The `method` label.
    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// What a call answered, as the `outcome` label of
/// `tokengate_grpc_calls_total` and the access log's `grpc` field: Check's
/// decision, ShouldRateLimit's overall code, Health's status, or the call's
/// own error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// Check allowed; ShouldRateLimit OK.
    Ok,
    Unauthenticated,
    PermissionDenied,
    /// Check refused for a rate, a quota or the failure throttle; or a
    /// message over 64 KiB.
    ResourceExhausted,
    /// Check with the limits store down under `--limits-store-failure closed`.
    Unavailable,
    OverLimit,
    Serving,
    NotServing,
    NotFound,
    InvalidArgument,
    DeadlineExceeded,
    Unimplemented,
}

impl CallOutcome {
    /// The labels, in the order of the variants.
    pub(crate) const LABELS: [&'static str; 12] = [
        "ok",
        "unauthenticated",
        "permission_denied",
        "resource_exhausted",
        "unavailable",
        "over_limit",
        "serving",
        "not_serving",
        "not_found",
        "invalid_argument",
        "deadline_exceeded",
        "unimplemented",
    ];

    /// The label.
    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

impl From<Code> for CallOutcome {
    fn from(code: Code) -> Self {
        match code {
            Code::Ok => CallOutcome::Ok,
            Code::InvalidArgument => CallOutcome::InvalidArgument,
            Code::DeadlineExceeded => CallOutcome::DeadlineExceeded,
            Code::NotFound => CallOutcome::NotFound,
            Code::PermissionDenied => CallOutcome::PermissionDenied,
            Code::ResourceExhausted => CallOutcome::ResourceExhausted,
            Code::Unimplemented => CallOutcome::Unimplemented,
            Code::Unavailable => CallOutcome::Unavailable,
            Code::Unauthenticated => CallOutcome::Unauthenticated,
        }
    }
}

/// A gRPC status: a code and a fixed message (never request data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) code: Code,
    pub(crate) message: &'static str,
}

/// The gRPC status codes tokengate answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    Ok = 0,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The `grpc-status` value (no formatting per call).
    fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Code::Ok => "0",
            Code::InvalidArgument => "3",
            Code::DeadlineExceeded => "4",
            Code::NotFound => "5",
            Code::PermissionDenied => "7",
            Code::ResourceExhausted => "8",
            Code::Unimplemented => "12",
            Code::Unavailable => "14",
            Code::Unauthenticated => "16",
        })
    }
}

impl Status {
    pub(crate) const OK: Status = Status::new(Code::Ok, "");

    pub(crate) const fn new(code: Code, message: &'static str) -> Self {
        Status { code, message }
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// The service prefixes of the methods served: a POST over HTTP/2 to one is
/// gRPC whatever its `content-type` says (a wrong one is answered 415).
const SERVICES: [&str; 3] = [
    "/envoy.service.auth.v3.Authorization/",
    "/envoy.service.ratelimit.v3.RateLimitService/",
    "/grpc.health.v1.Health/",
];

/// Whether `req` is a gRPC call: a POST over HTTP/2 with a gRPC
/// `content-type`, or to one of the services served. Only a POST over
/// HTTP/2 looks further than the method, so other requests pay nothing.
#[inline]
pub(crate) fn wants<B>(req: &Request<B>) -> bool {
    req.method() == Method::POST
        && req.version() == Version::HTTP_2
        && (is_grpc_type(req.headers()) || SERVICES.iter().any(|s| req.uri().path().starts_with(s)))
}

/// `application/grpc`, `application/grpc+proto` or either with parameters
/// (not `grpc-web`, not `+json`).
pub(crate) fn is_grpc_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(rest) = value.strip_prefix(b"application/grpc") else {
        return false;
    };
    let rest = rest.strip_prefix(b"+proto").unwrap_or(rest);
    rest.is_empty() || rest.starts_with(b";")
}

/// The call's deadline from `grpc-timeout` (1 to 8 digits and a unit of
/// `H`, `M`, `S`, `m`, `u`, `n`); `Ok(None)` without one.
pub(crate) fn deadline(headers: &HeaderMap) -> Result<Option<Duration>, Status> {
    const BAD: Status = Status::new(Code::InvalidArgument, "malformed grpc-timeout");
    let Some(value) = headers.get("grpc-timeout") else {
        return Ok(None);
    };
    let value = value.as_bytes();
    let (&unit, digits) = value.split_last().ok_or(BAD)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(BAD),
    }))
}

/// Reads the one message of a unary call: its prefix first, so a message
/// over [`MAX_MESSAGE`] or a compressed one is refused before its bytes are
/// read; at most the message and one frame are held.
pub(crate) async fn read_message<B>(body: B) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes>,
{
    const TRUNCATED: Status = Status::new(Code::InvalidArgument, "the message is incomplete");
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    // The prefix's length once read.
    let mut want: Option<usize> = None;
    loop {
        let Some(frame) = body.frame().await else {
            break;
        };
        let Ok(frame) = frame else {
            // The stream was reset or broke: there is no message to answer.
            return Err(TRUNCATED);
        };
        let Ok(data) = frame.into_data() else {
            // Trailers from a client: the message, if any, is complete.
            continue;
        };
        buf.put(data);
        if want.is_none() && buf.len() >= 5 {
            match buf[0] {
                0 => {}
                1 => {
                    return Err(Status::new(
                        Code::Unimplemented,
                        "compressed messages are not supported",
                    ));
                }
                _ => return Err(Status::new(Code::InvalidArgument, "bad message prefix")),
            }
            let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if length > MAX_MESSAGE {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    "the message is larger than 64 KiB",
                ));
            }
            want = Some(length);
        }
        if let Some(length) = want
            && buf.len() > 5 + length
        {
            return Err(Status::new(
                Code::InvalidArgument,
                "a unary call carries one message",
            ));
        }
    }
    match want {
        Some(length) if buf.len() == 5 + length => {
            buf.advance(5);
            Ok(buf.freeze())
        }
        _ => Err(TRUNCATED),
    }
}

/// The answer to a call: `message` (encoded, `None` for none) then the
/// trailers with `status`.
pub(crate) fn respond(message: Option<&impl prost::Message>, status: Status) -> Response<GrpcBody> {
    let body = match message {
        Some(message) => {
            let length = message.encoded_len();
            let mut buf = BytesMut::with_capacity(5 + length);
            buf.put_u8(0);
            buf.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
            message
                .encode(&mut buf)
                .expect("the buffer was sized from encoded_len");
            buf.freeze()
        }
        None => Bytes::new(),
    };
    answer(body, status)
}

/// The answer to a call whose message is already encoded, in `parts` (one
/// message: see `authz::limits_part`), with status OK.
pub(crate) fn respond_encoded(parts: &[&[u8]]) -> Response<GrpcBody> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(5 + length);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    for part in parts {
        buf.put_slice(part);
    }
    answer(buf.freeze(), Status::OK)
}

fn answer(body: Bytes, status: Status) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS, status.code.value());
    if !status.message.is_empty() {
        // Fixed ASCII texts: nothing to percent-encode.
        trailers.insert(GRPC_MESSAGE, HeaderValue::from_static(status.message));
    }
    let body = Full::new(body).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, APPLICATION_GRPC);
    response
}

/// A status alone (no message).
pub(crate) fn fail(status: Status) -> Response<GrpcBody> {
    respond(None::<&tonic_health::pb::HealthCheckResponse>, status)
}

/// 415 for a POST to a gRPC service with another `content-type`: it is not
/// a gRPC call, so it gets no gRPC status.
pub(crate) fn unsupported_media_type() -> Response<GrpcBody> {
    let body = Full::new(Bytes::from_static(
        b"{\"detail\":\"Unsupported Media Type\"}",
    ))
    .with_trailers(std::future::ready(None));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `grpc.health.v1.Health/Check`: SERVING, or NOT_SERVING once the drain
/// began; a service other than "" or one of tokengate's is NOT_FOUND.
pub(crate) fn health(message: &[u8], serving: bool) -> (Response<GrpcBody>, CallOutcome) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    let Ok(request) = <HealthCheckRequest as prost::Message>::decode(message) else {
        let status = Status::new(Code::InvalidArgument, "not a HealthCheckRequest");
        return (fail(status), status.code.into());
    };
    let known = request.service.is_empty()
        || SERVICES
            .iter()
            .any(|s| s.trim_matches('/') == request.service);
    if !known {
        let status = Status::new(Code::NotFound, "unknown service");
        return (fail(status), CallOutcome::NotFound);
    }
    let (status, outcome) = if serving {
        (ServingStatus::Serving, CallOutcome::Serving)
    } else {
        (ServingStatus::NotServing, CallOutcome::NotServing)
    };
    let answer = HealthCheckResponse {
        status: status as i32,
    };
    (respond(Some(&answer), Status::OK), outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::StreamBody;

    fn frames(chunks: Vec<&'static [u8]>) -> impl Body<Data = Bytes, Error = Infallible> {
        StreamBody::new(futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c)))),
        ))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_message_split_over_frames_is_read_whole() {
        let body = frames(vec![b"\0\0\0", b"\0\x03a", b"bc"]);
        assert_eq!(block_on(read_message(body)).unwrap(), "abc");
        let empty = frames(vec![b"\0\0\0\0\0"]);
        assert_eq!(block_on(read_message(empty)).unwrap(), "");
    }

    #[test]
    fn bad_messages_are_refused_with_their_code() {
        let code = |chunks| block_on(read_message(frames(chunks))).unwrap_err().code;
        assert_eq!(code(vec![b"\x01\0\0\0\x01a"]), Code::Unimplemented);
        assert_eq!(code(vec![b"\x02\0\0\0\x01a"]), Code::InvalidArgument);
        // 64 KiB + 1, refused from the prefix alone.
        assert_eq!(code(vec![b"\0\0\x01\0\x01"]), Code::ResourceExhausted);
        assert_eq!(code(vec![b"\0\0\0\0\x04ab"]), Code::InvalidArgument);
        assert_eq!(code(vec![b"\0\0\0"]), Code::InvalidArgument);
        assert_eq!(code(vec![]), Code::InvalidArgument);
        assert_eq!(code(vec![b"\0\0\0\0\x01a", b"\0"]), Code::InvalidArgument);
    }

    #[test]
    fn grpc_timeout_is_parsed() {
        let d = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            deadline(&h)
        };
        assert_eq!(d("2S").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(d("150m").unwrap(), Some(Duration::from_millis(150)));
        assert_eq!(d("1H").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(
            d("99999999n").unwrap(),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        assert_eq!(deadline(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn grpc_content_types() {
        let is = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc_type(&h)
        };
        assert!(is("application/grpc"));
        assert!(is("application/grpc+proto"));
        assert!(is("application/grpc; charset=utf-8"));
        assert!(!is("application/grpc-web"));
        assert!(!is("application/grpc+json"));
        assert!(!is("application/json"));
    }
}
