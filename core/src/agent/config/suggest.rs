//! "Did you mean" suggestions for unknown keys.

/// The expected key closest to `key`, if it is close enough to be a typo.
pub(super) fn suggest<'a>(key: &str, expected: &[&'a str]) -> Option<&'a str> {
    if key.len() > 64 {
        return None;
    }
    expected
        .iter()
        .map(|candidate| (edit_distance(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 3.min(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, in chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::hcl::{LANE_KEYS, QUEUE_KEYS};
    use super::*;

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(suggest("max_pendng", QUEUE_KEYS), Some("max_pending"));
        assert_eq!(suggest("zzz", QUEUE_KEYS), None);
        assert_eq!(suggest("mod", &LANE_KEYS), Some("mode"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
