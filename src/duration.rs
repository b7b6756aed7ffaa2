//! Durations as users write them on the command line and in token requests: Go-style
//! `24h`, `30m`, `1h30m`, `90s`, plus days (`7d`), which Go lacks but operators reach for.

use std::time::Duration;

/// Parses `7d`, `24h`, `30m`, `1h30m`, `90s`; units may repeat (`1h30m`).
///
/// # Errors
/// What is wrong with `text` (no unit, an unknown unit, zero, or an overflow), naming it.
pub fn parse(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: use a number and a unit (d, h, m, s), e.g. 24h or 7d")
    };
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(invalid()),
        };
        let n: u64 = number.parse().map_err(|_| invalid())?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(invalid)?;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_days_parse() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        // `generate user-token --help` suggests 7d: days are accepted.
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["", "0s", "h", "10", "1w", "-1h", "99999999999999999999h"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(!parse("x").unwrap_err().contains("validFor"));
    }
}
