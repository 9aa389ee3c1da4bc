//! `videocall.v1.CallService`: authenticates, validates, and hands commands to the call store.

use std::{collections::BTreeMap, pin::Pin};

use chrono::Utc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use videocall_calls::{Actor, CallRecord, CallStore, HistoryQuery, NewCall, StoreError, recordings::RecordingStore};
use videocall_domain::{CallType, Command, MAX_REQUEST_ID_BYTES, validate_metadata};
use videocall_proto::v1::{self as pb, call_service_server::CallService};
use videocall_runtime::{
    auth::{JwtKeys, Principal, bearer},
    ice::IceConfig,
};

use videocall_signaling::signal_bus::SignalBus;

use crate::{
    config::{DeskTimeouts, RingTimeouts},
    convert, desk,
    error::ApiError,
    quality, recording, signaling, transfer,
};

const MAX_USER_ID_BYTES: usize = 128;
const DEFAULT_PAGE_SIZE: u64 = 20;
const MAX_PAGE_SIZE: u64 = 100;

/// The gRPC handlers. Cheap to clone.
#[derive(Clone)]
pub struct CallApi {
    pub policy: crate::policy::Policy,
    pub store: CallStore,
    pub recordings: RecordingStore,
    pub ice: IceConfig,
    pub ring_timeouts: RingTimeouts,
    pub desk: DeskTimeouts,
    /// Wakes this replica's desk router (a call queued, an agent available).
    pub desk_wake: std::sync::Arc<tokio::sync::Notify>,
    pub transfer_metrics: crate::transfer::TransferMetrics,
    pub bus: SignalBus,
    /// One bus subscriber shared by every SubscribeToSignals stream of this gateway.
    pub hub: videocall_signaling::signal_bus::hub::Hub,
    /// Cancelled when the server stops serving: signal streams end then, so they do not hold the
    /// graceful drain open (clients resubscribe elsewhere with `after_seq`).
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Interceptor: every CallService request needs a valid bearer token; the principal rides along
/// in the request's extensions.
pub fn authenticate(keys: JwtKeys) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let principal =
            keys.verify(token, Utc::now().timestamp()).map_err(|e| Status::unauthenticated(e.to_string()))?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request.extensions().get::<Principal>().cloned().ok_or_else(|| Status::unauthenticated("no principal"))
}

fn actor(p: &Principal) -> Actor {
    Actor { id: p.user_id.clone(), is_service: p.is_service() }
}

pub(crate) fn user_id(field: &str, raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.len() > MAX_USER_ID_BYTES || trimmed.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("{field} must be 1-{MAX_USER_ID_BYTES} bytes of printable text")));
    }
    if trimmed.starts_with('@') {
        return Err(ApiError::invalid(format!(
            "{field} must not start with `@` (reserved for the services' own peers)"
        )));
    }
    Ok(trimmed.to_owned())
}

