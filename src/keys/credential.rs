//! The credential a request carries: the token header, else
//! `Authorization: Bearer`; an empty or repeated field is a wrong one.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName};

use super::Outcome;

/// The presented token, or why there is none (`Missing` or `Invalid`).
pub(super) fn credential<'a>(
    headers: &'a HeaderMap,
    token_header: &HeaderName,
) -> Result<&'a [u8], Outcome> {
    let mut values = headers.get_all(token_header).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => return Err(Outcome::Invalid),
        (Some(value), None) => return non_empty(trim_ows(value.as_bytes())),
        (None, _) => {}
    }

    let mut values = headers.get_all(AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(Outcome::Missing),
        (Some(_), Some(_)) => Err(Outcome::Invalid),
        (Some(value), None) => bearer(value.as_bytes()),
    }
}

fn non_empty(token: &[u8]) -> Result<&[u8], Outcome> {
    if token.is_empty() {
        Err(Outcome::Invalid)
    } else {
        Ok(token)
    }
}

/// Parses `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1). Another
/// scheme is not a bearer credential at all, so it counts as missing.
fn bearer(value: &[u8]) -> Result<&[u8], Outcome> {
    let value = trim_ows(value);
    const SCHEME: &[u8] = b"bearer";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return Err(Outcome::Missing);
    }
    let rest = &value[SCHEME.len()..];
    if rest.is_empty() {
        return Err(Outcome::Invalid);
    }
    if rest[0] != b' ' {
        // e.g. "Bearerx": a different scheme name.
        return Err(Outcome::Missing);
    }
    non_empty(trim_ows(rest))
}

/// Strips optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends.
fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}
