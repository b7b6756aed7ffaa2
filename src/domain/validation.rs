//! Validation errors: one error that lists every violation, as Kuma's
//! `ValidationError` does, so a client fixes all of its mistakes in one round trip.

use std::fmt;

/// One broken rule: the field it concerns (Kuma's path syntax, e.g. `labels["k"]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Path of the offending field, e.g. `name`, `mesh`, `data`, `labels["a/b"]`.
    pub field: String,
    /// Human-readable reason, using Kuma's wording where Kuma has one.
    pub reason: String,
}

impl Violation {
    /// A violation of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Every violation found in one input. Never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// The violations, in the order the fields were checked.
    pub violations: Vec<Violation>,
}

impl ValidationError {
    /// An error holding a single violation.
    pub fn single(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            violations: vec![Violation::new(field, reason)],
        }
    }

    /// Adds a violation.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.violations.push(Violation::new(field, reason));
    }

    /// Records the error of `result`, if any, and returns its value.
    pub fn collect<T>(&mut self, result: Result<T, ValidationError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.violations.extend(err.violations);
                None
            }
        }
    }

    /// `Ok(value)` if nothing was recorded, else `Err(self)`.
    ///
    /// # Errors
    /// Returns `self` when it holds at least one violation.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, ValidationError> {
        if self.violations.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }

    /// Adds every violation of `other`, each field prefixed with `prefix` (to say which
    /// resource of a batch it concerns).
    pub fn extend_prefixed(&mut self, prefix: &str, other: ValidationError) {
        for v in other.violations {
            self.push(format!("{prefix}{}", v.field), v.reason);
        }
    }

    /// True when no violation was recorded.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.reason)?;
        }
        Ok(())
    }
}

/// The reason given for a NUL character: Postgres cannot store one in text or JSON, so it
/// is refused everywhere on the way in, on every backend alike.
pub const NUL_REASON: &str = "must not contain a NUL character";

/// Refuses a NUL character in `text`, as a violation of `field`.
///
/// # Errors
/// The violation.
pub fn reject_nul(field: &str, text: &str) -> Result<(), ValidationError> {
    if text.contains('\0') {
        Err(ValidationError::single(field, NUL_REASON))
    } else {
        Ok(())
    }
}

/// Refuses a NUL character in any key or string of a JSON value, naming where it is
/// (`path` is the value's own field path, "" for the top).
///
/// # Errors
/// A violation per offending key or string.
pub fn reject_nul_in_json(path: &str, value: &serde_json::Value) -> Result<(), ValidationError> {
    fn walk(path: &str, value: &serde_json::Value, errors: &mut ValidationError) {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match value {
            serde_json::Value::String(text) if text.contains('\0') => {
                errors.push(path, NUL_REASON);
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), item, errors);
                }
            }
            serde_json::Value::Object(fields) => {
                for (key, item) in fields {
                    if key.contains('\0') {
                        errors.push(join(&key.replace('\0', "\\0")), NUL_REASON);
                    } else {
                        walk(&join(key), item, errors);
                    }
                }
            }
            _ => {}
        }
    }
    let mut errors = ValidationError::default();
    walk(path, value, &mut errors);
    errors.into_result(|| ())
}
