//! Merkle tree hashing over the journal's event hashes.
//!
//! The tree is the RFC 6962 (Certificate Transparency) Merkle Tree Hash with
//! BLAKE3 as the hash function:
//!
//! * `MTH({})` is BLAKE3 of the empty string ([`empty_root`]);
//! * a leaf is `BLAKE3(0x00 || event_hash)` ([`leaf_hash`]);
//! * an interior node is `BLAKE3(0x01 || left || right)` ([`node_hash`]);
//! * a range of `n > 1` leaves is split at `k`, the largest power of two
//!   smaller than `n`, into a perfect left subtree of `k` leaves and the rest.
//!
//! Leaf `i` (0-based) is the event with sequence number `i + 1`; its leaf data
//! is that event's 32-byte hash.
//!
//! Nodes are addressed by `(level, index)`: the hash of the perfect subtree of
//! height `level` covering leaves `[index << level, (index + 1) << level)`.
//! Level 0 is the leaf hash itself. [`Frontier::push`] reports every node it
//! completes under that address, and a [`NodeSource`] serves them back, so
//! [`root_at`], [`inclusion_proof`] and [`consistency_proof`] need only
//! `O(log n)` lookups each. [`verify_inclusion`] and [`verify_consistency`]
//! are the standalone RFC 9162 checks and need no node store.
//!
//! What does not live here: storage of nodes, I/O of any kind, signing, and
//! knowledge of the event format beyond "a 32-byte hash per event".

/// A 32-byte BLAKE3 output: a leaf hash, an interior node hash or a root.
pub type Digest = [u8; 32];

/// Domain prefix of a leaf hash input.
const LEAF_PREFIX: u8 = 0x00;
/// Domain prefix of an interior node hash input.
const NODE_PREFIX: u8 = 0x01;
/// Bytes used by the size header of [`Frontier::encode`].
const SIZE_BYTES: usize = 8;

/// Errors from proof verification, size checks and frontier decoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    /// A leaf index is not inside the tree.
    #[error("leaf index out of range: expected index < {size}, found {index}")]
    IndexOutOfRange {
        /// The offending leaf index.
        index: u64,
        /// The tree size the index was checked against.
        size: u64,
    },
    /// A pair of tree sizes cannot be used for a consistency proof.
    #[error("bad tree sizes: expected 0 < old <= new, found old {old}, new {new}")]
    BadSizes {
        /// The older (smaller) tree size.
        old: u64,
        /// The newer (larger) tree size.
        new: u64,
    },
    /// A proof has the wrong number of hashes for the sizes it claims.
    #[error("wrong proof length: expected {expected} hashes, found {found}")]
    ProofLength {
        /// The number of hashes a valid proof has.
        expected: usize,
        /// The number of hashes supplied.
        found: usize,
    },
    /// The root recomputed from a proof differs from the trusted root.
    #[error("root mismatch: expected {expected}, found {found}")]
    RootMismatch {
        /// The trusted root supplied by the caller, as hex.
        expected: String,
        /// The root recomputed from the proof, as hex.
        found: String,
    },
    /// A frontier encoding has the wrong length for the size it declares.
    ///
    /// When the input is too short to hold the size header, `expected` is
    /// the header length (8).
    #[error("bad frontier encoding: expected {expected} bytes, found {found}")]
    BadFrontier {
        /// The length implied by the declared size.
        expected: usize,
        /// The length of the input.
        found: usize,
    },
}

/// Failure of an operation that reads nodes from a [`NodeSource`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofFailure<E> {
    /// The request itself is invalid (e.g. an index outside the tree).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    /// The node store failed to produce a node.
    #[error("node store: {0}")]
    Source(E),
}

/// A store of tree nodes, addressed as described in the [module docs](self).
pub trait NodeSource {
    /// The store's error type.
    type Error;

    /// Hash of the perfect subtree at `level` covering leaves
    /// `[index << level, (index + 1) << level)`. Level 0 is the leaf hash
    /// itself.
    fn node(&self, level: u8, index: u64) -> Result<Digest, Self::Error>;
}

/// `MTH({})`: the root of the empty tree, BLAKE3 of the empty string.
pub fn empty_root() -> Digest {
    *blake3::hash(&[]).as_bytes()
}

