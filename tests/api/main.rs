//! The integration-test binary: each module is one concern, all over real TCP.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod support;

mod auth;
mod browser;
mod bypass;
mod contract;
mod forward_auth;
mod fuzz;
mod gateway;
mod grpc;
mod grpc_frames;
mod h2abuse;
mod hostile;
mod key_life;
mod lifecycle;
mod limits;
mod limits_redis;
mod ops;
mod proxies;
mod raw;
mod ready;
mod secrets;
mod throttle;
mod timing;
mod tls;
