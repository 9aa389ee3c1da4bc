//! The one place where failures become gRPC statuses. Internal causes are logged, not leaked.

use tonic::{Code, Status};
use videocall_calls::StoreError;
use videocall_runtime::db;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A per-caller allowance is spent; the client may retry after `retry_after_secs`.
    #[error("{message}")]
    TooMany { message: String, retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidArgument(message.into())
    }

    pub fn denied(message: impl Into<String>) -> Self {
        ApiError::PermissionDenied(message.into())
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::TooMany { message, retry_after_secs } => {
                let mut status = Status::resource_exhausted(message);
                if let Ok(value) = retry_after_secs.to_string().parse() {
                    status.metadata_mut().insert("retry-after", value);
                }
                status
            }
            ApiError::Unavailable(m) => Status::unavailable(m),
            ApiError::Store(e) => store_status(e),
        }
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(id) => Status::not_found(format!("call {id} not found")),
        StoreError::NotAParty => Status::permission_denied("you are not a party of this call"),
        StoreError::Forbidden => Status::permission_denied("only the callee (or a service) may do that"),
        StoreError::WrongState(state) => Status::failed_precondition(format!("call is {state}")),
        StoreError::Busy(user) => Status::failed_precondition(format!("busy: user {user} is in another call")),
        StoreError::OfferUnavailable(_) => Status::failed_precondition(error.to_string()),
        StoreError::Recording(m) | StoreError::Transfer(m) => Status::failed_precondition(m),
        StoreError::Invalid(m) => Status::invalid_argument(m),
        StoreError::BadReason(reason) => {
            Status::invalid_argument(format!("end reason `{reason}` cannot be given here"))
        }
        StoreError::Corrupt { .. } => {
            tracing::error!(%error, "stored data is unreadable");
            Status::internal("internal error")
        }
        StoreError::Db(e) => {
            // A connection lost mid-statement (a database restart) is as unavailable as one that
            // could not be opened.
            let code = if db::is_unavailable(&e) { Code::Unavailable } else { Code::Internal };
            tracing::error!(error = %e, "database error");
            Status::new(code, if code == Code::Unavailable { "database unavailable, retry" } else { "internal error" })
        }
    }
}
