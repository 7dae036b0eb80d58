//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! reconciles. The rules are the ones client-go's leader election follows:
//!
//! - a replica takes the Lease when it does not exist, when it was released (no holder), or when
//!   its record has not changed for the lease duration *as measured by this replica's own clock*
//!   (the holder's timestamps are never compared with the local time, so clock skew between nodes
//!   cannot make two leaders);
//! - every write carries the `resourceVersion` that was read, so of two replicas racing for the
//!   same Lease the apiserver lets exactly one win;
//! - the leader renews every [`RETRY_PERIOD`]; each successful renewal opens the leader's
//!   [`Fence`] until the renewal's start plus the renew deadline (two thirds of the lease
//!   duration), and every request of the controller goes through that fence: none is sent after
//!   it closes, and one in flight is abandoned when it does. Kubernetes has no fencing token, so
//!   this is the fence: by time, with a third of the lease as the margin before any other replica
//!   can consider the Lease expired. A renewal is itself abandoned at the fence, and then the
//!   leader stops at once (reconciles in flight dropped) and the process exits;
//! - on a graceful shutdown the leader releases the Lease, so a standby takes over at its next
//!   try instead of waiting for the lease to expire.
//!
//! [`decide`] is the pure decision; [`Elector`] does the Lease I/O.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::api_client::Fence;
use tracing::{info, warn};

/// How often the leader renews, and how often a standby tries to take the Lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Settings of leader election.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease that is not renewed stays with its holder.
    pub lease_duration: Duration,
}

impl LeaderElection {
    /// How long the leader keeps reconciling without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }
}

/// What a replica does with the Lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no Lease: create it, held by this replica.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Released, or not renewed for the lease duration: take it over.
    TakeOver,
    /// Another replica holds it: wait.
    Follow,
}

/// The decision, from the Lease's spec (`None`: no Lease) and whether its record has stayed
/// unchanged for the lease duration by this replica's clock.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, unchanged_for_duration: bool) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) if unchanged_for_duration => Step::TakeOver,
        Some(_) => Step::Follow,
    }
}

/// What identifies one version of a Lease's record: a change of any part means its holder is alive.
type Record = Option<(Option<String>, Option<MicroTime>, Option<i32>)>;

fn record(spec: Option<&LeaseSpec>) -> Record {
    spec.map(|s| {
        (
            s.holder_identity.clone(),
            s.renew_time.clone(),
            s.lease_transitions,
        )
    })
}

/// Reads and writes the Lease; remembers when this replica last saw its record change.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaderElection,
    observed: Option<(Record, Instant)>,
    fence: Fence,
}

impl Elector {
    /// An elector for `client` (not behind `fence`: a standby must reach the Lease) that opens
    /// `fence` while it leads.
    pub fn new(client: Client, settings: LeaderElection, fence: Fence) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            fence,
        }
    }

    pub fn settings(&self) -> &LeaderElection {
        &self.settings
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One try: true when this replica holds the Lease afterwards. A write that lost a race
    /// (409 Conflict) is "not the leader", not an error.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let held = self.try_once().await?;
        if held {
            self.fence
                .open_until(started + self.settings.renew_deadline());
        }
        Ok(held)
    }

    async fn try_once(&mut self) -> Result<bool, kube::Error> {
        let current = match self.api.get_opt(&self.settings.lease).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.lease.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let seen = record(current.spec.as_ref());
        let now = Instant::now();
        let changed_at = match &self.observed {
            Some((last, at)) if *last == seen => *at,
            _ => {
                self.observed = Some((seen, now));
                now
            }
        };
        let unchanged = now.duration_since(changed_at) >= self.settings.lease_duration;
        let spec = current.spec.clone().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let next = match decide(current.spec.as_ref(), &self.settings.identity, unchanged) {
            Step::Follow => return Ok(false),
            Step::Create | Step::TakeOver => self.spec(transitions + 1, None),
            Step::Renew => self.spec(transitions, spec.acquire_time.clone()),
        };
        let mut lease = current;
        lease.spec = Some(next);
        let name = self.settings.lease.clone();
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = Some((record(written.spec.as_ref()), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tries every [`RETRY_PERIOD`] until this replica leads.
    pub async fn acquire(&mut self) {
        info!(
            lease = %self.settings.lease,
            namespace = %self.settings.namespace,
            identity = %self.settings.identity,
            "waiting to become the leader"
        );
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.settings.identity, "became the leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(RETRY_PERIOD).await;
        }
    }

    /// Renews every [`RETRY_PERIOD`] until the fence closes (no renewal succeeded within the
    /// renew deadline; a renewal still in flight then is abandoned) or another replica holds the
    /// Lease; closes the fence and returns then.
    pub async fn keep(&mut self) {
        loop {
            let until = self.fence.until().unwrap_or_else(Instant::now);
            let next = (Instant::now() + RETRY_PERIOD).min(until);
            tokio::time::sleep_until(next.into()).await;
            if Instant::now() >= until {
                break;
            }
            match tokio::time::timeout_at(until.into(), self.try_acquire_or_renew()).await {
                Err(_) => break,
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    warn!("another replica holds the lease");
                    self.fence.close();
                    return;
                }
                Ok(Err(e)) => warn!("renewing the lease: {e}"),
            }
        }
        self.fence.close();
        warn!(
            "the lease was not renewed within the renew deadline ({:?}): stopping",
            self.settings.renew_deadline()
        );
    }

    /// Gives the Lease up (graceful shutdown), if this replica still holds it.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.lease).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        let name = self.settings.lease.clone();
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the lease"),
            Err(e) => warn!("releasing the lease: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn missing_lease_is_created() {
        assert_eq!(decide(None, "a", false), Step::Create);
    }

    #[test]
    fn own_lease_is_renewed_even_when_stale() {
        assert_eq!(decide(Some(&held_by(Some("a"))), "a", false), Step::Renew);
        assert_eq!(decide(Some(&held_by(Some("a"))), "a", true), Step::Renew);
    }

    #[test]
    fn live_lease_of_another_replica_is_followed() {
        assert_eq!(decide(Some(&held_by(Some("b"))), "a", false), Step::Follow);
    }

    #[test]
    fn lease_unchanged_for_its_duration_is_taken_over() {
        assert_eq!(decide(Some(&held_by(Some("b"))), "a", true), Step::TakeOver);
    }

    #[test]
    fn released_lease_is_taken_at_once() {
        assert_eq!(decide(Some(&held_by(None)), "a", false), Step::TakeOver);
        assert_eq!(decide(Some(&held_by(Some(""))), "a", false), Step::TakeOver);
    }

    #[test]
    fn renew_deadline_is_two_thirds_of_the_lease() {
        let le = LeaderElection {
            namespace: "ns".into(),
            lease: "l".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
        };
        assert_eq!(le.renew_deadline(), Duration::from_secs(10));
    }
}
