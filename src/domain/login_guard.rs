//! What the Zscaler login protocol lets a guesser win, and the rules that bound it.
//!
//! The obfuscated `apiKey` of a login reads only the key positions that the timestamp's last
//! six digits pick (`ApiKeyValue::obfuscate`), and the client chooses the timestamp. So:
//! - a guess at a residue that reads `k` distinct positions of a uniformly random key wins
//!   with probability 62^-k. A failure whose password was right but whose key was wrong is
//!   charged that probability against the admin's budget; once the charges reach
//!   [`GUESS_BUDGET`] the admin's API logins stop until cleared. Before the lock, an attacker
//!   choosing timestamps freely wins with probability at most the budget plus the largest
//!   single charge ([`worst_case_win_probability`]).
//! - residues that read [`MIN_POSITIONS_READ`] - 1 positions or fewer win more in one try than
//!   the budget allows, so they are refused for everyone ([`refused_residues`] of 10^6).
//! - two keys are indistinguishable at a residue when they agree at every position it reads;
//!   a key that replaces another must differ from it at every accepted residue
//!   ([`distinguishable`]), or the old key would still log in there. About 1.5 in 10,000 pairs
//!   of random keys are not (they agree at the three positions some residue reads).

use std::sync::OnceLock;

use super::key::{ApiKeyValue, KEY_LEN};

/// The number of timestamp residues (the last six decimal digits).
pub const RESIDUES: u32 = 1_000_000;

/// A residue must read at least this many distinct key positions to be accepted.
pub const MIN_POSITIONS_READ: u32 = 3;

/// The total win probability an admin's key-guessing failures may be charged before the
/// admin's API logins are locked.
pub const GUESS_BUDGET: f64 = 5e-6;

/// The key positions (bit i = position i) a login at this timestamp (ms) reads.
pub fn positions_read(timestamp_ms: i64) -> u16 {
    let n = timestamp_ms.rem_euclid(RESIDUES as i64);
    let r = n >> 1;
    let mut mask = 0u16;
    let mut place = 100_000;
    while place > 0 {
        mask |= 1 << ((n / place) % 10);
        mask |= 1 << ((r / place) % 10 + 2);
        place /= 10;
    }
    mask
}

/// What a wrong key at this timestamp is charged (62^-k), or `None` where the residue reads
/// too few positions to be accepted at all.
pub fn guess_charge(timestamp_ms: i64) -> Option<f64> {
    let k = positions_read(timestamp_ms).count_ones();
    (k >= MIN_POSITIONS_READ).then(|| 62f64.powi(-(k as i32)))
}

/// For every set of agreeing positions (a 12-bit mask), whether some residue reads only
/// positions inside it: computed once from all 10^6 residues.
fn indistinguishable_table() -> &'static [bool; 1 << KEY_LEN] {
    static TABLE: OnceLock<Box<[bool; 1 << KEY_LEN]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Box::new([false; 1 << KEY_LEN]);
        // Refused residues log nobody in, so only accepted ones can let an old key pass.
        for n in 0..RESIDUES as i64 {
            let read = positions_read(n);
            if read.count_ones() >= MIN_POSITIONS_READ {
                table[read as usize] = true;
            }
        }
        // Every superset of a read set also hides it: close the table upwards, one bit at a
        // time (sum over subsets).
        for bit in 0..KEY_LEN {
            for mask in 0..(1usize << KEY_LEN) {
                if mask & (1 << bit) != 0 && table[mask ^ (1 << bit)] {
                    table[mask] = true;
                }
            }
        }
        table
    })
}

/// Whether two keys differ at some position of every accepted residue, so that no login can
/// pass for one with the other's value.
pub fn distinguishable(a: &ApiKeyValue, b: &ApiKeyValue) -> bool {
    let agree = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .enumerate()
        .fold(0usize, |m, (i, (x, y))| m | (usize::from(x == y) << i));
    !indistinguishable_table()[agree]
}

/// How many of the 10^6 residues are refused to everyone.
pub fn refused_residues() -> u32 {
    (0..RESIDUES as i64)
        .filter(|&n| guess_charge(n).is_none())
        .count() as u32
}

