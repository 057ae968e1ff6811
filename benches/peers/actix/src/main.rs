//! The contract in idiomatic actix-web: the token check as an extractor.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{App, FromRequest, HttpRequest, HttpResponse, HttpServer, ResponseError, get};
use serde_json::json;

const TOKEN: &str = "mysecrettoken";

#[derive(Debug)]
struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unauthorized")
    }
}

impl ResponseError for Unauthorized {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::Unauthorized().json(json!({"detail": "Unauthorized"}))
    }
}

struct Token;

impl FromRequest for Token {
    type Error = Unauthorized;
    type Future = Ready<Result<Token, Unauthorized>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.headers().get("x-token") {
            Some(v) if v.as_bytes() == TOKEN.as_bytes() => Ok(Token),
            _ => Err(Unauthorized),
        })
    }
}

#[get("/public")]
async fn public() -> HttpResponse {
    HttpResponse::Ok().json(json!({"message": "Welcome to the public route!"}))
}

#[get("/protected")]
async fn protected(_: Token) -> HttpResponse {
    HttpResponse::Ok().json(json!({"message": "You have access to the protected route!"}))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8003".to_owned());
    let server = HttpServer::new(|| App::new().service(public).service(protected)).bind_auto_h2c(&addr)?;
    eprintln!("actix listening on http://{}", server.addrs()[0]);
    server.run().await
}
