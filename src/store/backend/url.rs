//! [`StoreUrl`]: where a store lives, parsed once (by clap, or by [`StoreUrl::parse`]): its
//! backend, the SQLite file and the keyring file beside it, the [`PoolMode`] of a
//! connection pooler in front of Postgres, and a `Display` that never shows a password
//! (neither in the userinfo nor in a `password=` query parameter).

use crate::store::contract::{Result, StoreError};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Which backend a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `postgres://…` or `postgresql://…`
    Postgres,
    /// `sqlite://PATH` or `sqlite:PATH`
    Sqlite,
}

impl Backend {
    /// The cargo feature that builds this backend, which is also its URL scheme.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// How the connection pooler between the store and Postgres (if any) hands out server
/// connections: the `pool_mode` parameter of a Postgres store URL, named and valued as
/// PgBouncer's own setting, so the URL says what the pooler's configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// `pool_mode=session` (or none): each connection is one Postgres session, as with a
    /// direct connection or PgBouncer in session mode. Statements are prepared once per
    /// connection under a name and reused.
    #[default]
    Session,
    /// `pool_mode=transaction`: each transaction may run on another server connection
    /// (PgBouncer in transaction mode; before 1.21 it does not carry prepared statements
    /// across). Every statement then runs inside a transaction, prepared without a name, so
    /// nothing outlives it on the server: one more round trip per statement.
    Transaction,
}

/// The URL parameter that sets the [`PoolMode`]; removed before the URL reaches the driver.
const POOL_MODE: &str = "pool_mode";

/// A store URL: `postgres://USER:PASSWORD@HOST:PORT/DB[?pool_mode=transaction]` or
/// `sqlite://PATH`.
///
/// `Display` and `Debug` redact passwords; [`StoreUrl::expose`] gives the URL to connect
/// with.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    raw: String,
    backend: Backend,
    pool_mode: PoolMode,
}

impl StoreUrl {
    /// Parses a store URL.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`] (password redacted) for any other scheme;
    /// [`StoreError::BadUrlParameter`] for a `pool_mode` that is not a mode.
    pub fn parse(url: &str) -> Result<Self> {
        let (backend, pool_mode) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                (Backend::Postgres, split_pool_mode(url)?.1)
            } else if url.starts_with("sqlite:") {
                (Backend::Sqlite, PoolMode::Session)
            } else {
                return Err(StoreError::UnsupportedUrl { url: redact(url) });
            };
        Ok(Self {
            raw: url.to_owned(),
            backend,
            pool_mode,
        })
    }

    /// The backend it names.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL as given, password included: only for connecting, never for printing.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The pooler's mode named by `pool_mode` (Postgres; SQLite has no pooler).
    pub fn pool_mode(&self) -> PoolMode {
        self.pool_mode
    }

    /// The SQLite database file; `None` for Postgres and for an in-memory database.
    pub fn sqlite_path(&self) -> Option<&Path> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let rest = self
            .raw
            .strip_prefix("sqlite://")
            .or_else(|| self.raw.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path.contains(":memory:") {
            return None;
        }
        Some(Path::new(path))
    }

    /// Where the embedded store keeps its keyring by default: `<db file>.keys`, next to the
    /// database; `None` for Postgres and for an in-memory database.
    pub fn default_keyring_path(&self) -> Option<PathBuf> {
        let mut keys = self.sqlite_path()?.as_os_str().to_owned();
        keys.push(".keys");
        Some(PathBuf::from(keys))
    }
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self> {
        Self::parse(url)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// Splits the `pool_mode` parameter off a Postgres URL: the URL the driver connects with,
/// and the mode.
///
/// # Errors
/// [`StoreError::BadUrlParameter`] for a value other than `session` or `transaction`.
pub(crate) fn split_pool_mode(url: &str) -> Result<(String, PoolMode)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), PoolMode::Session));
    };
    let mut mode = PoolMode::Session;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((POOL_MODE, value)) => {
                mode = match value {
                    "session" => PoolMode::Session,
                    "transaction" => PoolMode::Transaction,
                    other => {
                        return Err(StoreError::BadUrlParameter {
                            url: redact(url),
                            reason: format!(
                                "{POOL_MODE}={other:?} is not a mode: use session (the default) or transaction (PgBouncer's pool_mode = transaction)"
                            ),
                        });
                    }
                };
            }
            _ => kept.push(pair),
        }
    }
    let driver_url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((driver_url, mode))
}

