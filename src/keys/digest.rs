//! [`Digest`]: a token's SHA-256, compared in constant time, and the hasher
//! that places it in the key set's map (see the module above on timing).

use std::fmt;
use std::hash::{Hash, Hasher};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// A SHA-256 digest of a token. Equality is constant-time.
#[derive(Clone, Copy, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Hashes a token.
    pub fn of(token: &[u8]) -> Self {
        Digest(Sha256::digest(token).into())
    }

    /// Wraps raw digest bytes (from a `sha256:<hex>` key line).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The lowercase hex form, as written in a key file after `sha256:`.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl PartialEq for Digest {
    /// Constant-time: the four 64-bit words are XORed and ORed together with
    /// no data-dependent branch, and `subtle` compares the result with zero.
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u64;
        for (a, b) in self.0.chunks_exact(8).zip(other.0.chunks_exact(8)) {
            let mut wa = [0u8; 8];
            let mut wb = [0u8; 8];
            wa.copy_from_slice(a);
            wb.copy_from_slice(b);
            diff |= u64::from_ne_bytes(wa) ^ u64::from_ne_bytes(wb);
        }
        diff.ct_eq(&0).into()
    }
}

impl Hash for Digest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(prefix));
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not the secret, but there is no reason to print it either.
        f.write_str("Digest(..)")
    }
}

/// Hasher for [`Digest`] keys: the digest is already uniformly distributed.
#[derive(Default)]
pub(super) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than `Digest` is hashed; stay correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
