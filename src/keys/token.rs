//! Keys in tokengate's own format, which secret scanners recognise:
//! `tg_`, 32 base62 characters from the OS's CSPRNG, then 6 base62
//! characters of the CRC32 (IEEE, as zlib's) of those 32, left-padded with
//! `0` — GitHub's scheme for its tokens. A presented token in this shape
//! whose checksum fails is refused before it is hashed.

use zeroize::Zeroizing;

/// The prefix of a generated key.
pub(crate) const PREFIX: &str = "tg_";
/// Random characters after the prefix.
const RANDOM: usize = 32;
/// Checksum characters after those.
const CHECKSUM: usize = 6;
/// The length of a generated key.
pub(crate) const LENGTH: usize = PREFIX.len() + RANDOM + CHECKSUM;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key; `Err` if the OS has no randomness to give.
pub(crate) fn generate() -> Result<Zeroizing<String>, getrandom::Error> {
    let mut out = Zeroizing::new(String::with_capacity(LENGTH));
    out.push_str(PREFIX);
    let mut pool = Zeroizing::new([0u8; 64]);
    while out.len() < PREFIX.len() + RANDOM {
        getrandom::fill(&mut pool[..])?;
        // Rejection sampling: 248 = 4 × 62, so every character is as likely.
        for &b in pool.iter().filter(|&&b| b < 248) {
            if out.len() == PREFIX.len() + RANDOM {
                break;
            }
            out.push(char::from(BASE62[usize::from(b % 62)]));
        }
    }
    let sum = checksum(&out.as_bytes()[PREFIX.len()..]);
    out.push_str(std::str::from_utf8(&sum).expect("base62 digits are ASCII"));
    Ok(out)
}

/// The 6 base62 characters of the CRC32 of `random`, most significant
/// first, left-padded with `0` (62⁶ > 2³²).
fn checksum(random: &[u8]) -> [u8; CHECKSUM] {
    let mut n = crc32fast::hash(random);
    let mut out = [b'0'; CHECKSUM];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Whether `token` has the shape of a generated key but not its checksum
/// (a typo, or a guess): refused without hashing. Tokens of any other shape
/// are not this format's, and are checked as they are.
#[inline]
pub(crate) fn bad_checksum(token: &[u8]) -> bool {
    if token.len() != LENGTH || !token.starts_with(PREFIX.as_bytes()) {
        return false;
    }
    let (random, sum) = token[PREFIX.len()..].split_at(RANDOM);
    if !token[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    checksum(random) != sum
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_keys_have_the_format_and_pass_their_checksum() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let key = generate().unwrap();
            assert_eq!(key.len(), LENGTH);
            assert!(key.starts_with("tg_"));
            assert!(key[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(!bad_checksum(key.as_bytes()));
            assert!(seen.insert(key.to_string()), "a key came twice");
        }
    }

    /// Against Python's `zlib.crc32` and a base62 written apart:
    /// `tg_` + `0`×32 + the checksum is a valid key.
    #[test]
    fn the_checksum_is_zlibs_crc32_in_base62() {
        let random = [b'0'; 32];
        assert_eq!(crc32fast::hash(&random), 2700251856);
        assert_eq!(&checksum(&random), b"2wjyrI");
        assert_eq!(&checksum(b"abcdefghijklmnopqrstuvwxyzABCDEF"), b"1mVgZW");
        assert_eq!(&checksum(b""), b"000000", "crc32 of nothing is 0");
        let key = format!("tg_{}2wjyrI", "0".repeat(32));
        assert!(!bad_checksum(key.as_bytes()));
    }

    #[test]
    fn a_changed_character_fails_the_checksum_other_shapes_are_not_judged() {
        let key = generate().unwrap();
        let mut typo = key.as_bytes().to_vec();
        typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
        assert!(bad_checksum(&typo));
        let mut sum = key.as_bytes().to_vec();
        sum[LENGTH - 1] = if sum[LENGTH - 1] == b'0' { b'1' } else { b'0' };
        assert!(bad_checksum(&sum));
        assert!(!bad_checksum(b"mysecrettoken"));
        assert!(
            !bad_checksum(&key.as_bytes()[..LENGTH - 1]),
            "another length"
        );
        let other = format!("xx_{}", &key[3..]);
        assert!(!bad_checksum(other.as_bytes()), "another prefix");
    }
}