impl CallApi {
    /// The request's principal; an agent's or service's role is recorded for the call policy.
    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let p = principal(request)?;
        self.policy.note(&p).await;
        Ok(p)
    }

    fn ice_servers(&self, user: &str) -> Vec<pb::IceServer> {
        convert::ice_servers(self.ice.servers_for(user, Utc::now().timestamp()))
    }

    fn with_ice(&self, call: CallRecord, user: &str) -> pb::CallWithIceServers {
        pb::CallWithIceServers { call: Some(convert::call(&call)), ice_servers: self.ice_servers(user) }
    }

    /// The call as a command's reply shows it: with its legs and transfers once answered (as
    /// GetCall shows them), so a reply and a later GetCall agree.
    async fn view(&self, call: &CallRecord) -> Result<pb::Call, ApiError> {
        let mut view = convert::call(call);
        if call.answered_at.is_some() {
            let transfers = self.store.transfers_of(&[call.id]).await?.remove(&call.id).unwrap_or_default();
            transfer::fill(&mut view, call, &transfers);
        }
        Ok(view)
    }

    async fn command(&self, p: &Principal, raw_id: &str, command: Command) -> Result<CallRecord, ApiError> {
        let id = convert::call_id(raw_id)?;
        tracing::Span::current().record("call_id", tracing::field::display(id));
        // The target of a ringing transfer answers or declines the transfer, not the call.
        if !p.is_service() {
            let handled = match command {
                Command::Answer => transfer::answer(&self.store, &self.bus, &self.transfer_metrics, p, id).await?,
                Command::Reject => transfer::decline(&self.store, &self.bus, &self.transfer_metrics, p, id).await?,
                _ => None,
            };
            if let Some(call) = handled {
                return Ok(call);
            }
        }
        let call = self.store.apply(id, command, &actor(p)).await?;
        videocall_calls::push::call_state(&self.bus, &call).await;
        if call.status.is_terminal() {
            transfer::after_end(&self.store, &self.bus, &self.transfer_metrics, &call).await;
        }
        // A desk call back in its queue, or an agent free again: the router looks at once.
        if call.queued_at.is_some()
            && (call.status.is_terminal() || call.status == videocall_domain::CallStatus::Queued)
        {
            self.desk_wake.notify_one();
        }
        Ok(call)
    }

    async fn initiate(&self, p: &Principal, req: pb::InitiateCallRequest) -> Result<pb::CallWithIceServers, ApiError> {
        let caller_id =
            if req.caller_id.is_empty() { p.user_id.clone() } else { user_id("caller_id", &req.caller_id)? };
        if caller_id != p.user_id && !p.is_service() {
            return Err(ApiError::denied("only a service may start a call for another user"));
        }
        let offer = match req.support_offer_id.as_str() {
            "" => None,
            raw => {
                let id = Uuid::parse_str(raw).map_err(|_| {
                    ApiError::invalid(format!(
                        "support_offer_id `{}` is not a UUID",
                        raw.chars().take(64).collect::<String>()
                    ))
                })?;
                let offer = self.store.support_offer(id).await?.ok_or(StoreError::OfferUnavailable(id))?;
                Some(offer)
            }
        };
        let callee_raw = match (&offer, req.callee_id.is_empty()) {
            (Some(offer), true) => offer
                .agent_id
                .clone()
                .ok_or_else(|| ApiError::invalid("callee_id is required: the offer names no agent"))?,
            _ => req.callee_id.clone(),
        };
        // No callee and no offer: a desk call, for the agents of the call type's desk.
        let mut callee_id = if callee_raw.is_empty() && offer.is_none() {
            String::new()
        } else {
            let callee_id = user_id("callee_id", &callee_raw)?;
            if callee_id == caller_id {
                return Err(ApiError::invalid("a user cannot call themselves"));
            }
            let offer_agent = offer.as_ref().and_then(|o| o.agent_id.as_deref());
            self.policy.may_call(p, &callee_id, offer_agent).await?;
            callee_id
        };
        let call_type = match (convert::call_type(req.call_type)?, &offer) {
            (None | Some(CallType::Support), Some(_)) => CallType::Support,
            (Some(_), Some(_)) => return Err(ApiError::invalid("a call taking up a support offer is of type support")),
            (Some(t), None) => t,
            (None, None) => return Err(ApiError::invalid("call_type is required")),
        };
        validate_metadata(req.metadata.iter()).map_err(|e| ApiError::invalid(e.to_string()))?;
        if req.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(ApiError::invalid(format!("request_id is longer than {MAX_REQUEST_ID_BYTES} bytes")));
        }
        self.policy.take_initiate(&p.user_id)?;
        let request_id = if req.request_id.is_empty() { Uuid::now_v7().to_string() } else { req.request_id };
        // A ticket's agent who manages their availability and cannot take the call now: the
        // call waits on the support desk instead.
        if offer.is_some()
            && req.callee_id.is_empty()
            && self.store.agent(&callee_id).await?.is_some()
            && !self.store.is_routable(&callee_id, CallType::Support).await?
        {
            callee_id = String::new();
        }
        let desk_call = callee_id.is_empty();
        let ring_timeout_secs = if desk_call {
            i32::try_from(self.desk.queue_timeout.as_secs()).unwrap_or(i32::MAX)
        } else {
            self.ring_timeouts.for_type(call_type)
        };
        let mut metadata = req.metadata.into_iter().collect::<BTreeMap<_, _>>();
        if let Some(offer) = &offer {
            metadata.insert("ticket_id".into(), offer.ticket_id.clone());
            metadata.insert("support_offer_id".into(), offer.id.to_string());
        }
        let new = NewCall { request_id, caller_id, callee_id, call_type, metadata, ring_timeout_secs };
        let initiated = match &offer {
            Some(offer) => self.store.initiate_for_offer(new, offer.id, &p.user_id).await?,
            None => self.store.initiate(new, &p.user_id).await?,
        };
        if initiated.created {
            videocall_calls::push::call_state(&self.bus, &initiated.call).await;
            if desk_call {
                self.desk_wake.notify_one();
            }
        }
        Ok(self.with_ice(initiated.call, &p.user_id))
    }

    async fn history(&self, p: &Principal, req: pb::GetUserCallsRequest) -> Result<pb::GetUserCallsResponse, ApiError> {
        let user_id = if req.user_id.is_empty() { p.user_id.clone() } else { user_id("user_id", &req.user_id)? };
        if user_id != p.user_id && !p.is_service() {
            return Err(ApiError::denied("only a service may read another user's calls"));
        }
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(ApiError::invalid("page_size must not be negative")),
            n => (n as u64).min(MAX_PAGE_SIZE),
        };
        let before = match req.page_token.as_str() {
            "" => None,
            token => Some(
                Uuid::parse_str(token).map_err(|_| ApiError::invalid("page_token is not one this server issued"))?,
            ),
        };
        let since = req.since.as_ref().map(|t| convert::from_timestamp("since", t)).transpose()?;
        let until = req.until.as_ref().map(|t| convert::from_timestamp("until", t)).transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(ApiError::invalid("since must be before until"));
        }
        let query = HistoryQuery {
            user_id,
            call_type: convert::call_type(req.call_type)?,
            status: convert::call_status(req.status)?,
            since,
            until,
            before,
            limit,
        };
        let page = self.store.history(&query).await?;
        let ids: Vec<Uuid> = page.calls.iter().map(|c| c.id).collect();
        let mut summaries = quality::summaries(self.store.db(), &ids).await?;
        let mut recordings = recording::for_calls(&self.recordings, &ids).await?;
        let mut attempts = self.store.attempts_of(&ids).await?;
        let mut alerts = quality::alerts(self.store.db(), &ids).await?;
        let mut transfers = self.store.transfers_of(&ids).await?;
        Ok(pb::GetUserCallsResponse {
            calls: page
                .calls
                .iter()
                .map(|c| {
                    let mut view = pb::Call {
                        quality: summaries.remove(&c.id),
                        recording: recordings.remove(&c.id),
                        routing_attempts: attempts.remove(&c.id).map(|a| desk::attempts_pb(&a)).unwrap_or_default(),
                        quality_alerts: alerts.remove(&c.id).unwrap_or_default(),
                        ..convert::call(c)
                    };
                    transfer::fill(&mut view, c, &transfers.remove(&c.id).unwrap_or_default());
                    view
                })
                .collect(),
            next_page_token: page.next.map(|id| id.to_string()).unwrap_or_default(),
        })
    }
}

