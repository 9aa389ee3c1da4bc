//! Names of everything Videocall keeps in Redis, all prefixed with the cell id so cells can share
//! one Redis.

/// Pub/Sub channel of one user: every relay holding a connection of that user subscribes to it,
/// and each message is one JSON server frame (`{"type": ...}`) to deliver to that user's sockets.
pub fn user_channel(cell_id: &str, user_id: &str) -> String {
    format!("{cell_id}:vc:user:{user_id}")
}

/// Capped, expiring log of one call's signals, for replay after a late join or a reconnect.
pub fn call_log(cell_id: &str, call_id: &str) -> String {
    format!("{cell_id}:vc:call:{call_id}:log")
}

/// Per-call signal sequence counter.
pub fn call_seq(cell_id: &str, call_id: &str) -> String {
    format!("{cell_id}:vc:call:{call_id}:seq")
}

/// On Redis Cluster every name carries a hash tag (`{…}`), so what belongs together lands in one
/// slot: a call's counter, log and signal channel share the call id's slot (one Lua script, one
/// shard), and a user's sharded channel lives in the user id's slot.
pub mod cluster {
    /// Sharded channel of one user: call states and notices pushed to that user.
    pub fn user_channel(cell_id: &str, user_id: &str) -> String {
        format!("{cell_id}:vc:user:{{{user_id}}}")
    }

    /// Sharded channel of one call: its signals, each addressed to a party (`to`).
    pub fn call_channel(cell_id: &str, call_id: &str) -> String {
        format!("{cell_id}:vc:call:{{{call_id}}}:signals")
    }

    pub fn call_log(cell_id: &str, call_id: &str) -> String {
        format!("{cell_id}:vc:call:{{{call_id}}}:log")
    }

    pub fn call_seq(cell_id: &str, call_id: &str) -> String {
        format!("{cell_id}:vc:call:{{{call_id}}}:seq")
    }
}

/// A call's counter as a bus on one Redis (`cluster: false`) or on a cluster spells it.
pub fn call_seq_on(cluster: bool, cell_id: &str, call_id: &str) -> String {
    if cluster { self::cluster::call_seq(cell_id, call_id) } else { call_seq(cell_id, call_id) }
}

/// A call's replay log as a bus on one Redis or on a cluster spells it.
pub fn call_log_on(cluster: bool, cell_id: &str, call_id: &str) -> String {
    if cluster { self::cluster::call_log(cell_id, call_id) } else { call_log(cell_id, call_id) }
}

/// A user's channel as a bus on one Redis or on a cluster spells it.
pub fn user_channel_on(cluster: bool, cell_id: &str, user_id: &str) -> String {
    if cluster { self::cluster::user_channel(cell_id, user_id) } else { user_channel(cell_id, user_id) }
}

/// Sorted set of presence leases: user id → until when (ms of Redis' clock) the user counts as
/// connected to some relay.
pub fn presence(cell_id: &str) -> String {
    format!("{cell_id}:vc:presence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_cell() {
        assert_eq!(user_channel("eu-1", "alice"), "eu-1:vc:user:alice");
        assert_eq!(call_log("eu-1", "c1"), "eu-1:vc:call:c1:log");
        assert_eq!(call_seq("eu-1", "c1"), "eu-1:vc:call:c1:seq");
    }

    #[test]
    fn cluster_names_put_a_call_in_one_slot() {
        assert_eq!(cluster::call_seq("eu-1", "c1"), "eu-1:vc:call:{c1}:seq");
        assert_eq!(cluster::call_log("eu-1", "c1"), "eu-1:vc:call:{c1}:log");
        assert_eq!(cluster::call_channel("eu-1", "c1"), "eu-1:vc:call:{c1}:signals");
        assert_eq!(cluster::user_channel("eu-1", "bob"), "eu-1:vc:user:{bob}");
    }
}
