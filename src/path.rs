//! The one rule on request paths, applied before any route, scope or
//! `--public` match in every mode (standalone, gateway, `/auth/verify`): a
//! path that another component could resolve to somewhere else than the
//! path tokengate matched is refused, not normalised.
//!
//! tokengate matches the path with unreserved escapes decoded
//! ([`crate::routes::normalize`]) and forwards the client's bytes as they
//! are. An upstream that removes dot segments (`/open/../admin`), decodes an
//! escaped separator (`..%2f`), treats `\` as `/` (Windows, IIS), cuts at `;`
//! (Tomcat's `..;/`) or NUL, folds full-width or compatibility characters
//! (NFKC: `．．／`) or accepts an overlong UTF-8 escape (`%c0%ae`) would act
//! on a path tokengate never authorised. So a path is refused when it has:
//!
//! * a dot segment, raw or escaped (`.`, `..`, `%2e`, `.%2E`), also before a
//!   `;` (`..;x`);
//! * an escaped `/` or `\` (`%2f`, `%5c`), or one escaped twice (`%252f`,
//!   `%252e`, `%255c`);
//! * a raw `\`, a control byte or NUL (raw or escaped), a raw byte ≥ 0x80;
//! * an escape that is not two hex digits, or escapes that do not decode to
//!   UTF-8 (overlong forms included);
//! * a decoded character that a compatibility mapping turns into `.`, `/` or
//!   `\` (full-width and small forms, one/two-dot leaders, division and
//!   fraction slashes, reverse-solidus operators).
//!
//! Envoy offers the same choices as settings (`normalize_path`,
//! `merge_slashes`, `path_with_escaped_slashes_action`), and Istio's advice
//! after CVE-2021-31920 and CVE-2021-39156 is to reject or normalise the
//! same forms; tokengate rejects, so what it checked is what goes on.

/// Whether `path` (a request target's path, without the query) may be
/// matched and passed on as it is. `*` (`OPTIONS *`) is left to the caller.
#[inline(always)]
pub(crate) fn is_safe(path: &str) -> bool {
    // The common path is visible ASCII without `%`, `\` or a segment that
    // starts with a dot: one table look-up per byte, no allocation.
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if NEEDS_A_LOOK[usize::from(b)] && (b != b'.' || i == 0 || bytes[i - 1] == b'/') {
            return segments_are_safe(bytes);
        }
    }
    true
}

/// The bytes that send a path to the full check: all but visible ASCII, and
/// `%`, `\`, `.` (the last only at the start of a segment).
const NEEDS_A_LOOK: [bool; 256] = {
    let mut table = [true; 256];
    let mut b = 0x21;
    while b < 0x7f {
        table[b] = false;
        b += 1;
    }
    table[b'%' as usize] = true;
    table[b'\\' as usize] = true;
    table[b'.' as usize] = true;
    table
};

#[cold]
fn segments_are_safe(bytes: &[u8]) -> bool {
    if bytes.iter().any(|&b| !b.is_ascii_graphic() || b == b'\\') {
        return false;
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    for segment in bytes.split(|&b| b == b'/') {
        decoded.clear();
        if !decode(segment, &mut decoded) {
            return false;
        }
        if decoded
            .iter()
            .any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
        {
            return false;
        }
        let Ok(text) = std::str::from_utf8(&decoded) else {
            return false;
        };
        // `..;jsessionid=x`: Tomcat drops the parameter and sees `..`.
        let bare = text.split(';').next().unwrap_or("");
        if bare == "." || bare == ".." {
            return false;
        }
        if text.chars().any(is_confusable) || escapes_an_escape(text) {
            return false;
        }
    }
    true
}

/// Percent-decodes `segment` into `out`; `false` for an escape that is not
/// `%` and two hex digits.
fn decode(segment: &[u8], out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'%' {
            let (Some(h), Some(l)) = (
                segment.get(i + 1).and_then(|&b| hex(b)),
                segment.get(i + 2).and_then(|&b| hex(b)),
            ) else {
                return false;
            };
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(segment[i]);
            i += 1;
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// `%2e`, `%2f`, `%5c` left after one decoding (`%252e` sent): an upstream
/// that decodes twice would see a dot or a separator.
fn escapes_an_escape(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e') | (b'2', b'f') | (b'5', b'c')
            )
    })
}

/// Characters that NFKC or Windows' best-fit mapping turn into `.`, `/` or
/// `\` (or a run of them).
fn is_confusable(c: char) -> bool {
    matches!(
        c,
        '\u{2024}' // ONE DOT LEADER → .
            | '\u{2025}' // TWO DOT LEADER → ..
            | '\u{2026}' // HORIZONTAL ELLIPSIS → ...
            | '\u{FE52}' // SMALL FULL STOP → .
            | '\u{FF0E}' // FULLWIDTH FULL STOP → .
            | '\u{FF61}' // HALFWIDTH IDEOGRAPHIC FULL STOP (best fit) → .
            | '\u{3002}' // IDEOGRAPHIC FULL STOP (best fit) → .
            | '\u{FF0F}' // FULLWIDTH SOLIDUS → /
            | '\u{2215}' // DIVISION SLASH (best fit) → /
            | '\u{2044}' // FRACTION SLASH (best fit) → /
            | '\u{29F8}' // BIG SOLIDUS → /
            | '\u{FF3C}' // FULLWIDTH REVERSE SOLIDUS → \
            | '\u{FE68}' // SMALL REVERSE SOLIDUS → \
            | '\u{2216}' // SET MINUS (best fit) → \
            | '\u{29F5}' // REVERSE SOLIDUS OPERATOR → \
            | '\u{29F9}' // BIG REVERSE SOLIDUS → \
    )
}

