//! What both backends share: the rows written to the index but not yet to
//! the backend (they are batched), and the search that merges them with
//! the backend's own hits.

use std::collections::BTreeMap;

use stele_engine::context::ContextError;
use stele_engine::context::vector::dot;

/// A row waiting for the next batched write.
#[derive(Clone, Debug)]
pub(crate) struct Waiting {
    pub(crate) owner: String,
    pub(crate) memory_type: String,
    pub(crate) vector: Vec<f32>,
}

/// What a backend gives for a search: its best rows and whether it has no
/// more to give.
pub(crate) type Fetched = Result<(Vec<(String, f32)>, bool), ContextError>;

/// The `k` best rows `allow` accepts, over the waiting rows (scored
/// exactly) and the backend's rows. `fetch(n)` asks the backend for its
/// best `n` rows for `q` among `owners` and says whether it has no more
/// to give; `shadowed` says which backend rows are stale (rewritten or
/// removed since the last batch). The backend is asked again for four
/// times more while `allow` or `shadowed` rejects too many of its hits.
/// Ties are broken by key, so the order is deterministic.
pub(crate) fn merged_search(
    q: &[f32],
    k: usize,
    owners: &[String],
    waiting: &BTreeMap<String, Waiting>,
    shadowed: &dyn Fn(&str) -> bool,
    fetch: &mut dyn FnMut(usize) -> Fetched,
    allow: &mut dyn FnMut(&str) -> bool,
) -> Result<Vec<(String, f32)>, ContextError> {
    if k == 0 {
        return Ok(Vec::new());
    }
    let by_score = |a: &(String, f32), b: &(String, f32)| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    let mut pending: Vec<(String, f32)> = waiting
        .iter()
        .filter(|(_, w)| owners.is_empty() || owners.contains(&w.owner))
        .map(|(key, w)| (key.clone(), dot(q, &w.vector)))
        .collect();
    pending.sort_by(by_score);
    let mut n = (k * 2).max(20);
    loop {
        let (found, exhausted) = fetch(n)?;
        let mut all: Vec<(String, f32)> = found
            .into_iter()
            .filter(|(key, _)| !shadowed(key))
            .chain(pending.iter().cloned())
            .collect();
        all.sort_by(by_score);
        let mut out = Vec::with_capacity(k);
        for (key, score) in all {
            if allow(&key) {
                out.push((key, score));
                if out.len() == k {
                    return Ok(out);
                }
            }
        }
        if exhausted {
            return Ok(out);
        }
        n = n.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(owner: &str, v: [f32; 2]) -> Waiting {
        Waiting {
            owner: owner.into(),
            memory_type: "semantic".into(),
            vector: v.to_vec(),
        }
    }

    #[test]
    fn merges_waiting_rows_with_the_backend_and_skips_shadowed_ones() -> Result<(), ContextError> {
        let mut waiting = BTreeMap::new();
        waiting.insert("w1".to_owned(), row("a", [1.0, 0.0]));
        waiting.insert("w2".to_owned(), row("b", [1.0, 0.0]));
        // The backend still holds an old w1 (shadowed) and two rows of its own.
        let backend = [
            ("w1".to_owned(), 0.1),
            ("t1".to_owned(), 0.9),
            ("t2".to_owned(), 0.5),
        ];
        let mut asked = Vec::new();
        let mut fetch = |n: usize| {
            asked.push(n);
            Ok((backend.iter().take(n).cloned().collect(), true))
        };
        let shadowed = |k: &str| waiting.contains_key(k);
        let hits = merged_search(
            &[1.0, 0.0],
            3,
            &["a".into()],
            &waiting,
            &shadowed,
            &mut fetch,
            &mut |_| true,
        )?;
        assert_eq!(
            hits,
            vec![
                ("w1".to_owned(), 1.0),
                ("t1".to_owned(), 0.9),
                ("t2".to_owned(), 0.5)
            ]
        );
        assert_eq!(asked, vec![20]);
        Ok(())
    }

    #[test]
    fn asks_the_backend_for_more_while_allow_rejects_hits() -> Result<(), ContextError> {
        let waiting = BTreeMap::new();
        let rows: Vec<(String, f32)> = (0..200u16)
            .map(|i| (format!("r{i:03}"), 1.0 - f32::from(i) / 1000.0))
            .collect();
        let mut asked = Vec::new();
        let mut fetch = |n: usize| {
            asked.push(n);
            Ok((rows.iter().take(n).cloned().collect(), n >= rows.len()))
        };
        // Only every 50th row is allowed: 2 hits need 51+ rows.
        let mut allow = |k: &str| k[1..].parse::<u32>().is_ok_and(|n| n % 50 == 0);
        // k = 0 asks nothing.
        assert!(merged_search(&[1.0], 0, &[], &waiting, &|_| false, &mut fetch, &mut allow)?.is_empty());
        let hits = merged_search(&[1.0], 3, &[], &waiting, &|_| false, &mut fetch, &mut allow)?;
        let keys: Vec<&str> = hits.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["r000", "r050", "r100"]);
        assert_eq!(asked, vec![20, 80, 320]);
        Ok(())
    }
}
