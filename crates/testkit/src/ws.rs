//! A small client of the relay's WebSocket protocol (docs/protocol.md): requests with ids and
//! their acks, frames in order, close codes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user_id: String,
    next_id: u64,
    /// Frames read while waiting for a reply, handed out by `next` in order.
    pending: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut client = Self { ws, user_id: String::new(), next_id: 0, pending: Default::default() };
        let hello = client.next_of("hello").await;
        client.user_id = hello["user_id"].as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends `frame` with a fresh `id` and returns the ack or error that carries it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        frame["id"] = id.clone().into();
        self.send_raw(frame.to_string()).await;
        loop {
            let reply = self.read(Duration::from_secs(10)).await.expect("a reply");
            if reply["id"] == id.as_str() && (reply["type"] == "ack" || reply["type"] == "error") {
                return reply;
            }
            self.pending.push_back(reply);
        }
    }

    /// The next JSON frame, or None after 10 s or on close.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(Duration::from_secs(10)).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => self.read(wait).await,
        }
    }

    async fn read(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(wait, self.ws.next()).await.ok()??.ok()?;
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skips frames until one of `frame_type` arrives.
    pub async fn next_of(&mut self, frame_type: &str) -> Value {
        loop {
            let frame = self.next().await.unwrap_or_else(|| panic!("no `{frame_type}` frame arrived"));
            if frame["type"] == frame_type {
                return frame;
            }
        }
    }

    /// The close code the server sends, reading past other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await.ok()?? {
                Ok(Message::Close(Some(frame))) => return Some(u16::from(frame.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}
