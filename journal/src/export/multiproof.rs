//! Batched inclusion proofs (Merkle multiproofs) over the RFC 6962 tree of
//! [`crate::merkle`]: one list of subtree hashes that, together with the
//! hashes of a chosen set of events, rebuilds the root of the tree of
//! `size` events — proving every chosen event's membership at its position
//! at once, and revealing of the others only hashes of whole subtrees.
//!
//! The algorithm (docs/VERIFYING.md, "Multiproofs") is the RFC 6962
//! recursion `MTH(D[lo:hi])`, split at the largest power of two smaller
//! than `hi - lo`, with two base cases: a range holding no chosen leaf is
//! the next hash of the proof (depth first, left to right), and a range of
//! one chosen leaf is its leaf hash. For a contiguous run of `k` events in a
//! tree of `n` the proof has at most `2·log2(n)` hashes; for `k` scattered
//! events at most `k·log2(n)`.
//!
//! No I/O here: the prover asks a closure for subtree hashes.

use crate::merkle::{Digest, leaf_hash, node_hash};

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a multiproof does not rebuild a root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultiproofError {
    /// The chosen leaves are not strictly increasing, or one is outside the tree.
    #[error("leaf indices must be strictly increasing and below the tree size {size}")]
    BadLeaves {
        /// The tree size.
        size: u64,
    },
    /// The proof ran out of hashes.
    #[error("proof too short: it has {found} hashes, more are needed")]
    TooShort {
        /// Hashes in the proof.
        found: usize,
    },
    /// Hashes were left over.
    #[error("proof too long: {used} of its {found} hashes are used")]
    TooLong {
        /// Hashes used.
        used: usize,
        /// Hashes in the proof.
        found: usize,
    },
    /// The rebuilt root is not the trusted one.
    #[error("root mismatch: the checkpoint says {expected}, the proof gives {found}")]
    RootMismatch {
        /// Trusted root (hex).
        expected: String,
        /// Rebuilt root (hex).
        found: String,
    },
}

fn check_leaves(indices: impl Iterator<Item = u64>, size: u64) -> Result<(), MultiproofError> {
    let mut last: Option<u64> = None;
    for i in indices {
        if i >= size || last.is_some_and(|l| l >= i) {
            return Err(MultiproofError::BadLeaves { size });
        }
        last = Some(i);
    }
    Ok(())
}

/// The proof for the leaves at `indices` (strictly increasing, `< size`):
/// the hashes `subtree(lo, hi)` = `MTH(D[lo:hi])` of every maximal range
/// without a chosen leaf, in depth-first, left-to-right order.
///
/// # Errors
/// Bad indices, or the first error of `subtree`.
pub fn prove<E>(
    indices: &[u64],
    size: u64,
    subtree: &mut dyn FnMut(u64, u64) -> Result<Digest, E>,
) -> Result<Result<Vec<Digest>, MultiproofError>, E> {
    if indices.is_empty() || check_leaves(indices.iter().copied(), size).is_err() {
        return Ok(Err(MultiproofError::BadLeaves { size }));
    }
    let mut out = Vec::new();
    prove_range(0, size, indices, subtree, &mut out)?;
    Ok(Ok(out))
}

fn prove_range<E>(
    lo: u64,
    hi: u64,
    leaves: &[u64],
    subtree: &mut dyn FnMut(u64, u64) -> Result<Digest, E>,
    out: &mut Vec<Digest>,
) -> Result<(), E> {
    if leaves.is_empty() {
        out.push(subtree(lo, hi)?);
        return Ok(());
    }
    if hi - lo == 1 {
        return Ok(());
    }
    let mid = lo + split(hi - lo);
    let cut = leaves.partition_point(|&i| i < mid);
    prove_range(lo, mid, &leaves[..cut], subtree, out)?;
    prove_range(mid, hi, &leaves[cut..], subtree, out)
}

