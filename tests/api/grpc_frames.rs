//! Malformed gRPC calls, sent frame by frame with the `h2` client: a bad
//! length prefix, a message over 64 KiB (refused from its prefix, before its
//! bytes come), the compressed flag, an undecodable message, a wrong
//! `content-type`, a `grpc-timeout` that passes, a stream reset mid-message.
//! Each gets its status and the server keeps serving.

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request, StatusCode};
use tokengate::{AppConfig, Limits};

use crate::support::{TestServer, keys_from};

const CHECK: &str = "http://x/envoy.service.auth.v3.Authorization/Check";
const HEALTH: &str = "http://x/grpc.health.v1.Health/Check";
const CAP: Duration = Duration::from_secs(30);

async fn connect(server: &TestServer) -> SendRequest<Bytes> {
    connect_to(server.addr).await
}

async fn connect_to(addr: std::net::SocketAddr) -> SendRequest<Bytes> {
    handshake(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

async fn handshake<T>(io: T) -> SendRequest<Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The answer to a call: the HTTP status, the body and the trailers.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn grpc_status(&self) -> Option<&str> {
        self.trailers.as_ref()?.get("grpc-status")?.to_str().ok()
    }
}

/// Starts a call with `headers`, sends `chunks` (the last with END_STREAM
/// when `end`), and reads the answer.
async fn call(
    client: &mut SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    end: bool,
) -> Answer {
    let mut builder = Request::post(path);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(()).unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (response, mut stream) = ready.send_request(request, false).unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = end && i + 1 == chunks.len();
        stream
            .send_data(Bytes::copy_from_slice(chunk), last)
            .unwrap();
    }
    if end && chunks.is_empty() {
        stream.send_data(Bytes::new(), true).unwrap();
    }
    let answer = async {
        let response = response.await.unwrap();
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
            bytes.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        Answer {
            status,
            body: bytes,
            trailers,
        }
    };
    let answer = tokio::time::timeout(CAP, answer)
        .await
        .expect("an answer without the rest of the message");
    drop(stream);
    answer
}

const GRPC: [(&str, &str); 1] = [("content-type", "application/grpc")];

async fn server() -> TestServer {
    TestServer::with(
        keys_from("carol-key-00000001 carol\n"),
        AppConfig::default(),
        Limits::default(),
    )
    .await
}

/// The health call still answers on the same connection.
async fn still_serving(client: &mut SendRequest<Bytes>) {
    // An empty HealthCheckRequest: the prefix and no bytes.
    let a = call(client, HEALTH, &GRPC, &[b"\0\0\0\0\0"], true).await;
    assert_eq!(a.grpc_status(), Some("0"));
    assert_eq!(a.body, b"\0\0\0\0\x02\x08\x01", "SERVING");
}

#[tokio::test]
async fn malformed_messages_get_their_status() {
    let s = server().await;
    let mut c = connect(&s).await;
    // The prefix promises 10 bytes; 3 come, then the end.
    let a = call(&mut c, CHECK, &GRPC, &[b"\0\0\0\0\x0a", b"abc"], true).await;
    assert_eq!((a.status, a.grpc_status()), (StatusCode::OK, Some("3")));
    // More than one message in a unary call.
    let a = call(&mut c, HEALTH, &GRPC, &[b"\0\0\0\0\0\0\0\0\0\0"], true).await;
    assert_eq!(a.grpc_status(), Some("3"));
    // A prefix flag that is neither 0 nor 1.
    let a = call(&mut c, CHECK, &GRPC, &[b"\x02\0\0\0\x01a"], true).await;
    assert_eq!(a.grpc_status(), Some("3"));
    // Compressed.
    let a = call(&mut c, CHECK, &GRPC, &[b"\x01\0\0\0\x01a"], true).await;
    assert_eq!(a.grpc_status(), Some("12"));
    // Not a CheckRequest (a field of wire type 7 does not exist).
    let a = call(&mut c, CHECK, &GRPC, &[b"\0\0\0\0\x02\x0f\xff"], true).await;
    assert_eq!(a.grpc_status(), Some("3"));
    // No message at all.
    let a = call(&mut c, CHECK, &GRPC, &[], true).await;
    assert_eq!(a.grpc_status(), Some("3"));
    // An unknown method: UNIMPLEMENTED without reading anything.
    let unknown = "http://x/envoy.service.auth.v3.Authorization/Other";
    let a = call(&mut c, unknown, &GRPC, &[], false).await;
    assert_eq!(a.grpc_status(), Some("12"));
    still_serving(&mut c).await;
}

