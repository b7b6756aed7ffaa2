//! Text from outside made safe to print on a terminal or a log line: a token's name and
//! groups (chosen by whoever minted it), names read from a database that is not trusted.
//! Control characters (newline, carriage return, ESC and the rest of C0 and C1, DEL) are
//! shown escaped (`\n`, `\u{1b}`), so they cannot forge a log line, an audit row, or move
//! the cursor of the terminal that reads them.

use std::borrow::Cow;

/// Whether `text` holds a control character.
pub fn has_controls(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// `text` with every control character escaped; borrowed when there is none.
pub fn escaped(text: &str) -> Cow<'_, str> {
    if !has_controls(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escaped;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escaped("jane"), "jane");
        assert_eq!(escaped("ja\nne\u{1b}[31m\0"), "ja\\nne\\u{1b}[31m\\u{0}");
        assert_eq!(escaped("żółw \u{9b}"), "żółw \\u{9b}");
    }
}
