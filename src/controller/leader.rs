//! Leader election on a `coordination.k8s.io/v1` Lease, so `replicas: 2` is safe: only the
//! holder runs the controllers. The holder renews every `renew_every`; a standby takes over once
//! the lease has not been renewed for `lease_duration` (client-go's defaults: 15 s / 2–10 s).
//! Every write carries the `resourceVersion` it read, so two candidates can never both win.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;

/// Where the lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a standby retries).
    pub renew_every: Duration,
}

/// The election.
#[derive(Clone)]
pub struct LeaderElection {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("settings", &self.settings)
            .finish()
    }
}

impl LeaderElection {
    /// An election over `settings.namespace/settings.name`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// Acquire or renew once. `Ok(true)` when we hold the lease afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = &self.settings.identity;
        let duration_secs = self.settings.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let valid_for =
            Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration_secs).max(0) as u64);
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let age = Timestamp::now().duration_since(t.0);
            Duration::try_from(age).unwrap_or(Duration::ZERO) >= valid_for
        });
        let mut next = spec.clone();
        if holder == *me {
            next.renew_time = Some(now);
        } else if holder.is_empty() || expired {
            next.holder_identity = Some(me.clone());
            next.acquire_time = Some(now.clone());
            next.renew_time = Some(now);
            next.lease_duration_seconds = Some(duration_secs);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        } else {
            return Ok(false);
        }
        lease.spec = Some(next);
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Keep trying forever, publishing whether we lead. A renewal that fails for longer than the
    /// lease is valid counts as lost (another replica may have taken over).
    pub async fn run(self, leading: watch::Sender<bool>) {
        let mut last_success = tokio::time::Instant::now();
        loop {
            let held = match self.try_acquire().await {
                Ok(held) => {
                    last_success = tokio::time::Instant::now();
                    held
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    *leading.borrow() && last_success.elapsed() < self.settings.lease_duration
                }
            };
            if *leading.borrow() != held {
                tracing::info!(identity = %self.settings.identity, leading = held, "leadership changed");
                let _ = leading.send(held);
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
    }
}
