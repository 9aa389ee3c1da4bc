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
        self.sync_after(socket, bus_lost, None).await
    }

    /// [`Self::sync`], sending `first` (the `hello`) once the calls are read and before them.
    pub(super) async fn sync_after(
        &mut self,
        socket: &mut WebSocket,
        bus_lost: bool,
        first: Option<String>,
    ) -> Result<(), axum::Error> {
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
                Ok(pb::CallStatus::Initiated | pb::CallStatus::Ringing | pb::CallStatus::Active)
            )
        }) {
            self.remember(call);
            let frame = serde_json::json!({"type": "call_state", "call": protocol::call_json(call)});
            send(socket, frame.to_string()).await?;
            let (after, sent) = self.calls.get(&call.id).map_or((0, false), |c| (c.last_seq, c.sent));
            if bus_lost && (after > 0 || sent) {
                self.metrics.signals_lost.inc();
                let notice = serde_json::json!({
                    "type": "signals_lost",
                    "call_id": call.id,
                    "reason": "the signal bus restarted and lost this call's signals; the caller renegotiates (ICE restart)",
                });
                send(socket, notice.to_string()).await?;
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
}
