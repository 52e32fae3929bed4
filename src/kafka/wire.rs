//! A minimal Kafka wire-protocol client for the one request librdkafka cannot make against the
//! embedded broker: `ListGroups`.
//!
//! librdkafka's `rd_kafka_list_groups` speaks ListGroups v0, and tansu 0.6 answers v0 with the
//! fields of later versions, which librdkafka rejects as a broken transport. Version 1 is
//! answered correctly, so `topics describe` asks for it over plain TCP when the library call
//! fails. Plaintext only: clusters behind SASL/SSL are real Kafka, where librdkafka's call works.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// ListGroups is API key 16; version 1 adds `throttle_time_ms` and is not a flexible version.
const LIST_GROUPS: i16 = 16;
const VERSION: i16 = 1;
/// A response larger than this is not a ListGroups answer we can trust.
const MAX_RESPONSE: usize = 16 << 20;

/// The consumer group ids a broker coordinates.
pub async fn list_groups(
    addr: &str,
    client_id: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    tokio::time::timeout(timeout, exchange(addr, client_id))
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

async fn exchange(addr: &str, client_id: &str) -> Result<Vec<String>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .write_all(&request(client_id, 1))
        .await
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut size = [0u8; 4];
    stream
        .read_exact(&mut size)
        .await
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let size =
        usize::try_from(i32::from_be_bytes(size)).map_err(|_| "negative size".to_string())?;
    if size > MAX_RESPONSE {
        return Err(format!("response of {size} bytes is too large"));
    }
    let mut body = vec![0u8; size];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read from {addr}: {e}"))?;
    parse_response(&body, 1)
}

/// A ListGroups v1 request frame.
fn request(client_id: &str, correlation_id: i32) -> Vec<u8> {
    let client = client_id.as_bytes();
    let client_len = i16::try_from(client.len()).unwrap_or(i16::MAX);
    let client = &client[..usize::try_from(client_len).unwrap_or(0)];
    let mut body = Vec::with_capacity(16 + client.len());
    body.extend_from_slice(&LIST_GROUPS.to_be_bytes());
    body.extend_from_slice(&VERSION.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&client_len.to_be_bytes());
    body.extend_from_slice(client);
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Reads a ListGroups v1 response body (after the size prefix).
fn parse_response(body: &[u8], correlation_id: i32) -> Result<Vec<String>, String> {
    let mut r = Reader { buf: body, at: 0 };
    let correlation = r.i32()?;
    if correlation != correlation_id {
        return Err(format!(
            "correlation id {correlation}, expected {correlation_id}"
        ));
    }
    let _throttle = r.i32()?;
    let error = r.i16()?;
    if error != 0 {
        return Err(format!("broker error code {error}"));
    }
    let count = r.i32()?;
    let mut groups = Vec::new();
    for _ in 0..count.max(0) {
        groups.push(r.string()?);
        let _protocol_type = r.string()?;
    }
    Ok(groups)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| "truncated ListGroups response".to_string())?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.i16()?;
        let len = usize::try_from(len).map_err(|_| "null string in ListGroups".to_string())?;
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_is_list_groups_v1() {
        let frame = request("qs", 7);
        assert_eq!(
            frame,
            [0, 0, 0, 12, 0, 16, 0, 1, 0, 0, 0, 7, 0, 2, b'q', b's']
        );
    }

    #[test]
    fn parses_groups_and_refuses_garbage() {
        let mut body = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        for (g, p) in [("g1", "consumer"), ("grupo", "consumer")] {
            body.extend_from_slice(&(g.len() as i16).to_be_bytes());
            body.extend_from_slice(g.as_bytes());
            body.extend_from_slice(&(p.len() as i16).to_be_bytes());
            body.extend_from_slice(p.as_bytes());
        }
        assert_eq!(parse_response(&body, 1).unwrap(), ["g1", "grupo"]);
        // Every truncation is an error, never a panic.
        for cut in 0..body.len() {
            assert!(parse_response(&body[..cut], 1).is_err(), "cut at {cut}");
        }
        assert!(parse_response(&body, 2).is_err());
        let mut failed = body.clone();
        failed[9] = 15;
        assert!(
            parse_response(&failed, 1)
                .unwrap_err()
                .contains("error code 15")
        );
    }
}
