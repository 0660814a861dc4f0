//! Summaries of repeated runs: a median, its range, a ratio that stays absent
//! rather than dividing by nothing.

use serde_json::Value;

/// The median (the upper one of an even count); 0 for none.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The median and the range of a set of runs: a figure quoted with its range
/// says how far a rerun may land from it, which a single median does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values: a figure that was not measured stays absent
    /// rather than reading as 0. NaN values are left out.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        let m = median(&mut v);
        Some(Spread {
            median: m,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// `median [min-max]` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        format!(
            "{:.p$} [{:.p$}-{:.p$}]",
            self.median,
            self.min,
            self.max,
            p = prec
        )
    }

    /// `{"median", "min", "max", "runs"}`; the runs in measurement order.
    pub fn json(spread: Option<Spread>, runs: &[f64]) -> Value {
        match spread {
            Some(s) => serde_json::json!({
                "median": s.median, "min": s.min, "max": s.max, "runs": runs,
            }),
            None => Value::Null,
        }
    }
}

/// `a / b`, `None` when `b` is not positive (a setup that delivered nothing).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_none_one_and_many() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn spread_is_median_and_range() {
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let s = Spread::of(&[4.0, 1.0, 9.0, 3.0, 5.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (4.0, 1.0, 9.0));
        // an even count: the upper median, as `median` takes it
        let s = Spread::of(&[2.0, 1.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 2.0));
        let s = Spread::of(&[0.5, f64::NAN, 0.7, 0.6]).unwrap();
        assert_eq!((s.median, s.min, s.max), (0.6, 0.5, 0.7));
        assert_eq!(s.show(2), "0.60 [0.50-0.70]");
        let j = Spread::json(Some(s), &[0.5, 0.7, 0.6]);
        assert_eq!(j["median"], 0.6);
        assert_eq!(j["min"], 0.5);
        assert_eq!(j["max"], 0.7);
        assert_eq!(j["runs"][1], 0.7);
        assert!(Spread::json(None, &[]).is_null());
    }

    #[test]
    fn ratio_of_nothing_is_none() {
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
