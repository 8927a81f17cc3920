//! Time intervals `(start, end)`, as the compiler's simulator (compute stretched beside
//! batches in flight) and the runtime's profile (contention evidence, busy time) both
//! measure them: the union of a set of spans, and how long a span overlaps it.

/// The union of `spans` as disjoint intervals in order of start; spans that are empty or
/// not finite are left out.
pub fn union(mut spans: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    spans.retain(|(a, b)| a.is_finite() && b.is_finite() && b > a);
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// How long `(a, b)` overlaps `union` (disjoint intervals in order, as [`union`] gives):
/// from the first interval that ends after `a`, those that start before `b`.
pub fn overlap(union: &[(f64, f64)], (a, b): (f64, f64)) -> f64 {
    let from = union.partition_point(|iv| iv.1 <= a);
    union[from..].iter().take_while(|iv| iv.0 < b).map(|iv| (iv.1.min(b) - iv.0.max(a)).max(0.0)).sum()
}

/// The total length of the union of `spans`.
pub fn union_length(spans: Vec<(f64, f64)>) -> f64 {
    union(spans).iter().map(|(a, b)| b - a).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_measured_on_the_union_of_spans() {
        let u = union(vec![(3.0, 4.0), (0.5, 2.0), (0.0, 1.0), (f64::NAN, 1.0), (5.0, 5.0)]);
        assert_eq!(u, vec![(0.0, 2.0), (3.0, 4.0)]);
        assert_eq!(overlap(&u, (1.5, 3.5)), 1.0);
        assert_eq!(overlap(&u, (2.0, 3.0)), 0.0);
        assert_eq!(overlap(&u, (-1.0, 9.0)), 3.0);
        assert_eq!(overlap(&[], (0.0, 1.0)), 0.0);
        assert_eq!(union_length(vec![(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]), 3.0);
    }
}
