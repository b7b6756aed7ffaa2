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
