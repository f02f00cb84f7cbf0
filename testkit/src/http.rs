//! Plain HTTP/1.1 requests: GET for the worker's health and readiness endpoints, POST
//! for the reference gateway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` at `addr`: (status, body); (0, "") when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes(),
        Duration::from_secs(5),
    )
}

/// `POST path` at `addr` with `headers` and `body`: (status, body); (0, "") when nothing
/// answers.
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request_bytes = head.into_bytes();
    request_bytes.extend_from_slice(body);
    request(addr, &request_bytes, Duration::from_secs(30))
}

fn request(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(bytes).expect("request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
