//! `--var key=value` templating for `apply`, as kumactl's: `{{ key }}` (spaces optional)
//! is replaced by the value; a dotted key `a.b` is the same as `--var a.b=…` (kumactl builds
//! a nested context from it, which addresses the same `{{ a.b }}`).
//!
//! Two deliberate differences from kumactl's mustache: values are inserted as given (no
//! HTML escaping, which would corrupt YAML), and a placeholder with no `--var` is an error
//! naming it rather than silently becoming an empty string (an empty `data` would be
//! rejected later with a less helpful message).

use std::collections::BTreeMap;

/// Parses `key=value` (the value may contain `=`).
///
/// # Errors
/// A message when there is no `=` or the key is empty.
pub fn parse_var(var: &str) -> Result<(String, String), String> {
    match var.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("invalid --var {var:?}: expected key=value")),
    }
}

/// Replaces every `{{ key }}` in `text` with its value.
///
/// # Errors
/// The placeholders that have no value, or an unclosed `{{`.
pub fn render(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("unclosed {{ in template".into());
        };
        let key = after[..end].trim();
        match vars.get(key) {
            Some(value) => out.push_str(value),
            None => {
                if !missing.contains(&key) {
                    missing.push(key);
                }
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "no value for {}: pass --var {}=VALUE",
            missing
                .iter()
                .map(|k| format!("{{{{ {k} }}}}"))
                .collect::<Vec<_>>()
                .join(", "),
            missing[0]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_replaced_with_and_without_spaces() {
        let vars = BTreeMap::from([
            ("key".to_owned(), "a+b/c==".to_owned()),
            ("tls.cert".to_owned(), "Y2VydA==".to_owned()),
        ]);
        assert_eq!(
            render("data: {{ key }}\ncert: {{tls.cert}}\n", &vars).unwrap(),
            "data: a+b/c==\ncert: Y2VydA==\n"
        );
    }

    #[test]
    fn a_missing_value_is_named() {
        let err = render("data: {{ key }}", &BTreeMap::new()).unwrap_err();
        assert!(err.contains("--var key=VALUE"), "{err}");
    }

    #[test]
    fn vars_split_on_the_first_equals() {
        assert_eq!(parse_var("k=a=b").unwrap(), ("k".into(), "a=b".into()));
        assert!(parse_var("novalue").is_err());
    }
}
