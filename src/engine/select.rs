//! Weighted random polling over an origin set, skipping excluded (blocked or already tried)
//! origins. Weight 0 is never picked.

use crate::config::OriginSet;

/// Draws before falling back to an exact scan when many origins are excluded.
const REJECTION_DRAWS: usize = 8;

/// Index of the picked target, or `None` when every target with a weight is excluded.
/// `any_excluded` lets the common case (nothing blocked) skip the exclusion checks.
pub fn pick(
    set: &OriginSet,
    random: &mut dyn FnMut() -> u64,
    any_excluded: bool,
    excluded: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let total = set.total_weight();
    if total == 0 {
        return None;
    }
    let draw = |r: u64| -> usize {
        let point = r % total;
        set.cumulative_weights.partition_point(|&c| c <= point)
    };
    if !any_excluded {
        return Some(draw(random()));
    }
    // Rejection sampling keeps the exact conditional distribution and is O(log n) per draw.
    for _ in 0..REJECTION_DRAWS {
        let index = draw(random());
        if !excluded(index) {
            return Some(index);
        }
    }
    let available: u64 = set
        .targets
        .iter()
        .enumerate()
        .filter(|(i, _)| !excluded(*i))
        .map(|(_, t)| u64::from(t.weight))
        .sum();
    if available == 0 {
        return None;
    }
    let mut point = random() % available;
    for (i, target) in set.targets.iter().enumerate() {
        if excluded(i) {
            continue;
        }
        let weight = u64::from(target.weight);
        if point < weight {
            return Some(i);
        }
        point -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::host::Host;
    use crate::testing::FakeHost;

    fn master_of(ips: &str) -> OriginSet {
        let text = format!(r#"{{"domains":[{{"domain":"a.com","master":{{"ips":{ips}}}}}]}}"#);
        parse(text.as_bytes()).unwrap().domains[0].master.clone()
    }

    fn counts(
        set: &OriginSet,
        draws: usize,
        excluded: &dyn Fn(usize) -> bool,
        any: bool,
    ) -> Vec<usize> {
        let mut host = FakeHost::new(42);
        let mut counts = vec![0; set.targets.len()];
        let mut random = || host.random_u64();
        for _ in 0..draws {
            counts[pick(set, &mut random, any, excluded).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn weights_one_to_three() {
        let set = master_of(r#"["10.0.0.1::1","10.0.0.2::3"]"#);
        let c = counts(&set, 40_000, &|_| false, false);
        let share = c[1] as f64 / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn weight_zero_is_never_picked() {
        let set = master_of(r#"["10.0.0.1::0","10.0.0.2::1","10.0.0.3::2"]"#);
        let c = counts(&set, 10_000, &|_| false, false);
        assert_eq!(c[0], 0);
        let c = counts(&set, 10_000, &|i| i == 2, true);
        assert_eq!((c[0], c[2]), (0, 0));
    }

    #[test]
    fn excluded_are_skipped_and_rest_keep_their_ratio() {
        let set = master_of(r#"["10.0.0.1::1","10.0.0.2::1","10.0.0.3::2"]"#);
        let c = counts(&set, 30_000, &|i| i == 0, true);
        assert_eq!(c[0], 0);
        let share = c[2] as f64 / 30_000.0;
        assert!((share - 2.0 / 3.0).abs() < 0.015, "{c:?}");
    }

    #[test]
    fn heavily_excluded_falls_back_to_scan() {
        let ips: Vec<String> = (1..=200)
            .map(|i| format!("\"10.0.{}.{}\"", i / 250, i % 250))
            .collect();
        let set = master_of(&format!("[{}]", ips.join(",")));
        let c = counts(&set, 2_000, &|i| i != 137, true);
        assert_eq!(c[137], 2_000);
    }

    #[test]
    fn all_excluded_gives_none() {
        let set = master_of(r#"["10.0.0.1","10.0.0.2"]"#);
        let mut host = FakeHost::new(1);
        let mut random = || host.random_u64();
        assert_eq!(pick(&set, &mut random, true, &|_| true), None);
    }
}
