//! Multi-zone, as Kuma's: a global store that owns Meshes and the Secrets and GlobalSecrets
//! made there, and zone stores that follow it (`serve --mode zone --zone NAME --global-url
//! URL`).
//!
//! # Design
//! - **The zone pulls, the global store never waits on a zone.** A zone reads the global
//!   store's HTTP API like any client: it lists everything (Meshes, then each Mesh's
//!   Secrets, then GlobalSecrets), then follows the change feed (`/_changes`, a long poll)
//!   from the revision the first list reflected (`Kuma-Secrets-Revision`), so no change
//!   made during the listing is missed. Each change names a resource; the zone reads its
//!   state now from the global store and applies it (or deletes it), so applying is
//!   idempotent and a change seen twice costs a read, never a wrong state.
//! - **Where it is, durably.** After each page of changes the zone records the revision it
//!   applied (`zone_sync` table); a restart goes on from there, not from zero. When the
//!   global store has pruned its feed past that revision it answers 410 Gone: the zone
//!   lists again and reconciles ([`zone::ZoneSync`]): what is gone from the global store is
//!   deleted on the zone.
//! - **What is the global store's is marked and read-only on the zone.** Every resource a
//!   zone holds from the global store carries `kuma.io/origin: global`; the zone's API
//!   refuses to write or delete those (and any Mesh) with Kuma's 405 and message. A zone's
//!   own Secrets (`kuma.io/origin: zone`) are never touched by the sync, even when the
//!   global store has one of the same name (that one is skipped, and logged).
//! - **What Kuma never sends to zones is never applied**: the GlobalSecrets
//!   `admin-user-token`, `user-token-signing-key*`, `user-token-revocations`,
//!   `envoy-admin-ca`, `inter-cp-ca` and `zone-token-signing-key*` ([`sent_to_zones`]); a
//!   zone keeps its own admin token and signing keys, and receives the public half of each
//!   zone-token signing key (`zone-token-signing-public-key-N`), as in Kuma. The global
//!   store filters them out for a zone (lists, items, the feed); the zone skips them too,
//!   for a zone that follows with an admin's token.
//! - **Zones authenticate with zone tokens** (`generate zone-token --zone NAME`, signed by
//!   the global store's `zone-token-signing-key-N`): a zone token reads what zones are sent
//!   and nothing else, is honoured from loopback too, and once revoked
//!   (`zone-token-revocations`) is refused at once, an open long poll included.
//! - **The global store sees its zones** ([`global::ZoneRegistry`], `GET /zones`): each
//!   zone's long poll says which revision it holds.
//! - **Each zone seals with its own keys.** Values cross in clear over the API (TLS when
//!   the global store serves it) and are sealed by the zone's store as any write is.
//! - **A zone keeps serving while the global store is away**: it serves what it holds;
//!   `/readyz` (still 200 once it has synced once) says since when the global store does
//!   not answer and which revision the zone holds; it retries with backoff (0.5 s doubling
//!   to 30 s).

pub mod global;
pub mod zone;

/// Whether Kuma's global control plane sends the resource `name` of `resource_type` to
/// zones (`GlobalProvidedFilter`, `pkg/kds/context/context.go`): every Mesh and Secret, and
/// every GlobalSecret but the admin token, the user-token signing keys and revocations, the
/// envoy-admin and inter-CP CAs, and the zone-token signing keys (zones receive their
/// public halves, `zone-token-signing-public-key-N`, instead).
pub fn sent_to_zones(resource_type: &str, name: &str) -> bool {
    if resource_type != "GlobalSecret" {
        return true;
    }
    !(matches!(
        name,
        "admin-user-token" | "user-token-revocations" | "envoy-admin-ca" | "inter-cp-ca"
    ) || name.starts_with("user-token-signing-key")
        || name.starts_with("zone-token-signing-key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_kuma_never_sends_to_zones_is_not_sent() {
        for name in [
            "admin-user-token",
            "user-token-signing-key-1",
            "user-token-signing-key",
            "user-token-revocations",
            "envoy-admin-ca",
            "inter-cp-ca",
            "zone-token-signing-key-1",
        ] {
            assert!(!sent_to_zones("GlobalSecret", name), "{name}");
        }
        assert!(sent_to_zones("GlobalSecret", "shared-ca"));
        assert!(sent_to_zones(
            "GlobalSecret",
            "zone-token-signing-public-key-1"
        ));
        assert!(sent_to_zones("GlobalSecret", "zone-token-revocations"));
        assert!(sent_to_zones("Secret", "admin-user-token"));
        assert!(sent_to_zones("Mesh", "default"));
    }
}
