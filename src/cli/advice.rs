//! What to type about an error: the library's errors say what is wrong; the command line
//! adds which of its commands or flags fixes it.

use crate::store::{SchemaError, StoreError};

/// The error and its causes on one line, with the command line's advice for the first
/// store error in the chain that has some.
pub fn describe(err: &anyhow::Error) -> String {
    let line = crate::error_chain(err.as_ref());
    match err.chain().find_map(advice) {
        Some(advice) => format!("{line}; {advice}"),
        None => line,
    }
}

/// The advice for one error of the chain, if it is a store error the command line has
/// advice for.
fn advice(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let schema = match err.downcast_ref::<StoreError>() {
        Some(StoreError::Schema(schema)) => schema,
        Some(StoreError::MissingKeys { .. }) => {
            return Some(
                "pass the keyring that has them with --encryption-keys (KUMA_SECRETS_ENCRYPTION_KEYS)",
            );
        }
        Some(_) => return None,
        None => err.downcast_ref::<SchemaError>()?,
    };
    match schema {
        SchemaError::Behind { .. } => Some("run \"kuma-secrets migrate up --store URL\" first"),
        SchemaError::Newer { .. } => {
            Some("run a newer kuma-secrets, or pass --tolerate-newer-schema")
        }
        SchemaError::Dirty { .. } => Some("then rerun \"kuma-secrets migrate up\""),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_behind_gets_the_migrate_command() {
        let err = anyhow::Error::new(StoreError::Schema(SchemaError::Behind {
            database: 0,
            binary: 9,
        }))
        .context("cannot open the store");
        let line = describe(&err);
        assert!(
            line.starts_with("cannot open the store: database schema is behind"),
            "{line}"
        );
        assert!(
            line.ends_with("run \"kuma-secrets migrate up --store URL\" first"),
            "{line}"
        );
    }

    #[test]
    fn errors_without_advice_are_left_as_they_are() {
        let err = anyhow::anyhow!("plain");
        assert_eq!(describe(&err), "plain");
    }
}
