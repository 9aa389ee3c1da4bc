//! Black-box tests of the `videocall` binary (the standalone mode): it is started as a process,
//! as a user starts it, on a temporary data directory and free loopback ports. `browser` also
//! runs the web client against the distributed fleet (separate processes, `fleet`), and
//! `fleet_trust` the trust scenarios of issue 14 against that fleet.

mod binary;
mod browser;
mod fleet;
mod fleet_prometheus;
mod fleet_quality;
mod fleet_traces;
mod fleet_transfer;
mod fleet_trust;
mod pages;
mod process;
mod trust;
