//! Black-box tests of the `videocall` binary (the standalone mode): it is started as a process,
//! as a user starts it, on a temporary data directory and free loopback ports. `browser` also
//! runs the web client against the distributed fleet (separate processes).

mod binary;
mod browser;
mod process;
mod trust;
