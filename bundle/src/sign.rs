//! minisign keys and signatures.
//!
//! Keys and signatures are in minisign's formats, so the stock `minisign`
//! tool verifies our bundles (`minisign -Vm manifest.json -p key.pub`) and our
//! signer accepts password-less keys made by `minisign -G -W`.
//!
//! Signatures are minisign's prehashed Ed25519 (`ED`: Ed25519 over the
//! BLAKE2b-512 of the file). We compute them with `ed25519-dalek`, which signs
//! deterministically as RFC 8032 specifies, because the `minisign` crate adds
//! random noise to every signature and a bundle must be byte-identical for
//! identical inputs. Key generation, public-key parsing and verification use
//! the `minisign` crate.

use std::io::Cursor;
use std::path::Path;

use blake2::Digest;
use ct_codecs::{Base64, Decoder, Encoder};
use ed25519_dalek::Signer as _;

use crate::BundleError;

/// The untrusted comment neoc writes, the same as the stock tool's default, so
/// a bundle re-signed with `minisign -S` keeps the canonical form.
pub const UNTRUSTED_COMMENT: &str = "signature from minisign secret key";

const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

/// A secret key able to sign manifests.
pub struct SigningKey {
    key_id: [u8; 8],
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", key_id_string(&self.key_id))
    }
}

/// A public key trusted to sign bundles.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    key: minisign::PublicKey,
    raw: [u8; 32],
    id: String,
}

/// Prints a key id the way `minisign` does (hex of the little-endian u64).
pub fn key_id_string(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// Generates a password-less key pair; returns (secret key file, public key file) contents.
pub fn generate_keypair() -> Result<(String, String), BundleError> {
    let kp = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| BundleError::Key { path: "<new key>".into(), reason: e.to_string() })?;
    let sk = kp
        .sk
        .to_box(Some("neoc secret key (no password)"))
        .map_err(|e| BundleError::Key { path: "<new key>".into(), reason: e.to_string() })?
        .into_string();
    let pk =
        kp.pk.to_box().map_err(|e| BundleError::Key { path: "<new key>".into(), reason: e.to_string() })?.into_string();
    Ok((sk, pk))
}

impl SigningKey {
    /// Loads a minisign secret key file (ours, or `minisign -G -W`).
    pub fn from_file(path: &Path) -> Result<SigningKey, BundleError> {
        let text = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        SigningKey::from_text(&text).map_err(|reason| BundleError::Key { path: path.into(), reason })
    }

    pub fn from_text(text: &[u8]) -> Result<SigningKey, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not a minisign secret key (not text)".to_string())?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or("empty key file")?;
        let b64 =
            if first.starts_with("untrusted comment:") { lines.next().ok_or("key line is missing")? } else { first };
        let raw = Base64::decode_to_vec(b64, None)
            .map_err(|_| "not a minisign secret key (the key line is not base64)".to_string())?;
        if raw.len() != SECRET_KEY_LEN {
            return Err(if raw.len() == 42 {
                "this is a public key; --key wants the secret key (.key)".to_string()
            } else {
                format!("not a minisign secret key ({} bytes, expected {SECRET_KEY_LEN})", raw.len())
            });
        }
        if &raw[0..2] != b"Ed" {
            return Err("not an Ed25519 minisign secret key".into());
        }
        match &raw[2..4] {
            [0, 0] => {}
            b"Sc" => {
                return Err("the secret key is password-protected, which neoc cannot use non-interactively\nhint: create a password-less key with `neoc keygen -o PREFIX` or `minisign -G -W`".into())
            }
            _ => return Err("unknown key derivation in secret key".into()),
        }
        let keynum_off = 2 + 2 + 2 + 32 + 8 + 8;
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&raw[keynum_off..keynum_off + 8]);
        let sk = &raw[keynum_off + 8..keynum_off + 8 + 64];
        let chk = &raw[keynum_off + 72..keynum_off + 72 + 32];
        // checksum: BLAKE2b-256(sig_alg || keynum || sk), as minisign computes it;
        // minisign 0.11 leaves it zero in password-less (-W) keys. Either way the
        // key's public half is checked against its seed below.
        let mut h = blake2::Blake2b::<blake2::digest::consts::U32>::new();
        h.update(&raw[0..2]);
        h.update(key_id);
        h.update(sk);
        if chk.iter().any(|b| *b != 0) && h.finalize().as_slice() != chk {
            return Err("secret key checksum mismatch: the key file is corrupted".into());
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&sk[..32]);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes() != &sk[32..64] {
            return Err("secret key is inconsistent (its public half does not match): the key file is corrupted".into());
        }
        Ok(SigningKey { key_id, key })
    }

    pub fn key_id(&self) -> String {
        key_id_string(&self.key_id)
    }

    /// The public key, in minisign's `.pub` file format.
    pub fn public_key_file(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(self.key.verifying_key().as_bytes());
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id(),
            Base64::encode_to_string(&raw).expect("base64")
        )
    }

    /// A plain, deterministic Ed25519 signature over `msg` (for DSSE
    /// envelopes, which sign their pre-authentication encoding directly).
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Signs `data` (prehashed, deterministic); returns the `.minisig` file contents.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> String {
        assert!(!trusted_comment.contains('\n') && trusted_comment.trim() == trusted_comment);
        let prehash = blake2::Blake2b512::digest(data);
        let sig = self.key.sign(&prehash).to_bytes();
        let mut sig_line = Vec::with_capacity(74);
        sig_line.extend_from_slice(b"ED");
        sig_line.extend_from_slice(&self.key_id);
        sig_line.extend_from_slice(&sig);
        let mut global = sig.to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_sig = self.key.sign(&global).to_bytes();
        format!(
            "untrusted comment: {UNTRUSTED_COMMENT}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            Base64::encode_to_string(&sig_line).expect("base64"),
            Base64::encode_to_string(global_sig).expect("base64"),
        )
    }
}

