//! The contract in idiomatic axum: routes in a Router, the token check as
//! middleware on the protected route.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

const TOKEN: &str = "mysecrettoken";

async fn public() -> Json<serde_json::Value> {
    Json(json!({"message": "Welcome to the public route!"}))
}

async fn protected() -> Json<serde_json::Value> {
    Json(json!({"message": "You have access to the protected route!"}))
}

async fn require_token(req: Request, next: Next) -> Response {
    match req.headers().get("x-token") {
        Some(v) if v.as_bytes() == TOKEN.as_bytes() => next.run(req).await,
        _ => (StatusCode::UNAUTHORIZED, Json(json!({"detail": "Unauthorized"}))).into_response(),
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8002".to_owned());
    let app = Router::new()
        .route("/protected", get(protected).layer(middleware::from_fn(require_token)))
        .route("/public", get(public));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    eprintln!("axum listening on http://{}", listener.local_addr().expect("addr"));
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .expect("serve");
}
