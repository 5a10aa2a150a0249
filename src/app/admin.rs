//! The admin API under the reserved extension namespace
//! `/v2/_angos/` (distribution-spec "Extensions"): status per webhook,
//! recent deliveries and dead letters, redelivery, enabling a webhook a
//! `410 Gone` disabled, and a test ping; garbage collection (`gc`) and the
//! scrub (`scrub`) and retention (`prune`): their status, and a run on
//! demand. The
//! notifier answers the questions (`notifier::operations`); this module
//! routes the requests and writes the JSON. When authentication exists,
//! only an administrator may reach it (`auth::Need::of`).

use serde_json::{Value, json};

use crate::app::Waiter;
use crate::clock::rfc3339_utc;
use crate::event_webhook::dispatcher::Completed;
use crate::event_webhook::notifier::Notifier;
use crate::event_webhook::notifier::operations::{Enabling, Redelivery};
use crate::event_webhook::status::DeliveryState;
use crate::http::oci_error::{ErrorCode, RegistryError};
use crate::http::{Method, Response};
use crate::maintenance::{Maintenance, Trigger};
use crate::registry::Commit;
use crate::registry::route::ADMIN_PREFIX;

/// What an admin request led to.
pub enum AdminAnswer {
    Respond(Response),
    /// A test ping is under way; the notifier hands over its answer.
    Parked,
}

