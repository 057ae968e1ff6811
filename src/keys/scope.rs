//! Per-key scopes: `scope=METHODS:PATTERN` in the key file.
//!
//! `METHODS` is `*` or a comma list (`GET,HEAD`); `PATTERN` is an exact path
//! (`/reports`) or a subtree ending in `/*` (`/reports/*` matches
//! `/reports/` and everything below it, not `/reports` itself). Paths are
//! compared after the percent-normalisation routing uses; the query string is
//! never part of them. Checking is allocation-free.

use std::fmt;

use http::Method;

/// A path pattern: exact, or a subtree (`/prefix/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// This path only.
    Exact(Box<str>),
    /// Every path starting with this prefix (which ends in `/`).
    Subtree(Box<str>),
}

impl PathPattern {
    /// Parses `/exact` or `/prefix/*`.
    pub fn parse(s: &str) -> Result<Self, ScopeProblem> {
        if !s.starts_with('/') {
            return Err(ScopeProblem::Pattern);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        {
            return Err(ScopeProblem::Pattern);
        }
        match s.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => {
                Ok(PathPattern::Subtree(prefix.into()))
            }
            Some(_) => Err(ScopeProblem::Pattern),
            None if s.contains('*') => Err(ScopeProblem::Pattern),
            None => Ok(PathPattern::Exact(s.into())),
        }
    }

    /// Whether `path` (normalised, without query) matches.
    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => **p == *path,
            PathPattern::Subtree(prefix) => path.starts_with(&**prefix),
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Subtree(p) => write!(f, "{p}*"),
        }
    }
}

/// Which methods a scope covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Methods {
    /// `*`: every method.
    Any,
    /// These methods only.
    Only(Box<[Method]>),
}

impl Methods {
    /// Parses `*` or `GET,HEAD,…` (upper-case tokens).
    pub fn parse(s: &str) -> Result<Self, ScopeProblem> {
        if s == "*" {
            return Ok(Methods::Any);
        }
        let methods = s
            .split(',')
            .map(|m| {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ScopeProblem::Methods);
                }
                Method::from_bytes(m.as_bytes()).map_err(|_| ScopeProblem::Methods)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Methods::Only(methods.into()))
    }

    /// Whether `method` is covered.
    #[inline]
    pub fn covers(&self, method: &Method) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only(list) => list.contains(method),
        }
    }
}

/// One `scope=METHODS:PATTERN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The methods.
    pub methods: Methods,
    /// The paths.
    pub pattern: PathPattern,
}

/// What is wrong with a scope (or `--public` rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeProblem {
    /// Not `METHODS:PATTERN`.
    #[error("a scope is METHODS:PATTERN, e.g. GET,HEAD:/reports/* or *:/admin")]
    Shape,
    /// The methods are not `*` or upper-case method names separated by commas.
    #[error("the methods must be * or upper-case names separated by commas (GET,HEAD)")]
    Methods,
    /// The pattern is not `/exact` or `/prefix/*`.
    #[error("the path must start with / and be exact (/reports) or end in /* (/reports/*)")]
    Pattern,
}

impl Scope {
    /// Parses `METHODS:PATTERN`.
    pub fn parse(s: &str) -> Result<Self, ScopeProblem> {
        let (methods, pattern) = s.split_once(':').ok_or(ScopeProblem::Shape)?;
        Ok(Scope {
            methods: Methods::parse(methods)?,
            pattern: PathPattern::parse(pattern)?,
        })
    }

    /// Whether the scope covers `method` on `path` (normalised, no query).
    #[inline]
    pub fn allows(&self, method: &Method, path: &str) -> bool {
        self.methods.covers(method) && self.pattern.matches(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patterns() {
        let sub = PathPattern::parse("/reports/*").unwrap();
        assert!(sub.matches("/reports/"));
        assert!(sub.matches("/reports/2026/q1"));
        assert!(!sub.matches("/reports"));
        assert!(!sub.matches("/reportsx"));
        let exact = PathPattern::parse("/reports").unwrap();
        assert!(exact.matches("/reports"));
        assert!(!exact.matches("/reports/"));
        for bad in ["reports", "/a*", "/a/*/b", "/*x", "/a?b", "/a b", ""] {
            assert_eq!(PathPattern::parse(bad), Err(ScopeProblem::Pattern), "{bad}");
        }
        assert_eq!(PathPattern::parse("/*").unwrap().to_string(), "/*");
    }

    #[test]
    fn scopes() {
        let s = Scope::parse("GET,HEAD:/reports/*").unwrap();
        assert!(s.allows(&Method::GET, "/reports/a"));
        assert!(s.allows(&Method::HEAD, "/reports/a"));
        assert!(!s.allows(&Method::POST, "/reports/a"));
        assert!(!s.allows(&Method::GET, "/protected"));
        let any = Scope::parse("*:/admin").unwrap();
        assert!(any.allows(&Method::DELETE, "/admin"));
        assert_eq!(Scope::parse("GET/reports"), Err(ScopeProblem::Shape));
        assert_eq!(Scope::parse("get:/x"), Err(ScopeProblem::Methods));
        assert_eq!(Scope::parse("GET,:/x"), Err(ScopeProblem::Methods));
        assert_eq!(Scope::parse("GET:x"), Err(ScopeProblem::Pattern));
    }
}
