//! A hostile HTTP server on loopback, for tests of what the operator and `publish` do when a
//! registry or git server a user named misbehaves: endless bodies, huge bodies, slow drips,
//! redirect loops, content that is not what it claims. It speaks just enough HTTP/1.1 by hand
//! (no framework that would refuse to misbehave), answers each request through a function of its
//! method and path, and records every request line. Runs on its own thread and runtime, stopped
//! on drop.
#![allow(dead_code)] // each test binary uses its own part of it

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server answers one request with.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A normal answer.
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// 200 with `headers` and a chunked body that never ends: `piece` over and over.
    Endless {
        headers: Vec<(String, String)>,
        piece: Vec<u8>,
    },
    /// 200 with a `Content-Length` of `len` and all of those bytes (`piece` over and over), as
    /// fast as they are read.
    Huge {
        headers: Vec<(String, String)>,
        len: u64,
        piece: Vec<u8>,
    },
    /// 200 announcing `len` bytes and sending one every `every` (the bytes of `piece`, over and
    /// over).
    Drip {
        headers: Vec<(String, String)>,
        len: u64,
        every: Duration,
        piece: Vec<u8>,
    },
    /// 302 to `location`.
    Redirect { location: String },
}

impl Answer {
    /// A 200 with a body of `content_type`.
    pub fn ok(content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
        Answer::Fixed {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// An answer with no body.
    pub fn status(status: u16) -> Answer {
        Answer::Fixed {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

type Handler = dyn Fn(&str, &str) -> Answer + Send + Sync;

/// A running hostile server.
pub struct Hostile {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `METHOD PATH` of every request received, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hostile {
    /// Starts a server answering each request with `handler(method, path)`.
    pub fn start(handler: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind hostile server");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handler: Arc<Handler> = Arc::new(handler);
        let log = requests.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let (handler, log) = (handler.clone(), log.clone());
                        tokio::spawn(async move {
                            let _ = serve(stream, handler, log).await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = rx => {}
                }
            });
        });
        Hostile {
            addr,
            requests,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The requests received so far whose method is not GET or HEAD.
    pub fn writes(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.starts_with("GET ") && !r.starts_with("HEAD "))
            .cloned()
            .collect()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the requests of one connection, one after another (keep-alive).
async fn serve(
    mut stream: TcpStream,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    loop {
        let Some((method, path, body_len)) = read_head(&mut stream).await? else {
            return Ok(());
        };
        discard(&mut stream, body_len).await?;
        log.lock().unwrap().push(format!("{method} {path}"));
        let answer = handler(&method, &path);
        answer_with(&mut stream, &method, answer).await?;
    }
}

/// Reads a request head: method, path and `Content-Length`; `None` at the end of the stream.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(String, String, u64)>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too long"));
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let len = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some((method, path, len)))
}

async fn discard(stream: &mut TcpStream, mut len: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    while len > 0 {
        let want = buf.len().min(len as usize);
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        len -= n as u64;
    }
    Ok(())
}

fn head_of(status: u16, headers: &[(String, String)], extra: &str) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head.into_bytes()
}

async fn answer_with(stream: &mut TcpStream, method: &str, answer: Answer) -> std::io::Result<()> {
    let with_body = method != "HEAD";
    // about 64 KiB of `piece`, whole copies only
    let repeat = |piece: &[u8]| piece.repeat((64 * 1024 / piece.len().max(1)).max(1));
    match answer {
        Answer::Fixed {
            status,
            headers,
            body,
        } => {
            let length = format!("Content-Length: {}\r\n", body.len());
            stream
                .write_all(&head_of(status, &headers, &length))
                .await?;
            if with_body {
                stream.write_all(&body).await?;
            }
        }
        Answer::Endless { headers, piece } => {
            let extra = "Transfer-Encoding: chunked\r\n";
            stream.write_all(&head_of(200, &headers, extra)).await?;
            let filler = repeat(&piece);
            let chunk = [
                format!("{:x}\r\n", filler.len()).into_bytes(),
                filler,
                b"\r\n".to_vec(),
            ]
            .concat();
            if with_body {
                loop {
                    stream.write_all(&chunk).await?;
                }
            }
        }
        Answer::Huge {
            headers,
            len,
            piece,
        } => {
            let length = format!("Content-Length: {len}\r\n");
            stream.write_all(&head_of(200, &headers, &length)).await?;
            let filler = repeat(&piece);
            let mut left = if with_body { len } else { 0 };
            while left > 0 {
                let n = left.min(filler.len() as u64) as usize;
                stream.write_all(&filler[..n]).await?;
                left -= n as u64;
            }
        }
        Answer::Drip {
            headers,
            len,
            every,
            piece,
        } => {
            let length = format!("Content-Length: {len}\r\n");
            stream.write_all(&head_of(200, &headers, &length)).await?;
            let bytes = piece
                .iter()
                .cycle()
                .take(if with_body { len as usize } else { 0 });
            for byte in bytes {
                tokio::time::sleep(every).await;
                stream.write_all(&[*byte]).await?;
            }
        }
        Answer::Redirect { location } => {
            let extra = format!("Location: {location}\r\nContent-Length: 0\r\n");
            stream.write_all(&head_of(302, &[], &extra)).await?;
        }
    }
    stream.flush().await
}
