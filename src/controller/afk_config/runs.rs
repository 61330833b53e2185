//! The AfkRuns of a config: listing them, the gate facts the dispatch decision needs of them,
//! retention of terminal runs, and the object a dispatch creates.

use std::collections::HashMap;

use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, ObjectMeta},
};

use crate::{
    controller::Error,
    crd::{AfkConfig, AfkRun, AfkRunSpec, CONFIG_LABEL, ISSUE_LABEL, Phase, REPO_LABEL},
    policy::{
        dispatch::{self, ExistingRun},
        naming,
    },
};

/// The runs of a config: those labelled by the controller and any created by hand naming it.
pub(super) async fn runs_of(api: &Api<AfkRun>, config: &str) -> Result<Vec<AfkRun>, Error> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.spec.config_ref == config)
        .collect())
}

pub(super) fn existing(runs: &[AfkRun]) -> Vec<ExistingRun> {
    runs.iter()
        .map(|r| ExistingRun {
            name: r.name_any(),
            repo: r.spec.repo.clone(),
            issue: r.spec.issue,
            attempt: r.spec.attempt,
            phase: r.phase(),
            finished_at: r
                .status
                .as_ref()
                .and_then(|s| s.finished_at.as_ref())
                .map(|t| t.0),
        })
        .collect()
}

/// Terminal runs past the per-repo history limits, oldest first.
pub(super) fn retention_victims(config: &AfkConfig, runs: &[AfkRun]) -> Vec<String> {
    let mut by_repo: HashMap<String, (Vec<&AfkRun>, Vec<&AfkRun>)> = HashMap::new();
    for r in runs.iter().filter(|r| r.is_terminal()) {
        let entry = by_repo.entry(r.spec.repo.to_ascii_lowercase()).or_default();
        if r.phase() == Phase::Succeeded {
            entry.0.push(r)
        } else {
            entry.1.push(r)
        }
    }
    let finished = |r: &&AfkRun| {
        r.status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref())
            .map(|t| t.0)
    };
    let mut victims = vec![];
    for (_, (mut ok, mut other)) in by_repo {
        for (list, keep) in [
            (&mut ok, config.spec.history.succeeded_to_keep),
            (&mut other, config.spec.history.failed_to_keep),
        ] {
            // Newest first; everything past `keep` goes.
            list.sort_by(|a, b| {
                finished(b)
                    .cmp(&finished(a))
                    .then_with(|| b.name_any().cmp(&a.name_any()))
            });
            victims.extend(list.iter().skip(keep as usize).map(|r| r.name_any()));
        }
    }
    victims.sort();
    victims
}

pub(super) fn new_run_object(config: &AfkConfig, run: &dispatch::NewRun) -> AfkRun {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(CONFIG_LABEL.to_string(), config.name_any());
    labels.insert(REPO_LABEL.to_string(), naming::repo_label_value(&run.repo));
    labels.insert(ISSUE_LABEL.to_string(), run.issue.to_string());
    AfkRun {
        metadata: ObjectMeta {
            name: Some(run.name.clone()),
            namespace: config.namespace(),
            labels: Some(labels),
            owner_references: config.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: AfkRunSpec {
            config_ref: config.name_any(),
            repo: run.repo.clone(),
            issue: run.issue,
            attempt: run.attempt,
            priority: run.priority,
            title: run.title.chars().take(1024).collect(),
            task_snapshot: crate::crd::TaskSnapshot {
                title: run.snapshot.title.chars().take(1024).collect(),
                body: run.snapshot.body.chars().take(65536).collect(),
                sha256: run.snapshot.sha256.clone(),
            },
            cancel: false,
        },
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::AfkRunStatus;

    fn run(name: &str, repo: &str, phase: Phase, finished: i64) -> AfkRun {
        let mut r = AfkRun::new(
            name,
            serde_json::from_value(serde_json::json!({
                "configRef": "c", "repo": repo, "issue": 1, "attempt": 1, "title": "t",
                "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}
            }))
            .unwrap(),
        );
        r.status = Some(AfkRunStatus {
            phase: Some(phase),
            finished_at: Some(Time(Timestamp::from_second(finished).unwrap())),
            ..Default::default()
        });
        r
    }

    #[test]
    fn retention_keeps_the_newest_per_repo_and_kind() {
        let mut config: AfkConfig = AfkConfig::new("c", serde_json::from_value(serde_json::json!({
            "tracker": {"github": {"tokenSecretRef": {"name": "g", "key": "t"}}},
            "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t", "key": "t"}, "model": "m"}}
        })).unwrap());
        config.spec.history.succeeded_to_keep = 1;
        config.spec.history.failed_to_keep = 2;
        let runs = vec![
            run("a-1", "o/a", Phase::Succeeded, 10),
            run("a-2", "o/a", Phase::Succeeded, 20),
            run("a-3", "o/a", Phase::Frozen, 5),
            run("a-4", "o/a", Phase::Failed, 6),
            run("a-5", "o/a", Phase::NeedsHuman, 7),
            run("b-1", "o/b", Phase::Succeeded, 1),
            run("live", "o/a", Phase::Working, 0),
        ];
        assert_eq!(retention_victims(&config, &runs), vec!["a-1", "a-3"]);
    }
}
