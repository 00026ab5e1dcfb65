//! A TCP proxy a test owns, in front of a shared server: the test cuts *its* path to the server
//! (refuses new connections, resets the open ones, holds every byte, or delays what clients
//! send) without stopping the server every other test uses.
//!
//! ```no_run
//! # async fn example() {
//! let proxy = testkit::proxy::TcpProxy::start("127.0.0.1:8123").await;
//! let url = format!("http://{}", proxy.address()); // give this to the code under test
//! proxy.cut();     // open connections reset, new ones refused
//! proxy.restore(); // traffic passes again
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Resets every open connection and every new one at once: the server looks down.
    Cut,
    /// Keeps connections open and forwards nothing: the server looks hung.
    Hold,
    /// Forwards both ways, each chunk a client sends only after this long: the server looks
    /// slow, and a client's next request cannot reach it sooner than that.
    Delay(std::time::Duration),
}

/// The proxy: listens on a free loopback port until dropped.
pub struct TcpProxy {
    address: SocketAddr,
    mode: watch::Sender<Mode>,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`), passing traffic.
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind a proxy port: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("proxy address: {e}"));
        let (mode, watching) = watch::channel(Mode::Pass);
        let connections = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, upstream.clone(), watching.clone()));
            }
        });
        TcpProxy {
            address,
            mode,
            connections,
            task,
        }
    }

    /// Where clients connect: `127.0.0.1:<port>`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far (a client that reconnected after a cut made new ones).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Resets the open connections and every new one until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Holds the open connections and the new ones silent until [`TcpProxy::restore`].
    pub fn hold(&self) {
        self.mode.send_replace(Mode::Hold);
    }

    /// Forwards what clients send `each` late, until [`TcpProxy::restore`].
    pub fn delay(&self, each: std::time::Duration) {
        self.mode.send_replace(Mode::Delay(each));
    }

    /// Passes traffic again (connections reset by a cut stay closed: clients reconnect).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

/// One client connection: forwarded while the mode passes, held while it holds, reset when cut.
async fn serve(client: TcpStream, upstream: String, mut mode: watch::Receiver<Mode>) {
    // A connection made during a cut is reset at once; during a hold it waits for the end.
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Pass | Mode::Delay(_) => break,
            Mode::Cut => return reset(client),
            Mode::Hold => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
        }
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return reset(client);
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = [0_u8; 16 * 1024];
    let mut down = [0_u8; 16 * 1024];
    loop {
        // Bytes move only while passing: in a hold, nothing is read, so nothing is forwarded.
        if !matches!(*mode.borrow(), Mode::Pass | Mode::Delay(_)) {
            match wait_for_pass(&mut mode).await {
                Some(()) => continue,
                None => {
                    let client = client_read.reunite(client_write).ok();
                    if let Some(client) = client {
                        reset(client);
                    }
                    return;
                }
            }
        }
        tokio::select! {
            read = tokio::io::AsyncReadExt::read(&mut client_read, &mut up) => match read {
                Ok(0) | Err(_) => { let _ = server_write.shutdown().await; return; }
                Ok(n) => {
                    let delay = match *mode.borrow() { Mode::Delay(each) => Some(each), _ => None };
                    if let Some(each) = delay {
                        tokio::time::sleep(each).await;
                    }
                    if server_write.write_all(&up[..n]).await.is_err() { return; }
                },
            },
            read = tokio::io::AsyncReadExt::read(&mut server_read, &mut down) => match read {
                Ok(0) | Err(_) => { let _ = client_write.shutdown().await; return; }
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { return; },
            },
            _ = mode.changed() => {}
        }
    }
}

/// Waits while the proxy holds; `None` once it cuts (or is dropped).
async fn wait_for_pass(mode: &mut watch::Receiver<Mode>) -> Option<()> {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Pass | Mode::Delay(_) => return Some(()),
            Mode::Cut => return None,
            Mode::Hold => mode.changed().await.ok()?,
        }
    }
}

/// Closes with a TCP reset (linger 0), as a crashed server or a dropped route looks to a client.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// An echo server on a free port.
    async fn echo() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0_u8; 64];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0_u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn passes_holds_cuts_and_restores() {
        let proxy = TcpProxy::start(&echo().await).await;
        let mut open = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(
            round_trip(&mut open, Duration::from_secs(5)).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.hold();
        assert_eq!(
            round_trip(&mut open, Duration::from_millis(300)).await,
            None,
            "a hold answers nothing"
        );
        proxy.restore();
        let mut buf = [0_u8; 4];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut buf))
            .await
            .expect("the held bytes arrive once restored")
            .expect("read");
        assert_eq!(&buf, b"ping");

        proxy.cut();
        let mut buf = [0_u8; 4];
        let closed = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a cut closes the open connection: {closed:?}"
        );
        let mut during = TcpStream::connect(proxy.address())
            .await
            .expect("the port still accepts");
        assert_eq!(
            round_trip(&mut during, Duration::from_millis(500)).await,
            None,
            "a cut refuses new ones"
        );

        proxy.restore();
        let mut after = TcpStream::connect(proxy.address()).await.expect("connect");
        assert_eq!(
            round_trip(&mut after, Duration::from_secs(5)).await.as_deref(),
            Some(&b"ping"[..])
        );
        assert!(proxy.connections() >= 3);
    }

    #[tokio::test]
    async fn a_delay_holds_what_a_client_sends_for_that_long() {
        let proxy = TcpProxy::start(&echo().await).await;
        let mut open = TcpStream::connect(proxy.address()).await.expect("connect");
        proxy.delay(Duration::from_secs(1));
        assert_eq!(
            round_trip(&mut open, Duration::from_millis(300)).await,
            None,
            "nothing is answered before the delay"
        );
        let mut buf = [0_u8; 4];
        tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut buf))
            .await
            .expect("the bytes arrive after the delay")
            .expect("read");
        assert_eq!(&buf, b"ping");
        proxy.restore();
        assert_eq!(
            round_trip(&mut open, Duration::from_secs(5)).await.as_deref(),
            Some(&b"ping"[..])
        );
    }
}
