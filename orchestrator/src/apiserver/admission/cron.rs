//! Standard five-field cron schedules, as CronJob's `spec.schedule` takes
//! them (names for months and weekdays, steps, ranges, lists, and the
//! `@hourly`-style macros).

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub minutes: u64,
    pub hours: u64,
    pub days_of_month: u64,
    pub months: u64,
    pub days_of_week: u64,
    /// Cron's rule: when both day fields are restricted, either may match.
    pub dom_star: bool,
    pub dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unrecognized descriptor: {other}"))
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {s}",
                fields.len()
            ));
        }
        let mut dow = field(fields[4], 0, 7, &DAYS, "day of week")?;
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        Ok(Schedule {
            minutes: field(fields[0], 0, 59, &[], "minute")?,
            hours: field(fields[1], 0, 23, &[], "hour")?,
            days_of_month: field(fields[2], 1, 31, &[], "day of month")?,
            months: field(fields[3], 1, 12, &MONTHS, "month")?,
            days_of_week: dow,
            dom_star: fields[2].starts_with('*') || fields[2].starts_with('?'),
            dow_star: fields[4].starts_with('*') || fields[4].starts_with('?'),
        })
    }
}

fn value(s: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = names.iter().position(|n| *n == lower) {
        // Month names count from 1 (the field's minimum), weekday names from 0.
        return Ok(i as u32 + min);
    }
    let n: u32 = s
        .parse()
        .map_err(|_| format!("failed to parse {what} value {s:?}"))?;
    if n < min || n > max {
        return Err(format!("{what} value {n} is beyond range [{min}, {max}]"));
    }
    Ok(n)
}

fn field(s: &str, min: u32, max: u32, names: &[&str], what: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .map_err(|_| format!("failed to parse {what} step {st:?}"))?;
                if st == 0 {
                    return Err(format!("{what} step must be positive"));
                }
                (r, st)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, min, max, names, what)?,
                value(b, min, max, names, what)?,
            )
        } else {
            let v = value(range, min, max, names, what)?;
            // "5/15" means from 5 to the end in steps of 15.
            (v, if step > 1 { max } else { v })
        };
        if lo > hi {
            return Err(format!("{what} range {range:?} is backwards"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standard_forms() {
        let s = Schedule::parse("*/15 9-17 * JAN-mar mon,fri").expect("parse");
        assert_eq!(s.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(s.months, 0b1110);
        assert_eq!(s.days_of_week, 1 << 1 | 1 << 5);
        assert!(Schedule::parse("@hourly").is_ok());
        assert_eq!(Schedule::parse("0 0 * * 7").expect("parse").days_of_week, 1);
    }

    #[test]
    fn rejects_bad_schedules() {
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "*/0 * * * *",
            "@sometimes",
            "TZ=UTC * * * * *",
            "5-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad} should fail");
        }
    }
}
