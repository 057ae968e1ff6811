//! `tokengate_key_client_networks{key}`: how many distinct client networks
//! (/24 for IPv4, /48 for IPv6) used a key lately — one key used from many
//! networks is a key that leaked. A HyperLogLog sketch per key per half
//! hour (1,024 four-bit registers, two to a byte: standard error
//! 1.04/√1024 ≈ 3.3 %; a rank is capped at 15, which leaves counts up to a
//! few hundred thousand unbiased), two halves, 1 KiB a key, allocated at
//! the key's first use and updated without a lock. The estimate covers the
//! current half hour and the one before: the last 30 to 60 minutes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Registers per sketch (2¹⁰), two to a byte.
const REGISTERS: usize = 1024;
const INDEX_BITS: u32 = 10;
/// The largest rank a four-bit register holds.
const MAX_RANK: u8 = 15;
/// The length of one half.
const HALF_SECONDS: u64 = 1800;

/// One half hour's sketch.
struct Half {
    /// The half hour it counts (seconds since the epoch / 1800); u64::MAX:
    /// never used.
    epoch: AtomicU64,
    registers: [AtomicU8; REGISTERS / 2],
}

/// One key's sketches.
pub(crate) struct Networks {
    halves: [Half; 2],
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Networks")
    }
}

impl Networks {
    fn new() -> Self {
        let half = || Half {
            epoch: AtomicU64::new(u64::MAX),
            registers: std::array::from_fn(|_| AtomicU8::new(0)),
        };
        Networks {
            halves: [half(), half()],
        }
    }

    /// Counts `client`'s network at `now` (seconds since the epoch).
    #[inline]
    pub(crate) fn insert(&self, client: IpAddr, now: u64) {
        let epoch = now / HALF_SECONDS;
        let half = &self.halves[(epoch % 2) as usize];
        if half.epoch.load(Ordering::Relaxed) != epoch {
            // A new half hour: its slot held the one two halves ago. Two
            // requests racing here may each clear it; both then count.
            for register in &half.registers {
                register.store(0, Ordering::Relaxed);
            }
            half.epoch.store(epoch, Ordering::Relaxed);
        }
        let hash = mix(network(client));
        let index = (hash >> (64 - INDEX_BITS)) as usize;
        // The rank of the first 1 bit in the rest, at most 15.
        let rank = (((hash << INDEX_BITS) | (1 << (INDEX_BITS - 1))).leading_zeros() as u8 + 1)
            .min(MAX_RANK);
        let byte = &half.registers[index / 2];
        let shift = (index % 2) * 4;
        // Mostly a load: a register only grows, and rarely.
        let mut current = byte.load(Ordering::Relaxed);
        while (current >> shift) & 0xF < rank {
            let grown = (current & !(0xF << shift)) | (rank << shift);
            match byte.compare_exchange_weak(current, grown, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
    }

    /// The estimated number of distinct networks over the current half hour
    /// and the one before, at `now`.
    pub(crate) fn estimate(&self, now: u64) -> f64 {
        let epoch = now / HALF_SECONDS;
        let mut merged = [0u8; REGISTERS];
        for half in &self.halves {
            let e = half.epoch.load(Ordering::Relaxed);
            if e == epoch || e.wrapping_add(1) == epoch {
                for (pair, byte) in merged.chunks_mut(2).zip(&half.registers) {
                    let b = byte.load(Ordering::Relaxed);
                    pair[0] = pair[0].max(b & 0xF);
                    pair[1] = pair[1].max(b >> 4);
                }
            }
        }
        estimate(&merged)
    }
}

/// HyperLogLog's estimate from its registers, with linear counting for
/// small numbers (Flajolet et al., 2007).
fn estimate(registers: &[u8; REGISTERS]) -> f64 {
    let m = REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    }
}

/// The client's network as a number: the /24 of an IPv4 address, the /48
/// of an IPv6 one (tagged apart; an IPv4-mapped IPv6 address is IPv4).
fn network(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u64::from(u32::from(v4) >> 8),
            None => (1 << 63) | (u128::from(v6) >> 80) as u64,
        },
    }
}

