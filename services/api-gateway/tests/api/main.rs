//! Black-box tests of api-gateway: spawned on port 0 against real PostgreSQL (a fresh database per
//! test) and real RabbitMQ (a fresh exchange per test), driven through its gRPC API.

mod bad_input;
mod desk;
mod desk_races;
mod events;
mod faults;
mod helpers;
mod history;
mod lifecycle;
mod limits;
mod offers;
mod policy;
mod quality;
mod races;
mod recording;
mod service;
mod signaling;
mod transfer;