/// The largest probability that a caller holding the password but not the key obtains a
/// session before the lock: it keeps guessing while its charges are below the budget, and
/// each guess wins at most what it is charged, so at most the budget plus one largest charge.
pub fn worst_case_win_probability() -> f64 {
    let largest = (0..RESIDUES as i64)
        .filter_map(guess_charge)
        .fold(0f64, f64::max);
    GUESS_BUDGET + largest
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn k(s: &str) -> ApiKeyValue {
        ApiKeyValue::parse("k", s).unwrap()
    }

    #[test]
    fn the_read_positions_are_those_the_obfuscation_uses() {
        let key = k("ABCDEFGHIJKL");
        let mut rng = rand::thread_rng();
        for _ in 0..2000 {
            let ts: i64 = rng.gen_range(0..2_000_000_000_000);
            let mask = positions_read(ts);
            let obf = key.obfuscate(ts);
            for c in obf.iter() {
                let pos = key.as_bytes().iter().position(|b| b == c).unwrap();
                assert!(mask & (1 << pos) != 0, "{ts}: position {pos} not in mask");
            }
            assert_eq!(
                mask.count_ones() as usize,
                obf.iter().collect::<std::collections::HashSet<_>>().len()
            );
        }
        // The example: residue 444444 reads key[4] only.
        assert_eq!(positions_read(1_700_000_444_444), 1 << 4);
    }

    /// Done-when (a) and (b), computed from the rule and constants above.
    #[test]
    fn the_guessing_bound_and_the_refused_share_meet_the_targets() {
        let win = worst_case_win_probability();
        assert!(win <= 1e-5, "worst-case win probability {win}");
        let refused = refused_residues();
        let share = refused as f64 / RESIDUES as f64;
        assert!(share <= 1e-5, "refused share {share}");
        // Exactly the residues reading one or two positions (1 + 8, counted independently).
        let few = (0..RESIDUES as i64)
            .filter(|&n| positions_read(n).count_ones() <= 2)
            .count() as u32;
        assert_eq!(refused, few);
        assert_eq!(few, 9);
        // The bound is tight enough to matter: one guess at a three-position residue is
        // charged most of the budget, a second locks.
        let three = 62f64.powi(-3);
        assert!(three < GUESS_BUDGET && 2.0 * three >= GUESS_BUDGET);
    }

    #[test]
    fn keys_agreeing_where_a_residue_reads_are_indistinguishable() {
        let cur = k("ABCDEFGHIJKL");
        // Same at position 4 only: only residue 444444 reads nothing else, and it is refused.
        assert!(distinguishable(&cur, &k("xxxxExxxxxxx")));
        // Same at positions 0, 2 and 3: residue 200000 (r = 100000) reads just those.
        assert_eq!(positions_read(200_000), 0b1101);
        assert!(!distinguishable(&cur, &k("AxCDxxxxxxxx")));
        // Same everywhere but position 4.
        assert!(!distinguishable(&cur, &k("ABCDxFGHIJKL")));
        assert!(distinguishable(&cur, &k("abcdefghijkl")));
        assert!(!distinguishable(&cur, &cur.clone()));
    }

    /// Point 2: for many random pairs, and for adversarial near pairs, a pair called
    /// distinguishable differs at every one of the 10^6 residues, and one called not has a
    /// residue where both obfuscate alike.
    #[test]
    fn distinguishable_is_exact_over_all_residues() {
        let mut rng = rand::rngs::OsRng;
        let mut pairs = Vec::new();
        for _ in 0..8 {
            pairs.push((
                ApiKeyValue::generate(&mut rng),
                ApiKeyValue::generate(&mut rng),
            ));
        }
        // Near pairs: the new key copies the old at a random subset of positions.
        let mut trng = rand::thread_rng();
        for _ in 0..24 {
            let old = ApiKeyValue::generate(&mut rng);
            let fresh = ApiKeyValue::generate(&mut rng);
            let keep: u16 = trng.gen_range(0..(1 << KEY_LEN));
            let mut bytes = *fresh.as_bytes().first_chunk::<KEY_LEN>().unwrap();
            for (i, b) in bytes.iter_mut().enumerate() {
                if keep & (1 << i) != 0 {
                    *b = old.as_bytes()[i];
                } else if *b == old.as_bytes()[i] {
                    *b = if *b == b'A' { b'B' } else { b'A' };
                }
            }
            pairs.push((old, ApiKeyValue::from_trusted_bytes(&bytes).unwrap()));
        }
        let mut both = [0; 2];
        for (old, new) in &pairs {
            let claimed = distinguishable(old, new);
            let collides = (0..RESIDUES as i64)
                .filter(|&n| guess_charge(n).is_some())
                .any(|n| old.obfuscate(n) == new.obfuscate(n));
            assert_eq!(claimed, !collides);
            both[usize::from(claimed)] += 1;
        }
        assert!(
            both[0] > 0 && both[1] > 0,
            "{both:?}: both kinds must be tested"
        );
    }
}
