//! The transition table: given a call's status, a command and who issues it, what happens.
//!
//! Stores apply a [`Decision::Apply`] as one conditional update (`WHERE status = <from>`), so racing
//! commands have exactly one winner; the losers re-read the call and get `AlreadyDone` (their
//! command already took effect) or `Refuse` naming the state that beat them.

use crate::{CallStatus, EndReason, Party};

/// A request to move a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// The callee's device is ringing.
    Ring,
    Answer,
    Reject,
    /// Hang up; before answer it is a cancel (caller) or a reject (callee). `None` means the
    /// natural reason for the state: hangup, cancelled or rejected.
    End(Option<EndReason>),
    /// Nobody answered within the ring timeout (the sweeper); for a queued desk call, within the
    /// queue timeout.
    Miss,
    /// A desk call is offered to an agent (the router, a service): queued -> initiated.
    Route,
    /// The agent a desk call was offered to rejected it or did not answer in time: the call goes
    /// back to its desk's queue (initiated|ringing -> queued), the same call.
    Requeue,
}

/// The state change a command makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    pub to: CallStatus,
    /// Set exactly when `to` is terminal.
    pub reason: Option<EndReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Move the call from its current status.
    Apply(Effect),
    /// This command already took effect: return the call, change and emit nothing.
    AlreadyDone,
    /// The call's current status forbids the command.
    Refuse { current: CallStatus },
    /// This party may never issue this command.
    Forbidden,
    /// The end reason makes no sense here or may not be given by this party.
    BadReason(EndReason),
}

/// Reasons a party may give when it ends a call itself. The rest are decided by the system.
fn party_may_give(reason: EndReason, by: Party) -> bool {
    use EndReason::*;
    match reason {
        Hangup | IceFailed | MediaFailed | Error => true,
        UserOffline | ConnectionLost => by == Party::Service,
        Cancelled | Rejected | Busy | Timeout | NoAgent | Abandoned => false,
    }
}

/// Decides what `command`, issued by `by`, does to a call in `status`.
pub fn decide(status: CallStatus, command: Command, by: Party) -> Decision {
    use CallStatus::*;
    let may = match command {
        Command::Ring | Command::Answer | Command::Reject => by != Party::Caller,
        Command::End(_) => true,
        Command::Miss | Command::Route | Command::Requeue => by == Party::Service,
    };
    if !may {
        return Decision::Forbidden;
    }
    if let Command::End(Some(reason)) = command
        && !party_may_give(reason, by)
    {
        return Decision::BadReason(reason);
    }
    let apply = |to, reason| Decision::Apply(Effect { to, reason });
    match (command, status) {
        (Command::Route, Queued) => apply(Initiated, None),
        (Command::Route, Initiated) => Decision::AlreadyDone,
        (Command::Requeue, Initiated | Ringing) => apply(Queued, None),
        (Command::Requeue, Queued) => Decision::AlreadyDone,
        // Nobody is the callee of a queued call: the customer leaving is abandoning the queue.
        (Command::End(reason), Queued) => {
            let reason = match (by, reason) {
                (Party::Service, Some(given)) => given,
                _ => EndReason::Abandoned,
            };
            apply(Ended, Some(reason))
        }
        (Command::Miss, Queued) => apply(Missed, Some(EndReason::NoAgent)),

        (Command::Ring, Initiated) => apply(Ringing, None),
        (Command::Ring, Ringing) => Decision::AlreadyDone,

        (Command::Answer, Initiated | Ringing) => apply(Active, None),
        (Command::Answer, Active) => Decision::AlreadyDone,

        (Command::Reject, Initiated | Ringing) => apply(Rejected, Some(EndReason::Rejected)),
        (Command::Reject, Rejected) => Decision::AlreadyDone,

        (Command::End(reason), Active) => apply(Ended, Some(reason.unwrap_or(EndReason::Hangup))),
        (Command::End(_), Initiated | Ringing) if by == Party::Callee => apply(Rejected, Some(EndReason::Rejected)),
        (Command::End(reason), Initiated | Ringing) => {
            let reason = match (by, reason) {
                (Party::Service, Some(given)) => given,
                _ => EndReason::Cancelled,
            };
            apply(Ended, Some(reason))
        }
        (Command::End(_), Ended) => Decision::AlreadyDone,
        (Command::End(_), Rejected) if by == Party::Callee => Decision::AlreadyDone,

        (Command::Miss, Initiated | Ringing) => apply(Missed, Some(EndReason::Timeout)),
        (Command::Miss, Missed) => Decision::AlreadyDone,

        (_, current) => Decision::Refuse { current },
    }
}

/// Whom a call is for: a person (the callee named at initiation), or a desk whose agents the
/// router offers it to one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    Direct,
    Desk,
}

