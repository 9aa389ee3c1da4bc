//! The one client of the relay's WebSocket protocol (docs/protocol.md) that tests and the load
//! generator share: connect and wait for the greeting, requests with ids and their acks, frames in
//! order, close codes. [`Client`] keeps frames read while waiting for a reply; the free functions
//! work on a bare [`Ws`] for hot loops that manage ids themselves.

use std::{collections::VecDeque, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Error, Message, protocol::WebSocketConfig},
};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long [`Client::next`] and [`Client::request`] wait.
const WAIT: Duration = Duration::from_secs(10);

/// Connects and reads until a frame of type `greeting` (`hello` on our relay, `OPEN` on PeerJS),
/// which it returns with the socket. A refused upgrade is an `Error::Http` with the response.
pub async fn connect(url: &str, greeting: &str) -> Result<(Ws, Value), Error> {
    // A 4 KiB read buffer, as the relay's own sockets have: tungstenite zeroes the free part of its
    // read buffer before every read, and at the 128 KiB default that memset alone took 16% of the
    // machine's CPU in the signal benchmark — load-generator overhead that is not the relay's.
    // TCP_NODELAY, as browsers set it on WebSocket connections.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let timed_out = || Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "no WebSocket within 10 s"));
    let (mut ws, _) = tokio::time::timeout(WAIT, connecting).await.map_err(|_| timed_out())??;
    loop {
        let frame = next_json(&mut ws, WAIT).await.ok_or(Error::ConnectionClosed)?;
        if frame["type"] == greeting {
            return Ok((ws, frame));
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

/// Sends `frame` with `id` and returns the `ack`/`error` that carries it back within `wait`,
/// skipping other frames; None if none came.
pub async fn request_with_id(ws: &mut Ws, mut frame: Value, id: &str, wait: Duration) -> Option<Value> {
    frame["id"] = id.into();
    ws.send(Message::text(frame.to_string())).await.ok()?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let reply = next_json(ws, deadline.saturating_duration_since(tokio::time::Instant::now())).await?;
        if is_reply(&reply, id) {
            return Some(reply);
        }
    }
}

fn is_reply(frame: &Value, id: &str) -> bool {
    frame["id"] == id && (frame["type"] == "ack" || frame["type"] == "error")
}

/// A relay connection that keeps frames read while waiting for a reply, for flows that interleave.
pub struct Client {
    pub ws: Ws,
    pub user_id: String,
    next_id: u64,
    /// Frames read while waiting for a reply, handed out by `next` in order.
    pending: VecDeque<Value>,
}

impl Client {
    /// Connects and waits for `hello` (which names the user).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let (ws, hello) = connect(url, "hello").await?;
        let user_id = hello["user_id"].as_str().unwrap_or_default().to_owned();
        Ok(Self { ws, user_id, next_id: 0, pending: VecDeque::new() })
    }

    pub async fn send(&mut self, frame: &Value) -> Result<(), Error> {
        self.ws.send(Message::text(frame.to_string())).await
    }

    pub async fn send_raw(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Sends `frame` with a fresh `id` and returns the ack or error that carries it.
    pub async fn request(&mut self, frame: Value) -> Value {
        self.try_request(frame, WAIT).await.expect("a reply")
    }

    /// As [`Self::request`], None when no reply came within `wait` (or the socket failed).
    pub async fn try_request(&mut self, mut frame: Value, wait: Duration) -> Option<Value> {
        self.next_id += 1;
        let id = format!("m{}", self.next_id);
        frame["id"] = id.clone().into();
        self.send(&frame).await.ok()?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let reply = next_json(&mut self.ws, left).await?;
            if is_reply(&reply, &id) {
                return Some(reply);
            }
            self.pending.push_back(reply);
        }
    }

    /// The next JSON frame, or None after 10 s or on close.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(WAIT).await
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        match self.pending.pop_front() {
            Some(frame) => Some(frame),
            None => next_json(&mut self.ws, wait).await,
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
            match tokio::time::timeout(WAIT, self.ws.next()).await.ok()?? {
                Ok(Message::Close(Some(frame))) => return Some(u16::from(frame.code)),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}
