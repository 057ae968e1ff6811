//! The proxy path: one request to the upstream and its response back, bodies
//! streamed both ways (never buffered whole), upgrades passed through.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use tracing::{debug, warn};

use super::GatewayConfig;
use super::headers::{Hop, Peer, for_client, for_upstream, join_cookies, unpin_values};
use super::lease::UpstreamBody;
use super::pool::{self, Pool};
use super::sending::{Answered, Call, Prepared, Rest, Sending};
use super::trailers::Untrailed;
use super::tunnels::Tunnels;
use super::upgrade::Upgrades;
use super::upstream::Upstream;
use crate::keys::Scope;
use crate::metrics::{Metrics, UpstreamFailure};
use crate::responses::Responses;

/// The body of every response the server sends: a prebuilt one, or the
/// upstream's, streamed.
pub(crate) type ServiceBody = Either<Full<Bytes>, UpstreamBody>;

/// The upstream client.
enum Clients {
    /// HTTP/1.1: tokengate's pool, connections driven by the requests'
    /// own tasks (see [`super::pool`]).
    Http1(Arc<Pool>),
    /// `--upstream-http2`: hyper-util's pooled client.
    Legacy(Box<Client<HttpsConnector<HttpConnector>, Untrailed>>),
}

/// The upstream, its client and the gateway's rules.
pub(crate) struct Gateway {
    upstream: Upstream,
    client: Clients,
    timeout: Duration,
    upstream_host: Option<HeaderValue>,
    /// The `Host` for a request that came without one (HTTP/1.0).
    default_host: Option<HeaderValue>,
    public: Vec<Scope>,
    upgrades: Upgrades,
    underscore_headers: bool,
    allowed_hosts: Option<Vec<String>>,
    tunnels: Arc<Tunnels>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// What the proxy needs to know of the request besides the request itself.
pub(crate) struct Forward {
    /// The connecting peer.
    pub peer: IpAddr,
    /// The client address (the peer, or what a trusted proxy says).
    pub client: IpAddr,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// `https` when the client reached tokengate over TLS.
    pub proto: &'static str,
    /// The accepted key's label (`None` on a `--public` path).
    pub key_label: Option<HeaderValue>,
    /// When tokengate started on the request (its duration runs from here).
    pub start: Instant,
    /// A key with limits: the `RateLimit` fields for the client's response.
    pub limit: Option<Box<crate::limits::Checked>>,
    /// A key expiring within `--expiry-notice`: `Sunset` for the client.
    pub sunset: Option<HeaderValue>,
}

impl Gateway {
    /// The pooled keep-alive client for `config`: HTTP/1.1 by tokengate's
    /// pool ([`super::pool`]); HTTP/2 with `--upstream-http2` by hyper-util's
    /// client (by ALPN over TLS, prior knowledge over cleartext).
    pub(crate) fn new(config: &GatewayConfig) -> Self {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &config.ca {
            // A CA that rustls cannot parse was refused with the configuration.
            let _ = roots.add(CertificateDer::clone(cert));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        // The scheme is the TLS layer's business.
        tcp.enforce_http(false);
        // Requests and responses are written whole: no reason to wait.
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let client = if config.http2 {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(pool::IDLE_TIMEOUT)
                .pool_max_idle_per_host(pool::MAX_IDLE)
                .set_host(false);
            if !config.upstream.is_https() {
                builder.http2_only(true);
            }
            Clients::Legacy(Box::new(
                builder.build(connector.enable_http2().wrap_connector(tcp)),
            ))
        } else {
            Clients::Http1(Arc::new(Pool::new(
                connector.wrap_connector(tcp),
                config.upstream.base_uri(),
                config.resend_if_idle,
            )))
        };
        Gateway {
            upstream: config.upstream.clone(),
            client,
            timeout: config.timeout,
            upstream_host: config.upstream_host.clone(),
            default_host: config.upstream.host_header(),
            public: config.public.clone(),
            upgrades: config.upgrades.clone(),
            underscore_headers: config.underscore_headers,
            allowed_hosts: config.allowed_hosts.clone(),
            tunnels: Arc::default(),
        }
    }

    /// The upgraded connections handed through.
    pub(crate) fn tunnels(&self) -> &Arc<Tunnels> {
        &self.tunnels
    }

    /// Whether `req`'s host (`:authority`, the absolute-form target's, or
    /// `Host`) is one of `--allowed-hosts` (any host without the flag).
    pub(crate) fn host_allowed<B>(&self, req: &Request<B>) -> bool {
        let Some(allowed) = &self.allowed_hosts else {
            return true;
        };
        let host = match req.uri().authority() {
            Some(authority) => authority.as_str().as_bytes(),
            None => match req.headers().get(HOST) {
                Some(host) => host.as_bytes(),
                None => return false,
            },
        };
        allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Whether `method` on `path` (normalised) is a `--public` path.
    pub(crate) fn is_public(&self, method: &Method, path: &str) -> bool {
        self.public.iter().any(|rule| rule.allows(method, path))
    }

    /// Rewrites `req` into the upstream's request (headers, target, `Host`),
    /// synchronously: the future that waits for the upstream then holds only
    /// what crosses the wait (a smaller future is cheaper to move).
    pub(crate) fn prepare(
        &self,
        mut req: Request<Incoming>,
        hop: &Forward,
        peer: &Peer,
        token_header: &http::HeaderName,
    ) -> Prepared {
        let client_h2 = req.version() == Version::HTTP_2;
        // Only an allowed protocol, asked for well-formed, is passed as an
        // upgrade; any other `Upgrade` is stripped as the hop-by-hop field
        // it is ([`super::upgrade`]).
        let expected = match req.version() {
            Version::HTTP_11 => self.upgrades.requested(req.headers()).map(Box::new),
            _ => None,
        };
        let upgrade = expected.is_some();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        // A clone of the client's `Host` shares its bytes; only HTTP/2's
        // `:authority` is copied into a header value.
        let sent_host = req.headers().get(HOST).cloned();
        let has_host = sent_host.is_some();
        let host = sent_host.or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let (mut parts, body) = req.into_parts();
        for_upstream(
            &mut parts.headers,
            &Hop {
                peer,
                client: hop.client,
                peer_trusted: hop.peer_trusted,
                underscores: self.underscore_headers,
                proto: hop.proto,
                // With `--upstream-host`, the client's host is the upstream's
                // to see only if `--allowed-hosts` admitted it.
                host: if self.upstream_host.is_some() && self.allowed_hosts.is_none() {
                    None
                } else {
                    host.as_ref()
                },
                token_header,
                key_label: hop.key_label.as_ref(),
                upgrade,
            },
        );
        if client_h2 {
            join_cookies(&mut parts.headers);
        }
        match (&self.upstream_host, host) {
            (Some(forced), _) => {
                parts.headers.insert(HOST, forced.clone());
            }
            // The client's `Host` is still there (the hygiene never strips
            // it): nothing to do.
            (None, Some(_)) if has_host => {}
            (None, Some(host)) => {
                parts.headers.insert(HOST, host);
            }
            (None, None) => {
                if let Some(host) = &self.default_host {
                    parts.headers.insert(HOST, host.clone());
                }
            }
        }
        parts.uri = match &self.client {
            // Origin-form: hyper's connection writes the URI as it is.
            Clients::Http1(_) => Uri::from(self.upstream.target_for(&target)),
            // Absolute: the legacy client takes its pool key and the HTTP/2
            // `:authority` from it.
            Clients::Legacy(_) => self.upstream.uri_for(&target),
        };
        // The client speaks HTTP/2 to the upstream when it negotiated it
        // (ALPN) or was told to (`--upstream-http2` over cleartext), whatever
        // the version the request came in with.
        parts.version = Version::HTTP_11;
        Prepared {
            request: Request::from_parts(parts, Untrailed::new(body)),
            client_upgrade,
            expected,
            client_h2,
            start: hop.start,
        }
    }

    /// Sends a prepared request upstream; what is returned waits for the
    /// response head, within `--upstream-timeout`. [`Gateway::finish`] turns
    /// what it yields into the client's response.
    pub(crate) fn send(&self, prepared: Prepared) -> Sending {
        let Prepared {
            request,
            client_upgrade,
            expected,
            client_h2,
            start: started,
        } = prepared;
        // The request's start stands for the send's (microseconds apart):
        // one clock read less per request.
        let call = match &self.client {
            Clients::Http1(pool) => {
                Call::Http1(pool.send(request, client_upgrade.is_some(), started))
            }
            Clients::Legacy(client) => Call::Legacy(client.request(request)),
        };
        Sending {
            response: tokio::time::timeout_at((started + self.timeout).into(), call),
            rest: Some(Rest {
                client_upgrade,
                expected,
                client_h2,
                started,
            }),
        }
    }

    /// The client's response for what the upstream answered: its response
    /// (headers made fit for the client, an upgrade handed through), or
    /// tokengate's own 502/504 with no upstream detail. `now`: when it
    /// answered.
    pub(crate) fn finish(
        &self,
        answered: Answered,
        responses: &Responses,
        metrics: Option<&Metrics>,
        now: Instant,
    ) -> Response<ServiceBody> {
        let Answered {
            result,
            rest:
                Rest {
                    client_upgrade,
                    expected,
                    client_h2,
                    started,
                },
        } = answered;
        let (mut response, lease) = match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Other
                };
                warn!(upstream = %self.upstream.authority(), error = %e, "upstream request failed");
                if let Some(m) = metrics {
                    m.upstream_failed(kind, now.saturating_duration_since(started));
                }
                return responses.bad_gateway.respond(false).map(Either::Left);
            }
            Err(_) => {
                warn!(upstream = %self.upstream.authority(), timeout = ?self.timeout, "upstream response head timed out");
                if let Some(m) = metrics {
                    m.upstream_failed(
                        UpstreamFailure::Timeout,
                        now.saturating_duration_since(started),
                    );
                }
                return responses.gateway_timeout.respond(false).map(Either::Left);
            }
        };
        if let Some(m) = metrics {
            m.upstream_answered(response.status(), now.saturating_duration_since(started));
        }
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching
            && !(client_upgrade.is_some()
                && expected.is_some_and(|e| e.answered_by(response.headers())))
        {
            // A 101 that does not answer an allowed upgrade of this request
            // (or reaches an HTTP/2 client): no tunnel, and the connection,
            // which the upstream now considers switched, is not reused.
            warn!(upstream = %self.upstream.authority(), "upstream answered 101 to a request it could not switch; 502");
            if let Some(lease) = lease {
                lease.discard();
            }
            return responses.bad_gateway.respond(false).map(Either::Left);
        }
        for_client(response.headers_mut(), switching);
        if client_h2 {
            unpin_values(response.headers_mut());
        }
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            self.tunnels.spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
        }
        response.map(|body| Either::Right(UpstreamBody::new(body, lease)))
    }
}
