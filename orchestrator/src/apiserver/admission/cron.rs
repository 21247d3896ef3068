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

impl Schedule {
    fn day_matches(&self, d: k8s_openapi::jiff::civil::Date) -> bool {
        let dom = self.days_of_month & (1 << d.day()) != 0;
        let dow = self.days_of_week & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        // Cron's rule: a `*` in either day field leaves the other to
        // decide; two restricted fields match when either does.
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time strictly after `after` that the schedule fires, read
    /// on the wall clock of `tz`. None if it never fires (Feb 30th).
    pub fn next_after(
        &self,
        after: k8s_openapi::jiff::Timestamp,
        tz: &k8s_openapi::jiff::tz::TimeZone,
    ) -> Option<k8s_openapi::jiff::Timestamp> {
        use k8s_openapi::jiff::civil::Time;
        use k8s_openapi::jiff::ToSpan;
        let start = tz.to_datetime(after);
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        // Skipping whole months, days and hours, five years of searching
        // takes a few thousand steps at most.
        let limit = start.year() + 5;
        while dt.year() <= limit {
            if self.months & (1 << dt.month()) == 0 {
                dt = dt
                    .first_of_month()
                    .date()
                    .to_datetime(Time::midnight())
                    .checked_add(1.month())
                    .ok()?;
            } else if !self.day_matches(dt.date()) {
                dt = dt.date().tomorrow().ok()?.to_datetime(Time::midnight());
            } else if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
            } else if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
            } else {
                let ts = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
                // A wall-clock time repeated by a DST change fires once.
                if ts > after {
                    return Some(ts);
                }
                dt = dt.checked_add(1.minute()).ok()?;
            }
        }
        None
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
    fn next_times_follow_the_fields_and_the_time_zone() {
        use k8s_openapi::jiff::tz::TimeZone;
        use k8s_openapi::jiff::Timestamp;
        let at = |s: &str| s.parse::<Timestamp>().expect("timestamp");
        let utc = TimeZone::UTC;
        let every = Schedule::parse("* * * * *").expect("parse");
        assert_eq!(
            every.next_after(at("2026-01-01T10:00:30Z"), &utc),
            Some(at("2026-01-01T10:01:00Z"))
        );
        let quarter = Schedule::parse("*/15 9 * * mon").expect("parse");
        // Thursday 2026-01-01 → Monday 2026-01-05 09:00.
        assert_eq!(
            quarter.next_after(at("2026-01-01T10:00:00Z"), &utc),
            Some(at("2026-01-05T09:00:00Z"))
        );
        assert_eq!(
            quarter.next_after(at("2026-01-05T09:00:00Z"), &utc),
            Some(at("2026-01-05T09:15:00Z"))
        );
        let yearly = Schedule::parse("@yearly").expect("parse");
        assert_eq!(
            yearly.next_after(at("2026-03-01T00:00:00Z"), &utc),
            Some(at("2027-01-01T00:00:00Z"))
        );
        let never = Schedule::parse("0 0 30 2 *").expect("parse");
        assert_eq!(never.next_after(at("2026-03-01T00:00:00Z"), &utc), None);
        let fixed = TimeZone::fixed(k8s_openapi::jiff::tz::offset(2));
        let nine = Schedule::parse("0 9 * * *").expect("parse");
        assert_eq!(
            nine.next_after(at("2026-01-01T00:00:00Z"), &fixed),
            Some(at("2026-01-01T07:00:00Z"))
        );
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