/// The leaf hash of an event: `BLAKE3(0x00 || event_hash)`.
pub fn leaf_hash(event_hash: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[LEAF_PREFIX]);
    hasher.update(event_hash);
    *hasher.finalize().as_bytes()
}

/// An interior node hash: `BLAKE3(0x01 || left || right)`.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    *hasher.finalize().as_bytes()
}

/// The compact range (right frontier) of a tree of `size` leaves: the roots
/// of its perfect subtrees, biggest first. `O(log n)` memory, amortised
/// `O(1)` hashing per push.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves in the tree.
    size: u64,
    /// One root per set bit of `size`, biggest subtree first.
    roots: Vec<Digest>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (give the *event hash*; this applies [`leaf_hash`]) and
    /// returns every node completed by it as `(level, index, hash)`,
    /// including the level-0 leaf node itself, in increasing level order.
    /// The caller stores these so a [`NodeSource`] can serve them.
    pub fn push(&mut self, event_hash: &Digest) -> Vec<(u8, u64, Digest)> {
        let index = self.size;
        let mut hash = leaf_hash(event_hash);
        let mut completed = vec![(0, index, hash)];
        // Each trailing one bit of the old size is a subtree of equal height
        // that the new node now completes.
        for level in 1..=index.trailing_ones() {
            let left = self
                .roots
                .pop()
                .expect("frontier holds one root per set bit of its size");
            hash = node_hash(&left, &hash);
            completed.push((level_u8(level), index >> level, hash));
        }
        self.roots.push(hash);
        self.size = index.checked_add(1).expect("a journal cannot hold 2^64 events");
        completed
    }

    /// `MTH` of the current tree ([`empty_root`] when the size is 0).
    pub fn root(&self) -> Digest {
        fold_subtree_roots(self.roots.iter().rev().copied())
    }

    /// Stable, compact byte encoding: the size as a little-endian `u64`, then
    /// the subtree roots, biggest first.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(encoded_len(self.size));
        bytes.extend_from_slice(&self.size.to_le_bytes());
        for root in &self.roots {
            bytes.extend_from_slice(root);
        }
        bytes
    }

    /// Inverse of [`Frontier::encode`]. Fails with
    /// [`MerkleError::BadFrontier`] when the length does not match
    /// `popcount(size) * 32 + 8`; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, MerkleError> {
        let Some((header, body)) = bytes.split_first_chunk::<SIZE_BYTES>() else {
            return Err(MerkleError::BadFrontier {
                expected: SIZE_BYTES,
                found: bytes.len(),
            });
        };
        let size = u64::from_le_bytes(*header);
        let expected = encoded_len(size);
        if bytes.len() != expected {
            return Err(MerkleError::BadFrontier {
                expected,
                found: bytes.len(),
            });
        }
        let (roots, rest) = body.as_chunks::<32>();
        debug_assert!(rest.is_empty(), "length was checked above");
        Ok(Self {
            size,
            roots: roots.to_vec(),
        })
    }
}

/// Length of a frontier encoding for a tree of `size` leaves.
fn encoded_len(size: u64) -> usize {
    // At most 64 roots, so this cannot overflow.
    SIZE_BYTES + 32 * size.count_ones() as usize
}

/// Converts a tree level (always < 64) to the `u8` used in node addresses.
fn level_u8(level: u32) -> u8 {
    u8::try_from(level).expect("tree levels are below 64")
}

/// Combines perfect-subtree roots given *smallest (rightmost) first* into the
/// RFC 6962 hash of their concatenated range: each bigger subtree is the left
/// sibling of everything to its right.
fn fold_subtree_roots(smallest_first: impl Iterator<Item = Digest>) -> Digest {
    smallest_first
        .reduce(|right, left| node_hash(&left, &right))
        .unwrap_or_else(empty_root)
}

/// Largest power of two strictly smaller than `n` (requires `n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// A leaf range `[start, end)` whose `MTH` is one proof element.
#[derive(Clone, Copy, Debug)]
struct Range {
    /// First leaf in the range.
    start: u64,
    /// One past the last leaf in the range.
    end: u64,
}