/// [`decide`] for a call routed as `routing`. A desk call differs where the agent and the queue
/// are concerned: the agent it rings declining it (reject, or hanging up before answering) puts it
/// back in the queue for the next agent; the customer leaving before an agent answered abandons
/// it; and nobody answering in time misses it for want of an agent.
pub fn decide_for(routing: Routing, status: CallStatus, command: Command, by: Party) -> Decision {
    use CallStatus::*;
    let decision = decide(status, command, by);
    if routing == Routing::Direct {
        return decision;
    }
    let apply = |to, reason| Decision::Apply(Effect { to, reason });
    match decision {
        Decision::Apply(Effect { to: Rejected, .. }) if by == Party::Callee => apply(Queued, None),
        Decision::Apply(Effect { to: Ended, reason: Some(EndReason::Cancelled) }) => {
            apply(Ended, Some(EndReason::Abandoned))
        }
        Decision::Apply(Effect { to: Missed, reason: Some(EndReason::Timeout) }) => {
            apply(Missed, Some(EndReason::NoAgent))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallStatus::*;
    use proptest::prelude::*;

    fn rank(s: CallStatus) -> u8 {
        match s {
            Queued => 0,
            Initiated => 1,
            Ringing => 2,
            Active => 3,
            Ended | Rejected | Missed => 4,
        }
    }

    fn any_status() -> impl Strategy<Value = CallStatus> {
        proptest::sample::select(CallStatus::ALL.to_vec())
    }

    fn any_party() -> impl Strategy<Value = Party> {
        proptest::sample::select(vec![Party::Caller, Party::Callee, Party::Service])
    }

    fn any_command() -> impl Strategy<Value = Command> {
        let reason = proptest::option::of(proptest::sample::select(EndReason::ALL.to_vec()));
        prop_oneof![
            Just(Command::Ring),
            Just(Command::Answer),
            Just(Command::Reject),
            Just(Command::Miss),
            Just(Command::Route),
            Just(Command::Requeue),
            reason.prop_map(Command::End),
        ]
    }

    proptest! {
        #[test]
        fn terminal_states_never_change(s in any_status(), c in any_command(), p in any_party()) {
            if s.is_terminal() {
                prop_assert!(!matches!(decide(s, c, p), Decision::Apply(_)));
            }
        }

        #[test]
        fn calls_only_move_forward_and_terminal_means_reason(
            s in any_status(), c in any_command(), p in any_party()
        ) {
            if let Decision::Apply(e) = decide(s, c, p) {
                // Only a requeue goes back: to the queue, the call not yet answered.
                if c == Command::Requeue {
                    prop_assert_eq!(e.to, Queued);
                    prop_assert!(rank(s) < rank(Active));
                } else {
                    prop_assert!(rank(e.to) > rank(s), "{s:?} -> {:?}", e.to);
                }
                prop_assert_eq!(e.to.is_terminal(), e.reason.is_some());
            }
        }

        #[test]
        fn repeating_an_applied_command_is_already_done(
            s in any_status(), c in any_command(), p in any_party()
        ) {
            if let Decision::Apply(e) = decide(s, c, p) {
                prop_assert_eq!(decide(e.to, c, p), Decision::AlreadyDone);
            }
        }

        #[test]
        fn refusals_name_the_current_state(s in any_status(), c in any_command(), p in any_party()) {
            if let Decision::Refuse { current } = decide(s, c, p) {
                prop_assert_eq!(current, s);
            }
        }

        /// Any interleaving of commands from any parties: at most one command ever ends the call,
        /// the call is answered at most once, and an answered call is never rejected or missed.
        #[test]
        fn any_sequence_has_one_final_winner(
            steps in proptest::collection::vec((any_command(), any_party()), 0..24)
        ) {
            let mut status = Initiated;
            let (mut finals, mut answers) = (0, 0);
            for (c, p) in steps {
                if let Decision::Apply(e) = decide(status, c, p) {
                    if e.to.is_terminal() { finals += 1; }
                    if e.to == Active { answers += 1; }
                    if status == Active {
                        prop_assert_eq!(e.to, Ended);
                    }
                    status = e.to;
                }
            }
            prop_assert!(finals <= 1);
            prop_assert!(answers <= 1);
        }
    }

    #[test]
    fn the_happy_path() {
        assert_eq!(
            decide(Initiated, Command::Ring, Party::Callee),
            Decision::Apply(Effect { to: Ringing, reason: None })
        );
        assert_eq!(
            decide(Ringing, Command::Answer, Party::Callee),
            Decision::Apply(Effect { to: Active, reason: None })
        );
        assert_eq!(
            decide(Active, Command::End(None), Party::Caller),
            Decision::Apply(Effect { to: Ended, reason: Some(EndReason::Hangup) })
        );
    }

    #[test]
    fn ending_before_answer_is_cancel_for_the_caller_and_reject_for_the_callee() {
        assert_eq!(
            decide(Ringing, Command::End(None), Party::Caller),
            Decision::Apply(Effect { to: Ended, reason: Some(EndReason::Cancelled) })
        );
        assert_eq!(
            decide(Ringing, Command::End(None), Party::Callee),
            Decision::Apply(Effect { to: Rejected, reason: Some(EndReason::Rejected) })
        );
        assert_eq!(
            decide(Initiated, Command::End(Some(EndReason::UserOffline)), Party::Service),
            Decision::Apply(Effect { to: Ended, reason: Some(EndReason::UserOffline) })
        );
    }

    #[test]
    fn the_caller_cannot_answer_ring_or_reject_and_only_services_miss() {
        for c in [Command::Ring, Command::Answer, Command::Reject, Command::Miss] {
            assert_eq!(decide(Ringing, c, Party::Caller), Decision::Forbidden);
        }
        assert_eq!(decide(Ringing, Command::Miss, Party::Callee), Decision::Forbidden);
        assert_eq!(
            decide(Ringing, Command::Miss, Party::Service),
            Decision::Apply(Effect { to: Missed, reason: Some(EndReason::Timeout) })
        );
    }

    #[test]
    fn system_reasons_cannot_be_given_by_users() {
        assert_eq!(
            decide(Active, Command::End(Some(EndReason::Timeout)), Party::Caller),
            Decision::BadReason(EndReason::Timeout)
        );
        assert_eq!(
            decide(Active, Command::End(Some(EndReason::UserOffline)), Party::Callee),
            Decision::BadReason(EndReason::UserOffline)
        );
        assert_eq!(
            decide(Active, Command::End(Some(EndReason::IceFailed)), Party::Callee),
            Decision::Apply(Effect { to: Ended, reason: Some(EndReason::IceFailed) })
        );
    }

    #[test]
    fn losers_of_a_race_are_refused_with_the_winning_state() {
        assert_eq!(decide(Active, Command::Reject, Party::Callee), Decision::Refuse { current: Active });
        assert_eq!(decide(Rejected, Command::Answer, Party::Callee), Decision::Refuse { current: Rejected });
        assert_eq!(decide(Missed, Command::Answer, Party::Callee), Decision::Refuse { current: Missed });
        assert_eq!(decide(Active, Command::Miss, Party::Service), Decision::Refuse { current: Active });
    }

    #[test]
    fn desk_calls_go_back_to_the_queue_when_the_agent_declines() {
        use Routing::Desk;
        assert_eq!(
            decide(Queued, Command::Route, Party::Service),
            Decision::Apply(Effect { to: Initiated, reason: None })
        );
        assert_eq!(decide(Queued, Command::Route, Party::Caller), Decision::Forbidden);
        for (status, command) in
            [(Initiated, Command::Reject), (Ringing, Command::Reject), (Ringing, Command::End(None))]
        {
            assert_eq!(
                decide_for(Desk, status, command, Party::Callee),
                Decision::Apply(Effect { to: Queued, reason: None }),
                "{command:?} in {status:?}"
            );
        }
        assert_eq!(
            decide_for(Desk, Ringing, Command::Requeue, Party::Service),
            Decision::Apply(Effect { to: Queued, reason: None })
        );
        assert_eq!(decide_for(Desk, Active, Command::Requeue, Party::Service), Decision::Refuse { current: Active });
        // The customer leaving before an agent answered abandons the call, queued or ringing.
        for status in [Queued, Initiated, Ringing] {
            assert_eq!(
                decide_for(Desk, status, Command::End(None), Party::Caller),
                Decision::Apply(Effect { to: Ended, reason: Some(EndReason::Abandoned) })
            );
        }
        for status in [Queued, Ringing] {
            assert_eq!(
                decide_for(Desk, status, Command::Miss, Party::Service),
                Decision::Apply(Effect { to: Missed, reason: Some(EndReason::NoAgent) })
            );
        }
        // Answered, a desk call is a call like any other.
        assert_eq!(
            decide_for(Desk, Active, Command::End(None), Party::Callee),
            Decision::Apply(Effect { to: Ended, reason: Some(EndReason::Hangup) })
        );
        assert_eq!(
            decide_for(Routing::Direct, Ringing, Command::Reject, Party::Callee),
            Decision::Apply(Effect { to: Rejected, reason: Some(EndReason::Rejected) })
        );
        assert_eq!(
            decide(Queued, Command::End(Some(EndReason::Abandoned)), Party::Caller),
            Decision::BadReason(EndReason::Abandoned)
        );
    }
}
