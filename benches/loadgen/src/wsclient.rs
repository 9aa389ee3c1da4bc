//! A minimal WebSocket client for load: connect, wait for the greeting frame, request/reply.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects and reads until a frame of type `greeting` (`hello` on our relay, `OPEN` on PeerJS).
pub async fn connect(url: &str, greeting: &str) -> anyhow::Result<Ws> {
    // A 4 KiB read buffer, as the relay's own sockets have: tungstenite zeroes the free part of its
    // read buffer before every read, and at the 128 KiB default that memset alone took 16% of the
    // machine's CPU in the signal benchmark — load-generator overhead that is not the relay's.
    // TCP_NODELAY, as browsers set it on WebSocket connections.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4 * 1024);
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _) =
        tokio::time::timeout(Duration::from_secs(10), connecting).await.context("connect timed out")??;
    loop {
        let frame = next_json(&mut ws, Duration::from_secs(10)).await.context("no greeting")?;
        if frame["type"] == greeting {
            return Ok(ws);
        }
    }
}

/// The next JSON text frame within `wait`; None on timeout, close or error.
pub async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Sends `frame` with `id` and returns the `ack`/`error` that carries it back, skipping others.
pub async fn request(ws: &mut Ws, mut frame: Value, id: &str) -> anyhow::Result<Value> {
    frame["id"] = id.into();
    ws.send(Message::text(frame.to_string())).await?;
    loop {
        let Some(reply) = next_json(ws, Duration::from_secs(15)).await else { bail!("no reply to {id}") };
        if reply["id"] == id && (reply["type"] == "ack" || reply["type"] == "error") {
            return Ok(reply);
        }
    }
}

/// Extracts `(index, sent_at_us)` from the `LG:<i>:<t>:` marker the senders embed.
pub fn marker(text: &str) -> Option<(usize, u64)> {
    let rest = &text[text.find("LG:")? + 3..];
    let mut parts = rest.splitn(3, ':');
    let i = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((i, t))
}

/// A client that keeps frames read while waiting for a reply, for flows that interleave.
pub struct Client {
    pub ws: Ws,
    pending: std::collections::VecDeque<Value>,
    next_id: u64,
}

impl Client {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(Self { ws: connect(url, "hello").await?, pending: Default::default(), next_id: 0 })
    }

    pub async fn send(&mut self, frame: &Value) -> anyhow::Result<()> {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// Sends `frame` with a fresh id; returns its ack or error, keeping other frames for `next`.
    pub async fn request(&mut self, mut frame: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        frame["id"] = id.clone().into();
        self.send(&frame).await?;
        loop {
            let Some(reply) = next_json(&mut self.ws, Duration::from_secs(15)).await else { bail!("no reply to {id}") };
            if reply["id"] == id.as_str() && (reply["type"] == "ack" || reply["type"] == "error") {
                return Ok(reply);
            }
            self.pending.push_back(reply);
        }
    }

    /// The next frame within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Value> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => next_json(&mut self.ws, wait).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn marker_round_trip() {
        assert_eq!(super::marker(r#"{"x":"s=LG:12:345:\r\n"}"#), Some((12, 345)));
        assert_eq!(super::marker("nothing"), None);
    }
}