/// splitmix64's finaliser: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every key's sketch, by label, kept across key reloads (a key removed is
/// dropped at the next reload).
#[derive(Debug, Default)]
pub(crate) struct KeyNetworks {
    by_label: Mutex<HashMap<Arc<str>, Arc<Networks>>>,
}

impl KeyNetworks {
    /// The sketch of `label` if it has one (set into a key's slot at reload).
    pub(crate) fn existing(&self, label: &Arc<str>) -> Option<Arc<Networks>> {
        self.lock().get(label).cloned()
    }

    /// The sketch of `label`, made at its first use.
    pub(crate) fn get_or_make(&self, label: &Arc<str>) -> Arc<Networks> {
        Arc::clone(
            self.lock()
                .entry(Arc::clone(label))
                .or_insert_with(|| Arc::new(Networks::new())),
        )
    }

    /// Keeps only the labels of `labels` (at a reload).
    pub(crate) fn retain(&self, labels: &std::collections::HashSet<Arc<str>>) {
        self.lock().retain(|label, _| labels.contains(label));
    }

    /// Each key's estimate at `now`.
    pub(crate) fn estimates(&self, now: u64) -> Vec<(Arc<str>, f64)> {
        self.lock()
            .iter()
            .map(|(label, n)| (Arc::clone(label), n.estimate(now)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Networks>>> {
        self.by_label.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A key's slot: its sketch once it has been used.
pub(crate) type Slot = OnceLock<Arc<Networks>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NOW: u64 = 1_800_000_000;

    fn v4(i: u32) -> IpAddr {
        // Network i, host i % 256: each i its own /24.
        IpAddr::V4(Ipv4Addr::from((i << 8) | (i & 0xff)))
    }

    /// Within 10 % from 10 to 100 000 networks (deterministic: the hash has
    /// no seed).
    #[test]
    fn the_estimate_is_within_ten_percent() {
        for n in [10u32, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000] {
            let sketch = Networks::new();
            for i in 0..n {
                sketch.insert(v4(i), NOW);
                // The same network again, from another host: not counted twice.
                sketch.insert(IpAddr::V4(Ipv4Addr::from((i << 8) | 7)), NOW);
            }
            let e = sketch.estimate(NOW);
            let error = (e - f64::from(n)).abs() / f64::from(n);
            eprintln!("{n} networks: estimated {e:.0} ({:.1} %)", error * 100.0);
            assert!(
                error < 0.10,
                "{n} networks estimated as {e:.0} ({:.1} %)",
                error * 100.0
            );
        }
    }

    #[test]
    fn ipv6_counts_by_48_and_mapped_ipv4_as_ipv4() {
        let sketch = Networks::new();
        let base = 0x2001_0db8_0000_u128 << 80;
        for host in 0..50u128 {
            sketch.insert(IpAddr::V6(Ipv6Addr::from(base | host)), NOW);
        }
        assert!((sketch.estimate(NOW) - 1.0).abs() < 0.5, "one /48");
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(
            network(mapped),
            network(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200)))
        );
    }

    #[test]
    fn networks_older_than_the_previous_half_hour_are_forgotten() {
        let sketch = Networks::new();
        for i in 0..100 {
            sketch.insert(v4(i), NOW);
        }
        let next = NOW + HALF_SECONDS;
        for i in 100..150 {
            sketch.insert(v4(i), next);
        }
        let both = sketch.estimate(next);
        assert!((140.0..160.0).contains(&both), "{both}");
        let later = NOW + 2 * HALF_SECONDS;
        sketch.insert(v4(1000), later);
        let recent = sketch.estimate(later);
        assert!(
            (45.0..56.0).contains(&recent),
            "the first half hour is gone: {recent}"
        );
        assert_eq!(sketch.estimate(NOW + 10 * HALF_SECONDS), 0.0);
    }

    #[test]
    fn one_key_sketch_is_a_kibibyte() {
        assert!(
            std::mem::size_of::<Networks>() <= 1024 + 16,
            "{}",
            std::mem::size_of::<Networks>()
        );
    }
}
