//! One start-up path for the controllers: one shutdown token, one readiness flag, and the
//! choice of running at once or only while holding the Lease (a standby serves the sidecar and
//! is ready; the leader is ready once its watches have synced).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Context, LeaderElection, LeaseSettings, Trigger};

/// Whether `/readyz` answers ready. Shared by the controllers (which set it) and the sidecar
/// (which reads it through [`Readiness::shared`]).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Say whether we are ready.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether we are ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// The flag itself, for the sidecar's state.
    pub fn shared(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl From<Arc<AtomicBool>> for Readiness {
    fn from(flag: Arc<AtomicBool>) -> Self {
        Self(flag)
    }
}

/// Who runs the controllers.
#[derive(Clone, Debug)]
pub enum Leadership {
    /// This process, from the start (one replica).
    Always,
    /// Only the holder of this Lease; a standby waits and takes over when it expires.
    Elected(LeaseSettings),
}

/// Run the controllers until `shutdown` is cancelled: at once, or while leading. Losing the
/// lease stops them (a graceful drain) and the process stands by until it leads again.
pub async fn run_until_shutdown(
    ctx: Arc<Context>,
    namespace: Option<String>,
    readiness: Readiness,
    trigger: broadcast::Sender<Trigger>,
    leadership: Leadership,
    shutdown: CancellationToken,
) {
    let lease = match leadership {
        Leadership::Always => {
            super::run(
                ctx,
                namespace,
                readiness,
                trigger.subscribe(),
                shutdown.cancelled_owned(),
            )
            .await;
            return;
        }
        Leadership::Elected(lease) => lease,
    };
    let (leading_tx, mut leading) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(LeaderElection::new(ctx.client.clone(), lease).run(leading_tx));
    // A standby serves the sidecar and is ready; only the leader reconciles.
    readiness.set(true);
    loop {
        tokio::select! {
            _ = leading.wait_for(|l| *l) => {}
            () = shutdown.cancelled() => break,
        }
        tracing::info!("leading: starting controllers");
        readiness.set(false);
        let term = shutdown.child_token();
        let mut lost = leading.clone();
        let on_loss = term.clone();
        let watch_loss = tokio::spawn(async move {
            let _ = lost.wait_for(|l| !*l).await;
            on_loss.cancel();
        });
        super::run(
            ctx.clone(),
            namespace.clone(),
            readiness.clone(),
            trigger.subscribe(),
            term.cancelled_owned(),
        )
        .await;
        watch_loss.abort();
        readiness.set(true);
        if shutdown.is_cancelled() {
            break;
        }
        tracing::warn!("leadership lost: controllers stopped; standing by");
    }
    election.abort();
}

/// The lease timings client-go uses.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews (and a standby retries).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);
