//! HTTP/2 abuse over raw frames (battery item 13): rapid reset, CONTINUATION
//! flood, too many concurrent streams, empty DATA flood. A frame is a 9-byte
//! header (24-bit length, type, flags, 31-bit stream id) and a payload.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{BOTH, KEY, TestServer, get};

const CAP: Duration = Duration::from_secs(20);
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for `GET http://x/public`: static-table indexes and literals without indexing.
pub fn get_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.extend_from_slice(&[0x04, 7]);
    b.extend_from_slice(b"/public"); // :path
    b.extend_from_slice(&[0x01, 1, b'x']); // :authority x
    b
}

pub fn preface_and_get(stream: u32) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        stream,
        &get_block(),
    ));
    out
}

/// Reads one frame; `None` once the connection is closed or broken.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Option<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some(Frame {
        kind: head[3],
        stream,
        payload,
    })
}

/// Reads frames until the server closes the connection (`Some`) or `cap` passes (`None`).
pub async fn read_frames_until_close<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    cap: Duration,
) -> Option<Vec<Frame>> {
    let mut frames = Vec::new();
    let done = tokio::time::timeout(cap, async {
        while let Some(f) = read_frame(r).await {
            frames.push(f);
        }
    })
    .await
    .is_ok();
    done.then_some(frames)
}

/// Writes `bytes` in the background (the server may stop reading) and reads
/// frames until the connection closes.
async fn abuse(server: &TestServer, bytes: Vec<u8>) -> Vec<Frame> {
    let s = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(CAP, wr.write_all(&bytes)).await;
        // Keep the write half open until the reader is done.
        tokio::time::sleep(CAP).await;
        drop(wr);
    });
    let frames = read_frames_until_close(&mut rd, CAP).await;
    writer.abort();
    let closed = frames.is_some();
    let frames = frames.unwrap_or_default();
    assert!(
        closed,
        "the abusive connection was not closed; {} frames",
        frames.len()
    );
    frames
}

async fn others_unaffected(server: &TestServer) {
    for proto in BOTH {
        let r = get(proto, server.addr, "/protected", &[("x-token", KEY)]).await;
        assert_eq!(r.status, 200);
    }
}

fn goaway(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .and_then(Frame::error_code)
}

#[tokio::test]
async fn rapid_reset_ends_in_goaway() {
    let server = TestServer::start().await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    let block = get_block();
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(HEADERS, END_HEADERS, id, &block));
        bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    let frames = abuse(&server, bytes).await;
    let code = goaway(&frames);
    let answered = frames.iter().filter(|f| f.kind == HEADERS).count();
    eprintln!("rapid reset: GOAWAY {code:?}, {answered} responses before it");
    // ENHANCE_YOUR_CALM (0xb) from the pending-accept reset limit, or a
    // protocol error: the connection is ended either way.
    assert!(code.is_some(), "no GOAWAY; {} frames", frames.len());
    others_unaffected(&server).await;
}

