//! A hostile HTTP server on loopback, for tests of what the operator and `publish` do when a
//! registry or git server a user named misbehaves: endless bodies, huge bodies, slow drips,
//! redirect loops, content that is not what it claims. It speaks just enough HTTP/1.1 by hand
//! (no framework that would refuse to misbehave), answers each request through a function of its
//! method and path, and records every request line. In front of a real server
//! ([`Hostile::in_front_of`]) it passes the requests it is told to ([`Answer::Pass`]) through to
//! that server untouched, so that a client it does not attack (a builder pushing an image) sees a
//! working server. Runs on its own thread and runtime, stopped on drop.
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
    /// The request, head and body as they came, passed to the upstream server
    /// ([`Hostile::in_front_of`]), and its answer passed back as it comes; the connection closes
    /// after it. (Chunked request bodies are not passed.)
    Pass,
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
        Hostile::serving(None, handler)
    }

    /// Starts a server in front of `upstream`: requests `handler(method, path)` answers with
    /// [`Answer::Pass`] go to `upstream`, the others are answered as the handler says.
    pub fn in_front_of(
        upstream: SocketAddr,
        handler: impl Fn(&str, &str) -> Answer + Send + Sync + 'static,
    ) -> Hostile {
        Hostile::serving(Some(upstream), handler)
    }

    fn serving(
        upstream: Option<SocketAddr>,
        handler: impl Fn(&str, &str) -> Answer + Send + Sync + 'static,
    ) -> Hostile {
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
                            let _ = serve(stream, upstream, handler, log).await;
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
    upstream: Option<SocketAddr>,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    loop {
        let Some(head) = read_head(&mut stream).await? else {
            return Ok(());
        };
        log.lock()
            .unwrap()
            .push(format!("{} {}", head.method, head.path));
        match handler(&head.method, &head.path) {
            Answer::Pass => {
                let upstream = upstream.ok_or_else(|| std::io::Error::other("no upstream"))?;
                return pass(&mut stream, &head, upstream).await;
            }
            answer => {
                discard(&mut stream, head.body_len).await?;
                answer_with(&mut stream, &head.method, answer).await?;
            }
        }
    }
}

/// A request head as read.
struct Head {
    method: String,
    path: String,
    /// Its `Content-Length` (0 without one).
    body_len: u64,
    /// Its lines, the request line first, without the blank line that ends it.
    lines: Vec<String>,
}

/// Passes the request whose `head` was read (and its body, still unread) to `upstream`, asking it
/// to close the connection after its answer, and copies that answer back until it does.
async fn pass(client: &mut TcpStream, head: &Head, upstream: SocketAddr) -> std::io::Result<()> {
    let is = |line: &str, name: &str| {
        line.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
    };
    if head.lines.iter().any(|l| is(l, "transfer-encoding")) {
        return Err(std::io::Error::other(
            "chunked request bodies are not passed",
        ));
    }
    let mut forwarded: Vec<&str> = head
        .lines
        .iter()
        .filter(|l| !is(l, "connection") && !is(l, "keep-alive"))
        .map(String::as_str)
        .collect();
    forwarded.push("Connection: close");
    let mut server = TcpStream::connect(upstream).await?;
    server
        .write_all(format!("{}\r\n\r\n", forwarded.join("\r\n")).as_bytes())
        .await?;
    tokio::io::copy(&mut (&mut *client).take(head.body_len), &mut server).await?;
    tokio::io::copy(&mut server, client).await?;
    client.shutdown().await
}

/// Reads a request head; `None` at the end of the stream.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
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
    let text = String::from_utf8_lossy(&head[..head.len() - 4]);
    let lines: Vec<String> = text.split("\r\n").map(String::from).collect();
    let mut first = lines[0].split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let body_len = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(Some(Head {
        method,
        path,
        body_len,
        lines,
    }))
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
        Answer::Pass => {
            return Err(std::io::Error::other(
                "a passed request is not answered here",
            ))
        }
    }
    stream.flush().await
}
