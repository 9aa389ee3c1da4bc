//! Catching a connection up: the state of its live calls and the signals it missed, on connect
//! and after the bus subscriber comes back.

use axum::extract::ws::WebSocket;
use videocall_proto::v1 as pb;

use super::{State, send};
use crate::protocol::{self};

impl State {
    /// Sends the state of every live call of this user and replays the signals this connection
    /// has not seen: on connect, and after the bus subscriber comes back. If the bus lost its
    /// data meanwhile (`bus_lost`: Redis restarted without persistence), signals of the calls this
    /// connection was negotiating may be gone for good: it is told so (`signals_lost`), and the
    /// caller renegotiates (docs/protocol.md).
    pub(super) async fn sync(&mut self, socket: &mut WebSocket, bus_lost: bool) -> Result<(), axum::Error> {
        // Boxed: rare, and large (gRPC and Redis calls) for the socket's task to carry inline.
        Box::pin(self.sync_after(socket, bus_lost, None)).await
    }

    /// [`Self::sync`], sending `first` (the `hello`) once the calls are read and before them.
    pub(super) async fn sync_after(
        &mut self,
        socket: &mut WebSocket,
        bus_lost: bool,
        first: Option<String>,
    ) -> Result<(), axum::Error> {
        // A resync follows a bus outage; the first sync (with `hello`) does not.
        let resync = first.is_none();
        let request = self.request(pb::GetUserCallsRequest { page_size: 20, ..Default::default() });
        let reply = self.gateway.clone().get_user_calls(request).await;
        if let Some(first) = first {
            send(socket, first).await?;
        }
        let calls = match reply {
            Ok(reply) => reply.into_inner().calls,
            Err(status) => {
                let frame = protocol::error(None, protocol::code_name(status.code()), status.message());
                return send(socket, frame).await;
            }
        };
        for call in calls.iter().filter(|c| {
            matches!(
                pb::CallStatus::try_from(c.status),
                Ok(pb::CallStatus::Queued
                    | pb::CallStatus::Initiated
                    | pb::CallStatus::Ringing
                    | pb::CallStatus::Active)
            )
        }) {
            self.remember(call);
            self.watch(&call.id).await;
            let frame = serde_json::json!({"type": "call_state", "call": protocol::call_json(call)});
            send(socket, frame.to_string()).await?;
            let (after, sent, floor) = self
                .calls
                .get(&call.id)
                .map_or((0, false, 0), |c| (c.last_seq, c.sent, c.last_seq.max(c.last_sent_seq)));
            // A failover may lose the newest signals without losing the rest: the call's counter
            // then stands below what this connection saw.
            let fell = !bus_lost && resync && matches!(self.bus.counter_fell_below(&call.id, floor).await, Ok(true));
            if (bus_lost || fell) && (after > 0 || sent) {
                self.metrics.signals_lost.inc();
                send(socket, super::commands::signals_lost_notice(&call.id)).await?;
            }
            match self.bus.replay(&call.id, &self.user_id, after).await {
                Ok(frames) => {
                    for (seq, frame) in frames {
                        if let Some(known) = self.calls.get_mut(&call.id) {
                            known.last_seq = known.last_seq.max(seq);
                        }
                        send(socket, frame).await?;
                    }
                }
                Err(error) => tracing::warn!(%error, call_id = %call.id, "replay failed"),
            }
        }
        Ok(())
    }

    /// On Redis Cluster a call's signals travel on its own channel: watches it (once) before its
    /// log is replayed, so nothing published in between is missed. Elsewhere a no-op.
    async fn watch(&mut self, call_id: &str) {
        if !self.watcher.per_call() || self.watched.contains(call_id) {
            return;
        }
        match self.watcher.watch_call(call_id).await {
            Ok(()) => {
                self.watched.insert(call_id.to_owned());
            }
            Err(error) => tracing::warn!(%error, %call_id, "cannot watch the call's signals"),
        }
    }

    /// On Redis Cluster: watches the live calls this connection learned of since (from a
    /// `call_state`, a reply of the gateway, a signal) and replays what they published before the
    /// watch began; stops watching calls that ended. Returns the frames to send.
    pub(super) async fn watch_new_calls(&mut self) -> Vec<String> {
        if !self.watcher.per_call() {
            return Vec::new();
        }
        // Boxed: only on Redis Cluster, and too large for the socket's task to carry inline.
        Box::pin(self.watch_and_replay_new_calls()).await
    }

    async fn watch_and_replay_new_calls(&mut self) -> Vec<String> {
        let ended: Vec<String> =
            self.watched.iter().filter(|id| self.calls.get(*id).is_none_or(|c| !c.live)).cloned().collect();
        for call_id in ended {
            self.watcher.unwatch_call(&call_id);
            self.watched.remove(&call_id);
        }
        let new: Vec<String> = self
            .calls
            .iter()
            .filter(|(id, c)| c.live && !self.watched.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let mut frames = Vec::new();
        for call_id in new {
            self.watch(&call_id).await;
            let after = self.calls.get(&call_id).map_or(0, |c| c.last_seq);
            match self.bus.replay(&call_id, &self.user_id, after).await {
                Ok(replayed) => {
                    for (seq, frame) in replayed {
                        if let Some(known) = self.calls.get_mut(&call_id) {
                            known.last_seq = known.last_seq.max(seq);
                        }
                        frames.push(frame);
                    }
                }
                Err(error) => tracing::warn!(%error, %call_id, "replay failed"),
            }
        }
        frames
    }
}