/// A client-supplied field as a log line may hold it: visible ASCII as it
/// is, `\`, `"`, the space and every other byte as `\xNN`, so a
/// path cannot end a field, start a line (`\n`, U+2028) or pose as another
/// field (`status=200`) in the text format.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.0.as_bytes();
        if bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'\\' && b != b'"')
        {
            return f.write_str(self.0);
        }
        for &b in bytes {
            if b.is_ascii_graphic() && b != b'\\' && b != b'"' {
                std::fmt::Write::write_char(f, char::from(b))?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::Scope;
    use crate::routes::normalize;
    use http::Method;
    use proptest::prelude::*;

    /// What the most lenient upstream could make of a path: every escape
    /// decoded (twice), `\\` read as `/`, `;` parameters and everything
    /// after NUL dropped, full-width dots and slashes folded, then dot
    /// segments removed (RFC 3986 §5.2.4).
    fn resolved(path: &str) -> String {
        let mut bytes = path.as_bytes().to_vec();
        for _ in 0..2 {
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) if bytes[i] == b'%' => {
                        out.push(h * 16 + l);
                        i += 3;
                    }
                    _ => {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            bytes = out;
        }
        let text = String::from_utf8_lossy(&bytes)
            .replace('\\', "/")
            .replace(['\u{FF0E}', '\u{2024}'], ".")
            .replace('\u{FF0F}', "/");
        let text = text.split('\0').next().unwrap_or("");
        let mut out: Vec<&str> = Vec::new();
        for segment in text.split('/').skip(1) {
            match segment.split(';').next().unwrap_or("") {
                "." => {}
                ".." => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        format!("/{}", out.join("/"))
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "reports",
            "admin",
            "x",
            "..",
            ".",
            "%2e",
            "%2E%2e",
            ".%2e",
            "%2f",
            "%5c",
            "\\",
            "..;",
            ";",
            "%00",
            "%c0%ae",
            "%252e%252e",
            "%EF%BC%8E%EF%BC%8E",
            "a%20b",
            "%72eports",
            "",
        ])
    }

    proptest! {
        /// For any path the gate admits under a scope, what the upstream
        /// resolves it to stays inside that scope.
        #[test]
        fn an_admitted_path_stays_in_its_scope(segments in prop::collection::vec(segment(), 1..7)) {
            let path = format!("/{}", segments.join("/"));
            let scope = Scope::parse("GET:/reports/*").unwrap();
            if is_safe(&path) && scope.allows(&Method::GET, &normalize(&path)) {
                let upstream = resolved(&path);
                prop_assert!(
                    upstream.starts_with("/reports/"),
                    "{path} was admitted and resolves to {upstream}"
                );
            }
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "/public",
            "/reports/2026/q1.csv",
            "/a%20b",
            "/caf%C3%A9",
            "/%70ublic",
            "/.well-known/openid-configuration",
            "/a.b/c..d/...x",
            "/file.",
            "//double//slashes",
            "/a;b=c/d",
            "/~user/%7e",
            "/%25",
            "/%E6%97%A5%E6%9C%AC",
        ] {
            assert!(is_safe(path), "{path}");
        }
    }

    #[test]
    fn paths_that_resolve_elsewhere_are_refused() {
        for path in [
            "/open/../admin/secret",
            "/open/./x",
            "/..",
            "/.",
            "/open/%2e%2e/admin",
            "/open/%2E%2E/admin",
            "/open/.%2e/admin",
            "/open/%2e./admin",
            "/open/%2e/admin",
            "/open/..%2fadmin",
            "/open/..%2Fadmin",
            "/open/%2f",
            "/open/..%5cadmin",
            "/open/%5c",
            "/open\\..\\admin",
            "/open/..;/admin",
            "/open/..;jsessionid=1/admin",
            "/open/.;/admin",
            "/open/%00",
            "/open/a%00.txt",
            "/open/%0a",
            "/open/%7f",
            "/open/%c0%ae%c0%ae/admin",
            "/open/%c0%af",
            "/open/%ff",
            "/open/%e2%80",
            "/open/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin",
            "/open/%E2%80%A5/admin",
            "/open/%E2%88%95admin",
            "/open/%252e%252e/admin",
            "/open/%252f",
            "/open/%255c",
            "/open/%",
            "/open/%2",
            "/open/%zz",
            "/open/\u{FF0E}\u{FF0E}/admin",
            "/caf\u{e9}",
            "/a b",
            "/a\tb",
        ] {
            assert!(!is_safe(path), "{path:?}");
        }
    }
}
