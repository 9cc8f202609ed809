//! Svix / Standard Webhooks signatures, exactly as the official libraries
//! compute them.
//!
//! Signed content is `{id}.{timestamp}.{raw body}`; the signature is
//! HMAC-SHA256 keyed with the base64-decoded secret after `whsec_`, sent as
//! space-separated `v1,<base64>` entries. Any `v1` entry that matches wins,
//! which is how secret rotation works: during a rotation the sender signs with
//! both keys. Verification runs on the raw bytes *before* anything parses
//! them, because re-serialized JSON is not what was signed.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{decode_whsec, Secret};

/// Clock skew accepted in both directions unless configured otherwise (Svix's own value).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Header names, branded first; the unbranded Standard Webhooks names are accepted too.
pub const ID_HEADERS: [&str; 2] = ["svix-id", "webhook-id"];
/// Timestamp header names.
pub const TIMESTAMP_HEADERS: [&str; 2] = ["svix-timestamp", "webhook-timestamp"];
/// Signature header names.
pub const SIGNATURE_HEADERS: [&str; 2] = ["svix-signature", "webhook-signature"];

/// Longest message id we accept; ids become Redis keys.
const MAX_ID_LEN: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// Why a request is not a verified webhook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent (400).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but not usable (400).
    #[error("invalid header {0}")]
    InvalidHeader(&'static str),
    /// The timestamp is older than the tolerance (401).
    #[error("timestamp too old")]
    TimestampTooOld,
    /// The timestamp is further in the future than the tolerance (401).
    #[error("timestamp too far in the future")]
    FutureTimestamp,
    /// No `v1` signature matches any configured secret (401).
    #[error("no matching signature")]
    NoMatchingSignature,
    /// A configured secret is not `whsec_<base64>`.
    #[error("invalid secret: {0}")]
    InvalidSecret(String),
}

/// The webhook headers, looked up by name (case-insensitive in HTTP).
#[derive(Debug, Clone, Copy)]
pub struct WebhookHeaders<'a> {
    /// `svix-id` / `webhook-id`.
    pub id: Option<&'a str>,
    /// `svix-timestamp` / `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `svix-signature` / `webhook-signature`.
    pub signature: Option<&'a str>,
}

impl<'a> WebhookHeaders<'a> {
    /// Picks the headers out of an HTTP header map, branded names first.
    pub fn from_map(h: &'a warp::http::HeaderMap) -> Self {
        let get = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
        };
        Self {
            id: get(ID_HEADERS),
            timestamp: get(TIMESTAMP_HEADERS),
            signature: get(SIGNATURE_HEADERS),
        }
    }
}

/// What verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The message id: stable across the sender's retries, so it is the dedupe key.
    pub id: String,
    /// The signed timestamp, unix seconds.
    pub timestamp: i64,
}

/// Verifies webhooks against one or more secrets.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl Verifier {
    /// A verifier for `secrets` (all `whsec_...`).
    ///
    /// # Errors
    /// A secret is not `whsec_<base64>` or decodes to nothing.
    pub fn new(secrets: &[Secret], tolerance: Duration) -> Result<Self, SignatureError> {
        let keys = secrets
            .iter()
            .map(|s| decode_whsec(s.expose()).map_err(SignatureError::InvalidSecret))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys, tolerance })
    }

    /// Verifies `body` as received against `headers` at time `now` (unix seconds).
    ///
    /// # Errors
    /// See [`SignatureError`]; header problems are checked before the
    /// timestamp, the timestamp before the signature.
    pub fn verify(
        &self,
        headers: WebhookHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<Verified, SignatureError> {
        let id = headers.id.ok_or(SignatureError::MissingHeader("svix-id"))?;
        let ts_text = headers
            .timestamp
            .ok_or(SignatureError::MissingHeader("svix-timestamp"))?;
        let sigs = headers
            .signature
            .ok_or(SignatureError::MissingHeader("svix-signature"))?;
        if id.is_empty()
            || id.len() > MAX_ID_LEN
            || id.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(SignatureError::InvalidHeader("svix-id"));
        }
        let timestamp: i64 = ts_text
            .trim()
            .parse()
            .map_err(|_| SignatureError::InvalidHeader("svix-timestamp"))?;
        if timestamp < 0 {
            return Err(SignatureError::InvalidHeader("svix-timestamp"));
        }
        let tol = self.tolerance.as_secs() as i64;
        if now.saturating_sub(tol) > timestamp {
            return Err(SignatureError::TimestampTooOld);
        }
        if timestamp > now.saturating_add(tol) {
            return Err(SignatureError::FutureTimestamp);
        }
        let candidates: Vec<Vec<u8>> = sigs
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| base64::engine::general_purpose::STANDARD.decode(sig).ok())
            .collect();
        for key in &self.keys {
            let mac = signed_mac(key, id, timestamp, body);
            for sig in &candidates {
                // verify_slice compares in constant time.
                if mac.clone().verify_slice(sig).is_ok() {
                    return Ok(Verified {
                        id: id.to_string(),
                        timestamp,
                    });
                }
            }
        }
        Err(SignatureError::NoMatchingSignature)
    }
}

