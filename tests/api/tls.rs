//! HTTPS: HTTP/1.1 and HTTP/2 over TLS chosen by ALPN, the handshake bounded
//! by the header timeout, and certificate reload on SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokengate::tls::{Tls, TlsFiles};
use tokengate::{App, AppConfig, Limits};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::support::{KEY, Spawned, TempDir, keys};

pub(crate) struct Cert {
    pub(crate) der: CertificateDer<'static>,
    pub(crate) files: TlsFiles,
}

pub(crate) fn make_cert(dir: &std::path::Path, name: &str) -> Cert {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Cert {
        der: certified.cert.der().clone(),
        files: TlsFiles { cert, key },
    }
}

pub(crate) fn connector(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add((*c).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

pub(crate) struct Answer {
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) leaf: Vec<u8>,
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

pub(crate) async fn https_get(
    addr: SocketAddr,
    connector: &TlsConnector,
    path: &str,
    token: Option<&str>,
) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let leaf = session.peer_certificates().unwrap()[0].to_vec();
    let mut req = Request::get(format!("https://localhost{path}")).header("host", "localhost");
    if let Some(t) = token {
        req = req.header("x-token", t);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let io = TokioIo::new(stream);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        alpn,
        leaf,
        status,
        body,
    }
}

pub(crate) async fn in_process(
    cert: &Cert,
    limits: Limits,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(App::new(keys(&[KEY]), &AppConfig::default()));
    let tls = Arc::new(Tls::new(cert.files.clone()).unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokengate::Server::new(app, limits).tls(Some(tls));
    tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

#[tokio::test]
async fn https_serves_h1_and_h2_by_alpn() {
    let dir = TempDir::new("tls-alpn");
    let cert = make_cert(&dir, "a");
    let (addr, _stop) = in_process(&cert, Limits::default()).await;
    for (offer, want) in [
        (vec![&b"h2"[..], b"http/1.1"], &b"h2"[..]),
        (vec![&b"http/1.1"[..]], &b"http/1.1"[..]),
    ] {
        let c = connector(&[&cert.der], &offer);
        let ok = https_get(addr, &c, "/protected", Some(KEY)).await;
        assert_eq!(ok.alpn.as_deref(), Some(want));
        assert_eq!(ok.status, 200);
        assert_eq!(
            &ok.body[..],
            br#"{"message":"You have access to the protected route!"}"#
        );
        let denied = https_get(addr, &c, "/protected", None).await;
        assert_eq!(denied.status, 401);
        assert_eq!(https_get(addr, &c, "/public", None).await.status, 200);
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let dir = TempDir::new("tls-reload");
    let first = make_cert(&dir, "first");
    let second = make_cert(&dir, "second");
    let live_cert = dir.join("live.crt");
    let live_key = dir.join("live.key");
    std::fs::copy(&first.files.cert, &live_cert).unwrap();
    std::fs::copy(&first.files.key, &live_key).unwrap();
    let server = Spawned::start(
        &[
            "--tls-cert",
            live_cert.to_str().unwrap(),
            "--tls-key",
            live_key.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(server.log().contains("https://"), "{}", server.log());
    let c = connector(&[&first.der, &second.der], &[b"h2", b"http/1.1"]);
    assert_eq!(
        https_get(server.addr, &c, "/public", None).await.leaf,
        first.der.to_vec()
    );

    std::fs::copy(&second.files.cert, &live_cert).unwrap();
    std::fs::copy(&second.files.key, &live_key).unwrap();
    server.signal("-HUP");
    let mut swapped = false;
    for _ in 0..100 {
        if https_get(server.addr, &c, "/public", None).await.leaf == second.der.to_vec() {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(swapped, "{}", server.log());
    assert!(server.log().contains("TLS certificate and key reloaded"));
}

#[tokio::test]
async fn bad_tls_configuration_exits_2() {
    let dir = TempDir::new("tls-bad");
    let cert = make_cert(&dir, "a");
    let other = make_cert(&dir, "b");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["--tls-cert", cert.files.cert.to_str().unwrap()],
            "--tls-key",
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                cert.files.key.to_str().unwrap(),
            ],
            "--tls-cert /nonexistent/cert.pem",
        ),
        (
            vec![
                "--tls-cert",
                cert.files.cert.to_str().unwrap(),
                "--tls-key",
                other.files.key.to_str().unwrap(),
            ],
            "--tls-cert/--tls-key",
        ),
    ];
    for (args, needle) in cases {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend(args);
        let out = crate::support::command(&all, &[]).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
