//! kumactl's table output: left-aligned columns three spaces apart, and kubectl's
//! human-readable ages (`45s`, `5m10s`, `3h`, `2d`, `1y30d`).

use chrono::{DateTime, Utc};

/// Renders rows under a header, columns padded to their widest cell plus three spaces.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    // Cells carry outside text (token names, request ids): never a raw control character.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| crate::printable::escaped(cell).into_owned())
                .collect()
        })
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<width$}", width = widths[i] + 3));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Time since `then`, as kubectl's `HumanDuration` prints it.
pub fn age(then: &DateTime<Utc>, now: &DateTime<Utc>) -> String {
    let seconds = (*now - *then).num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    let seconds = seconds.max(0);
    let minutes = seconds / 60;
    let hours = minutes / 60;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        two_units((minutes, 'm'), (seconds % 60, 's'))
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        two_units((hours, 'h'), (minutes % 60, 'm'))
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        two_units((hours / 24, 'd'), (hours % 24, 'h'))
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        two_units((hours / 24 / 365, 'y'), ((hours / 24) % 365, 'd'))
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// `3h` or `3h20m`: the larger unit, and the smaller one unless it is zero.
fn two_units((major, major_unit): (i64, char), (minor, minor_unit): (i64, char)) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor}{minor_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn cells_with_control_characters_are_printed_escaped() {
        let rows = vec![vec![
            "1".to_owned(),
            "jane\n2 forged-row\u{1b}[2J".to_owned(),
        ]];
        let out = render(&["VERSION", "ACTOR"], &rows);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("jane\\n2 forged-row\\u{1b}[2J"), "{out}");
        assert!(!out.contains('\u{1b}'));
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let now = Utc::now();
        let cases = [
            (Duration::seconds(5), "5s"),
            (Duration::seconds(119), "119s"),
            (Duration::seconds(310), "5m10s"),
            (Duration::minutes(42), "42m"),
            (Duration::minutes(200), "3h20m"),
            (Duration::hours(30), "30h"),
            (Duration::hours(50), "2d2h"),
            (Duration::days(30), "30d"),
            (Duration::days(800), "2y70d"),
            (Duration::days(4000), "10y"),
        ];
        for (ago, expected) in cases {
            assert_eq!(age(&(now - ago), &now), expected);
        }
        assert_eq!(age(&(now + Duration::seconds(30)), &now), "<invalid>");
    }

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let out = render(
            &["MESH", "NAME", "AGE"],
            &[vec!["default".into(), "a-long-name".into(), "1m".into()]],
        );
        assert_eq!(
            out,
            "MESH      NAME          AGE\ndefault   a-long-name   1m\n"
        );
    }
}
