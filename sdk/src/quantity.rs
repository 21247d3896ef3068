//! Kubernetes resource quantities ("100m", "0.5", "64Mi", "1G", "2e3") as
//! integers: CPU in millicores, everything else in base units (bytes).

/// Parses a quantity into base units scaled by `scale` (1000 for millicores,
/// 1 for bytes), rounding up as Kubernetes does for requests.
fn parse_scaled(q: &str, scale: f64) -> Option<i64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mut n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().ok()?;
            n *= 10f64.powi(exp);
            1.0
        }
        _ => return None,
    };
    let v = (n * mult * scale).ceil();
    if !v.is_finite() || v < 0.0 || v > i64::MAX as f64 {
        return None;
    }
    Some(v as i64)
}

/// CPU in millicores: "100m" → 100, "1.5" → 1500.
pub fn cpu_millis(q: &str) -> Option<i64> {
    parse_scaled(q, 1000.0)
}

/// Any other quantity in base units: "64Mi" → 67108864.
pub fn base_units(q: &str) -> Option<i64> {
    parse_scaled(q, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("100m"), Some(100));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(cpu_millis("2"), Some(2000));
        // metrics.k8s.io writes usage in nanocores.
        assert_eq!(cpu_millis("250000000n"), Some(250));
        assert_eq!(cpu_millis("1500u"), Some(2));
        assert_eq!(base_units("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(base_units("1G"), Some(1_000_000_000));
        assert_eq!(base_units("129e6"), Some(129_000_000));
        assert_eq!(base_units("110"), Some(110));
        assert_eq!(base_units("12Q"), None);
        assert_eq!(cpu_millis("-1"), None);
    }
}
