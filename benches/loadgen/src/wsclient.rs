//! The load generator's use of the shared WebSocket client (`videocall_testkit::ws`): a connect
//! that fails with context, a request with a fixed id, and the markers its senders embed.

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
pub use videocall_testkit::ws::{Client, Ws, next_json};

/// Connects and reads until a frame of type `greeting` (`hello` on our relay, `OPEN` on PeerJS).
pub async fn connect(url: &str, greeting: &str) -> anyhow::Result<Ws> {
    let (ws, _) = videocall_testkit::ws::connect(url, greeting).await.with_context(|| format!("no `{greeting}`"))?;
    Ok(ws)
}

/// Sends `frame` with `id` and returns the `ack`/`error` that carries it back, skipping others.
pub async fn request(ws: &mut Ws, frame: Value, id: &str) -> anyhow::Result<Value> {
    videocall_testkit::ws::request_with_id(ws, frame, id, Duration::from_secs(15))
        .await
        .with_context(|| format!("no reply to {id}"))
}

/// Extracts `(index, sent_at_us)` from the `LG:<i>:<t>:` marker the senders embed.
pub fn marker(text: &str) -> Option<(usize, u64)> {
    let rest = &text[text.find("LG:")? + 3..];
    let mut parts = rest.splitn(3, ':');
    let i = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((i, t))
}

#[cfg(test)]
mod tests {
    #[test]
    fn marker_round_trip() {
        assert_eq!(super::marker(r#"{"x":"s=LG:12:345:\r\n"}"#), Some((12, 345)));
        assert_eq!(super::marker("nothing"), None);
    }
}
