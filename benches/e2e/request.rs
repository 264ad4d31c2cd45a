//! The call the load is made of, ready to send, and the check of its answer.

use prost::Message;
use quiche::h3;
use vimana_example::pb::{EchoReply, EchoRequest, StreamRequest};

use crate::args::Kind;

pub const AUTHORITY: &str = "example.com";
pub const UNARY: &str = "/vimana.example.v1.Echo/Unary";
pub const SERVER_STREAM: &str = "/vimana.example.v1.Echo/ServerStream";
/// Bytes of payload per message: the unary request's and reply's `payload`,
/// the streamed replies' `message`.
pub const PAYLOAD: usize = 64;

/// One call: HTTP/3 headers and the gRPC-framed body, and what the answer
/// must be.
pub struct Request {
    pub kind: Kind,
    pub headers: Vec<h3::Header>,
    pub body: Vec<u8>,
    /// Unary: the request message (its payload comes back).
    pub unary: EchoRequest,
    /// Server-stream: the request (`count` replies each carrying `message`).
    pub stream: StreamRequest,
}

/// A message with its gRPC prefix (uncompressed, 4-byte length).
pub fn frame(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

impl Request {
    pub fn new(kind: Kind, messages: u32) -> Request {
        let unary = EchoRequest {
            payload: (0..PAYLOAD as u8).collect(),
            ..Default::default()
        };
        let stream = StreamRequest {
            message: "m".repeat(PAYLOAD),
            count: messages,
            interval_ms: 0,
        };
        let (path, body) = match kind {
            Kind::Unary => (UNARY, frame(&unary)),
            Kind::ServerStream => (SERVER_STREAM, frame(&stream)),
        };
        let headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", AUTHORITY),
            (":path", path),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "vimanad-bench-e2e"),
        ]
        .iter()
        .map(|(n, v)| h3::Header::new(n.as_bytes(), v.as_bytes()))
        .collect();
        Request {
            kind,
            headers,
            body,
            unary,
            stream,
        }
    }

    /// Response messages a call brings.
    pub fn expected_messages(&self) -> u64 {
        match self.kind {
            Kind::Unary => 1,
            Kind::ServerStream => self.stream.count.into(),
        }
    }

    /// Whether one reply (the `index`th of its call) is the one we expect.
    pub fn check_message(&self, index: u64, reply: &EchoReply) -> Result<(), String> {
        match self.kind {
            Kind::Unary if reply.payload == self.unary.payload => Ok(()),
            Kind::Unary => Err("the reply's payload is not ours".into()),
            Kind::ServerStream if reply.message != self.stream.message => {
                Err("a streamed reply's message is not ours".into())
            }
            Kind::ServerStream if reply.sequence != index => Err(format!(
                "streamed reply {index} has sequence {}",
                reply.sequence
            )),
            Kind::ServerStream => Ok(()),
        }
    }

    /// Whether a whole response body holds exactly the replies expected:
    /// their number.
    pub fn check_body(&self, mut body: &[u8]) -> Result<u64, String> {
        let mut index = 0;
        while !body.is_empty() {
            let Some((prefix, rest)) = body.split_at_checked(5) else {
                return Err(format!(
                    "{} bytes left over after {index} messages",
                    body.len()
                ));
            };
            let len = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
            if prefix[0] != 0 || len > rest.len() {
                return Err("response body is not uncompressed gRPC messages".into());
            }
            let (message, rest) = rest.split_at(len);
            let reply =
                EchoReply::decode(message).map_err(|e| format!("a reply does not decode: {e}"))?;
            self.check_message(index, &reply)?;
            index += 1;
            body = rest;
        }
        match index == self.expected_messages() {
            true => Ok(index),
            false => Err(format!(
                "{index} messages in the response, {} expected",
                self.expected_messages()
            )),
        }
    }
}