impl TrustedKey {
    /// Loads a minisign public key: a `.pub` file, or a file holding only the
    /// base64 key line (`minisign -P`'s argument).
    pub fn from_file(path: &Path) -> Result<TrustedKey, BundleError> {
        let text = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        TrustedKey::from_text(&text).map_err(|reason| BundleError::Key { path: path.into(), reason })
    }

    pub fn from_text(text: &[u8]) -> Result<TrustedKey, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not a minisign public key (not text)".to_string())?;
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let b64 = match lines.as_slice() {
            [one] => *one,
            [comment, key] if comment.starts_with("untrusted comment:") => *key,
            _ => return Err("not a minisign public key (expected a comment line and a key line)".into()),
        };
        let raw = Base64::decode_to_vec(b64, None).map_err(|_| "not a minisign public key (not base64)".to_string())?;
        if raw.len() == SECRET_KEY_LEN {
            return Err("this is a secret key; pass the public key (.pub)".into());
        }
        let key = minisign::PublicKey::from_base64(b64).map_err(|e| format!("not a minisign public key: {e}"))?;
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&raw[10..42]);
        Ok(TrustedKey { id: key_id_string(&raw[2..10]), raw: pk, key })
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn ed25519(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Checks a plain Ed25519 signature (no prehash) over `msg`, as
    /// [`SigningKey::sign_raw`] makes them for in-toto/DSSE envelopes.
    pub fn verify_raw(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&self.raw) else { return false };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else { return false };
        vk.verify_strict(msg, &sig).is_ok()
    }
}

/// Checks a `.minisig` file over `data` against a set of trusted keys.
///
/// Beyond the cryptographic check, the signature file must be in canonical
/// form (neoc's untrusted comment, canonical base64, one trailing newline), so
/// that no byte of it can change without the bundle being refused. Returns the
/// id of the key that signed and the trusted comment.
pub fn verify(data: &[u8], signature: &[u8], trusted: &[TrustedKey]) -> Result<(String, String), BundleError> {
    let text =
        std::str::from_utf8(signature).map_err(|_| BundleError::BadSignature("signature file is not text".into()))?;
    let sig_box = minisign::SignatureBox::from_string(text)
        .map_err(|e| BundleError::BadSignature(format!("malformed signature file: {e}")))?;
    if sig_box.to_string() != text || sig_box.untrusted_comment().ok().as_deref() != Some(UNTRUSTED_COMMENT) {
        return Err(BundleError::NotCanonical(
            "manifest.json.minisig is not in canonical form (its comment or encoding was changed)".into(),
        ));
    }
    if !sig_box.is_prehashed() {
        return Err(BundleError::BadSignature("legacy (non-prehashed) signatures are not accepted".into()));
    }
    let found = key_id_string(sig_box.keynum());
    let key = trusted.iter().find(|k| k.id == found).ok_or_else(|| BundleError::UntrustedKey {
        found: found.clone(),
        trusted: trusted.iter().map(|k| k.id.clone()).collect(),
    })?;
    minisign::verify(&key.key, &sig_box, Cursor::new(data), true, false, false)
        .map_err(|e| BundleError::BadSignature(e.to_string()))?;
    let comment = sig_box.trusted_comment().map_err(|e| BundleError::BadSignature(e.to_string()))?;
    Ok((found, comment))
}

