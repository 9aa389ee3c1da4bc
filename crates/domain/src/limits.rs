//! Input limits that keep a call row small and predictable.

/// Longest accepted client idempotency key.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
pub const MAX_METADATA_ENTRIES: usize = 16;
pub const MAX_METADATA_KEY_BYTES: usize = 64;
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
/// Keys the gateway sets itself on a call that takes up a support offer; a client may not forge
/// the link to a ticket.
pub const RESERVED_METADATA_KEYS: [&str; 2] = ["ticket_id", "support_offer_id"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata has {0} entries, at most {MAX_METADATA_ENTRIES} are allowed")]
    TooManyEntries(usize),
    #[error("metadata key `{0}` is empty or longer than {MAX_METADATA_KEY_BYTES} bytes")]
    BadKey(String),
    #[error("metadata value of `{0}` is longer than {MAX_METADATA_VALUE_BYTES} bytes")]
    ValueTooLong(String),
    #[error("metadata key `{0}` is reserved: it is set from a support offer (support_offer_id)")]
    Reserved(String),
}

/// Checks client metadata against the limits above.
pub fn validate_metadata<'a>(
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), MetadataError> {
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(MetadataError::TooManyEntries(entries.len()));
    }
    for (key, value) in entries {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_BYTES {
            let shown: String = key.chars().take(MAX_METADATA_KEY_BYTES).collect();
            return Err(MetadataError::BadKey(shown));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(MetadataError::ValueTooLong(key.clone()));
        }
        if RESERVED_METADATA_KEYS.contains(&key.as_str()) {
            return Err(MetadataError::Reserved(key.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn accepts_metadata_at_the_limits() {
        let m: HashMap<String, String> =
            (0..MAX_METADATA_ENTRIES).map(|i| (format!("{i:0>64}"), "v".repeat(MAX_METADATA_VALUE_BYTES))).collect();
        assert_eq!(validate_metadata(m.iter()), Ok(()));
    }

    #[test]
    fn refuses_metadata_past_the_limits() {
        let many: HashMap<String, String> =
            (0..=MAX_METADATA_ENTRIES).map(|i| (i.to_string(), String::new())).collect();
        assert_eq!(validate_metadata(many.iter()), Err(MetadataError::TooManyEntries(17)));

        let long_value = HashMap::from([("k".to_owned(), "v".repeat(513))]);
        assert_eq!(validate_metadata(long_value.iter()), Err(MetadataError::ValueTooLong("k".into())));

        for key in RESERVED_METADATA_KEYS {
            let forged = HashMap::from([(key.to_owned(), "T-1".to_owned())]);
            assert_eq!(validate_metadata(forged.iter()), Err(MetadataError::Reserved(key.into())));
        }

        let empty_key = HashMap::from([(String::new(), "v".to_owned())]);
        assert!(matches!(validate_metadata(empty_key.iter()), Err(MetadataError::BadKey(_))));
    }
}