/// `MTH` of a range produced by the RFC 6962 recursion over `[0, size)`.
///
/// Such a range starts at a multiple of the largest power of two not above
/// its length, so it decomposes into aligned perfect subtrees (one per set
/// bit of its length), each a single node lookup.
fn range_hash<S: NodeSource>(src: &S, range: Range) -> Result<Digest, S::Error> {
    let mut roots = Vec::with_capacity(64);
    let mut end = range.end;
    let mut remaining = range.end - range.start;
    // Walk the subtrees right to left, smallest first.
    while remaining != 0 {
        let level = remaining.trailing_zeros();
        let width = 1u64 << level;
        end -= width;
        debug_assert_eq!(end % width, 0, "subtree must be aligned");
        roots.push(src.node(level_u8(level), end >> level)?);
        remaining -= width;
    }
    Ok(fold_subtree_roots(roots.into_iter()))
}

/// The ranges whose hashes form `PATH(index, D[0:size])`, in proof order
/// (deepest first). Requires `index < size`.
fn inclusion_plan(index: u64, size: u64) -> Vec<Range> {
    let mut plan = Vec::new();
    let (mut start, mut end) = (0, size);
    while end - start > 1 {
        let mid = start + split_point(end - start);
        if index < mid {
            plan.push(Range { start: mid, end });
            end = mid;
        } else {
            plan.push(Range { start, end: mid });
            start = mid;
        }
    }
    plan.reverse();
    plan
}

/// The ranges whose hashes form `PROOF(old, D[0:new])`, in proof order
/// (deepest first). Requires `0 < old <= new`.
fn consistency_plan(old: u64, new: u64) -> Vec<Range> {
    let mut plan = Vec::new();
    let (mut start, mut end) = (0, new);
    // `whole` is the RFC's flag b: the current range is an old root as is.
    let mut whole = true;
    while old != end {
        let mid = start + split_point(end - start);
        if old <= mid {
            plan.push(Range { start: mid, end });
            end = mid;
        } else {
            plan.push(Range { start, end: mid });
            start = mid;
            whole = false;
        }
    }
    if !whole {
        plan.push(Range { start, end });
    }
    plan.reverse();
    plan
}

/// Hashes every range of a plan, in order.
fn hash_plan<S: NodeSource>(src: &S, plan: &[Range]) -> Result<Vec<Digest>, ProofFailure<S::Error>> {
    plan.iter()
        .map(|&range| range_hash(src, range).map_err(ProofFailure::Source))
        .collect()
}

/// Checks `0 < old <= new`.
fn check_sizes(old: u64, new: u64) -> Result<(), MerkleError> {
    if old == 0 || old > new {
        return Err(MerkleError::BadSizes { old, new });
    }
    Ok(())
}

/// Checks `index < size`.
fn check_index(index: u64, size: u64) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    Ok(())
}

/// Checks that a proof has the number of hashes its plan calls for.
fn check_len(expected: usize, proof: &[Digest]) -> Result<(), MerkleError> {
    if proof.len() != expected {
        return Err(MerkleError::ProofLength {
            expected,
            found: proof.len(),
        });
    }
    Ok(())
}

/// Checks that a recomputed root equals the trusted one.
fn check_root(expected: &Digest, found: &Digest) -> Result<(), MerkleError> {
    if expected != found {
        return Err(MerkleError::RootMismatch {
            expected: hex::encode(expected),
            found: hex::encode(found),
        });
    }
    Ok(())
}

/// `MTH` of leaves `[0, size)` computed from stored nodes in `O(log n)`
/// lookups ([`empty_root`] when `size` is 0).
pub fn root_at<S: NodeSource>(src: &S, size: u64) -> Result<Digest, ProofFailure<S::Error>> {
    range_hash(src, Range { start: 0, end: size }).map_err(ProofFailure::Source)
}

/// RFC 6962 section 2.1.1 `PATH(m, D[n])` for leaf `index` in a tree of
/// `size` leaves, deepest sibling first, using `O(log n)` node lookups.
pub fn inclusion_proof<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Digest>, ProofFailure<S::Error>> {
    check_index(index, size)?;
    hash_plan(src, &inclusion_plan(index, size))
}

