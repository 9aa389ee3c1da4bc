//! The top-level tasks of a process, supervised: the first one to end (or `shutdown`) stops them
//! all, and the error says which one it was. A task ending on its own is a failure even when it
//! returns Ok: a service is meant to run until told to stop.

use std::{future::Future, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Finished = (&'static str, anyhow::Result<()>);

/// Named tasks. Spawn them, [`wait`](Self::wait) for the first to end or for shutdown, then
/// [`drain`](Self::drain) the rest.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<Finished>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("tasks", &self.tasks.len()).finish()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Waits until `shutdown` is cancelled or a task ends. A task that ends first is an error
    /// naming it, and cancels `shutdown` so the others stop too; a task that ends because shutdown
    /// began is none.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            Some(finished) = self.tasks.join_next() => {
                // Both branches can be ready at once: stopping because shutdown began is fine.
                if shutdown.is_cancelled() {
                    log_while_stopping(finished);
                    return Ok(());
                }
                shutdown.cancel();
                match finished {
                    Ok((name, Ok(()))) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
                    Ok((name, Err(error))) => Err(error.context(format!("{name} failed"))),
                    Err(join) => Err(anyhow::anyhow!("a task panicked: {join}")),
                }
            }
        }
    }

    /// Waits for the remaining tasks (within `grace`, if given; then aborts what is left), logging
    /// the ones that fail while stopping.
    pub async fn drain(mut self, grace: Option<Duration>) {
        let all = async {
            while let Some(finished) = self.tasks.join_next().await {
                log_while_stopping(finished);
            }
        };
        match grace {
            None => all.await,
            Some(grace) => {
                if tokio::time::timeout(grace, all).await.is_err() {
                    tracing::warn!(grace_secs = grace.as_secs(), "grace period over; aborting what is left");
                    self.tasks.abort_all();
                }
            }
        }
    }
}

fn log_while_stopping(finished: Result<Finished, tokio::task::JoinError>) {
    match finished {
        Ok((name, Err(error))) => tracing::warn!(task = name, error = format!("{error:#}"), "failed while stopping"),
        Err(join) if join.is_panic() => tracing::warn!(%join, "a task panicked while stopping"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_stops_the_rest_and_is_named() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new();
        let stop = shutdown.clone();
        tasks.spawn("long", async move {
            stop.cancelled().await;
            Ok(())
        });
        tasks.spawn("short", async { anyhow::bail!("broke") });
        let error = tasks.wait(&shutdown).await.expect_err("a task ended first");
        assert_eq!(format!("{error:#}"), "short failed: broke");
        assert!(shutdown.is_cancelled(), "the others are told to stop");
        tasks.drain(Some(Duration::from_secs(1))).await;
    }

    #[tokio::test]
    async fn shutdown_is_no_failure() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::new();
        let stop = shutdown.clone();
        tasks.spawn("server", async move {
            stop.cancelled().await;
            Ok(())
        });
        shutdown.cancel();
        assert!(tasks.wait(&shutdown).await.is_ok());
        tasks.drain(None).await;
    }
}
