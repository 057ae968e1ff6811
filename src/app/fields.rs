//! The fields tokengate sets on answers besides its own: the rate-limit
//! fields, `Sunset`, and CORS (`--cors-origin`).

use std::net::IpAddr;

use http::{HeaderName, Request, Response};

use super::App;
use super::record::Line;
use crate::cors::Cors;
use crate::limits::Checked;
use crate::responses::Body;

/// Adds `RateLimit-Policy` and `RateLimit` for a key with limits (replacing
/// any already there: an upstream cannot forge them).
#[inline]
pub(crate) fn limit_headers<B>(response: &mut Response<B>, limit: Option<Checked>) {
    if let Some(limit) = limit {
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY, limit.policy);
        headers.insert(RATELIMIT, limit.remaining);
    }
}

/// `Sunset` (RFC 8594) for a key expiring within `--expiry-notice`.
#[inline]
pub(crate) fn sunset_header<B>(response: &mut Response<B>, sunset: Option<http::HeaderValue>) {
    if let Some(at) = sunset {
        response.headers_mut().insert(SUNSET, at);
    }
}

const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The IETF httpapi rate-limit fields (draft-ietf-httpapi-ratelimit-headers).
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The methods a preflight for an upstream path may use (gateway mode).
const ANY_METHOD: http::HeaderValue =
    http::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

impl App {
    /// With `--cors-origin`: the request's `Origin` if it is allowed and the
    /// request is not a preflight (whose answer says all it needs).
    #[inline]
    pub(crate) fn cors_origin<B>(&self, req: &Request<B>) -> Option<http::HeaderValue> {
        let cors = self.cors.as_ref()?;
        if Cors::is_preflight(req.method(), req.headers()) {
            return None;
        }
        cors.allowed(req.headers())
    }

    /// Gateway mode: a CORS preflight from an allowed origin, for any path,
    /// answered here (never forwarded) and recorded.
    pub(crate) fn preflight_any<B>(
        &self,
        req: &Request<B>,
        peer: IpAddr,
    ) -> Option<Response<Body>> {
        let cors = self.cors.as_ref()?;
        if !Cors::is_preflight(req.method(), req.headers()) {
            return None;
        }
        let origin = cors.allowed(req.headers())?;
        let response: Response<Body> = cors.preflight(origin, ANY_METHOD.clone());
        self.record(self.other, &response, std::time::Duration::ZERO, || {
            Some(Line::own(
                peer,
                self.trusted.client(peer, req.headers()),
                req,
            ))
        });
        Some(response)
    }
}
