//! Helpers shared by the tests.

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test, test binary or earlier run uses.
#[allow(dead_code)]
pub fn unique_name(purpose: &str, separator: char) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let s = separator;
    format!(
        "{purpose}{s}{}{s}{}{s}{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A two-worker multi-thread runtime with time and I/O, for tests that
/// block on it from a plain `#[test]` (or from a child process).
#[allow(dead_code)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls a future that completes without waiting (an in-process tier's
/// do) to its output, with no runtime in the way.
#[allow(dead_code)]
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the future did not complete at once"),
    }
}

/// A TCP proxy on 127.0.0.1 in front of a real server that can be frozen:
/// a connection that sees a freeze stays open and silent for good (what
/// it is sent is dropped), as over a hung server or a half-open connection
/// after a network fault. Connections made after a thaw work.
#[allow(dead_code)]
pub struct FreezingProxy {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    frozen: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

#[allow(dead_code)]
impl FreezingProxy {
    pub async fn start(upstream: &str) -> FreezingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = std::sync::Arc::new(tokio::sync::watch::Sender::new(false));
        let upstream = upstream.to_string();
        let state = std::sync::Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, state.subscribe()));
                tokio::spawn(forward(server_read, client_write, state.subscribe()));
            }
        });
        FreezingProxy { addr, frozen, task }
    }

    /// Stops forwarding: every connection stays open and silent.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        let Ok(n) = from.read(&mut buffer).await else {
            return;
        };
        if n == 0 {
            return;
        }
        // Frozen: hold the bytes until thawed (a hung peer).
        if frozen.wait_for(|frozen| !frozen).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