/// Handles a request routed to `Route::Admin`.
pub fn handle(
    notifier: &mut Notifier<Waiter, Commit>,
    maintenance: &mut Maintenance,
    mirror: &crate::mirror::Mirror,
    space: &crate::storage::SpaceReport,
    waiter: Waiter,
    head: &crate::http::RequestHead,
    now_ms: u64,
) -> AdminAnswer {
    let (method, path, query) = (&head.method, head.path.as_str(), head.query.as_str());
    let rest = path.strip_prefix(ADMIN_PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let response = match (method, segments.as_slice()) {
        (Method::Get | Method::Head, ["webhooks"]) => list_webhooks(notifier, now_ms),
        (Method::Get | Method::Head, ["gc"]) => Response::json(200, &maintenance.status()),
        (Method::Get | Method::Head, ["upstreams"]) => Response::json(200, &mirror.status_json()),
        (Method::Get | Method::Head, ["storage"]) => {
            Response::json(200, &storage_status(space, maintenance, mirror))
        }
        (_, ["upstreams"] | ["storage"]) => error(405, ErrorCode::Unsupported, "use GET"),
        (Method::Post, ["gc"]) => start_collection(maintenance, query),
        (Method::Get | Method::Head, ["scrub"]) => Response::json(200, &maintenance.scrub_status()),
        (Method::Post, ["scrub"]) => {
            if maintenance.request_scrub(Trigger::Demand) {
                Response::json(202, &json!({ "started": true }))
            } else {
                error(409, ErrorCode::Unsupported, "a scrub is already running")
            }
        }
        (Method::Get | Method::Head, ["prune"]) => Response::json(200, &maintenance.prune_status()),
        (Method::Post, ["prune"]) => start_prune(maintenance, query),
        (_, ["gc"] | ["scrub"] | ["prune"]) => error(405, ErrorCode::Unsupported, "use GET or POST"),
        (Method::Get | Method::Head, ["webhooks", name, "deliveries"]) => list_deliveries(notifier, name),
        (Method::Get | Method::Head, ["webhooks", name, "deliveries", id]) => {
            show_delivery(notifier, name, id)
        }
        (Method::Post, ["webhooks", name, "deliveries", id, "redeliver"]) => {
            redeliver(notifier, name, id, now_ms)
        }
        (Method::Post, ["webhooks", name, "enable"]) => enable(notifier, name),
        (Method::Post, ["webhooks", name, "test"]) => {
            if notifier.ping(waiter, name, ping_answer, now_ms) {
                return AdminAnswer::Parked;
            }
            unknown_webhook(name)
        }
        (_, ["webhooks"] | ["webhooks", _, "deliveries"] | ["webhooks", _, "deliveries", _]) => {
            error(405, ErrorCode::Unsupported, "method not allowed")
        }
        (
            _,
            ["webhooks", _, "deliveries", _, "redeliver"]
            | ["webhooks", _, "test"]
            | ["webhooks", _, "enable"],
        ) => error(405, ErrorCode::Unsupported, "use POST"),
        _ => error(404, ErrorCode::Unsupported, "unknown admin endpoint"),
    };
    AdminAnswer::Respond(response)
}

/// `GET /v2/_angos/storage`: the space the store uses and has left, the
/// last collection and retention runs, and the upstreams' health: what the
/// operator page's storage view shows, in one answer.
fn storage_status(
    space: &crate::storage::SpaceReport,
    maintenance: &Maintenance,
    mirror: &crate::mirror::Mirror,
) -> Value {
    json!({
        "disk": space.disk.map(|disk| json!({
            "free_bytes": disk.free_bytes,
            "total_bytes": disk.total_bytes,
        })),
        "min_free_bytes": space.min_free_bytes,
        "content_bytes": space.content_bytes,
        "reclaimable_bytes": space.reclaimable_bytes,
        "gc": maintenance.status(),
        "prune": maintenance.prune_status(),
        "upstreams": mirror.status_json(),
    })
}

/// `POST /v2/_angos/gc`: starts a collection now (202), or says one runs
/// (409). `?mode=report-only` counts what it would remove and removes nothing.
fn start_collection(maintenance: &mut Maintenance, query: &str) -> Response {
    let report_only = match query {
        "" | "mode=commit" => false,
        "mode=report-only" => true,
        _ => {
            return error(
                400,
                ErrorCode::Unsupported,
                "the query is mode=commit or mode=report-only",
            );
        }
    };
    if maintenance.request(Trigger::Demand, report_only) {
        Response::json(202, &json!({ "started": true }))
    } else {
        error(
            409,
            ErrorCode::Unsupported,
            "a garbage collection is already running",
        )
    }
}

/// `POST /v2/_angos/prune`: a retention run now (202); `?mode=dry-run`
/// lists what would go (in `GET`'s `last.listed`) and removes nothing.
fn start_prune(maintenance: &mut Maintenance, query: &str) -> Response {
    let report_only = match query {
        "" | "mode=commit" => false,
        "mode=dry-run" | "mode=report-only" => true,
        _ => {
            return error(
                400,
                ErrorCode::Unsupported,
                "the query is mode=commit or mode=dry-run",
            );
        }
    };
    match maintenance.request_prune(Trigger::Demand, report_only) {
        Ok(()) => Response::json(202, &json!({ "started": true })),
        Err(why) => error(409, ErrorCode::Unsupported, &why),
    }
}

fn list_webhooks(notifier: &Notifier<Waiter, Commit>, now_ms: u64) -> Response {
    let webhooks: Vec<Value> = notifier
        .webhook_summaries(now_ms)
        .into_iter()
        .map(|summary| {
            let webhook = summary.webhook;
            json!({
                "name": webhook.name,
                "url": webhook.url.text,
                "policy": webhook.policy.as_str(),
                "events": webhook.events.iter().map(|kind| kind.as_str()).collect::<Vec<_>>(),
                "format": webhook.format.as_str(),
                "signing": signing_schemes(webhook),
                "queue_depth": summary.queue_depth,
                "oldest_pending_age_seconds": summary.oldest_pending_secs,
                "dead_letters": summary.dead_letters,
                "succeeded": summary.succeeded,
                "failed": summary.failed,
                "last_success": summary.last_success_unix_micros.map(rfc3339_utc),
                "last_error": summary.last_error.map(|(at, message)| json!({
                    "time": rfc3339_utc(*at),
                    "message": message,
                })),
                "disabled": summary.disabled.is_some(),
                "disabled_since": summary.disabled.map(|disabled| rfc3339_utc(disabled.since_unix_micros)),
                "disabled_reason": summary.disabled.map(|disabled| disabled.reason.as_str()),
            })
        })
        .collect();
    Response::json(200, &json!({ "webhooks": webhooks }))
}

/// A delivery's request as it went out: its request line, its headers
/// (the values of credentials and signatures elided, and of any header
/// whose name suggests a secret) and its body.
fn request_as_sent(request: &[u8]) -> Value {
    let split = request
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..split]);
    let body = request.get(split + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<Value> = lines
        .filter_map(|field| field.split_once(':'))
        .map(|(name, value)| {
            let secret = crate::http::request::names_a_secret(name);
            let value = if secret { "(elided)" } else { value.trim() };
            json!([name, value])
        })
        .collect();
    json!({ "line": line, "headers": headers, "body": String::from_utf8_lossy(body) })
}

/// The signature schemes a webhook's deliveries carry (never the secrets).
fn signing_schemes(webhook: &crate::config::WebhookConfig) -> Vec<&'static str> {
    let mut schemes = Vec::new();
    if webhook.token.is_some() {
        schemes.push("token");
    }
    if !webhook.signing_secrets.is_empty() {
        schemes.push("standard-webhooks");
    }
    schemes
}

