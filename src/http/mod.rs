//! HTTP/1.1 framing and connection machines.
