//! Kuma's own database: the `resources` table of a Kuma control plane on Postgres
//! (reference §4.1), read as this crate's resources and written back in the form Kuma
//! writes. The SQL lives here; `kuma-secrets import --from-kuma` and `export --to-kuma`
//! (`src/cli/from_kuma.rs`, `to_kuma.rs`) drive it, and an embedder can too.
//!
//! - [`KumaSnapshot`] reads, never writes: one `REPEATABLE READ READ ONLY` transaction, one
//!   consistent point in time, while Kuma keeps serving. Each row ([`KumaRow`]) becomes the
//!   Universal document Kuma's API would show, validated as a file `import` is.
//! - [`KumaWriter`] writes in one transaction ([`KumaWriter::commit`], or nothing): rows as
//!   Kuma writes them ([`KumaResource`]), a row that says the same left alone, one that
//!   differs replaced only when asked.

mod read;
mod write;

pub use read::{KumaRow, KumaSnapshot};
pub use write::{KumaResource, KumaWriter, Written};

use crate::store::StoreError;
use crate::store::backend::db_error::{Op, map_db_error};
use sqlx::{ConnectOptions, PgConnection};
use std::str::FromStr;

/// A connection to the Kuma database at `url`.
async fn connect(url: &str) -> Result<PgConnection, StoreError> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(|_| {
        StoreError::UnsupportedUrl {
            url: crate::store::StoreUrl::parse(url)
                .map_or_else(|_| "(unparsable)".to_owned(), |u| u.to_string()),
        }
    })?;
    options
        .application_name("kuma-secrets")
        .connect()
        .await
        .map_err(db)
}

/// A driver error, mapped as the store maps its own.
fn db(err: sqlx::Error) -> StoreError {
    map_db_error(err, Op::Other)
}
