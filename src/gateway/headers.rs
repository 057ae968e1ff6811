//! What the upstream receives in its request head: a proxy strips before it
//! adds (RFC 9110 §7.6.1; golang/go#50580).
//!
//! 1. Every field the client's `Connection` names is removed, then the
//!    hop-by-hop fields themselves (`Connection`, `Keep-Alive`,
//!    `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade` — the last
//!    kept when the request is being upgraded).
//! 2. The credential is removed (the token header, and `Authorization` when it
//!    is a Bearer credential: another scheme is the upstream's business), and
//!    so is any client-sent `x-auth-key-label`.
//! 3. Only then are tokengate's own fields set: `x-auth-key-label` (for a
//!    request that passed with a key), `X-Forwarded-For` (the chain kept only
//!    from a trusted peer, the peer's address appended), `X-Forwarded-Proto`,
//!    `X-Forwarded-Host`, and `Connection: upgrade` for an upgrade.

use std::net::IpAddr;

use http::header::{AUTHORIZATION, CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::forward_auth::KEY_LABEL;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What tokengate knows about the request it passes on.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The connecting peer.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is kept).
    pub peer_trusted: bool,
    /// `http` or `https`: how the client reached tokengate.
    pub proto: &'static str,
    /// The host the client asked for (`Host`, or HTTP/2's `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// The header that carries the token (`--token-header`).
    pub token_header: &'a HeaderName,
    /// The accepted key's label; `None` for a public path.
    pub key_label: Option<&'a HeaderValue>,
    /// The request is an upgrade (`Upgrade: websocket`) being passed through.
    pub upgrade: bool,
}

/// Rewrites `headers` (the client's request head) into the upstream's.
pub fn for_upstream(headers: &mut HeaderMap, hop: &Hop<'_>) {
    // Which of the fields to strip are there at all: one pass over the
    // request's fields (comparing names, no hashing) spares a hashed
    // `remove` for every absent one — most requests carry none of them.
    let mut present = Present::default();
    for name in headers.keys() {
        present.see(name, hop.token_header);
    }
    if present.none() {
        add_own(headers, hop);
        return;
    }

    // 1. Strip: what `Connection` names, then the hop-by-hop fields.
    let named = connection_named(headers);
    for name in named {
        // `Host` is end-to-end whatever `Connection` says: naming it would
        // let a client strip the routing field of the upstream request.
        if !(hop.upgrade && name == UPGRADE) && name != HOST {
            headers.remove(&name);
        }
    }
    if present.hop_by_hop {
        for name in [
            CONNECTION,
            KEEP_ALIVE,
            PROXY_CONNECTION,
            TE,
            TRANSFER_ENCODING,
        ] {
            headers.remove(name);
        }
        if !hop.upgrade {
            headers.remove(UPGRADE);
        }
    }

    // 2. The credential and a forged label never pass.
    headers.remove(hop.token_header);
    let bearer = headers.get_all(AUTHORIZATION).iter().any(|v| {
        let v = v.as_bytes();
        v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"bearer")
    });
    if bearer {
        headers.remove(AUTHORIZATION);
    }
    headers.remove(KEY_LABEL);

    add_own(headers, hop);
}

