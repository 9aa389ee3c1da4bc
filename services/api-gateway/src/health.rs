//! `grpc.health.v1.Health` for a server that drains: a Watch stream ends once it has told its
//! watcher NOT_SERVING after shutdown began. A watcher (a load balancer, a sidecar) is a request in
//! flight like any other, and tonic's graceful shutdown waits for every request: with the plain
//! health service one open Watch kept the gateway alive for the whole grace period.

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse,
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService},
};

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

/// The statuses of `reporter`, served until `stopping` is cancelled (after NOT_SERVING was set).
pub fn service(reporter: HealthReporter, stopping: CancellationToken) -> HealthServer<DrainingHealth> {
    HealthServer::new(DrainingHealth { inner: HealthService::from_health_reporter(reporter), stopping })
}

pub struct DrainingHealth {
    inner: HealthService,
    stopping: CancellationToken,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Statuses;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        Ok(Response::new(until_stopped(Box::pin(statuses), self.stopping.clone())))
    }
}

/// `statuses` until shutdown: the stream ends right after it yields NOT_SERVING once `stopping`
/// is cancelled, or at once if NOT_SERVING was already the last thing it said. The status is set
/// before `stopping` is cancelled, so a watcher always hears NOT_SERVING before the end.
pub fn until_stopped(statuses: Statuses, stopping: CancellationToken) -> Statuses {
    struct State {
        statuses: Statuses,
        stopping: CancellationToken,
        said_not_serving: bool,
        done: bool,
    }
    let state = State { statuses, stopping, said_not_serving: false, done: false };
    Box::pin(futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        tokio::select! {
            // A status already waiting goes out before the end.
            biased;
            item = s.statuses.next() => {
                let item = item?;
                s.said_not_serving = matches!(&item, Ok(r) if r.status == ServingStatus::NotServing as i32);
                s.done = s.said_not_serving && s.stopping.is_cancelled();
                Some((item, s))
            }
            _ = s.stopping.cancelled(), if s.said_not_serving => None,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: ServingStatus) -> Result<HealthCheckResponse, Status> {
        Ok(HealthCheckResponse { status: s as i32 })
    }

    async fn collect(items: Vec<Result<HealthCheckResponse, Status>>, stopping: CancellationToken) -> Vec<i32> {
        // The source never ends by itself, as a real Watch does not.
        let source = futures_util::stream::iter(items).chain(futures_util::stream::pending());
        let stream = until_stopped(Box::pin(source), stopping);
        let collected = tokio::time::timeout(std::time::Duration::from_secs(5), stream.collect::<Vec<_>>())
            .await
            .expect("the stream ends");
        collected.into_iter().map(|r| r.expect("status").status).collect()
    }

    #[tokio::test]
    async fn a_watch_ends_after_saying_not_serving_once_stopping() {
        let stopping = CancellationToken::new();
        stopping.cancel();
        let items = vec![status(ServingStatus::Serving), status(ServingStatus::NotServing)];
        let said = collect(items, stopping).await;
        assert_eq!(said, [ServingStatus::Serving as i32, ServingStatus::NotServing as i32]);
    }

    #[tokio::test]
    async fn a_not_serving_before_shutdown_does_not_end_the_watch() {
        let stopping = CancellationToken::new();
        // NOT_SERVING (the database was down), SERVING again, then shutdown's NOT_SERVING.
        let items =
            vec![status(ServingStatus::NotServing), status(ServingStatus::Serving), status(ServingStatus::NotServing)];
        let source = futures_util::stream::iter(items).chain(futures_util::stream::pending());
        let mut stream = until_stopped(Box::pin(source), stopping.clone());
        let mut said = Vec::new();
        for _ in 0..3 {
            said.push(stream.next().await.expect("open").expect("status").status);
        }
        stopping.cancel();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await.expect("ends");
        assert!(end.is_none(), "ends after the last NOT_SERVING once stopping");
        assert_eq!(
            said,
            [ServingStatus::NotServing as i32, ServingStatus::Serving as i32, ServingStatus::NotServing as i32]
        );
    }
}