/// A recent delivery as the admin API lists it.
fn delivery_json(record: &crate::event_webhook::status::DeliveryRecord) -> Value {
    json!({
        "id": record.delivery_id,
        "event_id": record.payload.event_id,
        "kind": record.payload.kind.as_str(),
        "status": record.state.as_str(),
        "attempts": record.attempts,
        "duration_ms": record.duration_ms,
        "http_status": record.status,
        "error": record.error,
        "finished": rfc3339_utc(record.finished_unix_micros),
    })
}

/// `GET /v2/_angos/webhooks/NAME/deliveries/ID`: the most recent delivery
/// of that id, with its last attempt's `request` as sent. Apart from the
/// list, so the list a page refreshes stays small.
fn show_delivery(notifier: &Notifier<Waiter, Commit>, name: &str, id: &str) -> Response {
    let Some(history) = notifier.delivery_history(name) else {
        return unknown_webhook(name);
    };
    let Some(record) = history.recent.iter().find(|record| record.delivery_id == id) else {
        return error(404, ErrorCode::Unsupported, "no recent delivery has that id");
    };
    let mut value = delivery_json(record);
    value["request"] = record
        .request
        .as_deref()
        .map_or(Value::Null, |request| request_as_sent(request));
    Response::json(200, &value)
}

fn list_deliveries(notifier: &Notifier<Waiter, Commit>, name: &str) -> Response {
    let Some(history) = notifier.delivery_history(name) else {
        return unknown_webhook(name);
    };
    let deliveries: Vec<Value> = history
        .recent
        .iter()
        .map(|record| delivery_json(record))
        .collect();
    let dead_letters: Vec<Value> = history
        .dead_letters
        .iter()
        .map(|letter| {
            json!({
                "id": letter.delivery_id,
                "event_id": letter.event_id,
                "kind": letter.kind,
                "status": DeliveryState::DeadLetter.as_str(),
                "attempts": letter.attempts,
                "error": letter.last_error,
                "finished": rfc3339_utc(letter.unix_micros),
            })
        })
        .collect();
    Response::json(
        200,
        &json!({
            "webhook": name,
            "pending": history.pending,
            "deliveries": deliveries,
            "dead_letters": dead_letters,
        }),
    )
}

fn redeliver(
    notifier: &mut Notifier<Waiter, Commit>,
    name: &str,
    delivery_id: &str,
    now_ms: u64,
) -> Response {
    match notifier.redeliver(name, delivery_id, now_ms) {
        Redelivery::Queued { event_id } => Response::json(
            202,
            &json!({ "webhook": name, "delivery_id": delivery_id, "event_id": event_id, "queued": true }),
        ),
        Redelivery::UnknownWebhook => unknown_webhook(name),
        Redelivery::Disabled => error(
            409,
            ErrorCode::Denied,
            &format!("webhook {name:?} is disabled (it answered 410 Gone): enable it first"),
        ),
        Redelivery::UnknownDelivery => error(
            404,
            ErrorCode::Unsupported,
            &format!("no delivery {delivery_id} for webhook {name:?}"),
        ),
    }
}

/// `POST /v2/_angos/webhooks/NAME/enable`: what it was, and that it is not.
fn enable(notifier: &mut Notifier<Waiter, Commit>, name: &str) -> Response {
    let was = match notifier.enable(name) {
        Enabling::UnknownWebhook => return unknown_webhook(name),
        Enabling::WasNotDisabled => Value::Null,
        Enabling::Enabled(disabled) => json!({
            "since": rfc3339_utc(disabled.since_unix_micros),
            "reason": disabled.reason,
        }),
    };
    Response::json(
        200,
        &json!({ "webhook": name, "disabled": false, "was_disabled": was }),
    )
}

/// A ping's outcome as JSON: HTTP status, latency, and the failure spelled out.
fn ping_answer(webhook: &str, result: Option<&Completed>) -> Response {
    let body = match result {
        Some(done) => json!({
            "webhook": webhook,
            "success": done.success,
            "http_status": done.status,
            "duration_ms": done.duration_ms,
            "delivery_id": done.delivery_id,
            "error": done.error,
        }),
        None => json!({ "webhook": webhook, "success": false, "error": "no result" }),
    };
    Response::json(200, &body)
}

fn unknown_webhook(name: &str) -> Response {
    error(
        404,
        ErrorCode::NameUnknown,
        &format!("no webhook named {name:?} is configured"),
    )
}

fn error(status: u16, code: ErrorCode, message: &str) -> Response {
    RegistryError::new(code, message).status(status).into_response()
}
