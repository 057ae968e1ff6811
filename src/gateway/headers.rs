//! What the upstream receives in its request head: a proxy strips before it
//! adds (RFC 9110 §7.6.1; golang/go#50580).
//!
//! Also the head rewrites between protocols: HTTP/2 `cookie` fields joined
//! for an HTTP/1.1 upstream (`join_cookies`), and an upstream response's
//! values copied off its read buffer for an HTTP/2 client (`unpin_values`).
//!
//! 1. Every field the client's `Connection` names is removed, then the
//!    hop-by-hop fields themselves (`Connection`, `Keep-Alive`,
//!    `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade` — the last
//!    kept when the request is being upgraded).
//! 2. The credential is removed (the token header, and `Authorization` when it
//!    is a Bearer credential: another scheme is the upstream's business), and
//!    so is any client-sent `x-auth-key-label`.
//! 3. Fields an upstream framework reads as routing or identity are removed:
//!    method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//!    `X-Method-Override`: Rails, Laravel, Express), URL overrides
//!    (`X-Original-URL`, `X-Rewrite-URL`: Symfony CVE-2018-14773, Zend
//!    ZF2018-01), `HTTP2-Settings` and `Trailer`, and every field whose name
//!    holds `_` (CGI, WSGI and Rack fold `_` into `-`, so `X_Auth_Key_Label`
//!    would read as the label; nginx drops them too; `--allow-underscore-headers`
//!    keeps them). Unless the peer is a trusted proxy: `Forwarded`,
//!    `Client-IP`, `True-Client-IP` and every `X-Forwarded-*` tokengate does
//!    not set (`-Ssl`, `-Port`, `-Prefix`, `-Server`, …).
//! 4. Only then are tokengate's own fields set: `x-auth-key-label` (for a
//!    request that passed with a key), `X-Forwarded-For` (the chain kept only
//!    from a trusted peer, the peer's address appended), `X-Real-IP` (the
//!    client address tokengate determined), `X-Forwarded-Proto`,
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
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removed from every request: fields that make an upstream framework act on
/// another method or path than the one authorised, and hop-by-hop leftovers.
const ALWAYS_STRIPPED: [&str; 7] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "http2-settings",
    "trailer",
];

/// The connecting peer: its address, and that address as a header value,
/// written once per connection (a request's `X-Forwarded-For` and
/// `X-Real-IP` share it instead of formatting and allocating their own).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The address.
    pub ip: IpAddr,
    /// The address as text.
    pub text: HeaderValue,
}

impl Peer {
    /// `ip` and its text.
    pub(crate) fn new(ip: IpAddr) -> Self {
        let mut buf = [0u8; 48];
        let len = write_ip(&mut buf, ip);
        Peer {
            ip,
            text: HeaderValue::from_bytes(&buf[..len])
                .expect("an address written as text is a valid header value"),
        }
    }
}

