//! Bearer tokens of the HTTP API: a principal and an expiry, signed with
//! a key derived from the masters' shared secret, so that every master
//! of a cluster accepts them and a failover does not log anyone out.
//!
//! `stoa1.<principal, hex>.<expiry, unix seconds>.<nonce, hex>.<HMAC-SHA256, hex>`
//! (tokens made before the nonce, without it, are still accepted).
//! Signed, not stored: nothing to replicate, nothing to look up; a token
//! ends at its expiry, or when it is revoked (`stoa revoke --token`: the
//! registry keeps its signature). The nonce makes every token its own, so
//! that revoking one revokes no other made in the same second.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// The longest principal a token carries.
const MAX_PRINCIPAL: usize = 128;

#[derive(Clone)]
pub struct TokenKey(Hmac<Sha256>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not one this cluster issues (expected stoa1.…)")]
    Malformed,
    #[error(
        "the token's signature does not match: it was not issued by this cluster, or was altered"
    )]
    BadSignature,
    #[error("the token expired at {0} (unix seconds)")]
    Expired(u64),
    #[error("invalid principal {0:?}: give 1-{MAX_PRINCIPAL} letters, digits or -_.@ characters")]
    BadPrincipal(String),
}

impl TokenKey {
    /// The key for `secret`, the masters' shared secret (never the
    /// secret itself: another use of it cannot be turned into tokens).
    pub fn derive(secret: &[u8; 32]) -> TokenKey {
        TokenKey(stoa_transport::derived_key(secret, "HTTP API token key"))
    }

    fn sign(&self, body: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(body.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A token for `principal` valid until `expires_unix`.
    pub fn mint(&self, principal: &str, expires_unix: u64) -> Result<String, TokenError> {
        use rand_core::TryRngCore as _;
        check_principal(principal)?;
        let mut nonce = [0u8; 8];
        rand_core::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| TokenError::Malformed)?;
        let body = format!(
            "stoa1.{}.{expires_unix}.{}",
            hex::encode(principal),
            hex::encode(nonce)
        );
        let signature = self.sign(&body);
        Ok(format!("{body}.{signature}"))
    }

    /// The principal `token` names, if it is genuine and not expired at
    /// `now_unix`.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<String, TokenError> {
        let (body, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut parts = body.split('.');
        // The nonce is optional: tokens made before it have none.
        let (Some("stoa1"), Some(principal), Some(expires), _nonce, None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let signature = hex::decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.0.clone();
        mac.update(body.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if now_unix >= expires {
            return Err(TokenError::Expired(expires));
        }
        let principal = hex::decode(principal)
            .ok()
            .and_then(|p| String::from_utf8(p).ok())
            .ok_or(TokenError::Malformed)?;
        check_principal(&principal)?;
        Ok(principal)
    }
}

fn check_principal(p: &str) -> Result<(), TokenError> {
    let ok = !p.is_empty()
        && p.len() <= MAX_PRINCIPAL
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadPrincipal(p.to_string()))
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_principal_until_it_expires() {
        let key = TokenKey::derive(&[1; 32]);
        let token = key.mint("team-a", 1_000).expect("mints");
        assert_eq!(key.verify(&token, 999), Ok("team-a".to_string()));
        assert_eq!(key.verify(&token, 1_000), Err(TokenError::Expired(1_000)));
    }

    #[test]
    fn forged_altered_and_foreign_tokens_are_refused() {
        let key = TokenKey::derive(&[1; 32]);
        let other = TokenKey::derive(&[2; 32]);
        let token = key.mint("team-a", 1_000).expect("mints");
        assert_eq!(other.verify(&token, 0), Err(TokenError::BadSignature));
        // The principal changed to the operator's, signature kept.
        let forged = token.replacen(&hex::encode("team-a"), &hex::encode("operator"), 1);
        assert_eq!(key.verify(&forged, 0), Err(TokenError::BadSignature));
        let later = token.replacen(".1000.", ".9999.", 1);
        assert_eq!(key.verify(&later, 0), Err(TokenError::BadSignature));
        for junk in ["", "abc", "stoa1.x.y", "stoa2.00.1.00", "stoa1.zz.1.zz"] {
            assert!(key.verify(junk, 0).is_err(), "{junk}");
        }
        assert!(matches!(
            key.mint("bad name", 1),
            Err(TokenError::BadPrincipal(_))
        ));
    }
}
