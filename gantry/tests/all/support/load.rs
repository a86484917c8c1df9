//! Clients of the fabric: a load of kept-alive HTTP clients that records every request as it
//! saw it (when its connection opened, when it started and ended, which appliance and backend
//! answered, or why it failed), and what tests read from such records.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::fabric::{Fabric, VIP};

/// How long a client waits for a connection or an answer before it counts a failure.
pub const PATIENCE: Duration = Duration::from_secs(1);

/// A request as the client saw it.
#[derive(Clone, Debug)]
pub struct Sent {
    /// When its connection was opened.
    pub connected: Instant,
    pub started: Instant,
    pub ended: Instant,
    /// The appliance (the address the backend saw) and the backend, or why it failed.
    pub answer: Result<(String, String), String>,
}

/// A client connection that sends requests one after another (keep-alive).
pub struct Connection {
    reader: BufReader<TcpStream>,
    opened: Instant,
}

impl Connection {
    pub async fn open() -> Result<Connection, String> {
        Connection::open_to(VIP).await
    }

    /// A connection to port 80 of `ip` (IPv4 or IPv6).
    pub async fn open_to(ip: &str) -> Result<Connection, String> {
        let address = SocketAddr::new(ip.parse().expect("an IP address"), 80);
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(address))
            .await
            .map_err(|_| "connect: timed out".to_owned())?
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            opened: Instant::now(),
        })
    }

    /// One GET; `Ok((appliance, backend, keep))`, `keep` false when the server closes.
    pub async fn get(&mut self, path: &str) -> Result<(String, String, bool), String> {
        let exchange = async {
            let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\n\r\n");
            self.reader
                .get_mut()
                .write_all(request.as_bytes())
                .await
                .map_err(|e| format!("write: {e}"))?;
            let status = self.line().await?;
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!("status: {status:?}"));
            }
            let (mut length, mut peer, mut origin, mut keep) =
                (0, String::new(), String::new(), true);
            let mut chunked = false;
            loop {
                let line = self.line().await?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().map_err(|_| "length")?,
                    "x-seen-peer" => peer = value.to_owned(),
                    "x-origin" => origin = value.to_owned(),
                    "connection" => keep = !value.eq_ignore_ascii_case("close"),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
            if chunked {
                self.read_chunks().await?;
            } else {
                let mut body = vec![0; length];
                self.reader
                    .read_exact(&mut body)
                    .await
                    .map_err(|e| format!("body: {e}"))?;
            }
            Ok((peer, origin, keep))
        };
        tokio::time::timeout(PATIENCE * 3, exchange)
            .await
            .map_err(|_| "answer: timed out".to_owned())?
    }

    /// One line of the answer.
    async fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok(line)
    }

    /// A chunked body, up to its last chunk and the (empty) trailer.
    async fn read_chunks(&mut self) -> Result<(), String> {
        loop {
            let size = self.line().await?;
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|_| format!("chunk size {size:?}"))?;
            // The chunk and its CRLF (or, after the last one, the trailer's empty line).
            let mut data = vec![0; size + 2];
            self.reader
                .read_exact(&mut data)
                .await
                .map_err(|e| format!("chunk: {e}"))?;
            if size == 0 {
                return Ok(());
            }
        }
    }
}

/// Clients sending GET `path` until `stop`, each on a kept-alive connection (a new one after
/// a failure or when the server closes it), the first ones on `connections`; every request as
/// the client saw it.
async fn load(
    path: &'static str,
    connections: Vec<Option<Connection>>,
    stop: CancellationToken,
) -> Vec<Sent> {
    let mut tasks = tokio::task::JoinSet::new();
    for first in connections {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut sent = Vec::new();
            let mut connection: Option<Connection> = first;
            while !stop.is_cancelled() {
                let started = Instant::now();
                let conn = match connection.take() {
                    Some(conn) => conn,
                    None => match Connection::open().await {
                        Ok(conn) => conn,
                        Err(error) => {
                            sent.push(Sent {
                                connected: started,
                                started,
                                ended: Instant::now(),
                                answer: Err(error),
                            });
                            continue;
                        }
                    },
                };
                let mut conn = conn;
                let answer = conn.get(path).await;
                let record = Sent {
                    connected: conn.opened,
                    started,
                    ended: Instant::now(),
                    answer: answer.clone().map(|(peer, origin, _)| (peer, origin)),
                };
                sent.push(record);
                if let Ok((_, _, true)) = answer {
                    connection = Some(conn);
                }
            }
            sent
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("a client"));
    }
    all.sort_by_key(|s| s.started);
    all
}

/// A load running on the client's runtime.
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Sent>>,
}

impl Load {
    pub fn start(fabric: &Fabric, path: &'static str, workers: usize) -> Load {
        Load::on(fabric, path, (0..workers).map(|_| None).collect())
    }

    /// A load whose clients start on `connections`.
    pub fn on(fabric: &Fabric, path: &'static str, connections: Vec<Option<Connection>>) -> Load {
        let stop = CancellationToken::new();
        let task = fabric.client().spawn(load(path, connections, stop.clone()));
        Load { stop, task }
    }

    pub async fn finish(self) -> Vec<Sent> {
        self.stop.cancel();
        self.task.await.expect("the load")
    }
}

pub fn failures(sent: &[Sent]) -> Vec<&Sent> {
    sent.iter().filter(|s| s.answer.is_err()).collect()
}

/// From the first failure's start to the last one's end.
pub fn failing_for(sent: &[Sent]) -> Duration {
    let failed = failures(sent);
    match (failed.first(), failed.iter().map(|s| s.ended).max()) {
        (Some(first), Some(last)) => last.duration_since(first.started),
        _ => Duration::ZERO,
    }
}

/// Prints a failover's figures (`--nocapture`), as docs/routing.md reports them.
pub fn figure(what: &str, rerouted: Duration, after: &[Sent]) {
    eprintln!(
        "figure: {what}: clients sent elsewhere after {rerouted:?}; {} of {} requests failed, for {:?}",
        failures(after).len(),
        after.len(),
        failing_for(after)
    );
}

pub fn served_by(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter()
        .filter_map(|s| s.answer.as_ref().ok().map(|(peer, _)| peer.clone()))
        .collect()
}

pub fn backends(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter()
        .filter_map(|s| s.answer.as_ref().ok().map(|(_, origin)| origin.clone()))
        .collect()
}

/// Waits until the backends have answered `n` more requests: the load provably runs.
pub async fn answered(fabric: &Fabric, n: usize) {
    let before: usize = fabric.backend_requests().iter().sum();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fabric.backend_requests().iter().sum::<usize>() < before + n {
        assert!(Instant::now() < deadline, "the load is not running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A kept-alive connection served through `appliance` (new ones are opened until one lands
/// there: the router picks by 5-tuple), with the backend that answered on it.
pub async fn connection_through(fabric: &Fabric, appliance: &str) -> (Connection, String) {
    let wanted = appliance.to_owned();
    fabric
        .client()
        .spawn(async move {
            for _ in 0..64 {
                let mut conn = Connection::open().await.expect("connect");
                let (peer, origin, keep) = conn.get("/").await.expect("a first answer");
                if peer == wanted && keep {
                    return (conn, origin);
                }
            }
            panic!("no connection landed on {wanted}");
        })
        .await
        .expect("connect")
}

pub async fn still_answers(fabric: &Fabric, mut conn: Connection) -> Connection {
    fabric
        .client()
        .spawn(async move {
            conn.get("/").await.expect("the kept connection answers");
            conn
        })
        .await
        .expect("request")
}
