//! Gateway mode (issue 10, in progress): tokengate in front of one HTTP
//! service, checking keys and passing requests on.
//!
//! What is here so far are the pieces that decide what the upstream receives,
//! written and tested on their own before the proxy path uses them:
//!
//! * [`headers`] — header hygiene: hop-by-hop fields stripped first (with
//!   every field `Connection` names), then tokengate's own fields set, so a
//!   client cannot remove them (golang/go#50580); the credential and a
//!   client-sent `x-auth-key-label` never reach the upstream.
//! * [`upstream`] — the `--upstream` URL, and the target the upstream gets:
//!   its path prefix, then the client's path and query byte for byte.
//!
//! Not yet built (and not reachable from the command line): the pooled
//! upstream client, streaming bodies, upgrades, `--public` rules, the admin
//! listener and the failure answers (502/504).

pub mod headers;
pub mod upstream;
