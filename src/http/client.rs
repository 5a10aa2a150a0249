//! The webhook client side of HTTP/1.1: request serialization and a response decoder.
