//! sea-orm entities, one module per table. Rules live in `videocall-domain`; queries in the services.

pub mod agent_desks;
pub mod agents;
pub mod call_quality;
pub mod call_routing_attempts;
pub mod call_transfers;
pub mod call_transitions;
pub mod calls;
pub mod live_call_parties;
pub mod outbox;
pub mod principals;
pub mod processed_messages;
pub mod quality_alerts;
pub mod quality_samples;
pub mod recordings;
pub mod support_offers;
