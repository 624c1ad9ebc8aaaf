//! Statistics of the A/B bench: median, min, max, ratios against a
//! baseline, and the interleaved run order. Pure functions, unit-tested.

/// Median of `xs` (the mean of the two middle values for an even count);
/// `None` for no samples. NaNs are ignored.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn min(xs: &[f64]) -> Option<f64> {
    xs.iter().copied().filter(|x| !x.is_nan()).reduce(f64::min)
}

pub fn max(xs: &[f64]) -> Option<f64> {
    xs.iter().copied().filter(|x| !x.is_nan()).reduce(f64::max)
}

/// `value / baseline`, or `None` when the baseline is zero or missing.
pub fn ratio(value: f64, baseline: f64) -> Option<f64> {
    (baseline > 0.0 && baseline.is_finite() && value.is_finite()).then(|| value / baseline)
}

/// Median, min and max of one variant × workload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Option<Self> {
        Some(Self {
            n: xs.iter().filter(|x| !x.is_nan()).count(),
            median: median(xs)?,
            min: min(xs)?,
            max: max(xs)?,
        })
    }
}

/// One slot of the run order: which round, which variant (an index into
/// the variant list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub round: usize,
    pub variant: usize,
}

/// The interleaved order of `rounds` rounds over `variants` variants:
/// A B C D A B C D ..., so slow drift of the machine (thermal, other
/// tenants) spreads over every variant instead of biasing one.
pub fn schedule(variants: usize, rounds: usize) -> Vec<Slot> {
    (0..rounds)
        .flat_map(|round| (0..variants).map(move |variant| Slot { round, variant }))
        .collect()
}

/// The index of the best (highest median) among `candidates`, given each
/// one's median (`None`: no figure). Ties go to the first.
pub fn best(candidates: &[(usize, Option<f64>)]) -> Option<usize> {
    best_by(candidates, true)
}

/// [`best`] by the highest median, or by the lowest when `higher` is false
/// (a cost such as CPU %).
pub fn best_by(candidates: &[(usize, Option<f64>)], higher: bool) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for &(i, m) in candidates {
        if let Some(m) = m.filter(|m| !m.is_nan()) {
            if best.is_none_or(|(_, b)| if higher { m > b } else { m < b }) {
                best = Some((i, m));
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[5.0, 9.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0, 3.0]), Some(2.0));
    }

    #[test]
    fn min_max() {
        let xs = [5.0, -1.0, 12.5, 3.0];
        assert_eq!(min(&xs), Some(-1.0));
        assert_eq!(max(&xs), Some(12.5));
        assert_eq!(min(&[]), None);
        assert_eq!(max(&[]), None);
        let s = Summary::of(&[10.0, 30.0, 20.0, 40.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                n: 4,
                median: 25.0,
                min: 10.0,
                max: 40.0
            }
        );
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(1200.0, 600.0), Some(2.0));
        assert_eq!(ratio(300.0, 600.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn interleaving_order() {
        let s = schedule(4, 3);
        assert_eq!(s.len(), 12);
        let order: Vec<(usize, usize)> = s.iter().map(|s| (s.round, s.variant)).collect();
        assert_eq!(
            order,
            vec![
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (2, 0),
                (2, 1),
                (2, 2),
                (2, 3)
            ]
        );
        // Every variant runs once per round, never twice in a row.
        for w in s.windows(2) {
            assert_ne!(w[0].variant, w[1].variant);
        }
        assert_eq!(schedule(2, 1).len(), 2);
        assert!(schedule(0, 5).is_empty());
        assert!(schedule(3, 0).is_empty());
    }

    #[test]
    fn best_of() {
        assert_eq!(best(&[(2, Some(500.0)), (3, Some(450.0))]), Some(2));
        assert_eq!(best(&[(2, None), (3, Some(450.0))]), Some(3));
        assert_eq!(best(&[(2, Some(1.0)), (3, Some(1.0))]), Some(2));
        assert_eq!(best(&[(2, None)]), None);
        assert_eq!(best_by(&[(2, Some(5.0)), (3, Some(4.5))], false), Some(3));
        assert_eq!(best_by(&[(2, Some(1.0)), (3, Some(1.0))], false), Some(2));
        assert_eq!(best_by(&[(2, None), (3, Some(f64::NAN))], false), None);
    }
}
