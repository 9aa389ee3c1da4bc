//! The workers' endpoint for upstream events: what a broker would deliver, posted by a service.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use videocall_messaging::local_events::LocalEvents;
use videocall_runtime::auth::{JwtKeys, bearer};

/// `POST /events/{exchange}/{routing_key}`: an upstream event (UserOffline on `presence.events` /
/// `user.offline`, SupportTicketCreated on `support.events` / `ticket.created`) handed to the
/// in-process consumers bound to it, as the RabbitMQ workers would: the `message-id` header (as
/// the AMQP message id; else the CloudEvents `id`) is what they dedupe on. 202 once applied (or a
/// duplicate), 404 when nothing listens there, 422 when a consumer can never apply it (the
/// reason says why; nothing was changed), 503 when a consumer asks to try again later.
/// Only a service principal may post (`Authorization: Bearer`, role `service`: 401 without a
/// valid token, 403 for another role), and only JSON (`application/cloudevents+json` or
/// `application/json`, else 415): a web page cannot send either without a CORS preflight, which
/// this endpoint never answers, so no page the developer opens can end their calls.
pub(crate) async fn ingest(
    State((events, keys)): State<(Arc<LocalEvents>, JwtKeys)>,
    Path((exchange, routing_key)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let reply = |status: StatusCode, value: serde_json::Value| {
        (status, [(axum::http::header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
    };
    let token = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    let principal = match token.map(|t| keys.verify(t, chrono::Utc::now().timestamp())) {
        None => {
            let error = "missing authorization: Bearer <token of a service principal>";
            return reply(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": error }));
        }
        Some(Err(e)) => return reply(StatusCode::UNAUTHORIZED, serde_json::json!({"error": e.to_string()})),
        Some(Ok(principal)) => principal,
    };
    if !principal.is_service() {
        let error = "only a service principal may post events";
        return reply(StatusCode::FORBIDDEN, serde_json::json!({ "error": error }));
    }
    let content_type = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !matches!(media_type.as_str(), "application/cloudevents+json" | "application/json") {
        let error = format!("content-type must be application/cloudevents+json or application/json, not `{}`", {
            content_type.chars().take(64).collect::<String>()
        });
        return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, serde_json::json!({ "error": error }));
    }
    let message_id = headers.get("message-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    match events.deliver(&exchange, &routing_key, message_id.as_deref(), &body).await {
        Ok(delivery) if delivery.consumers == 0 => reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no consumer is bound to `{routing_key}` on `{exchange}`")}),
        ),
        Ok(delivery) if !delivery.rejected.is_empty() => {
            let reasons: Vec<String> = delivery.rejected.iter().map(|(c, r)| format!("{c}: {r}")).collect();
            reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": reasons.join("; "), "message_id": message_id}),
            )
        }
        Ok(delivery) => {
            reply(StatusCode::ACCEPTED, serde_json::json!({"message_id": message_id, "consumers": delivery.consumers}))
        }
        Err(postponed) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": postponed.to_string(), "message_id": message_id}),
        ),
    }
}
