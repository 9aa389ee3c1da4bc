//! Deadlines answered as gRPC says: a request still running when its `grpc-timeout` (or the
//! server's own limit) runs out gets `DEADLINE_EXCEEDED`, and its handler is dropped. tonic's own
//! timeout answers `CANCELLED` ("Timeout expired"), which clients read as "someone gave up", not
//! "too slow". This layer sits inside tonic's and starts its timer first, so it always fires first.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tonic::codegen::{
    Service,
    http::{HeaderMap, Request, Response},
};

/// Applies the shorter of the request's `grpc-timeout` and `max` to every request.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    pub max: Duration,
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, max: self.max }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    max: Duration,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let limit = grpc_timeout(request.headers()).map_or(self.max, |t| t.min(self.max));
        // The deadline is fixed now, before tonic's own timer starts.
        let expired = tokio::time::sleep(limit);
        let response = self.inner.call(request);
        Box::pin(async move {
            tokio::select! {
                biased;
                response = response => response,
                _ = expired => {
                    tracing::info!(limit_ms = limit.as_millis() as u64, "deadline exceeded");
                    Ok(tonic::Status::deadline_exceeded(format!("deadline of {limit:?} exceeded")).into_http())
                }
            }
        })
    }
}

/// The `grpc-timeout` header: at most 8 digits and a unit (H, M, S, m, u, n). Malformed → none.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S", "+3S"] {
            assert_eq!(parse(bad), None, "`{bad}` is not a timeout");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
