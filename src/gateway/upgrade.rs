//! Which upgrades pass, and which answer opens a tunnel.
//!
//! Once a connection is upgraded, tokengate copies bytes both ways and checks
//! nothing more: whatever the client sends next reaches the upstream. So a
//! tunnel opens only for a protocol the operator allowed
//! (`--upgrade-protocols`, default `websocket`) and only on a 101 that
//! answers that very request:
//!
//! * `h2c` is never allowed (RFC 9113 §3.1 removed the upgrade): a tunnel to
//!   an upstream that speaks h2c would carry HTTP/2 requests nobody checked
//!   (h2c smuggling, Bishop Fox 2020). Its `Upgrade` and `HTTP2-Settings`
//!   are stripped and the request goes on as a plain one.
//! * The 101 must name the requested protocol in `Upgrade`, carry
//!   `Connection: upgrade` and, for a WebSocket, the `Sec-WebSocket-Accept`
//!   computed from the request's key (RFC 6455 §4.2.2). Any other 101 (a
//!   route that reflects a status, say) is a 502 and its connection closed:
//!   the next "request" on it would reach the upstream unchecked (WebSocket
//!   smuggling, 0ang3el 2019).
//!
//! A WebSocket's messages are not checked one by one; its handshake is.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use sha1::{Digest as _, Sha1};

/// RFC 6455 §1.3.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `--upgrade-protocols`: the protocol tokens a client may upgrade to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrades(Vec<String>);

impl Default for Upgrades {
    fn default() -> Self {
        Upgrades(vec!["websocket".to_owned()])
    }
}

/// Why `--upgrade-protocols` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadProtocol {
    /// `h2c`: a tunnel that would carry unchecked HTTP/2 requests.
    #[error("h2c cannot be allowed: its requests would pass through the tunnel unchecked")]
    H2c,
    /// Not a protocol token.
    #[error("{0:?} is not a protocol name (like websocket)")]
    NotAToken(String),
}

impl Upgrades {
    /// Parses `PROTOCOL[,PROTOCOL…]`; `none` or empty: no upgrade passes.
    pub fn parse(list: &str) -> Result<Self, BadProtocol> {
        let mut protocols = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let token = item.to_ascii_lowercase();
            if token == "none" {
                continue;
            }
            if token == "h2c" || token.starts_with("h2c/") {
                return Err(BadProtocol::H2c);
            }
            if !token.bytes().all(is_token_byte) {
                return Err(BadProtocol::NotAToken(item.to_owned()));
            }
            protocols.push(token);
        }
        Ok(Upgrades(protocols))
    }

    /// The upgrade `headers` ask for, if it may pass: `Connection` names
    /// `upgrade`, one `Upgrade` field names one allowed protocol and, for a
    /// WebSocket, one well-formed `Sec-WebSocket-Key` is there.
    pub(crate) fn requested(&self, headers: &HeaderMap) -> Option<Expected> {
        if self.0.is_empty() || !headers.contains_key(UPGRADE) || !names_upgrade(headers) {
            return None;
        }
        let protocol = single(headers, &UPGRADE)?.trim().to_ascii_lowercase();
        if !self.0.contains(&protocol) {
            return None;
        }
        let accept = if protocol == "websocket" {
            let key = single(headers, &SEC_WEBSOCKET_KEY)?.trim();
            let nonce = STANDARD.decode(key).ok()?;
            if nonce.len() != 16 {
                return None;
            }
            Some(accept_for(key))
        } else {
            None
        };
        Some(Expected { protocol, accept })
    }
}

/// What the 101 to an upgrade request must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    /// The protocol asked for, lower case.
    protocol: String,
    /// A WebSocket's `Sec-WebSocket-Accept`.
    accept: Option<String>,
}

impl Expected {
    /// Whether a 101 with `headers` answers the request.
    pub(crate) fn answered_by(&self, headers: &HeaderMap) -> bool {
        let protocol = single(headers, &UPGRADE)
            .is_some_and(|p| p.trim().eq_ignore_ascii_case(&self.protocol));
        let accept = match &self.accept {
            Some(want) => {
                single(headers, &SEC_WEBSOCKET_ACCEPT).is_some_and(|got| got.trim() == want)
            }
            None => true,
        };
        protocol && accept && names_upgrade(headers)
    }
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID);
    STANDARD.encode(sha.finalize())
}

/// The value of the one `name` field; `None` if absent, repeated or not text.
fn single<'h>(headers: &'h HeaderMap, name: &http::HeaderName) -> Option<&'h str> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(value), None) => value.to_str().ok(),
        _ => None,
    }
}

/// Whether a `Connection` field names `upgrade`.
fn names_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// RFC 9110 §5.6.2 `tchar`, and `/` for a protocol's version.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_for(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn only_allowed_well_formed_upgrades_pass() {
        let u = Upgrades::default();
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", KEY),
        ];
        assert!(u.requested(&headers(&ws)).is_some());
        for bad in [
            vec![
                ("connection", "upgrade"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
            vec![("connection", "upgrade"), ("upgrade", "websocket")],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", "short"),
            ],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket, h2c"),
                ("sec-websocket-key", KEY),
            ],
            vec![("upgrade", "websocket"), ("sec-websocket-key", KEY)],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
            ],
        ] {
            assert!(u.requested(&headers(&bad)).is_none(), "{bad:?}");
        }
        assert!(
            Upgrades::parse("none")
                .unwrap()
                .requested(&headers(&ws))
                .is_none()
        );
        assert_eq!(Upgrades::parse("websocket,h2c"), Err(BadProtocol::H2c));
        assert!(matches!(
            Upgrades::parse("a b"),
            Err(BadProtocol::NotAToken(_))
        ));
        let other = Upgrades::parse("foo/2").unwrap();
        let want = other
            .requested(&headers(&[("connection", "upgrade"), ("upgrade", "FOO/2")]))
            .unwrap();
        assert!(want.answered_by(&headers(&[("connection", "Upgrade"), ("upgrade", "foo/2")])));
        assert!(!want.answered_by(&headers(&[("connection", "Upgrade"), ("upgrade", "bar")])));
    }

    #[test]
    fn only_the_matching_101_opens_a_tunnel() {
        let u = Upgrades::default();
        let want = u
            .requested(&headers(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-key", KEY),
            ]))
            .unwrap();
        let good = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(want.answered_by(&headers(&good)));
        for bad in [
            vec![],
            vec![("connection", "upgrade"), ("upgrade", "websocket")],
            vec![
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "h2c"),
                ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ],
            vec![
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "wrong"),
            ],
        ] {
            assert!(!want.answered_by(&headers(&bad)), "{bad:?}");
        }
    }
}
