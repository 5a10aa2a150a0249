//! The bytes of one delivery attempt: the POST with the documented headers
//! (SPEC section 4), the format's headers, the signatures, and the
//! webhook's extra headers. The message is built once per delivery; the
//! request is written per attempt, because a Standard Webhooks signature
//! covers the attempt's time.

use super::event::Payload;
use super::format::Message;
use super::signature;
use crate::config::WebhookConfig;
use crate::http::client::write_request;

/// The POST of `message`, signed for an attempt at `unix_secs`.
pub fn build_request(
    webhook: &WebhookConfig,
    payload: &Payload,
    message: &Message,
    delivery_id: &str,
    unix_secs: u64,
) -> Vec<u8> {
    let user_agent = concat!("angos/", env!("CARGO_PKG_VERSION"));
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", message.content_type),
        ("X-Registry-Event", payload.kind.as_str()),
        ("User-Agent", user_agent),
        // Stable across retries, restarts and redeliveries: receivers deduplicate on it.
        ("X-Registry-Delivery", delivery_id),
    ];
    let bearer;
    let signature_value;
    if let Some(token) = &webhook.token {
        bearer = format!("Bearer {token}");
        signature_value = signature::signature_header(token, &message.body);
        headers.push(("Authorization", &bearer));
        headers.push(("X-Registry-Signature-256", &signature_value));
    }
    let timestamp;
    let standard_signature;
    if !webhook.signing_secrets.is_empty() {
        let keys: Vec<&[u8]> = webhook
            .signing_secrets
            .iter()
            .map(|secret| secret.key.as_slice())
            .collect();
        timestamp = unix_secs.to_string();
        standard_signature = signature::standard_signature(&keys, delivery_id, unix_secs, &message.body);
        headers.push(("webhook-id", delivery_id));
        headers.push(("webhook-timestamp", &timestamp));
        headers.push(("webhook-signature", &standard_signature));
    }
    for (name, value) in &message.headers {
        headers.push((name, value));
    }
    for (name, value) in &webhook.headers {
        headers.push((name, value));
    }
    let mut request = Vec::with_capacity(512 + message.body.len());
    write_request(
        &mut request,
        "POST",
        &webhook.url.path_and_query,
        &webhook.url.host_header(),
        &headers,
        &message.body,
    );
    request
}
