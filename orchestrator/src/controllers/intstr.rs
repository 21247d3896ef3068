//! Kubernetes' int-or-percent fields (`maxSurge`, `maxUnavailable`,
//! `minAvailable`) as pod counts.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// An int, or a percentage of `total` rounded up or down. Admission
/// refuses malformed percentages; one that slips through counts as 0%.
pub fn scaled(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    match v {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = pct.max(0) * i64::from(total.max(0));
            let n = if round_up {
                (num + 99) / 100
            } else {
                num / 100
            };
            n.clamp(0, i64::from(i32::MAX)) as i32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_and_percentages_rounded_either_way() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(scaled(&IntOrString::Int(3), 10, false), 3);
        assert_eq!(scaled(&IntOrString::Int(-1), 10, false), 0);
        assert_eq!(scaled(&pct("25%"), 10, true), 3);
        assert_eq!(scaled(&pct("25%"), 10, false), 2);
        assert_eq!(scaled(&pct("50%"), 3, true), 2);
        assert_eq!(scaled(&pct("bogus"), 3, true), 0);
    }
}