#[tokio::test]
async fn an_oversized_message_is_refused_from_its_prefix() {
    let s = server().await;
    let mut c = connect(&s).await;
    // 16 MiB announced, 1 KiB sent, the stream left open: the answer comes
    // without the rest.
    let a = call(
        &mut c,
        CHECK,
        &GRPC,
        &[b"\0\x01\0\0\0", &[0u8; 1024]],
        false,
    )
    .await;
    assert_eq!(a.grpc_status(), Some("8"), "RESOURCE_EXHAUSTED");
    // 64 KiB + 1.
    let a = call(&mut c, CHECK, &GRPC, &[b"\0\0\x01\0\x01"], false).await;
    assert_eq!(a.grpc_status(), Some("8"));
    still_serving(&mut c).await;
}

#[tokio::test]
async fn a_wrong_content_type_is_415_and_not_grpc() {
    let s = server().await;
    let mut c = connect(&s).await;
    let json = [("content-type", "application/json")];
    let a = call(&mut c, CHECK, &json, &[b"{}"], true).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(a.grpc_status(), None);
    let web = [("content-type", "application/grpc-web")];
    let a = call(&mut c, CHECK, &web, &[b"\0\0\0\0\0"], true).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    still_serving(&mut c).await;
}

#[tokio::test]
async fn grpc_timeout_is_honoured() {
    let s = server().await;
    let mut c = connect(&s).await;
    // 10 bytes promised, 3 sent, the stream left open: the deadline answers.
    let headers = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "300m"),
    ];
    let a = call(&mut c, CHECK, &headers, &[b"\0\0\0\0\x0aabc"], false).await;
    assert_eq!(a.grpc_status(), Some("4"), "DEADLINE_EXCEEDED");
    let bad = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "soon"),
    ];
    let a = call(&mut c, HEALTH, &bad, &[b"\0\0\0\0\0"], true).await;
    assert_eq!(a.grpc_status(), Some("3"));
    still_serving(&mut c).await;
}

#[tokio::test]
async fn a_stream_reset_mid_message_leaves_the_server_serving() {
    let s = server().await;
    let mut c = connect(&s).await;
    // A few: many resets on one connection are the rapid-reset attack,
    // which closes it (h2abuse.rs).
    for _ in 0..3 {
        let request = Request::post(CHECK)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let mut ready = c.clone().ready().await.unwrap();
        let (_response, mut stream) = ready.send_request(request, false).unwrap();
        stream
            .send_data(Bytes::from_static(b"\0\0\0\x01\0half"), false)
            .unwrap();
        stream.send_reset(h2::Reason::CANCEL);
    }
    still_serving(&mut c).await;
    // And on a new connection.
    let mut fresh = connect(&s).await;
    still_serving(&mut fresh).await;
}

#[tokio::test]
async fn grpc_over_tls_h2() {
    let dir = crate::support::TempDir::new("grpc-tls");
    let cert = crate::tls::make_cert(&dir, "g");
    let (addr, _stop) = crate::tls::in_process(&cert, Limits::default()).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = crate::tls::connector(&[&cert.der], &[b"h2"])
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = handshake(tls).await;
    still_serving(&mut c).await;
}

/// Gateway mode: gRPC is tokengate's on `--admin-listen`; on the main
/// listener every path is the upstream's, gRPC ones included.
#[tokio::test]
async fn in_gateway_mode_grpc_is_on_the_admin_listener() {
    let up = crate::gateway::Upstream_::default();
    let upstream = up.start().await;
    let url = format!("http://{upstream}");
    let server = crate::support::Spawned::start(
        &["--upstream", &url, "--admin-listen", "127.0.0.1:0"],
        &[("TOKENGATE_TOKEN", "full-access-key-1")],
    )
    .await;
    let admin = server.admin_addr().await;
    let mut c = connect_to(admin).await;
    still_serving(&mut c).await;
    let before = up.count();
    let mut main = connect_to(server.addr).await;
    let with_key = [
        ("content-type", "application/grpc"),
        ("x-token", "full-access-key-1"),
    ];
    let a = call(&mut main, HEALTH, &with_key, &[b"\0\0\0\0\0"], true).await;
    assert_eq!(
        a.grpc_status(),
        None,
        "the upstream's answer, not tokengate's"
    );
    assert_eq!(up.count(), before + 1, "passed on");
    let a = call(&mut main, HEALTH, &GRPC, &[b"\0\0\0\0\0"], true).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "the gate first");
}
