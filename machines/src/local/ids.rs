//! Random ids in the formats Fly uses for machines, instances and events.

use rand::Rng;

/// Alphabet of ULIDs (Crockford base32), which Fly uses for instance and event ids.
const ULID_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Returns a machine id: 14 lowercase hex characters.
pub(crate) fn machine_id() -> String {
    let value: u64 = rand::rng().random_range(0..1u64 << 56);
    format!("{value:014x}")
}

/// Returns an instance id: 26 ULID characters.
pub(crate) fn instance_id() -> String {
    ulid_like()
}

/// Returns an event id: 26 ULID characters.
pub(crate) fn event_id() -> String {
    ulid_like()
}

/// 26 random characters from the ULID alphabet; random rather than time-ordered.
fn ulid_like() -> String {
    let mut rng = rand::rng();
    (0..26)
        .map(|_| char::from(ULID_ALPHABET[rng.random_range(0..ULID_ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_fourteen_hex_chars() {
        for _ in 0..100 {
            let id = machine_id();
            assert_eq!(id.len(), 14, "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
    }

    #[test]
    fn instance_id_uses_ulid_alphabet() {
        let id = instance_id();
        assert_eq!(id.len(), 26);
        assert!(id.bytes().all(|b| ULID_ALPHABET.contains(&b)), "{id}");
    }
}
