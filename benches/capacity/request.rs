//! The one call every section makes: a unary Echo with a 64-byte payload
//! to one authority, and the check of its response.

use std::sync::Arc;

use prost::Message;
use quiche::h3;
use vimana_example::pb::{EchoReply, EchoRequest};

use crate::client::Call;

const UNARY: &str = "/vimana.example.v1.Echo/Unary";
const PAYLOAD: usize = 64;

/// A unary Echo call to one authority: HTTP/3 headers and gRPC body.
pub struct Request {
    pub headers: Vec<h3::Header>,
    pub body: Vec<u8>,
    payload: Vec<u8>,
}

impl Request {
    pub fn new(authority: &str) -> Arc<Request> {
        let payload: Vec<u8> = (0..PAYLOAD as u8).collect();
        let encoded = EchoRequest {
            payload: payload.clone(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        body.extend_from_slice(&encoded);
        let headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", authority),
            (":path", UNARY),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
        .collect();
        Arc::new(Request {
            headers,
            body,
            payload,
        })
    }

    /// Ok if the call ended with HTTP 200, `grpc-status: 0` and one EchoReply
    /// carrying our payload.
    pub fn verdict(&self, call: &Call) -> Result<(), String> {
        match (call.status, &call.grpc) {
            (Some(200), Some((code, _))) if code == "0" => {}
            (Some(200), Some((code, message))) => {
                return Err(format!("grpc-status {code}: {message}"))
            }
            (Some(200), None) => return Err("no grpc-status".into()),
            (status, _) => return Err(format!("HTTP status {status:?}")),
        }
        let body = &call.body;
        let Some((prefix, message)) = body.split_at_checked(5) else {
            return Err(format!("response body of {} bytes", body.len()));
        };
        let len = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
        if prefix[0] != 0 || len != message.len() {
            return Err("response body is not one uncompressed gRPC message".into());
        }
        match EchoReply::decode(message) {
            Ok(reply) if reply.payload == self.payload => Ok(()),
            Ok(_) => Err("the reply's payload is not ours".into()),
            Err(e) => Err(format!("the reply does not decode: {e}")),
        }
    }
}
