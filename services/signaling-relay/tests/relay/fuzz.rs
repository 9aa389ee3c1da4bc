//! A bounded, seeded fuzz of the relay's whole connection handler, over real sockets, against a
//! real gateway and Redis (two relays, two parties of one live call): thousands of frames, most
//! of them wrong in some way — unknown types, wrong field types, foreign and malformed call ids,
//! bad SDPs and candidates, odd ids, deep nesting, huge strings, binary frames, invalid JSON.
//!
//! Each frame must get exactly one answer (an `ack` or an `error`, carrying the frame's `id`), or
//! the socket must close with a documented code; afterwards both relays are still ready and the
//! call still works. `RELAY_FUZZ_SEED` replays a run; `RELAY_FUZZ_FRAMES` sets its length.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{FleetOptions, spawn_fleet};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn text(&mut self, max: usize) -> String {
        let alphabet = ["a", "Z", "0", " ", "\"", "\\", "{", "}", "v=0\r\n", "é", "\u{0}", "\u{1b}", "😀", "@", "%"];
        let len = self.below(max + 1);
        (0..len).map(|_| *self.pick(&alphabet)).collect()
    }
}

/// A value of any JSON kind, sometimes deep.
fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64),
        3 => json!(f64::from(rng.below(1000) as u32) / 7.0),
        4 => json!(rng.text(40)),
        5 => Value::Array((0..rng.below(4)).map(|_| any_value(rng, depth + 1)).collect()),
        6 => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                map.insert(rng.text(8), any_value(rng, depth + 1));
            }
            Value::Object(map)
        }
        _ => {
            // Deep nesting.
            let mut v = json!(1);
            for _ in 0..rng.below(200) {
                v = json!([v]);
            }
            v
        }
    }
}

/// Makes a value for one field of a frame.
type FieldMaker = fn(&mut Rng) -> Value;

/// One frame to send: text (JSON or not) or binary.
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn frame(rng: &mut Rng, call_id: &str, id: &str) -> Frame {
    const TYPES: [&str; 18] = [
        "offer",
        "answer",
        "ice-candidate",
        "hangup",
        "call.initiate",
        "call.ring",
        "call.answer",
        "call.reject",
        "call.quality",
        "call.history",
        "recording.consent",
        "resume",
        "ice.servers",
        "ping",
        "call.end",
        "bye",
        "",
        "OFFER",
    ];
    match rng.below(20) {
        0 => return Frame::Binary((0..rng.below(64)).map(|_| rng.next() as u8).collect()),
        1 => return Frame::Text(format!("{{\"type\":\"offer\",\"id\":\"{id}\",{}", rng.text(30))), // cut short
        2 => return Frame::Text(rng.text(60)),
        _ => {}
    }
    let mut map = serde_json::Map::new();
    map.insert("id".into(), json!(id));
    let kind = *rng.pick(&TYPES);
    map.insert("type".into(), if rng.below(15) == 0 { any_value(rng, 0) } else { json!(kind) });
    let call = match rng.below(6) {
        0 => any_value(rng, 0),
        1 => json!("019abf6e-4f00-7000-8000-000000000001"),
        2 => json!(rng.text(40)),
        _ => json!(call_id),
    };
    map.insert("call_id".into(), call);
    let fields: [(&str, FieldMaker); 10] = [
        ("sdp", |r| if r.below(2) == 0 { json!(format!("v=0\r\n{}", r.text(200))) } else { any_value(r, 0) }),
        ("candidate", |r| any_value(r, 0)),
        ("reason", |r| json!(r.text(300))),
        ("to", |r| json!(*r.pick(&["", "@recorder", "bob", "@x"]))),
        ("after_seq", |r| any_value(r, 0)),
        ("consent", |r| any_value(r, 0)),
        ("callee_id", |r| json!(r.text(140))),
        ("call_type", |r| json!(*r.pick(&["support", "sales", "consult", "x", ""]))),
        ("metadata", |r| any_value(r, 0)),
        ("rtt_ms", |r| any_value(r, 0)),
    ];
    for _ in 0..rng.below(4) {
        let (name, make) = rng.pick(&fields);
        map.insert((*name).into(), make(rng));
    }
    if rng.below(200) == 0 {
        map.insert("pad".into(), json!("x".repeat(70 * 1024))); // past the 64 KiB limit
    }
    Frame::Text(Value::Object(map).to_string())
}

