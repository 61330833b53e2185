//! The rollout checker (kube): what the Deployment named in an allowlist entry looks like now —
//! its pod template's images and `afk.dev/commit` annotation, generations, replica counts, the
//! `ProgressDeadlineExceeded` condition, and whether pods of the new template crash-loop. The
//! verdict is the policy's (`policy::ci::rollout_stage`); this only observes.

use async_trait::async_trait;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, Client, api::ListParams};

use super::{AdapterError, AdapterErrorKind};

/// Waiting reasons that mean a pod will not become ready without a change.
pub const FAILING_WAIT_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// What was observed of a Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentState {
    /// The Deployment exists.
    pub exists: bool,
    /// Images of the selected containers of the pod template.
    pub images: Vec<String>,
    /// The pod template's `afk.dev/commit` annotation.
    pub commit_annotation: Option<String>,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `spec.replicas` (1 when unset).
    pub replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// `status.replicas`.
    pub total_replicas: i32,
    /// `Progressing` is False with reason `ProgressDeadlineExceeded`.
    pub progress_deadline_exceeded: bool,
    /// Images of pods stuck in a failing waiting state.
    pub failing_pod_images: Vec<String>,
}

/// Observes Deployments.
#[async_trait]
pub trait RolloutChecker: Send + Sync {
    /// The state of `namespace/name`, looking at `container` only when given.
    async fn deployment_state(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<DeploymentState, AdapterError>;
}

/// The real checker.
#[derive(Clone)]
pub struct KubeRolloutChecker {
    client: Client,
}

impl KubeRolloutChecker {
    /// A checker using `client` (needs get on deployments, list on pods).
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn kube_err(what: &str, e: &kube::Error) -> AdapterError {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            AdapterError::permanent(AdapterErrorKind::Forbidden, format!("{what}: forbidden"))
                .with_status(403)
        }
        kube::Error::Api(s) if (500..600).contains(&s.code) || s.code == 429 => {
            AdapterError::transient(AdapterErrorKind::ServerError, format!("{what}: {}", s.message))
                .with_status(s.code)
        }
        kube::Error::Api(s) => {
            AdapterError::permanent(AdapterErrorKind::Rejected, format!("{what}: {}", s.message))
                .with_status(s.code)
        }
        _ => AdapterError::transient(
            AdapterErrorKind::Transport,
            format!("{what}: API server unreachable"),
        ),
    }
}

#[async_trait]
impl RolloutChecker for KubeRolloutChecker {
    async fn deployment_state(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<DeploymentState, AdapterError> {
        let what = format!("deployment {namespace}/{name}");
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let Some(d) = deployments.get_opt(name).await.map_err(|e| kube_err(&what, &e))? else {
            return Ok(DeploymentState::default());
        };
        let spec = d.spec;
        let template = spec.template;
        let pod_spec = template.spec.unwrap_or_default();
        let wanted = |c: &str| container.is_none_or(|w| w == c);
        let images: Vec<String> = pod_spec
            .containers
            .iter()
            .filter(|c| wanted(&c.name))
            .filter_map(|c| c.image.clone())
            .collect();
        let commit_annotation = template
            .metadata
            .and_then(|m| m.annotations)
            .and_then(|a| a.get(crate::crd::GROUP_COMMIT_ANNOTATION).cloned());
        let status = d.status.unwrap_or_default();
        let progress_deadline_exceeded = status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_.as_deref() == Some("Progressing")
                && c.status.as_deref() == Some("False")
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
        let selector = spec
            .selector
            .match_labels
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut failing_pod_images = vec![];
        if !selector.is_empty() {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| kube_err(&what, &e))?;
            for pod in list.items {
                let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
                for cs in statuses.iter().filter(|cs| wanted(&cs.name)) {
                    let reason = cs
                        .state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref());
                    if reason.is_some_and(|r| FAILING_WAIT_REASONS.contains(&r)) {
                        failing_pod_images.push(cs.image.clone());
                    }
                }
            }
        }
        Ok(DeploymentState {
            exists: true,
            images,
            commit_annotation,
            generation: d.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            replicas: spec.replicas.unwrap_or(1),
            updated_replicas: status.updated_replicas.unwrap_or(0),
            available_replicas: status.available_replicas.unwrap_or(0),
            total_replicas: status.replicas.unwrap_or(0),
            progress_deadline_exceeded,
            failing_pod_images,
        })
    }
}
