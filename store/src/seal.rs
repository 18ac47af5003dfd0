//! Sealing personal data (DESIGN §3.9): XChaCha20-Poly1305 under a per-subject key,
//! a random 192-bit nonce per payload, and the event id as associated data, so a
//! sealed payload cannot be moved to another event unnoticed.
//! Sealed bytes are `nonce (24) ‖ ciphertext ‖ tag (16)`.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, Generate, Key, KeyInit, Nonce, Payload};
use uuid::Uuid;

const NONCE_LEN: usize = 24;

/// A subject's key, as kept in the `keys` tree.
pub(crate) type SubjectKey = [u8; 32];

/// A fresh random key.
pub(crate) fn new_key() -> SubjectKey {
    let key = Key::<XChaCha20Poly1305>::generate();
    let mut bytes = [0; 32];
    bytes.copy_from_slice(&key);
    bytes
}

/// Seal `plain` for the event `event_id`.
pub(crate) fn seal(key: &SubjectKey, event_id: Uuid, plain: &[u8]) -> Result<Vec<u8>, String> {
    let cipher = XChaCha20Poly1305::new(&Key::<XChaCha20Poly1305>::from(*key));
    let nonce = Nonce::<XChaCha20Poly1305>::generate();
    let sealed = cipher
        .encrypt(&nonce, Payload { msg: plain, aad: event_id.as_bytes() })
        .map_err(|_| "sealing failed".to_owned())?;
    let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    Ok(bytes)
}

/// Open what [`seal`] made; an error when the bytes or the key are wrong.
pub(crate) fn open(key: &SubjectKey, event_id: Uuid, sealed: &[u8]) -> Result<Vec<u8>, String> {
    if sealed.len() < NONCE_LEN {
        return Err("sealed payload too short".to_owned());
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::<XChaCha20Poly1305>::try_from(nonce).map_err(|_| "bad nonce".to_owned())?;
    let cipher = XChaCha20Poly1305::new(&Key::<XChaCha20Poly1305>::from(*key));
    cipher
        .decrypt(&nonce, Payload { msg: ciphertext, aad: event_id.as_bytes() })
        .map_err(|_| "sealed payload does not open with the subject's key".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_opens_with_its_key_and_event_only() {
        let key = new_key();
        let event_id = Uuid::from_u128(42);
        let sealed = seal(&key, event_id, b"ada@example.com").expect("seals");
        assert!(!sealed.windows(15).any(|window| window == b"ada@example.com"));
        assert_eq!(open(&key, event_id, &sealed).expect("opens"), b"ada@example.com");
        assert!(open(&new_key(), event_id, &sealed).is_err());
        assert!(open(&key, Uuid::from_u128(43), &sealed).is_err());
        assert!(open(&key, event_id, &sealed[..10]).is_err());
    }

    #[test]
    fn two_seals_of_one_payload_differ() {
        let key = new_key();
        let event_id = Uuid::from_u128(1);
        assert_ne!(seal(&key, event_id, b"x").expect("seals"), seal(&key, event_id, b"x").expect("seals"));
    }
}
