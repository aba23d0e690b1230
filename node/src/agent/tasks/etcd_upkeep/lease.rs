//! The Lease an agent holds while it defragments its host's etcd member
//! ([`ETCD_DEFRAG_LEASE`], `kube-system`), so that no two members are
//! defragmented at once: taken when free (no holder, this node, or
//! expired), with the resourceVersion of the read so that of two agents
//! taking it at once one wins; released after the defragmentation.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use bootstrap::objects::{ETCD_DEFRAG_LEASE, NAMESPACE};

use super::LEASE_SECONDS;

/// Takes the Lease for `holder`: creates it, or takes it over when it is
/// free (no holder, `holder` itself, or expired). `Some(other)`: `other`
/// holds it. A lost race (409) reads as held.
pub(super) async fn take_lease(
    leases: &Api<Lease>,
    holder: &str,
) -> anyhow::Result<Option<String>> {
    let now = Timestamp::now();
    let spec = |transitions: i32| LeaseSpec {
        holder_identity: Some(holder.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    match leases.get_opt(ETCD_DEFRAG_LEASE).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(ETCD_DEFRAG_LEASE.to_string()),
                    namespace: Some(NAMESPACE.to_string()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0)),
            };
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(None),
                Err(e) if conflict(&e) => Ok(Some("another control-plane host".into())),
                Err(e) => Err(e.into()),
            }
        }
        Some(mut lease) => {
            if let Err(other) = lease_free(lease.spec.as_ref(), holder, now) {
                return Ok(Some(other));
            }
            let transitions = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_transitions)
                .unwrap_or(0);
            lease.spec = Some(spec(transitions + 1));
            // The resourceVersion from the get: a concurrent taker wins once.
            match leases
                .replace(ETCD_DEFRAG_LEASE, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(None),
                Err(e) if conflict(&e) => Ok(Some("another control-plane host".into())),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Whether the Lease is free for `holder` at `now`; otherwise who holds it.
fn lease_free(spec: Option<&LeaseSpec>, holder: &str, now: Timestamp) -> Result<(), String> {
    let Some(s) = spec else { return Ok(()) };
    let Some(current) = s.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return Ok(());
    };
    if current == holder {
        return Ok(());
    }
    let renewed = s.renew_time.as_ref().or(s.acquire_time.as_ref());
    let expired = match (renewed, s.lease_duration_seconds) {
        (Some(t), Some(d)) => t.0.as_second() + i64::from(d) < now.as_second(),
        // A holder without a time or a duration never expires by itself:
        // not ours to judge; taken over like an expired one.
        _ => true,
    };
    if expired {
        Ok(())
    } else {
        Err(current.to_string())
    }
}

/// Gives the Lease up if `holder` still holds it.
pub(super) async fn release_lease(leases: &Api<Lease>, holder: &str) -> anyhow::Result<()> {
    let Some(mut lease) = leases.get_opt(ETCD_DEFRAG_LEASE).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(holder) {
        return Ok(());
    }
    spec.holder_identity = None;
    leases
        .replace(ETCD_DEFRAG_LEASE, &PostParams::default(), &lease)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_ago: i64, seconds: i32) -> LeaseSpec {
        let t = Timestamp::from_second(1_000_000 - renewed_ago).unwrap();
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(t)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_free_unless_another_holds_it_unexpired() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        assert_eq!(lease_free(None, "cp-1", now), Ok(()));
        assert_eq!(lease_free(Some(&lease(None, 0, 360)), "cp-1", now), Ok(()));
        assert_eq!(
            lease_free(Some(&lease(Some(""), 0, 360)), "cp-1", now),
            Ok(())
        );
        assert_eq!(
            lease_free(Some(&lease(Some("cp-1"), 0, 360)), "cp-1", now),
            Ok(())
        );
        assert_eq!(
            lease_free(Some(&lease(Some("cp-2"), 100, 360)), "cp-1", now),
            Err("cp-2".to_string())
        );
        assert_eq!(
            lease_free(Some(&lease(Some("cp-2"), 361, 360)), "cp-1", now),
            Ok(())
        );
        assert!(
            LEASE_SECONDS as u64 > super::super::DEFRAG_TIMEOUT.as_secs(),
            "outlives a defragmentation"
        );
    }
}