/// Step 3: tokengate's own fields.
fn add_own(headers: &mut HeaderMap, hop: &Hop<'_>) {
    if let Some(label) = hop.key_label {
        headers.insert(KEY_LABEL, label.clone());
    }
    let forwarded_for = if hop.peer_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        HeaderValue::try_from(format!("{}, {}", previous.join(", "), hop.peer)).ok()
    } else {
        // The common case: just the peer, formatted on the stack and copied
        // once into the header value.
        let mut buf = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{}", hop.peer));
        let len = usize::try_from(cursor.position()).unwrap_or(0);
        HeaderValue::from_bytes(&buf[..len]).ok()
    };
    // `insert` replaces every earlier value.
    match forwarded_for {
        Some(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        None => {
            headers.remove(&X_FORWARDED_FOR);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
    match hop.host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    if hop.upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The fields a `Connection` header names (`Connection: close, x-hop`), as
/// names; bounded by the head-size limit.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Which strippable fields a request carries.
#[derive(Default)]
struct Present {
    hop_by_hop: bool,
    credential_or_label: bool,
    forwarded: bool,
}

impl Present {
    fn see(&mut self, name: &HeaderName, token_header: &HeaderName) {
        if name == CONNECTION
            || name == UPGRADE
            || name == TE
            || name == TRANSFER_ENCODING
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
        {
            self.hop_by_hop = true;
        } else if name == token_header || name == AUTHORIZATION || name == KEY_LABEL {
            self.credential_or_label = true;
        } else if name == X_FORWARDED_FOR || name == X_FORWARDED_HOST {
            self.forwarded = true;
        }
    }

    fn none(&self) -> bool {
        !(self.hop_by_hop || self.credential_or_label || self.forwarded)
    }
}

/// The hop-by-hop fields of a response head, stripped before it goes back
/// to the client (the same rules: what `Connection` names, then the fields).
pub fn for_client(headers: &mut HeaderMap, upgrade: bool) {
    let named = connection_named(headers);
    for name in named {
        if !(upgrade && name == UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TE, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    static TOKEN_HEADER: HeaderName = HeaderName::from_static("x-token");
    static HOST_VALUE: HeaderValue = HeaderValue::from_static("api.example");

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn hop<'a>(label: Option<&'a HeaderValue>, trusted: bool, upgrade: bool) -> Hop<'a> {
        Hop {
            peer: "192.0.2.10".parse().unwrap(),
            peer_trusted: trusted,
            proto: "https",
            host: Some(&HOST_VALUE),
            token_header: &TOKEN_HEADER,
            key_label: label,
            upgrade,
        }
    }

    #[test]
    fn a_client_cannot_remove_the_proxys_fields_through_connection() {
        // golang/go#50580: Connection naming the proxy's own fields.
        let label = HeaderValue::from_static("ops");
        let mut h = headers(&[
            (
                "connection",
                "x-forwarded-for, x-auth-key-label, x-forwarded-proto, keep-alive",
            ),
            ("x-auth-key-label", "forged"),
            ("x-secret-hop", "1"),
            ("connection", "x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("accept", "*/*"),
            ("host", "api.example"),
            ("connection", "host"),
        ]);
        for_upstream(&mut h, &hop(Some(&label), false, false));
        assert_eq!(h["host"], "api.example");
        assert_eq!(h["x-auth-key-label"], "ops");
        assert_eq!(h["x-forwarded-for"], "192.0.2.10");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example");
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn hop_by_hop_and_credentials_are_stripped() {
        let mut h = headers(&[
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-token", "secret"),
            ("authorization", "Bearer secret"),
        ]);
        for_upstream(&mut h, &hop(None, false, false));
        for gone in [
            "te",
            "transfer-encoding",
            "proxy-connection",
            "upgrade",
            "x-token",
            "authorization",
            "x-auth-key-label",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        // Another Authorization scheme is the upstream's own credential.
        let mut h = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        for_upstream(&mut h, &hop(None, false, false));
        assert_eq!(h["authorization"], "Basic dXNlcjpwdw==");
    }

    #[test]
    fn forwarded_for_chain_kept_only_from_trusted_peers() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ]);
        for_upstream(&mut h, &hop(None, true, false));
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 192.0.2.10"
        );
        let mut h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-host", "evil")]);
        for_upstream(&mut h, &hop(None, false, false));
        assert_eq!(h["x-forwarded-for"], "192.0.2.10");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }

    #[test]
    fn upgrades_keep_upgrade() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        for_upstream(&mut h, &hop(None, false, true));
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn response_hop_by_hop_is_stripped() {
        let mut h = headers(&[
            ("connection", "x-internal, close"),
            ("x-internal", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
        ]);
        for_client(&mut h, false);
        assert!(h.get("x-internal").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["content-type"], "text/plain");
    }
}