type SignalStream = Pin<Box<dyn Stream<Item = Result<pb::Signal, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl CallService for CallApi {
    async fn initiate_call(
        &self,
        request: Request<pb::InitiateCallRequest>,
    ) -> Result<Response<pb::CallWithIceServers>, Status> {
        let p = self.principal(&request).await?;
        let reply = self.initiate(&p, request.into_inner()).await?;
        if let Some(call) = &reply.call {
            tracing::Span::current().record("call_id", call.id.as_str());
        }
        Ok(Response::new(reply))
    }

    async fn ring_call(
        &self,
        request: Request<pb::RingCallRequest>,
    ) -> Result<Response<pb::CallWithIceServers>, Status> {
        let p = self.principal(&request).await?;
        let call = self.command(&p, &request.get_ref().call_id, Command::Ring).await?;
        Ok(Response::new(self.with_ice(call, &p.user_id)))
    }

    async fn answer_call(
        &self,
        request: Request<pb::AnswerCallRequest>,
    ) -> Result<Response<pb::CallWithIceServers>, Status> {
        let p = self.principal(&request).await?;
        let call = self.command(&p, &request.get_ref().call_id, Command::Answer).await?;
        let view = self.view(&call).await?;
        Ok(Response::new(pb::CallWithIceServers { call: Some(view), ice_servers: self.ice_servers(&p.user_id) }))
    }

    async fn reject_call(&self, request: Request<pb::RejectCallRequest>) -> Result<Response<pb::CallResponse>, Status> {
        let p = self.principal(&request).await?;
        let call = self.command(&p, &request.get_ref().call_id, Command::Reject).await?;
        Ok(Response::new(pb::CallResponse { call: Some(self.view(&call).await?) }))
    }

    async fn end_call(&self, request: Request<pb::EndCallRequest>) -> Result<Response<pb::CallResponse>, Status> {
        let p = self.principal(&request).await?;
        let reason = convert::end_reason(request.get_ref().reason)?;
        let call = self.command(&p, &request.get_ref().call_id, Command::End(reason)).await?;
        Ok(Response::new(pb::CallResponse { call: Some(self.view(&call).await?) }))
    }

    async fn send_signal(
        &self,
        request: Request<pb::SendSignalRequest>,
    ) -> Result<Response<pb::SendSignalResponse>, Status> {
        let p = self.principal(&request).await?;
        let reply = signaling::send(&self.store, &self.recordings, &self.bus, &actor(&p), request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn update_call_quality(
        &self,
        request: Request<pb::UpdateCallQualityRequest>,
    ) -> Result<Response<pb::UpdateCallQualityResponse>, Status> {
        let p = self.principal(&request).await?;
        Ok(Response::new(quality::report(&self.store, &self.policy, &actor(&p), request.into_inner()).await?))
    }

    async fn get_call(&self, request: Request<pb::GetCallRequest>) -> Result<Response<pb::CallResponse>, Status> {
        let p = self.principal(&request).await?;
        let id = convert::call_id(&request.get_ref().call_id)?;
        let call = self.store.get(id).await.map_err(ApiError::from)?;
        let transfers =
            self.store.transfers_of(&[call.id]).await.map_err(ApiError::from)?.remove(&call.id).unwrap_or_default();
        // An agent the call was transferred from (or that a transfer rang) may read it too.
        let in_a_transfer = transfers.iter().any(|t| t.from_agent_id == p.user_id || t.to_agent_id == p.user_id);
        if call.party_of(&actor(&p)).is_none() && !in_a_transfer {
            return Err(Status::permission_denied("you are not a party of this call"));
        }
        let mut view = convert::call(&call);
        view.quality = quality::summary(self.store.db(), call.id).await?;
        view.recording = self.recordings.get(call.id).await.map_err(ApiError::from)?.as_ref().map(recording::to_pb);
        if call.queued_at.is_some() {
            view.routing_attempts = desk::attempts_pb(&self.store.attempts(call.id).await.map_err(ApiError::from)?);
        }
        view.quality_alerts = quality::alerts(self.store.db(), &[call.id]).await?.remove(&call.id).unwrap_or_default();
        transfer::fill(&mut view, &call, &transfers);
        Ok(Response::new(pb::CallResponse { call: Some(view) }))
    }

    async fn set_recording_consent(
        &self,
        request: Request<pb::SetRecordingConsentRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let p = self.principal(&request).await?;
        let reply =
            recording::set_consent(&self.store, &self.recordings, &self.bus, &actor(&p), request.into_inner()).await?;
        Ok(Response::new(reply))
    }

    async fn get_user_calls(
        &self,
        request: Request<pb::GetUserCallsRequest>,
    ) -> Result<Response<pb::GetUserCallsResponse>, Status> {
        let p = self.principal(&request).await?;
        Ok(Response::new(self.history(&p, request.into_inner()).await?))
    }

    async fn set_agent_availability(
        &self,
        request: Request<pb::SetAgentAvailabilityRequest>,
    ) -> Result<Response<pb::AgentAvailability>, Status> {
        let p = self.principal(&request).await?;
        Ok(Response::new(desk::set_availability(&self.store, &self.desk_wake, &p, request.into_inner()).await?))
    }

    async fn get_queue(&self, request: Request<pb::GetQueueRequest>) -> Result<Response<pb::GetQueueResponse>, Status> {
        let p = self.principal(&request).await?;
        Ok(Response::new(desk::queue(&self.store, &p, request.into_inner()).await?))
    }

    async fn transfer_call(
        &self,
        request: Request<pb::TransferCallRequest>,
    ) -> Result<Response<pb::TransferCallResponse>, Status> {
        let p = self.principal(&request).await?;
        let (store, bus, metrics, ring) = (&self.store, &self.bus, &self.transfer_metrics, self.desk.agent_ring);
        Ok(Response::new(transfer::request(store, bus, metrics, ring, &p, request.into_inner()).await?))
    }

    async fn get_ice_servers(
        &self,
        request: Request<pb::GetIceServersRequest>,
    ) -> Result<Response<pb::GetIceServersResponse>, Status> {
        let p = self.principal(&request).await?;
        Ok(Response::new(pb::GetIceServersResponse { ice_servers: self.ice_servers(&p.user_id) }))
    }

    type SubscribeToSignalsStream = SignalStream;

    async fn subscribe_to_signals(
        &self,
        request: Request<pb::SubscribeToSignalsRequest>,
    ) -> Result<Response<Self::SubscribeToSignalsStream>, Status> {
        let p = self.principal(&request).await?;
        let permit = self.policy.open_stream(&p.user_id)?;
        let stream = signaling::subscribe(
            &self.store,
            &self.bus,
            &self.hub,
            &actor(&p),
            request.into_inner(),
            self.stopping.clone(),
            permit,
        )
        .await?;
        Ok(Response::new(Box::pin(stream)))
    }
}
