//! quality-aggregator: consumes `call.quality` samples (CallQualityReported, written by the
//! gateway's UpdateCallQuality) and call endings from the events exchange, stores every sample in
//! `quality_samples`, keeps a per-call summary in `call_quality` (both directions together and
//! each apart: averages, max loss, resolution, stability, E-model MOS) and finalizes it when the
//! call ends. Each message is applied at most once (its id is recorded in `processed_messages` in
//! the effect's transaction) and acknowledged after the commit; malformed ones go to a dead-letter
//! queue with the reason; transient faults are retried a bounded number of times. It also raises
//! live quality alerts: a media path whose newest samples are all poor opens an episode
//! (`call.quality_degraded`, and a `quality.alert` frame to both parties), all good again ends it
//! (`call.quality_recovered`); see `alerts` for the rule and `episodes` for the effects.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod config;
pub mod consumer;
pub mod episodes;
pub mod messages;
pub mod quality_math;
pub mod startup;
pub mod summaries;

pub use config::{AggregatorArgs, AggregatorConfig};
pub use startup::Application;
pub use summaries::{Aggregator, Alerts, Outcome, SummaryMetrics};
