//! api-gateway as a real process (the binary beside this test; scripts/test.sh builds it): killed
//! with SIGKILL under load and started again on the same database, and stopped with SIGTERM under
//! load. Real PostgreSQL, Redis and RabbitMQ; a fresh database and exchange per test.

mod gateway;
mod kill;
mod sigterm;
mod tokens;