/// What tokengate knows about the request it passes on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    /// The connecting peer.
    pub peer: &'a Peer,
    /// The client address tokengate determined (`X-Real-IP`).
    pub client: IpAddr,
    /// Whether the peer is a trusted proxy (its `X-Forwarded-For` is kept).
    pub peer_trusted: bool,
    /// `--allow-underscore-headers`.
    pub underscores: bool,
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
pub(crate) fn for_upstream(headers: &mut HeaderMap, hop: &Hop<'_>) {
    // Which of the fields to strip are there at all: one pass over the
    // request's fields (comparing names, no hashing) spares a hashed
    // `remove` for every absent one — most requests carry only the token.
    let present = Present::scan(headers, Some(hop.token_header), true);
    if present.has(Present::SUSPECT) {
        strip_suspects(headers, hop);
    }

    // 1. Strip: what `Connection` names, then the hop-by-hop fields.
    if present.has(Present::CONNECTION) {
        for name in connection_named(headers) {
            // `Host` is end-to-end whatever `Connection` says: naming it would
            // let a client strip the routing field of the upstream request.
            if !(hop.upgrade && name == UPGRADE) && name != HOST {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    present.remove_hop_by_hop(headers, hop.upgrade);

    // 2. The credential and a forged label never pass.
    if present.has(Present::TOKEN) {
        headers.remove(hop.token_header);
    }
    if present.has(Present::AUTHORIZATION) {
        let bearer = headers.get_all(AUTHORIZATION).iter().any(|v| {
            let v = v.as_bytes();
            v.len() >= 6 && v[..6].eq_ignore_ascii_case(b"bearer")
        });
        if bearer {
            headers.remove(AUTHORIZATION);
        }
    }
    if present.has(Present::KEY_LABEL) && hop.key_label.is_none() {
        // (With a label, `insert` below replaces the forged one.)
        headers.remove(KEY_LABEL);
    }

    add_own(headers, hop, present);
}

/// Writes `ip` as text into `buf`; returns its length. IPv4, the usual peer,
/// digit by digit: `core::fmt` showed as a visible share of a proxied
/// request under `scripts/instructions --gateway`; IPv6 through `Display`
/// (at most 45 bytes: fits).
fn write_ip(buf: &mut [u8; 48], ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    }
}

/// Step 3: tokengate's own fields.
fn add_own(headers: &mut HeaderMap, hop: &Hop<'_>, present: Present) {
    if let Some(label) = hop.key_label {
        headers.insert(KEY_LABEL, label.clone());
    }
    // The client: the peer itself unless a trusted proxy named another.
    if hop.client == hop.peer.ip {
        headers.insert(X_REAL_IP, hop.peer.text.clone());
    } else {
        let mut buf = [0u8; 48];
        let len = write_ip(&mut buf, hop.client);
        if let Ok(real_ip) = HeaderValue::from_bytes(&buf[..len]) {
            headers.insert(X_REAL_IP, real_ip);
        }
    }
    let previous: Vec<&str> = if hop.peer_trusted && present.has(Present::FORWARDED_FOR) {
        // (Empty when `Connection` named it: it was stripped above.)
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let forwarded_for = if !previous.is_empty() {
        HeaderValue::try_from(format!("{}, {}", previous.join(", "), hop.peer.ip)).ok()
    } else {
        // The common case: just the peer, written once per connection.
        Some(hop.peer.text.clone())
    };
    // `insert` replaces every earlier value.
    match forwarded_for {
        Some(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        None if present.has(Present::FORWARDED_FOR) => {
            headers.remove(&X_FORWARDED_FOR);
        }
        None => {}
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
    match hop.host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None if present.has(Present::FORWARDED_HOST) => {
            headers.remove(&X_FORWARDED_HOST);
        }
        None => {}
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

/// Which of the fields a proxy strips or replaces a head carries: a bit each,
/// found in one pass over the names (standard names compare as tags).
#[derive(Debug, Default, Clone, Copy)]
struct Present(u16);

/// Step 3: the fields that make an upstream act on something else than what
/// was authorised (rare: a separate pass, only when the scan saw one).
#[cold]
fn strip_suspects(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            ALWAYS_STRIPPED.contains(&name)
                || (!hop.underscores && name.contains('_'))
                || (!hop.peer_trusted && is_claim(name))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// A client's claim a trusted proxy may make: `Forwarded`, `Client-IP`,
/// `True-Client-IP`, an `X-Forwarded-*` tokengate does not set.
fn is_claim(name: &str) -> bool {
    matches!(name, "forwarded" | "client-ip" | "true-client-ip")
        || (name.starts_with("x-forwarded-")
            && !matches!(
                name,
                "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            ))
}

/// Whether step 3 has work on the field `name` (checked for every field:
/// only a name of the right length and first byte is compared).
#[inline]
fn is_suspect(name: &str) -> bool {
    let candidate = matches!(
        (name.len(), name.as_bytes().first()),
        (7, Some(b't')) | (9, Some(b'f' | b'c')) | (14, Some(b'h' | b't')) | (13.., Some(b'x'))
    );
    (candidate && (ALWAYS_STRIPPED.contains(&name) || is_claim(name)))
        || name.bytes().any(|b| b == b'_')
}

impl Present {
    const CONNECTION: u16 = 1;
    const KEEP_ALIVE: u16 = 1 << 1;
    const PROXY_CONNECTION: u16 = 1 << 2;
    const TE: u16 = 1 << 3;
    const TRANSFER_ENCODING: u16 = 1 << 4;
    const UPGRADE: u16 = 1 << 5;
    const TOKEN: u16 = 1 << 6;
    const AUTHORIZATION: u16 = 1 << 7;
    const KEY_LABEL: u16 = 1 << 8;
    const FORWARDED_FOR: u16 = 1 << 9;
    const FORWARDED_HOST: u16 = 1 << 10;
    const SUSPECT: u16 = 1 << 11;

    /// `suspects`: look for step 3's fields too (a request head).
    fn scan(headers: &HeaderMap, token_header: Option<&HeaderName>, suspects: bool) -> Self {
        let mut bits = 0;
        for name in headers.keys() {
            // Standard names compare as tags, others by length first.
            bits |= if name == CONNECTION {
                Self::CONNECTION
            } else if name == UPGRADE {
                Self::UPGRADE
            } else if name == TE {
                Self::TE
            } else if name == TRANSFER_ENCODING {
                Self::TRANSFER_ENCODING
            } else if name == AUTHORIZATION {
                Self::AUTHORIZATION
            } else if name == KEEP_ALIVE {
                Self::KEEP_ALIVE
            } else if name == PROXY_CONNECTION {
                Self::PROXY_CONNECTION
            } else if name == KEY_LABEL {
                Self::KEY_LABEL
            } else if name == X_FORWARDED_FOR {
                Self::FORWARDED_FOR
            } else if name == X_FORWARDED_HOST {
                Self::FORWARDED_HOST
            } else if suspects && is_suspect(name.as_str()) {
                Self::SUSPECT
            } else {
                0
            };
            // Apart from the chain: `--token-header` may name any field.
            if Some(name) == token_header {
                bits |= Self::TOKEN;
            }
        }
        Present(bits)
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    /// Removes the hop-by-hop fields other than `Connection` that are there
    /// (`Upgrade` kept when the request is being upgraded).
    fn remove_hop_by_hop(self, headers: &mut HeaderMap, upgrade: bool) {
        for (bit, name) in [
            (Self::KEEP_ALIVE, KEEP_ALIVE),
            (Self::PROXY_CONNECTION, PROXY_CONNECTION),
            (Self::TE, TE),
            (Self::TRANSFER_ENCODING, TRANSFER_ENCODING),
        ] {
            if self.has(bit) {
                headers.remove(name);
            }
        }
        if self.has(Self::UPGRADE) && !upgrade {
            headers.remove(UPGRADE);
        }
    }
}

/// The hop-by-hop fields of a response head, stripped before it goes back
/// to the client (the same rules: what `Connection` names, then the fields).
pub(crate) fn for_client(headers: &mut HeaderMap, upgrade: bool) {
    let present = Present::scan(headers, None, false);
    if present.has(Present::CONNECTION) {
        for name in connection_named(headers) {
            if !(upgrade && name == UPGRADE) {
                headers.remove(&name);
            }
        }
        if !upgrade {
            headers.remove(CONNECTION);
        }
    }
    present.remove_hop_by_hop(headers, upgrade);
}

/// An HTTP/2 client may split `cookie` into several fields; an HTTP/1.1
/// upstream expects one, joined with `"; "` (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut http::HeaderMap) {
    let mut cookies = headers.get_all(http::header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, value);
    }
}

/// Gives each header value of an upstream response its own small buffer.
///
/// hyper parses a response head into values that share the connection's
/// read buffer (8 KiB or more). An HTTP/2 client's HPACK encoder keeps the
/// values it indexes in its dynamic table for as long as they stay there, so
/// each indexed value (a new `date` every second) would pin a whole upstream
/// read buffer: up to ~60 of them per client connection (a 4 KiB table),
/// found by `scripts/soak --mode gateway` as RSS growing for a minute.
/// An HTTP/1 client writes the values and drops them: nothing to do there.
pub(crate) fn unpin_values(headers: &mut http::HeaderMap) {
    for value in headers.values_mut() {
        let sensitive = value.is_sensitive();
        if let Ok(mut owned) = HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(sensitive);
            *value = owned;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    static TOKEN_HEADER: HeaderName = HeaderName::from_static("x-token");
    static PEER: std::sync::LazyLock<Peer> =
        std::sync::LazyLock::new(|| Peer::new("192.0.2.10".parse().unwrap()));
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
            peer: &PEER,
            client: "192.0.2.10".parse().unwrap(),
            peer_trusted: trusted,
            underscores: false,
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
    fn a_token_header_that_is_a_standard_field_is_stripped() {
        static AUTH: HeaderName = HeaderName::from_static("authorization");
        let mut h = headers(&[("authorization", "secret"), ("accept", "*/*")]);
        let mut hop = hop(None, false, false);
        hop.token_header = &AUTH;
        for_upstream(&mut h, &hop);
        assert!(h.get("authorization").is_none());
        assert_eq!(h["accept"], "*/*");
    }

    #[test]
    fn a_trusted_chain_named_by_connection_is_dropped_not_joined() {
        let mut h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("connection", "x-forwarded-for"),
        ]);
        for_upstream(&mut h, &hop(None, true, false));
        assert_eq!(h["x-forwarded-for"], "192.0.2.10");
    }

    #[test]
    fn a_request_with_only_the_token_gets_exactly_the_gateways_fields() {
        let label = HeaderValue::from_static("ops");
        let mut h = headers(&[("host", "api.example"), ("x-token", "secret")]);
        for_upstream(&mut h, &hop(Some(&label), false, false));
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "host",
                "x-auth-key-label",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn routing_and_identity_fields_are_stripped() {
        let forged = [
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-original-url", "/admin/secret"),
            ("x-rewrite-url", "/admin/secret"),
            ("x_auth_key_label", "full"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x-token_", "t"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-forwarded-server", "evil"),
            ("client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("trailer", "x-auth-key-label"),
        ];
        let mut h = headers(&forged);
        h.append("accept", HeaderValue::from_static("*/*"));
        for_upstream(&mut h, &hop(None, false, false));
        assert_eq!(h["x-real-ip"], "192.0.2.10");
        assert_eq!(h["accept"], "*/*");
        for (name, _) in forged {
            if name != "x-real-ip" {
                assert!(h.get(name).is_none(), "{name} passed");
            }
        }
        // A trusted proxy's claims pass; the overrides never do.
        let mut h = headers(&forged);
        for_upstream(&mut h, &hop(None, true, false));
        for kept in [
            "forwarded",
            "x-forwarded-prefix",
            "client-ip",
            "true-client-ip",
        ] {
            assert!(h.get(kept).is_some(), "{kept}");
        }
        for gone in [
            "x-http-method-override",
            "x-original-url",
            "x_auth_key_label",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        // --allow-underscore-headers.
        let mut h = headers(&[("x_custom", "1")]);
        let mut allowing = hop(None, false, false);
        allowing.underscores = true;
        for_upstream(&mut h, &allowing);
        assert_eq!(h["x_custom"], "1");
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
        let mut up = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        for_client(&mut up, true);
        assert_eq!(up["connection"], "upgrade");
        assert_eq!(up["upgrade"], "websocket");
        assert!(up.get("te").is_none());
        let mut plain = headers(&[("upgrade", "h2c"), ("content-length", "0")]);
        for_client(&mut plain, false);
        assert!(plain.get("upgrade").is_none());
        assert_eq!(plain["content-length"], "0");
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["content-type"], "text/plain");
    }

    #[test]
    fn peer_addresses_are_written_as_display_writes_them() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let mut cases: Vec<IpAddr> = vec![
            Ipv4Addr::new(0, 0, 0, 0).into(),
            Ipv4Addr::new(255, 255, 255, 255).into(),
            Ipv4Addr::new(10, 0, 100, 9).into(),
            Ipv4Addr::new(192, 168, 1, 10).into(),
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            )
            .into(),
            "::ffff:192.0.2.1".parse().expect("a valid address"),
        ];
        // Every octet value in every position.
        for n in 0..=255u8 {
            cases.push(Ipv4Addr::new(n, n.wrapping_add(7), 255 - n, n / 3).into());
        }
        for ip in cases {
            let mut buf = [0u8; 48];
            let len = write_ip(&mut buf, ip);
            assert_eq!(
                std::str::from_utf8(&buf[..len]),
                Ok(ip.to_string().as_str())
            );
        }
    }

    #[test]
    fn http2_cookies_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(http::header::COOKIE).iter().count(), 1);
        assert_eq!(h[http::header::COOKIE], "a=1; b=2; c=3");
        let mut one = http::HeaderMap::new();
        one.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[http::header::COOKIE], "a=1");
    }

    #[test]
    fn unpinned_values_no_longer_share_the_read_buffer() {
        // What hyper does: header values are slices of the read buffer.
        let buffer = bytes::Bytes::from(
            b"date: Sun, 29 Nov 2026 22:00:00 GMT\r\n"
                .iter()
                .copied()
                .chain(std::iter::repeat_n(b' ', 8192))
                .collect::<Vec<u8>>(),
        );
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let mut headers = http::HeaderMap::new();
        let date = HeaderValue::from_maybe_shared(buffer.slice(6..35)).unwrap();
        let mut secret = HeaderValue::from_maybe_shared(buffer.slice(0..4)).unwrap();
        secret.set_sensitive(true);
        headers.insert(http::header::DATE, date);
        headers.insert("x-secret", secret);
        assert!(range.contains(&(headers[http::header::DATE].as_bytes().as_ptr() as usize)));

        unpin_values(&mut headers);
        assert_eq!(headers[http::header::DATE], "Sun, 29 Nov 2026 22:00:00 GMT");
        assert!(headers["x-secret"].is_sensitive());
        for value in headers.values() {
            let at = value.as_bytes().as_ptr() as usize;
            assert!(
                !range.contains(&at),
                "{value:?} still points into the buffer"
            );
        }
    }
}