fn signed_mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any size"),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1,<base64>` signature of `body`, as a sender puts it in the header.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = signed_mac(key, id, timestamp, body).finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Hex HMAC-SHA256 of `body` keyed with the raw `secret`, for senders that
/// sign that way (`resend-signature` style). A `sha256=` prefix is accepted.
pub fn verify_hex_hmac(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let hex_sig = header.trim();
    let hex_sig = hex_sig.strip_prefix("sha256=").unwrap_or(hex_sig);
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> WebhookHeaders<'a> {
        WebhookHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    fn verifier(secrets: &[&str]) -> Verifier {
        let s: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        Verifier::new(&s, DEFAULT_TOLERANCE).unwrap()
    }

    // Vector 1 of reference/resend-svix.md (svix rust test_sign).
    const S1: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID1: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS1: i64 = 1649367553;
    const BODY1: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG1: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn published_vector_one_signs_and_verifies() {
        let key = decode_whsec(S1).unwrap();
        assert_eq!(sign(&key, ID1, TS1, BODY1.as_bytes()), SIG1);
        let v = verifier(&[S1])
            .verify(headers(ID1, &TS1.to_string(), SIG1), BODY1.as_bytes(), TS1)
            .unwrap();
        assert_eq!(v.id, ID1);
        let wrong = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=";
        assert_eq!(
            verifier(&[S1]).verify(headers(ID1, &TS1.to_string(), wrong), BODY1.as_bytes(), TS1),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn published_vector_two_from_the_resend_docs_verifies() {
        let s = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let v = verifier(&[s]).verify(
            headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig),
            body,
            1614265330,
        );
        assert!(v.is_ok(), "{v:?}");
        // One changed byte of the body breaks it: verification is over raw bytes.
        let tampered = br#"{"test":2432232314}"#;
        assert!(verifier(&[s])
            .verify(
                headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig),
                tampered,
                1614265330
            )
            .is_err());
    }

    #[test]
    fn any_v1_entry_matching_any_secret_wins() {
        let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let list = format!("v1a,ignored v2,xyz v1,AAAA {SIG1}");
        let ts = TS1.to_string();
        assert!(verifier(&[other, S1])
            .verify(headers(ID1, &ts, &list), BODY1.as_bytes(), TS1)
            .is_ok());
        assert_eq!(
            verifier(&[other]).verify(headers(ID1, &ts, &list), BODY1.as_bytes(), TS1),
            Err(SignatureError::NoMatchingSignature)
        );
        // Only other versions: nothing to match.
        assert_eq!(
            verifier(&[S1]).verify(
                headers(ID1, &ts, "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="),
                BODY1.as_bytes(),
                TS1
            ),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn tolerance_is_inclusive_in_both_directions() {
        let v = verifier(&[S1]);
        let ts = TS1.to_string();
        let b = BODY1.as_bytes();
        assert!(v.verify(headers(ID1, &ts, SIG1), b, TS1 + 300).is_ok());
        assert!(v.verify(headers(ID1, &ts, SIG1), b, TS1 - 300).is_ok());
        assert_eq!(
            v.verify(headers(ID1, &ts, SIG1), b, TS1 + 301),
            Err(SignatureError::TimestampTooOld)
        );
        assert_eq!(
            v.verify(headers(ID1, &ts, SIG1), b, TS1 - 301),
            Err(SignatureError::FutureTimestamp)
        );
    }

    #[test]
    fn missing_and_garbled_headers_are_named() {
        let v = verifier(&[S1]);
        let b = BODY1.as_bytes();
        let none = WebhookHeaders {
            id: None,
            timestamp: Some("1"),
            signature: Some("v1,x"),
        };
        assert_eq!(
            v.verify(none, b, 1),
            Err(SignatureError::MissingHeader("svix-id"))
        );
        assert_eq!(
            v.verify(headers(ID1, "yesterday", SIG1), b, TS1),
            Err(SignatureError::InvalidHeader("svix-timestamp"))
        );
        assert_eq!(
            v.verify(headers(ID1, "-5", SIG1), b, TS1),
            Err(SignatureError::InvalidHeader("svix-timestamp"))
        );
        assert_eq!(
            v.verify(headers("a b", &TS1.to_string(), SIG1), b, TS1),
            Err(SignatureError::InvalidHeader("svix-id"))
        );
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(Verifier::new(&[Secret::new("v1,abc")], DEFAULT_TOLERANCE).is_err());
        assert!(Verifier::new(&[Secret::new("whsec_")], DEFAULT_TOLERANCE).is_err());
        assert!(Verifier::new(&[Secret::new("whsec_***")], DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn vectors_from_the_official_svix_library_match_both_ways() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/svix_vectors.json")).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for c in cases {
            let secret = c["secret"].as_str().unwrap();
            let id = c["msg_id"].as_str().unwrap();
            let ts = c["timestamp"].as_i64().unwrap();
            let body = c["body"].as_str().unwrap().as_bytes();
            let sig = c["signature"].as_str().unwrap();
            // Our signer produces exactly what the library produced...
            assert_eq!(sign(&decode_whsec(secret).unwrap(), id, ts, body), sig);
            // ...and our verifier accepts the library's signature.
            assert!(verifier(&[secret])
                .verify(headers(id, &ts.to_string(), sig), body, ts)
                .is_ok());
        }
    }

    #[test]
    fn hex_hmac_sources_verify() {
        let body = b"{\"id\":\"evt_1\"}";
        let mut mac = HmacSha256::new_from_slice(b"shared").unwrap();
        mac.update(body);
        let hex_sig = hex::encode(mac.finalize().into_bytes());
        assert!(verify_hex_hmac(b"shared", &hex_sig, body));
        assert!(verify_hex_hmac(
            b"shared",
            &format!("sha256={hex_sig}"),
            body
        ));
        assert!(!verify_hex_hmac(b"other", &hex_sig, body));
        assert!(!verify_hex_hmac(b"shared", "zz", body));
    }
}
