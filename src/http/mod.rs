//! HTTP/1.1 framing, sans-IO: request heads and body framing (RFC 9112),
//! the chunked decoder, and response heads. Nothing here touches a socket.

pub mod chunked;
pub mod client;
pub mod exchange;
pub mod fields;
pub mod forwarded;
pub mod oci_error;
pub mod output;
pub mod request;
pub mod response;
pub mod server;

pub use request::{BodyFraming, Method, RequestDecoder, RequestError, RequestEvent, RequestHead};
pub use response::{Body, Response};