/// `url` with any password replaced by `***`: in the userinfo, and in a `password=` query
/// parameter (as libpq allows).
pub(crate) fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(redact_query(query))),
        None => (url, None),
    };
    let base = redact_userinfo(base);
    match query {
        Some(query) => format!("{base}?{query}"),
        None => base,
    }
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_chosen_by_scheme() {
        let url = |s: &str| StoreUrl::parse(s).unwrap().backend();
        assert_eq!(url("postgresql://x/y"), Backend::Postgres);
        assert_eq!(url("postgres://x/y"), Backend::Postgres);
        assert_eq!(url("sqlite://a.db"), Backend::Sqlite);
        assert!(matches!(
            StoreUrl::parse("mysql://u:p@h/d"),
            Err(StoreError::UnsupportedUrl { url }) if url == "mysql://u:***@h/d"
        ));
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        let shown = |s: &str| StoreUrl::parse(s).unwrap().to_string();
        assert_eq!(
            shown("postgres://kuma:s3cret@db:5432/kuma?sslmode=disable"),
            "postgres://kuma:***@db:5432/kuma?sslmode=disable"
        );
        assert_eq!(shown("postgres://kuma@db/kuma"), "postgres://kuma@db/kuma");
        let url = StoreUrl::parse("postgres://a:b@c/d").unwrap();
        assert!(!format!("{url:?}").contains(":b@"));
        assert_eq!(url.expose(), "postgres://a:b@c/d");
    }

    #[test]
    fn passwords_in_query_parameters_are_redacted_too() {
        let shown = |s: &str| StoreUrl::parse(s).unwrap().to_string();
        assert_eq!(
            shown("postgres://kuma@db/kuma?sslmode=disable&password=s3cret&user=x"),
            "postgres://kuma@db/kuma?sslmode=disable&password=***&user=x"
        );
        assert_eq!(
            shown("postgres://u:p@db/kuma?PASSWORD=s3cret"),
            "postgres://u:***@db/kuma?PASSWORD=***"
        );
    }

    #[test]
    fn pool_mode_is_read_and_stripped_before_the_driver_sees_the_url() {
        let mode = |s: &str| StoreUrl::parse(s).unwrap().pool_mode();
        assert_eq!(mode("postgres://h/d"), PoolMode::Session);
        assert_eq!(mode("postgres://h/d?pool_mode=session"), PoolMode::Session);
        assert_eq!(
            mode("postgres://h/d?sslmode=disable&pool_mode=transaction"),
            PoolMode::Transaction
        );
        assert_eq!(
            split_pool_mode("postgres://h/d?pool_mode=transaction&sslmode=disable").unwrap(),
            (
                "postgres://h/d?sslmode=disable".to_owned(),
                PoolMode::Transaction
            )
        );
        assert_eq!(
            split_pool_mode("postgres://h/d?pool_mode=transaction")
                .unwrap()
                .0,
            "postgres://h/d"
        );
        let bad = StoreUrl::parse("postgres://u:pw@h/d?pool_mode=statement").unwrap_err();
        let message = bad.to_string();
        assert!(
            message.contains("pool_mode=\"statement\" is not a mode"),
            "{message}"
        );
        assert!(!message.contains("pw"), "{message}");
    }

    #[test]
    fn the_default_keyring_sits_next_to_the_database() {
        let keys = |s: &str| StoreUrl::parse(s).unwrap().default_keyring_path();
        assert_eq!(
            keys("sqlite://kuma-secrets.db"),
            Some(PathBuf::from("kuma-secrets.db.keys"))
        );
        assert_eq!(
            keys("sqlite:///var/lib/ks/db.sqlite?mode=rwc"),
            Some(PathBuf::from("/var/lib/ks/db.sqlite.keys"))
        );
        assert_eq!(keys("sqlite::memory:"), None);
        assert_eq!(keys("postgres://h/d"), None);
    }
}