/// RFC 6962 section 2.1.2 `PROOF(m, D[n])` between trees of `old_size` and
/// `new_size` leaves, using `O(log n)` node lookups.
///
/// Requires `0 < old_size <= new_size`; `old_size == new_size` gives the
/// empty proof.
pub fn consistency_proof<S: NodeSource>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Digest>, ProofFailure<S::Error>> {
    check_sizes(old_size, new_size)?;
    hash_plan(src, &consistency_plan(old_size, new_size))
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2) for the event with
/// hash `event_hash` at leaf `index` of a tree of `size` leaves whose trusted
/// root is `root`.
pub fn verify_inclusion(
    event_hash: &Digest,
    index: u64,
    size: u64,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), MerkleError> {
    check_index(index, size)?;
    let expected_len = inclusion_plan(index, size).len();
    check_len(expected_len, proof)?;
    let wrong_len = || MerkleError::ProofLength {
        expected: expected_len,
        found: proof.len(),
    };

    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = leaf_hash(event_hash);
    for sibling in proof {
        if snode == 0 {
            return Err(wrong_len());
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(sibling, &hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_len());
    }
    check_root(root, &hash)
}

/// Verifies a consistency proof (RFC 9162 section 2.1.4.2) between a tree of
/// `old_size` leaves with trusted root `old_root` and a tree of `new_size`
/// leaves with trusted root `new_root`.
///
/// Requires `0 < old_size <= new_size`. When the sizes are equal the proof
/// must be empty and the roots equal.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> Result<(), MerkleError> {
    check_sizes(old_size, new_size)?;
    let expected_len = consistency_plan(old_size, new_size).len();
    check_len(expected_len, proof)?;
    if old_size == new_size {
        return check_root(old_root, new_root);
    }
    let wrong_len = || MerkleError::ProofLength {
        expected: expected_len,
        found: proof.len(),
    };

    // When the old tree is perfect its root is the implicit first element.
    let mut path = proof.iter();
    let seed = if old_size.is_power_of_two() {
        *old_root
    } else {
        *path.next().ok_or_else(wrong_len)?
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut old_hash, mut new_hash) = (seed, seed);
    for sibling in path {
        if snode == 0 {
            return Err(wrong_len());
        }
        if fnode & 1 == 1 || fnode == snode {
            old_hash = node_hash(sibling, &old_hash);
            new_hash = node_hash(sibling, &new_hash);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, sibling);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(wrong_len());
    }
    check_root(old_root, &old_hash)?;
    check_root(new_root, &new_hash)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    /// Naive RFC 6962 section 2.1, written straight from the text over the
    /// leaf data (event hashes). Hashing is done here with `blake3`
    /// directly so it also checks `leaf_hash` and `node_hash`.
    mod naive {
        use super::Digest;

        fn hash(parts: &[&[u8]]) -> Digest {
            let mut hasher = blake3::Hasher::new();
            for part in parts {
                hasher.update(part);
            }
            *hasher.finalize().as_bytes()
        }

        /// Largest power of two smaller than n.
        fn k(n: usize) -> usize {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            k
        }

        pub fn mth(d: &[Digest]) -> Digest {
            match d.len() {
                0 => hash(&[]),
                1 => hash(&[&[0x00], &d[0]]),
                n => {
                    let k = k(n);
                    hash(&[&[0x01], &mth(&d[..k]), &mth(&d[k..])])
                }
            }
        }

        pub fn path(m: usize, d: &[Digest]) -> Vec<Digest> {
            let n = d.len();
            if n == 1 {
                return Vec::new();
            }
            let k = k(n);
            if m < k {
                let mut p = path(m, &d[..k]);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = path(m - k, &d[k..]);
                p.push(mth(&d[..k]));
                p
            }
        }

        pub fn proof(m: usize, d: &[Digest]) -> Vec<Digest> {
            subproof(m, d, true)
        }

        fn subproof(m: usize, d: &[Digest], b: bool) -> Vec<Digest> {
            let n = d.len();
            if m == n {
                return if b { Vec::new() } else { vec![mth(d)] };
            }
            let k = k(n);
            if m <= k {
                let mut p = subproof(m, &d[..k], b);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = subproof(m - k, &d[k..], false);
                p.push(mth(&d[..k]));
                p
            }
        }
    }

    /// In-memory node store filled from `Frontier::push`, counting lookups.
    #[derive(Default)]
    struct MemStore {
        nodes: BTreeMap<(u8, u64), Digest>,
        lookups: Cell<usize>,
    }

    impl NodeSource for MemStore {
        type Error = String;

        fn node(&self, level: u8, index: u64) -> Result<Digest, String> {
            self.lookups.set(self.lookups.get() + 1);
            self.nodes
                .get(&(level, index))
                .copied()
                .ok_or_else(|| format!("missing node ({level}, {index})"))
        }
    }

    /// Deterministic event hashes for a test case.
    fn events(seed: u64, n: usize) -> Vec<Digest> {
        (0..n as u64)
            .map(|i| {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&seed.to_le_bytes());
                bytes[8..].copy_from_slice(&i.to_le_bytes());
                *blake3::hash(&bytes).as_bytes()
            })
            .collect()
    }

    /// Pushes every event, returning the final frontier and the node store.
    fn build(events: &[Digest]) -> (Frontier, MemStore) {
        let mut frontier = Frontier::new();
        let mut store = MemStore::default();
        for event in events {
            for (level, index, hash) in frontier.push(event) {
                assert!(store.nodes.insert((level, index), hash).is_none());
            }
        }
        (frontier, store)
    }

    /// A bound on node lookups that is logarithmic in `size`.
    fn lookup_bound(size: u64) -> usize {
        2 * (64 - size.leading_zeros() as usize) + 2
    }

    fn flip(proof: &[Digest], which: prop::sample::Index, byte: usize, bit: u8) -> Vec<Digest> {
        let mut bad = proof.to_vec();
        let i = which.index(bad.len());
        bad[i][byte % 32] ^= 1 << (bit % 8);
        bad
    }

    #[test]
    fn empty_root_is_blake3_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(Frontier::new().root(), empty_root());
        assert_eq!(root_at(&MemStore::default(), 0), Ok(empty_root()));
    }

    #[test]
    fn hashes_use_domain_prefixes() {
        let (a, b) = ([7u8; 32], [9u8; 32]);
        let mut leaf_input = vec![0x00];
        leaf_input.extend_from_slice(&a);
        assert_eq!(leaf_hash(&a), *blake3::hash(&leaf_input).as_bytes());
        let mut node_input = vec![0x01];
        node_input.extend_from_slice(&a);
        node_input.extend_from_slice(&b);
        assert_eq!(node_hash(&a, &b), *blake3::hash(&node_input).as_bytes());
    }

    #[test]
    fn size_one_root_is_the_leaf_hash() {
        let e = events(1, 1);
        let (frontier, store) = build(&e);
        assert_eq!(frontier.root(), leaf_hash(&e[0]));
        assert_eq!(root_at(&store, 1).unwrap(), leaf_hash(&e[0]));
        assert_eq!(inclusion_proof(&store, 0, 1).unwrap(), Vec::<Digest>::new());
        verify_inclusion(&e[0], 0, 1, &[], &frontier.root()).unwrap();
    }

    #[test]
    fn size_two_root_is_the_node_of_both_leaves() {
        let e = events(2, 2);
        let (frontier, store) = build(&e);
        let expected = node_hash(&leaf_hash(&e[0]), &leaf_hash(&e[1]));
        assert_eq!(frontier.root(), expected);
        assert_eq!(root_at(&store, 2).unwrap(), expected);
        assert_eq!(inclusion_proof(&store, 0, 2).unwrap(), vec![leaf_hash(&e[1])]);
        assert_eq!(inclusion_proof(&store, 1, 2).unwrap(), vec![leaf_hash(&e[0])]);
        assert_eq!(consistency_proof(&store, 1, 2).unwrap(), vec![leaf_hash(&e[1])]);
        verify_consistency(1, 2, &leaf_hash(&e[0]), &expected, &[leaf_hash(&e[1])]).unwrap();
    }

    #[test]
    fn push_reports_completed_nodes() {
        let e = events(3, 4);
        let mut frontier = Frontier::new();
        let levels: Vec<Vec<(u8, u64)>> = e
            .iter()
            .map(|ev| frontier.push(ev).into_iter().map(|(l, i, _)| (l, i)).collect())
            .collect();
        assert_eq!(
            levels,
            vec![
                vec![(0, 0)],
                vec![(0, 1), (1, 0)],
                vec![(0, 2)],
                vec![(0, 3), (1, 1), (2, 0)],
            ]
        );
    }

    #[test]
    fn bad_requests_are_rejected() {
        let (_, store) = build(&events(4, 5));
        assert_eq!(
            inclusion_proof(&store, 5, 5),
            Err(ProofFailure::Merkle(MerkleError::IndexOutOfRange {
                index: 5,
                size: 5
            }))
        );
        assert_eq!(
            inclusion_proof(&store, 0, 0),
            Err(ProofFailure::Merkle(MerkleError::IndexOutOfRange {
                index: 0,
                size: 0
            }))
        );
        assert_eq!(
            consistency_proof(&store, 0, 5),
            Err(ProofFailure::Merkle(MerkleError::BadSizes { old: 0, new: 5 }))
        );
        assert_eq!(
            consistency_proof(&store, 4, 3),
            Err(ProofFailure::Merkle(MerkleError::BadSizes { old: 4, new: 3 }))
        );
        assert_eq!(consistency_proof(&store, 5, 5), Ok(Vec::new()));
        assert!(matches!(root_at(&store, 6), Err(ProofFailure::Source(_))));
        let root = [0u8; 32];
        assert_eq!(
            verify_inclusion(&root, 3, 3, &[], &root),
            Err(MerkleError::IndexOutOfRange { index: 3, size: 3 })
        );
        assert_eq!(
            verify_consistency(0, 3, &root, &root, &[]),
            Err(MerkleError::BadSizes { old: 0, new: 3 })
        );
        assert_eq!(
            verify_consistency(3, 3, &root, &root, &[root]),
            Err(MerkleError::ProofLength {
                expected: 0,
                found: 1
            })
        );
        assert!(matches!(
            verify_consistency(3, 3, &root, &[1u8; 32], &[]),
            Err(MerkleError::RootMismatch { .. })
        ));
        verify_consistency(3, 3, &root, &root, &[]).unwrap();
    }

    #[test]
    fn decode_rejects_bad_lengths() {
        assert_eq!(
            Frontier::decode(&[1, 2, 3]),
            Err(MerkleError::BadFrontier {
                expected: 8,
                found: 3
            })
        );
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            Frontier::decode(&bytes),
            Err(MerkleError::BadFrontier {
                expected: 72,
                found: 40
            })
        );
        assert_eq!(Frontier::decode(&[0u8; 8]), Ok(Frontier::new()));
    }

    #[test]
    fn error_messages_are_lower_case() {
        let message = MerkleError::ProofLength {
            expected: 2,
            found: 3,
        }
        .to_string();
        assert_eq!(message, "wrong proof length: expected 2 hashes, found 3");
        let failure: ProofFailure<String> = ProofFailure::Source("gone".into());
        assert_eq!(failure.to_string(), "node store: gone");
    }

    #[test]
    fn exhaustive_small_trees() {
        for n in 1..=40 {
            let e = events(n as u64, n);
            let (frontier, store) = build(&e);
            let size = n as u64;
            for i in 0..n {
                let proof = inclusion_proof(&store, i as u64, size).unwrap();
                assert_eq!(proof, naive::path(i, &e), "path({i}, {n})");
                verify_inclusion(&e[i], i as u64, size, &proof, &frontier.root()).unwrap();
            }
            for m in 1..=n {
                let old_root = root_at(&store, m as u64).unwrap();
                assert_eq!(old_root, naive::mth(&e[..m]), "mth({m})");
                let proof = consistency_proof(&store, m as u64, size).unwrap();
                assert_eq!(proof, naive::proof(m, &e), "proof({m}, {n})");
                verify_consistency(m as u64, size, &old_root, &frontier.root(), &proof).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn roots_match_naive(seed: u64, n in 1usize..300, m in any::<prop::sample::Index>()) {
            let e = events(seed, n);
            let (frontier, store) = build(&e);
            prop_assert_eq!(frontier.size(), n as u64);
            prop_assert_eq!(frontier.root(), naive::mth(&e));
            prop_assert_eq!(root_at(&store, n as u64).unwrap(), naive::mth(&e));
            let m = m.index(n + 1);
            store.lookups.set(0);
            prop_assert_eq!(root_at(&store, m as u64).unwrap(), naive::mth(&e[..m]));
            prop_assert!(store.lookups.get() <= lookup_bound(m as u64));
        }

        #[test]
        fn inclusion_matches_naive_and_verifies(
            seed: u64,
            n in 1usize..300,
            i in any::<prop::sample::Index>(),
            other in any::<prop::sample::Index>(),
            which in any::<prop::sample::Index>(),
            byte: usize,
            bit: u8,
        ) {
            let e = events(seed, n);
            let (frontier, store) = build(&e);
            let root = frontier.root();
            let (i, size) = (i.index(n), n as u64);

            store.lookups.set(0);
            let proof = inclusion_proof(&store, i as u64, size).unwrap();
            prop_assert!(store.lookups.get() <= lookup_bound(size));
            prop_assert_eq!(&proof, &naive::path(i, &e));
            prop_assert_eq!(verify_inclusion(&e[i], i as u64, size, &proof, &root), Ok(()));

            if !proof.is_empty() {
                let bad = flip(&proof, which, byte, bit);
                prop_assert!(verify_inclusion(&e[i], i as u64, size, &bad, &root).is_err());
            }
            let other = other.index(n);
            if other != i {
                prop_assert!(verify_inclusion(&e[i], other as u64, size, &proof, &root).is_err());
            }
            let mut bad_root = root;
            bad_root[byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(&e[i], i as u64, size, &proof, &bad_root).is_err());
            let mut bad_event = e[i];
            bad_event[byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_inclusion(&bad_event, i as u64, size, &proof, &root).is_err());
        }

        #[test]
        fn consistency_matches_naive_and_verifies(
            seed: u64,
            n in 1usize..300,
            m in any::<prop::sample::Index>(),
            which in any::<prop::sample::Index>(),
            byte: usize,
            bit: u8,
        ) {
            let e = events(seed, n);
            let (frontier, store) = build(&e);
            let new_root = frontier.root();
            let m = m.index(n) + 1;
            let old_root = root_at(&store, m as u64).unwrap();
            let (old, new) = (m as u64, n as u64);

            store.lookups.set(0);
            let proof = consistency_proof(&store, old, new).unwrap();
            prop_assert!(store.lookups.get() <= lookup_bound(new));
            prop_assert_eq!(&proof, &naive::proof(m, &e));
            prop_assert_eq!(verify_consistency(old, new, &old_root, &new_root, &proof), Ok(()));

            if !proof.is_empty() {
                let bad = flip(&proof, which, byte, bit);
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
                let mut short = proof.clone();
                short.pop();
                prop_assert!(verify_consistency(old, new, &old_root, &new_root, &short).is_err());
            }
            let mut bad_root = old_root;
            bad_root[byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_consistency(old, new, &bad_root, &new_root, &proof).is_err());
            let mut bad_root = new_root;
            bad_root[byte % 32] ^= 1 << (bit % 8);
            prop_assert!(verify_consistency(old, new, &old_root, &bad_root, &proof).is_err());
            let mut long = proof.clone();
            long.push(new_root);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &long).is_err());
        }

        #[test]
        fn encode_decode_round_trips(seed: u64, n in 0usize..300) {
            let (frontier, _) = build(&events(seed, n));
            let bytes = frontier.encode();
            prop_assert_eq!(bytes.len(), 8 + 32 * (n as u64).count_ones() as usize);
            prop_assert_eq!(Frontier::decode(&bytes), Ok(frontier));
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(frontier) = Frontier::decode(&bytes) {
                prop_assert_eq!(frontier.encode(), bytes);
            }
        }

        #[test]
        fn decode_accepts_any_well_formed_length(size in 0u64..u64::MAX, fill: u8) {
            let mut bytes = size.to_le_bytes().to_vec();
            bytes.resize(8 + 32 * size.count_ones() as usize, fill);
            let frontier = Frontier::decode(&bytes).unwrap();
            prop_assert_eq!(frontier.size(), size);
            prop_assert_eq!(frontier.encode(), bytes);
        }
    }

    /// `Infallible` stores work with the generic error plumbing.
    #[test]
    fn infallible_source_compiles() {
        struct Zeros;
        impl NodeSource for Zeros {
            type Error = Infallible;
            fn node(&self, _: u8, _: u64) -> Result<Digest, Infallible> {
                Ok([0; 32])
            }
        }
        assert_eq!(root_at(&Zeros, 1).unwrap(), [0; 32]);
    }
}
