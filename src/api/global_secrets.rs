//! `GlobalSecret` routes: `/global-secrets[/{name}]` and the identical aliases
//! `/globalsecrets[/{name}]`. Their handlers are the Secret handlers of `secrets.rs`: the
//! route's lack of a `{mesh}` makes them GlobalSecret handlers.

pub(super) mod doc;

use super::AppState;
use super::openapi::Routes;
use super::secrets::{delete_secret, get_secret, list_secrets, put_secret};
use crate::store::SecretStore;

/// Routes of global secrets, under both of Kuma's spellings.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_global_secret_list, _, _>(list_secrets::<S>)
        .add::<doc::__path_get_global_secret, _, _>(get_secret::<S>)
        .add::<doc::__path_put_global_secret, _, _>(put_secret::<S>)
        .add::<doc::__path_delete_global_secret, _, _>(delete_secret::<S>)
        .add::<doc::__path_get_global_secret_list_alias, _, _>(list_secrets::<S>)
        .add::<doc::__path_get_global_secret_alias, _, _>(get_secret::<S>)
        .add::<doc::__path_put_global_secret_alias, _, _>(put_secret::<S>)
        .add::<doc::__path_delete_global_secret_alias, _, _>(delete_secret::<S>)
}
