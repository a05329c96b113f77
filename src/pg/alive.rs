//! Whether a server's postmaster still starts new backends, in two round trips: a
//! `CancelRequest` for no backend on a new connection. The postmaster forks a child for every
//! connection it accepts; the child reads the request, finds no such backend and exits,
//! closing the socket. The close shows a fork happened after the probe began. A frozen
//! postmaster (stopped, hung host) never accepts: its kernel completes the TCP handshake and
//! the probe then waits, so callers bound it. A full log-in shows the same at twice the
//! cost (TCP, then SCRAM).
//!
//! The server logs one line per probe at LOG level ("PID 0 in cancel
//! request did not match any process").

use anyhow::{anyhow, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Conninfo;

/// The protocol's cancel request code (1234 << 16 | 5678).
const CANCEL_REQUEST_CODE: i32 = 80877102;

/// Pure: a `CancelRequest` packet: its length, the code, a process id and a secret key.
pub fn cancel_request(pid: i32, key: i32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(&16i32.to_be_bytes());
    p[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    p[8..12].copy_from_slice(&pid.to_be_bytes());
    p[12..].copy_from_slice(&key.to_be_bytes());
    p
}

/// Pure: where a conninfo's server listens: a Unix socket path (host is a directory) or a
/// host and port.
pub fn address(c: &Conninfo) -> Address {
    let port = c.port();
    let host = c.get("hostaddr").or(c.get("host")).unwrap_or("localhost");
    if host.starts_with('/') {
        Address::Unix(format!("{}/.s.PGSQL.{port}", host.trim_end_matches('/')))
    } else {
        Address::Tcp(host.to_string(), port)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Address {
    Unix(String),
    Tcp(String, u16),
}

/// Ok once a newly forked child of the server's postmaster has answered a `CancelRequest`
/// (by closing the connection). Unbounded: wrap it in a time limit.
pub async fn forks(c: &Conninfo) -> Result<()> {
    let packet = cancel_request(0, 0);
    match address(c) {
        Address::Unix(path) => exchange(UnixStream::connect(&path).await?, &packet).await,
        Address::Tcp(host, port) => {
            let s = TcpStream::connect((host.as_str(), port)).await?;
            s.set_nodelay(true)?;
            exchange(s, &packet).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, packet: &[u8]) -> Result<()> {
    s.write_all(packet).await?;
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer).await {
        Ok(_) => Ok(()),
        // The child closed the connection; a reset says as much as an orderly close.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(anyhow!("no close after a cancel request: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_request_is_sixteen_bytes_in_network_order() {
        assert_eq!(
            cancel_request(0x0102_0304, -1),
            [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn a_socket_directory_or_a_host_and_port() {
        let c = Conninfo::parse("host=/var/run/postgresql/ port=5433").unwrap();
        assert_eq!(
            address(&c),
            Address::Unix("/var/run/postgresql/.s.PGSQL.5433".into())
        );
        let c = Conninfo::parse("host=db.example hostaddr=10.0.0.5 port=6543").unwrap();
        assert_eq!(address(&c), Address::Tcp("10.0.0.5".into(), 6543));
    }
}