/// Rebuilds the root of the tree of `size` leaves from the chosen leaves
/// (`(index, event hash)`, strictly increasing indices) and the proof, and
/// compares it with `root`.
///
/// # Errors
/// [`MultiproofError`] saying what does not fit.
pub fn verify(
    leaves: &[(u64, Digest)],
    size: u64,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), MultiproofError> {
    if leaves.is_empty() {
        return Err(MultiproofError::BadLeaves { size });
    }
    check_leaves(leaves.iter().map(|l| l.0), size)?;
    let mut used = 0usize;
    let found = rebuild(0, size, leaves, proof, &mut used)?;
    if used != proof.len() {
        return Err(MultiproofError::TooLong {
            used,
            found: proof.len(),
        });
    }
    if found != *root {
        return Err(MultiproofError::RootMismatch {
            expected: hex::encode(root),
            found: hex::encode(found),
        });
    }
    Ok(())
}

fn rebuild(
    lo: u64,
    hi: u64,
    leaves: &[(u64, Digest)],
    proof: &[Digest],
    used: &mut usize,
) -> Result<Digest, MultiproofError> {
    if leaves.is_empty() {
        let h = proof
            .get(*used)
            .ok_or(MultiproofError::TooShort { found: proof.len() })?;
        *used += 1;
        return Ok(*h);
    }
    if hi - lo == 1 {
        // Indices are strictly increasing and inside [lo, hi): exactly one.
        return Ok(leaf_hash(&leaves[0].1));
    }
    let mid = lo + split(hi - lo);
    let cut = leaves.partition_point(|l| l.0 < mid);
    let left = rebuild(lo, mid, &leaves[..cut], proof, used)?;
    let right = rebuild(mid, hi, &leaves[cut..], proof, used)?;
    Ok(node_hash(&left, &right))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::merkle::Frontier;
    use proptest::prelude::*;

    fn tree_hash(hashes: &[Digest]) -> Digest {
        let mut f = Frontier::new();
        for h in hashes {
            f.push(h);
        }
        f.root()
    }

    fn hashes(n: u64) -> Vec<Digest> {
        (0..n)
            .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
            .collect()
    }

    proptest! {
        #[test]
        fn proves_any_subset(n in 1u64..80, picks in proptest::collection::vec(any::<u64>(), 1..12)) {
            let all = hashes(n);
            let root = tree_hash(&all);
            let mut idx: Vec<u64> = picks.iter().map(|p| p % n).collect();
            idx.sort_unstable();
            idx.dedup();
            let mut sub = |lo: u64, hi: u64| -> Result<Digest, ()> {
                Ok(tree_hash(&all[lo as usize..hi as usize]))
            };
            let proof = prove(&idx, n, &mut sub).unwrap().unwrap();
            let leaves: Vec<(u64, Digest)> = idx.iter().map(|&i| (i, all[i as usize])).collect();
            prop_assert_eq!(verify(&leaves, n, &proof, &root), Ok(()));
            // Any changed hash, a missing or an extra one is refused.
            for k in 0..proof.len() {
                let mut bad = proof.clone();
                bad[k][0] ^= 1;
                prop_assert!(verify(&leaves, n, &bad, &root).is_err());
            }
            if !proof.is_empty() {
                prop_assert!(verify(&leaves, n, &proof[1..], &root).is_err());
            }
            let mut long = proof.clone();
            long.push([0; 32]);
            prop_assert!(verify(&leaves, n, &long, &root).is_err());
            let mut moved = leaves.clone();
            moved[0].1[31] ^= 1;
            prop_assert!(verify(&moved, n, &proof, &root).is_err());
        }
    }

    #[test]
    fn contiguous_range_is_logarithmic() {
        let n = 1000u64;
        let all = hashes(n);
        let idx: Vec<u64> = (300..700).collect();
        let mut sub =
            |lo: u64, hi: u64| -> Result<Digest, ()> { Ok(tree_hash(&all[lo as usize..hi as usize])) };
        let proof = prove(&idx, n, &mut sub).unwrap().unwrap();
        assert!(proof.len() <= 20, "{} hashes", proof.len());
        let leaves: Vec<(u64, Digest)> = idx.iter().map(|&i| (i, all[i as usize])).collect();
        verify(&leaves, n, &proof, &tree_hash(&all)).unwrap();
    }
}