/// Reads a `.minisig` file's key id and trusted comment without checking it.
pub fn inspect(signature: &[u8]) -> Result<(String, String), BundleError> {
    let text =
        std::str::from_utf8(signature).map_err(|_| BundleError::BadSignature("signature file is not text".into()))?;
    let sig_box = minisign::SignatureBox::from_string(text)
        .map_err(|e| BundleError::BadSignature(format!("malformed signature file: {e}")))?;
    let comment = sig_box.trusted_comment().map_err(|e| BundleError::BadSignature(e.to_string()))?;
    Ok((key_id_string(sig_box.keynum()), format!("{comment} (signature NOT checked)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SigningKey, TrustedKey) {
        let (sk, _pk) = generate_keypair().unwrap();
        let sk = SigningKey::from_text(sk.as_bytes()).unwrap();
        let pk = TrustedKey::from_text(sk.public_key_file().as_bytes()).unwrap();
        (sk, pk)
    }

    #[test]
    fn sign_then_verify_and_deterministic() {
        let (sk, pk) = pair();
        let a = sk.sign(b"hello", "neoc test");
        assert_eq!(a, sk.sign(b"hello", "neoc test"));
        let (id, comment) = verify(b"hello", a.as_bytes(), std::slice::from_ref(&pk)).unwrap();
        assert_eq!(id, sk.key_id());
        assert_eq!(comment, "neoc test");
        assert!(matches!(verify(b"hellO", a.as_bytes(), &[pk]), Err(BundleError::BadSignature(_))));
    }

    #[test]
    fn crate_generated_public_key_matches_ours() {
        let (sk_text, pk_text) = generate_keypair().unwrap();
        let sk = SigningKey::from_text(sk_text.as_bytes()).unwrap();
        let pk = TrustedKey::from_text(pk_text.as_bytes()).unwrap();
        assert_eq!(pk.key_id(), sk.key_id());
        verify(b"x", sk.sign(b"x", "c").as_bytes(), &[pk]).unwrap();
    }

    #[test]
    fn wrong_key_is_named() {
        let (sk, _) = pair();
        let (_, other) = pair();
        let err = verify(b"x", sk.sign(b"x", "c").as_bytes(), &[other]).unwrap_err();
        assert!(matches!(err, BundleError::UntrustedKey { .. }), "{err}");
    }

    #[test]
    fn keys_mixed_up_or_corrupted_are_explained() {
        let (sk_text, pk_text) = generate_keypair().unwrap();
        assert!(SigningKey::from_text(pk_text.as_bytes()).unwrap_err().contains("public key"));
        assert!(TrustedKey::from_text(sk_text.as_bytes()).unwrap_err().contains("secret key"));
        let mut bad = sk_text.clone().into_bytes();
        let pos = bad.iter().rposition(|b| *b == b'A' || *b == b'Q').unwrap();
        bad[pos] = if bad[pos] == b'A' { b'B' } else { b'R' };
        assert!(SigningKey::from_text(&bad).is_err());
        assert!(SigningKey::from_text(b"").is_err());
        assert!(SigningKey::from_text(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn any_change_to_the_signature_file_is_refused() {
        let (sk, pk) = pair();
        let sig = sk.sign(b"data", "neoc bundle").into_bytes();
        for i in 0..sig.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut s = sig.clone();
                s[i] ^= flip;
                assert!(verify(b"data", &s, std::slice::from_ref(&pk)).is_err(), "byte {i} ^ {flip:#x} accepted");
            }
        }
    }
}
