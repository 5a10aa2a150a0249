//! HMAC-SHA256 signatures of webhook bodies (RFC 2104).