/// What came back for one frame.
#[derive(Debug)]
enum Answer {
    /// An ack or error frame (its `id` when it had one).
    Reply(Value),
    Closed(Option<u16>),
}

async fn answer(socket: &mut Socket) -> Answer {
    loop {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(10), socket.next()).await else {
            return Answer::Closed(None);
        };
        match message {
            Ok(Message::Text(text)) => {
                let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                    panic!("the relay sent a frame that is not JSON: {text}")
                };
                if matches!(frame["type"].as_str(), Some("ack" | "error" | "pong")) {
                    return Answer::Reply(frame);
                }
            }
            Ok(Message::Close(close)) => return Answer::Closed(close.map(|c| u16::from(c.code))),
            Ok(_) => {}
            Err(_) => return Answer::Closed(None),
        }
    }
}

async fn connect(url: &str) -> Socket {
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the relay accepts the socket");
    match answer_hello(&mut socket).await {
        Some(()) => socket,
        None => panic!("no hello"),
    }
}

async fn answer_hello(socket: &mut Socket) -> Option<()> {
    let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.ok()??.ok()?;
    let Message::Text(text) = message else { return None };
    (serde_json::from_str::<Value>(text.as_str()).ok()?["type"] == "hello").then_some(())
}

#[tokio::test]
async fn the_connection_handler_answers_every_frame_or_closes_with_a_documented_code() {
    let seed = std::env::var("RELAY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    let frames: usize = std::env::var("RELAY_FUZZ_FRAMES").ok().and_then(|s| s.parse().ok()).unwrap_or(1500);
    eprintln!("relay fuzz: seed {seed}, {frames} frames (RELAY_FUZZ_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let options = FleetOptions { rate_limit_per_sec: 100_000, rate_limit_burst: 100_000, ..FleetOptions::default() };
    let fleet = spawn_fleet(options).await;
    let urls = [
        format!("ws://{}/ws?token={}", fleet.relays[0], fleet.token("alice")),
        format!("ws://{}/ws?token={}", fleet.relays[1], fleet.token("bob")),
    ];
    let mut alice = crate::helpers::Client::connect(&urls[0]).await.expect("alice");
    let ack = alice.request(json!({"type": "call.initiate", "callee_id": "bob", "call_type": "support"})).await;
    let call_id = ack["call"]["id"].as_str().expect("a live call").to_owned();
    drop(alice);
    let mut sockets = [connect(&urls[0]).await, connect(&urls[1]).await];
    let (mut replies, mut closes) = (0, 0);
    for n in 0..frames {
        let who = rng.below(2);
        let id = format!("f{n}");
        let message = match frame(&mut rng, &call_id, &id) {
            Frame::Text(text) => Message::text(text),
            Frame::Binary(bytes) => Message::binary(bytes),
        };
        let shown = format!("{message:?}").chars().take(300).collect::<String>();
        if sockets[who].send(message).await.is_err() {
            sockets[who] = connect(&urls[who]).await;
            continue;
        }
        match answer(&mut sockets[who]).await {
            Answer::Reply(reply) => {
                replies += 1;
                let about = reply["id"].as_str();
                assert!(
                    about.is_none() || about == Some(id.as_str()),
                    "frame {n}: an answer to another frame: {reply} for {shown}"
                );
                if reply["type"] == "error" {
                    let code = reply["code"].as_str().unwrap_or_default();
                    let known = signaling_relay::metrics::ERROR_CODES;
                    assert!(known.contains(&code), "frame {n}: undocumented error code: {reply} for {shown}");
                    assert_ne!(code, "internal", "frame {n}: an internal error: {reply} for {shown}");
                }
            }
            Answer::Closed(code) => {
                closes += 1;
                assert!(matches!(code, Some(1009 | 1008)), "frame {n}: closed with {code:?} after {shown}");
                sockets[who] = connect(&urls[who]).await;
            }
        }
    }
    eprintln!("relay fuzz: {replies} answers, {closes} closes");
    // Both relays are ready and the call still works.
    for relay in &fleet.relays {
        let (status, _) = videocall_testkit::http_get(*relay, "/readyz").await.expect("readyz");
        assert_eq!(status, 200);
    }
    let mut bob = crate::helpers::Client::connect(&urls[1]).await.expect("bob");
    let state = bob.request(json!({"type": "call.history"})).await;
    assert_eq!(state["type"], "ack", "{state}");
    fleet.stop().await;
}
