//! `--upstream URL`: where the gateway sends requests, and the target each
//! one gets there — the URL's path prefix, then the client's path and query
//! byte for byte (no decoding, no re-encoding).

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};

/// A validated `--upstream`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// The path prefix without a trailing `/` (empty for none).
    prefix: String,
}

/// Why `--upstream` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// Not a URL at all.
    #[error("{0:?} is not a URL like http://127.0.0.1:9000 or https://api.internal/v1")]
    NotAUrl(String),
    /// Another scheme than `http` or `https`.
    #[error("{0:?}: the scheme must be http or https")]
    Scheme(String),
    /// No host.
    #[error("{0:?}: the URL has no host")]
    NoHost(String),
    /// A query or fragment, which would be sent with every request.
    #[error("{0:?}: the URL may have a path prefix but no query or fragment")]
    Query(String),
    /// User information (`user:password@`) is never sent by a proxy.
    #[error("{0:?}: credentials in the URL are not supported; the upstream gets the client's own")]
    UserInfo(String),
}

impl Upstream {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Self, UpstreamError> {
        if url.contains('#') || url.contains('?') {
            return Err(UpstreamError::Query(url.to_owned()));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| UpstreamError::NotAUrl(url.to_owned()))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| UpstreamError::NotAUrl(url.to_owned()))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(UpstreamError::Scheme(url.to_owned()));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::NoHost(url.to_owned()))?;
        if authority.as_str().contains('@') {
            return Err(UpstreamError::UserInfo(url.to_owned()));
        }
        if authority.host().is_empty() {
            return Err(UpstreamError::NoHost(url.to_owned()));
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream {
            scheme,
            authority,
            prefix,
        })
    }

    /// Whether the upstream is reached over TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The upstream's host and port.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// What the gateway's connector dials: scheme, host and port.
    pub fn base_uri(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default()
    }

    /// The `Host` an HTTP/1.1 client sends for this upstream: the host, and
    /// the port unless it is the scheme's default (what hyper-util's client
    /// would add to a request that has none).
    pub fn host_header(&self) -> Option<http::HeaderValue> {
        let default_port = if self.is_https() { 443 } else { 80 };
        let host = match self.authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", self.authority.host()),
            _ => self.authority.host().to_owned(),
        };
        http::HeaderValue::from_str(&host).ok()
    }

    /// The target the upstream gets for a client's (`/path?query`,
    /// origin-form): the prefix, then the target as the client sent it.
    pub fn target_for(&self, target: &PathAndQuery) -> PathAndQuery {
        if self.prefix.is_empty() {
            target.clone()
        } else if target.as_str() == "*" {
            // `OPTIONS *` asks about what the gateway exposes: the prefix.
            self.prefix
                .parse()
                .unwrap_or_else(|_| PathAndQuery::from_static("/"))
        } else {
            // The prefix is validated URI text and the target came from a
            // parsed request line: their concatenation parses.
            format!("{}{}", self.prefix, target.as_str())
                .parse()
                .unwrap_or_else(|_| target.clone())
        }
    }

    /// The absolute URI for a client's request target: the upstream's
    /// scheme and authority, then [`Upstream::target_for`].
    pub fn uri_for(&self, target: &PathAndQuery) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(self.target_for(target))
            .build()
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pq(s: &str) -> PathAndQuery {
        s.parse().unwrap()
    }

    #[test]
    fn targets_are_forwarded_byte_for_byte() {
        let u = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert!(!u.is_https());
        assert_eq!(
            u.uri_for(&pq("/a%2Fb/%7e?x=%20&y")).to_string(),
            "http://127.0.0.1:9000/a%2Fb/%7e?x=%20&y"
        );
        assert_eq!(
            u.target_for(&pq("/a%2Fb/%7e?x=%20&y")).as_str(),
            "/a%2Fb/%7e?x=%20&y"
        );
        let u = Upstream::parse("https://api.internal/v1/").unwrap();
        assert!(u.is_https());
        assert_eq!(u.authority().as_str(), "api.internal");
        assert_eq!(
            u.uri_for(&pq("/orders?id=7")).to_string(),
            "https://api.internal/v1/orders?id=7"
        );
        assert_eq!(
            u.target_for(&pq("/orders?id=7")).as_str(),
            "/v1/orders?id=7"
        );
    }

    #[test]
    fn asterisk_and_path_less_targets_with_a_prefix() {
        let u = Upstream::parse("http://127.0.0.1:9000/api").unwrap();
        assert_eq!(u.target_for(&pq("*")).as_str(), "/api");
        assert_eq!(u.target_for(&pq("/")).as_str(), "/api/");
        let bare = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(bare.target_for(&pq("*")).as_str(), "*");
    }

    #[test]
    fn the_dialled_uri_and_the_default_host() {
        let host = |url: &str| {
            let u = Upstream::parse(url).unwrap();
            (
                u.base_uri().to_string(),
                u.host_header().unwrap().to_str().unwrap().to_owned(),
            )
        };
        assert_eq!(
            host("http://127.0.0.1:9000/v1"),
            (
                "http://127.0.0.1:9000/".to_owned(),
                "127.0.0.1:9000".to_owned()
            )
        );
        assert_eq!(
            host("http://api.internal:80"),
            (
                "http://api.internal:80/".to_owned(),
                "api.internal".to_owned()
            )
        );
        assert_eq!(
            host("https://api.internal"),
            (
                "https://api.internal/".to_owned(),
                "api.internal".to_owned()
            )
        );
        assert_eq!(
            host("https://[::1]:8443"),
            ("https://[::1]:8443/".to_owned(), "[::1]:8443".to_owned())
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for (url, want) in [
            ("127.0.0.1:9000", "not a URL"),
            ("ftp://h/x", "scheme"),
            ("http://h/x?y=1", "query"),
            ("http://user:pw@h/", "credentials"),
            ("nonsense", "not a URL"),
        ] {
            let e = Upstream::parse(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }
}
