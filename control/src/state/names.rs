//! What a valid name and a WireGuard key look like: the rules the operations
//! apply to what they create and [`super::validate`] to what it reads back,
//! kept in one place below both.

use super::error::StateError;

/// Names of networks, nodes and services: what DNS and interface names take.
pub(crate) fn valid_name(kind: &str, name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::Invalid(format!(
            "invalid {kind} name {name:?}: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// A WireGuard key in base64, as `wg` prints it.
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    v.try_into().ok()
}

pub fn encode_key(k: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(k)
}
