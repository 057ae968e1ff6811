//! The client address: the peer, or — only when the peer is a trusted proxy
//! (`--trusted-proxies`) — the address the proxy says it serves.
//!
//! One field is read, the one the operator names (`--client-address-header`,
//! like nginx's `real_ip_header`), never another as a fallback: a proxy that
//! overwrites only `X-Real-IP` passes a client's own `X-Forwarded-For` on, so
//! falling back from one to the other would let the client choose.
//!
//! * `X-Forwarded-For`: the right-most entry that is not itself a trusted
//!   proxy is the client (every proxy appends the address it saw; entries
//!   left of an untrusted hop could have been written by the client). Fields
//!   are split as bytes, so a byte that is not text left of that entry
//!   changes nothing.
//! * `X-Real-IP`: exactly one address.
//!
//! Without a usable entry, the peer. An untrusted peer's headers are never
//! read, so it cannot choose its address.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// `--trusted-proxies`: the networks whose client-address field is
/// believed, and which field that is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    real_ip: bool,
}

/// Why `--trusted-proxies` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an address or a CIDR network (10.0.0.0/8, ::1, fd00::/8)")]
pub struct BadNetwork(pub String);

impl TrustedProxies {
    /// Parses `CIDR[,CIDR…]`; a bare address is a /32 (or /128). Empty: none.
    pub fn parse(list: &str) -> Result<Self, BadNetwork> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(IpNet::from)
                    .map_err(|_| BadNetwork(item.to_owned()))?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies {
            nets,
            real_ip: false,
        })
    }

    /// Reads `X-Real-IP` instead of `X-Forwarded-For`
    /// (`--client-address-header x-real-ip`).
    pub fn reading_real_ip(mut self, real_ip: bool) -> Self {
        self.real_ip = real_ip;
        self
    }

    /// No proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is a trusted proxy (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request from `peer` with `headers`.
    #[inline]
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.nets.is_empty() || !self.contains(peer) {
            return peer;
        }
        self.forwarded(headers).unwrap_or(peer)
    }

    #[cold]
    fn forwarded(&self, headers: &HeaderMap) -> Option<IpAddr> {
        if self.real_ip {
            let mut real = headers.get_all(X_REAL_IP).iter();
            return match (real.next(), real.next()) {
                (Some(v), None) => v.to_str().ok().and_then(parse_entry).map(canonical),
                _ => None,
            };
        }
        // Every X-Forwarded-For field, last first; entries right to left.
        for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            for entry in value.as_bytes().rsplit(|&b| b == b',') {
                match std::str::from_utf8(entry).ok().and_then(parse_entry) {
                    Some(ip) if self.contains(ip) => continue,
                    Some(ip) => return Some(canonical(ip)),
                    // An entry we cannot read: nothing left of it can be trusted.
                    None => return None,
                }
            }
        }
        None
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`1.2.3.4:5678`, `[::1]:5678`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let t = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(t.client(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn right_most_untrusted_entry_wins() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        let peer = ip("10.1.1.1");
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.2.2.2")]);
        assert_eq!(t.client(peer, &h), ip("1.2.3.4"));
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "1.2.3.4:5555, 192.168.1.1"),
        ]);
        assert_eq!(t.client(peer, &h), ip("1.2.3.4"));
        let h = headers(&[("x-forwarded-for", "[2001:db8::1]:80")]);
        assert_eq!(t.client(peer, &h), ip("2001:db8::1"));
        // All trusted: the peer; X-Real-IP is not a fallback.
        let h = headers(&[("x-forwarded-for", "10.9.9.9"), ("x-real-ip", "7.7.7.7")]);
        assert_eq!(t.client(peer, &h), peer);
        assert_eq!(t.client(peer, &headers(&[])), peer);
        // Garbage stops the walk.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, junk, 10.2.2.2")]);
        assert_eq!(t.client(peer, &h), peer);
        // A byte that is not text left of the client's entry changes nothing.
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"\xff\xfe, 1.2.3.4, 10.2.2.2").unwrap(),
        );
        assert_eq!(t.client(peer, &h), ip("1.2.3.4"));
    }

    #[test]
    fn one_field_is_read_never_the_other() {
        let xff = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let real = xff.clone().reading_real_ip(true);
        let peer = ip("10.1.1.1");
        // A proxy that overwrites X-Real-IP and passes the client's XFF on.
        let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-real-ip", "1.2.3.4")]);
        assert_eq!(real.client(peer, &h), ip("1.2.3.4"));
        assert_eq!(xff.client(peer, &h), ip("6.6.6.6"));
        // No fallback either way.
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(real.client(peer, &h), peer);
        let h = headers(&[("x-real-ip", "1.2.3.4")]);
        assert_eq!(xff.client(peer, &h), peer);
        let h = headers(&[("x-real-ip", "1.2.3.4"), ("x-real-ip", "5.6.7.8")]);
        assert_eq!(real.client(peer, &h), peer);
    }

    #[test]
    fn parsing() {
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        let t = TrustedProxies::parse("127.0.0.1,::1,fd00::/8").unwrap();
        assert!(t.contains(ip("127.0.0.1")));
        assert!(t.contains(ip("::ffff:127.0.0.1")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nope").is_err());
    }
}
