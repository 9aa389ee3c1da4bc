//! The call's vocabulary: status, type, end reason and the role a user plays in a call.

use std::{fmt, str::FromStr};

/// Where a call is in its life. `Ended`, `Rejected` and `Missed` are terminal. `Queued` is a
/// desk call (a customer calling a desk, not a person) waiting for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallStatus {
    Queued,
    Initiated,
    Ringing,
    Active,
    Ended,
    Rejected,
    Missed,
}

impl CallStatus {
    pub const ALL: [CallStatus; 7] = [
        CallStatus::Queued,
        CallStatus::Initiated,
        CallStatus::Ringing,
        CallStatus::Active,
        CallStatus::Ended,
        CallStatus::Rejected,
        CallStatus::Missed,
    ];

    /// A terminal call never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, CallStatus::Ended | CallStatus::Rejected | CallStatus::Missed)
    }

    /// Live calls hold both parties: neither can be in another call meanwhile.
    pub fn is_live(self) -> bool {
        !self.is_terminal()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Queued => "queued",
            CallStatus::Initiated => "initiated",
            CallStatus::Ringing => "ringing",
            CallStatus::Active => "active",
            CallStatus::Ended => "ended",
            CallStatus::Rejected => "rejected",
            CallStatus::Missed => "missed",
        }
    }
}

/// What the call is for; each type may carry its own ring timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallType {
    Support,
    Sales,
    Consult,
}

impl CallType {
    pub const ALL: [CallType; 3] = [CallType::Support, CallType::Sales, CallType::Consult];

    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Support => "support",
            CallType::Sales => "sales",
            CallType::Consult => "consult",
        }
    }
}

/// Why a call stopped. Closed set: consumers may match on it exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    Hangup,
    Cancelled,
    Rejected,
    Busy,
    Timeout,
    UserOffline,
    IceFailed,
    MediaFailed,
    ConnectionLost,
    Error,
    /// A desk call nobody answered within the queue timeout.
    NoAgent,
    /// The customer hung up a desk call before an agent answered.
    Abandoned,
}

impl EndReason {
    pub const ALL: [EndReason; 12] = [
        EndReason::Hangup,
        EndReason::Cancelled,
        EndReason::Rejected,
        EndReason::Busy,
        EndReason::Timeout,
        EndReason::UserOffline,
        EndReason::IceFailed,
        EndReason::MediaFailed,
        EndReason::ConnectionLost,
        EndReason::Error,
        EndReason::NoAgent,
        EndReason::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::Cancelled => "cancelled",
            EndReason::Rejected => "rejected",
            EndReason::Busy => "busy",
            EndReason::Timeout => "timeout",
            EndReason::UserOffline => "user_offline",
            EndReason::IceFailed => "ice_failed",
            EndReason::MediaFailed => "media_failed",
            EndReason::ConnectionLost => "connection_lost",
            EndReason::Error => "error",
            EndReason::NoAgent => "no_agent",
            EndReason::Abandoned => "abandoned",
        }
    }
}

/// Who is acting on a call: one of its two parties, or a trusted service (sweeper, consumer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Caller,
    Callee,
    Service,
}

/// A stored or received name that is not one of the enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct ParseEnumError {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! str_enum {
    ($ty:ty, $kind:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| ParseEnumError { kind: $kind, value: s.to_owned() })
            }
        }
    };
}

str_enum!(CallStatus, "call status");
str_enum!(CallType, "call type");
str_enum!(EndReason, "end reason");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in CallStatus::ALL {
            assert_eq!(s.as_str().parse::<CallStatus>(), Ok(s));
        }
        for t in CallType::ALL {
            assert_eq!(t.as_str().parse::<CallType>(), Ok(t));
        }
        for r in EndReason::ALL {
            assert_eq!(r.as_str().parse::<EndReason>(), Ok(r));
        }
        let err = "video".parse::<CallType>().unwrap_err();
        assert_eq!(err.to_string(), "unknown call type `video`");
    }

    #[test]
    fn terminal_states_are_exactly_ended_rejected_missed() {
        let terminal: Vec<_> = CallStatus::ALL.into_iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [CallStatus::Ended, CallStatus::Rejected, CallStatus::Missed]);
    }
}