#[tokio::test]
async fn continuation_flood_ends_in_goaway() {
    let server = TestServer::start().await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    let mut block = get_block();
    block.extend_from_slice(&[0x00, 3, b'x', b'-', b'a', 100]);
    bytes.extend(frame(HEADERS, 0, 1, &block));
    let filler = vec![b'a'; 1000];
    for _ in 0..10_000 {
        bytes.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let frames = abuse(&server, bytes).await;
    let code = goaway(&frames);
    eprintln!("continuation flood: GOAWAY {code:?}");
    assert!(code.is_some(), "no GOAWAY; {frames:?}");
    others_unaffected(&server).await;
}

#[tokio::test]
async fn too_many_concurrent_streams_are_refused() {
    let server = TestServer::start().await;
    let s = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    wr.write_all(&bytes).await.unwrap();
    // Wait for the server's SETTINGS (with its stream limit) before opening streams.
    let mut frames = Vec::new();
    loop {
        let f = tokio::time::timeout(CAP, read_frame(&mut rd))
            .await
            .unwrap()
            .expect("SETTINGS");
        if f.kind == SETTINGS && f.payload.len() % 6 == 0 && !f.payload.is_empty() {
            break;
        }
    }
    wr.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
    // Streams without END_STREAM stay open (the request body never ends).
    let n = tokengate::server::H2_MAX_CONCURRENT_STREAMS + 10;
    let block = get_block();
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    wr.write_all(&bytes).await.unwrap();
    let refused = tokio::time::timeout(CAP, async {
        while let Some(f) = read_frame(&mut rd).await {
            let is_refused = f.kind == RST_STREAM && f.error_code() == Some(7);
            if is_refused {
                // Only streams past the advertised limit are refused.
                let limit = tokengate::server::H2_MAX_CONCURRENT_STREAMS;
                assert!(
                    f.stream > 2 * (limit - 1) + 1,
                    "stream {} refused under the limit",
                    f.stream
                );
            }
            frames.push(f);
            if is_refused {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(refused, "no REFUSED_STREAM; {} frames", frames.len());
    others_unaffected(&server).await;
}

#[tokio::test]
async fn empty_data_flood_is_bounded() {
    let server = TestServer::start().await;
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &get_block()));
    for _ in 0..200_000 {
        bytes.extend(frame(DATA, 0, 1, &[]));
    }
    let s = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move { tokio::time::timeout(CAP, wr.write_all(&bytes)).await });
    // Whatever the server decides (GOAWAY, reset, or absorbing the frames), it
    // keeps serving others, and the abusive connection ends.
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut sink)).await;
    writer.abort();
    eprintln!(
        "empty DATA flood: connection ended: {}, {} bytes from server",
        ended.is_ok(),
        sink.len()
    );
    others_unaffected(&server).await;
}

const WINDOW_UPDATE: u8 = 8;

/// Reads frames until `done` says so (bounded); returns what was read.
/// Reads frames until `done` says so (within the cap); all of them.
pub async fn read_until<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    mut done: impl FnMut(&Frame) -> bool,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    let finished = tokio::time::timeout(CAP, async {
        while let Some(f) = read_frame(r).await {
            let last = done(&f);
            frames.push(f);
            if last {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(finished, Ok(true), "stopped after {frames:?}");
    frames
}

/// Streams whose answers must wait for the client's flow-control window are
/// not lost: each is answered as soon as the client opens its window, in the
/// order the windows open, not the order of the requests.
#[tokio::test]
async fn streams_waiting_for_window_are_answered_when_it_opens() {
    let server = TestServer::start().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0: no stream may carry DATA yet.
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    s.write_all(&hello).await.unwrap();
    // The server applies it when it acknowledges it (an empty SETTINGS; its
    // own SETTINGS are not empty): only then do requests see a zero window,
    // and their answers wait in the server instead of in h2's send buffer.
    read_until(&mut s, |f| f.kind == SETTINGS && f.payload.is_empty()).await;
    // The first request tells the server the connection speaks HTTP/2; the
    // streams after it are run by the connection's own task (`streams.rs`).
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &get_block()))
        .await
        .unwrap();
    read_until(&mut s, |f| f.kind == HEADERS && f.stream == 1).await;
    let mut requests = frame(HEADERS, END_STREAM | END_HEADERS, 3, &get_block());
    requests.extend(frame(HEADERS, END_STREAM | END_HEADERS, 5, &get_block()));
    s.write_all(&requests).await.unwrap();
    let mut heads = 0;
    let frames = read_until(&mut s, |f| {
        heads += usize::from(f.kind == HEADERS);
        heads == 2
    })
    .await;
    assert!(
        !frames
            .iter()
            .any(|f| f.kind == DATA && !f.payload.is_empty()),
        "DATA without window: {frames:?}"
    );

    let body = br#"{"message":"Welcome to the public route!"}"#;
    for stream in [5u32, 1, 3] {
        s.write_all(&frame(WINDOW_UPDATE, 0, stream, &1000u32.to_be_bytes()))
            .await
            .unwrap();
        let mut data = Vec::new();
        let frames = read_until(&mut s, |f| {
            if f.kind == DATA {
                assert_eq!(f.stream, stream, "DATA for a stream still without window");
                data.extend_from_slice(&f.payload);
            }
            f.kind == DATA && data.len() >= body.len()
        })
        .await;
        assert_eq!(data, body, "stream {stream}: {frames:?}");
    }
    others_unaffected(&server).await;
}
