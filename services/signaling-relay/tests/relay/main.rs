//! Black-box tests of the signaling relay: real api-gateway, real Redis, two relay instances,
//! WebSocket clients (and, in `webrtc`, real webrtc-rs peers).

mod cluster_failover;
mod desk;
mod fuzz;
mod helpers;
mod recording;
mod redis_restart;
mod sigterm;
mod transfer;
mod trust;
mod turn_hardening;
mod webrtc;
mod ws;
