//! The client side of `gantry explain`: one `GET /explain` to a running Gantry's admin
//! endpoint, over plain HTTP/1.1 as the endpoint serves it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::ExplainRequest;

/// How long the answer may take: the first explanation of a port may compile its plugins.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Most bytes of an answer read.
const MAX_ANSWER: u64 = 16 << 20;

/// Asks the admin endpoint at `admin` to explain `request`, with `token` as the bearer token
/// when given: the JSON answer, or why there is none.
pub fn ask(
    admin: SocketAddr,
    token: Option<&str>,
    request: &ExplainRequest,
) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin endpoint {admin}: {e}"))?;
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let authorization = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
        .unwrap_or_default();
    let head = format!(
        "GET /explain?{} HTTP/1.1\r\nHost: {admin}\r\n{authorization}Connection: close\r\n\r\n",
        request.to_query()
    );
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("cannot send the question: {e}"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer from {admin}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin} did not answer in HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("{admin} did not answer in HTTP"))?;
    if status != "200" {
        return Err(format!("{admin} answered {status}: {}", body.trim()));
    }
    serde_json::from_str(body).map_err(|e| format!("{admin} answered something not JSON: {e}"))
}
