//! A TCP proxy in front of the broker that tests can break on purpose: stop
//! forwarding (a network partition: the TCP connections stay open, so only
//! missed heartbeats reveal it), cut every connection (a network drop or a
//! broker crash, as the client sees it), or refuse new connections (the
//! broker is down). Faults hit only the clients that connect through the
//! proxy, so these tests cannot disturb any other test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct State {
    paused: watch::Sender<bool>,
    refusing: AtomicBool,
    links: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicUsize,
}

/// The proxy; stops when dropped.
pub struct FaultyProxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: JoinHandle<()>,
}

impl FaultyProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let (paused, _) = watch::channel(false);
        let state = Arc::new(State {
            paused,
            refusing: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
        });
        let s = Arc::clone(&state);
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let paused = s.paused.subscribe();
                let link = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, paused.clone()) => {}
                        _ = pump(sr, cw, paused) => {}
                    }
                });
                if let Ok(mut links) = s.links.lock() {
                    links.retain(|l| !l.is_finished());
                    links.push(link);
                }
            }
        });
        FaultyProxy {
            addr,
            state,
            acceptor,
        }
    }

    /// Starts in front of the broker of `uri` (an `amqp://` URI).
    pub async fn in_front_of(uri: &str) -> FaultyProxy {
        let hostport = crate::broker_hostport(uri);
        let upstream = tokio::net::lookup_host(&hostport)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve {hostport}"));
        Self::start(upstream).await
    }

    /// `uri` with its host and port replaced by the proxy's.
    pub fn uri(&self, uri: &str) -> String {
        let (scheme, rest) = uri.split_once("://").unwrap_or(("amqp", uri));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    /// Stops forwarding in both directions; connections stay open.
    pub fn pause(&self) {
        self.state.paused.send_replace(true);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.state.paused.send_replace(false);
    }

    /// Closes every connection going through the proxy now.
    pub fn cut(&self) {
        if let Ok(mut links) = self.state.links.lock() {
            for link in links.drain(..) {
                link.abort();
            }
        }
    }

    /// Refuses (closes at once) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.state.refusing.store(on, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open through the proxy now: a link ends when either
    /// side closes its end.
    pub fn open(&self) -> usize {
        self.state
            .links
            .lock()
            .map(|links| links.iter().filter(|l| !l.is_finished()).count())
            .unwrap_or(0)
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Data read just before a pause is held until the resume.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
