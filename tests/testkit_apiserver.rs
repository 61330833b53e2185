//! The fake API server against the real kube client and runtime: a `Controller` with a
//! finalizer, `Recorder` events and SSA status converges and cleans up on delete; watches resume
//! after a cut and re-list after 410; and each REST behaviour the operator relies on (409 on a
//! stale write, 422 from the CRD schema and CEL, status subresource, patches, finalizers,
//! selectors, defaulting, fault injection) matches the real API server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use afk_operator::crd::{self, AfkConfig, AfkRun, AfkRunStatus, Phase};
use afk_testkit::apiserver::{ApiFault, ApiFaultAction, FakeApiServer};
use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as FinalizerEvent, finalizer},
        watcher,
    },
};
use serde_json::{Value, json};

fn server() -> FakeApiServer {
    let mut s = FakeApiServer::new();
    for c in crd::all() {
        s = s.with_crd(&serde_json::to_value(c).unwrap());
    }
    s
}

/// A watcher in the background collecting the names it has seen.
fn collect_names(
    api: Api<AfkRun>,
) -> (
    Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::<String>::new()));
    let s2 = seen.clone();
    // With the backoff every real client uses: a watch that ends or fails is retried after a
    // pause, not in a hot loop that starves the writers on a loaded machine.
    let watch = watcher(api, watcher::Config::default()).default_backoff();
    let task = tokio::spawn(watch.for_each(move |ev| {
        let s2 = s2.clone();
        async move {
            if let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = ev {
                s2.lock().unwrap().insert(o.name_any());
            }
        }
    }));
    (seen, task)
}

fn run_json(name: &str) -> Value {
    json!({
        "apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
        "metadata": {"name": name, "namespace": "default", "labels": {"afk.dev/repo": "acme.app"}},
        "spec": {"configRef": "team", "repo": "acme/app", "issue": 42, "attempt": 1, "title": "t",
                 "taskSnapshot": {"title": "t", "body": "", "sha256": "a".repeat(64)}}
    })
}

async fn create_run(client: &Client, name: &str) -> AfkRun {
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(run_json(name)).unwrap(),
    )
    .await
    .unwrap()
}

async fn eventually<F: FnMut() -> bool>(mut f: F, what: &str) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    cleanups: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct E(String);

async fn reconcile(run: Arc<AfkRun>, ctx: Arc<Ctx>) -> Result<Action, E> {
    let api: Api<AfkRun> = Api::default_namespaced(ctx.client.clone());
    finalizer(&api, crd::RUN_FINALIZER, run, |event| async {
        match event {
            FinalizerEvent::Apply(run) => {
                ctx.recorder
                    .publish(
                        &Event { type_: EventType::Normal, reason: "Reconciled".into(), note: Some("seen".into()), action: "Reconcile".into(), secondary: None },
                        &run.object_ref(&()),
                    )
                    .await
                    .map_err(|e| E(e.to_string()))?;
                let status = json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
                                    "status": {"phase": "Working", "observedGeneration": run.metadata.generation}});
                api.patch_status(&run.name_any(), &PatchParams::apply(crd::FIELD_MANAGER).force(), &Patch::Apply(&status))
                    .await
                    .map_err(|e| E(e.to_string()))?;
                Ok(Action::await_change())
            }
            FinalizerEvent::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e: kube::runtime::finalizer::Error<E>| E(e.to_string()))
}

#[tokio::test]
async fn a_real_controller_converges_and_cleans_up() {
    let fake = server();
    let client = fake.client();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "afk.dev/controller".into(),
                instance: None,
            },
        ),
        cleanups: AtomicUsize::new(0),
    });
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_millis(50)),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    create_run(&client, "r1").await;
    let f = fake.clone();
    eventually(
        || {
            f.with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", "default", "r1"))
                .is_some_and(|o| {
                    o["status"]["phase"] == "Working"
                        && o["metadata"]["finalizers"] == json!([crd::RUN_FINALIZER])
                })
        },
        "finalizer and status",
    )
    .await;
    let events = fake.with_store(|s| s.list("events.k8s.io/v1", "Event", "default"));
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "Reconciled" && e["regarding"]["name"] == "r1"),
        "{events:?}"
    );

    api.delete("r1", &DeleteParams::default()).await.unwrap();
    let f = fake.clone();
    eventually(
        || {
            f.with_store(|s| s.get("afk.dev/v1alpha1", "AfkRun", "default", "r1"))
                .is_none()
        },
        "object gone",
    )
    .await;
    assert_eq!(ctx.cleanups.load(Ordering::SeqCst), 1);
    handle.abort();
}

#[tokio::test]
async fn watches_resume_after_a_cut_and_relist_after_410() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let inits = Arc::new(AtomicUsize::new(0));
    let (s2, i2) = (seen.clone(), inits.clone());
    let task = tokio::spawn(
        watcher(api.clone(), watcher::Config::default()).for_each(move |ev| {
            let (s2, i2) = (s2.clone(), i2.clone());
            async move {
                match ev {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => {
                        s2.lock().unwrap().push(o.name_any())
                    }
                    Ok(watcher::Event::Init) => {
                        i2.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        }),
    );
    create_run(&client, "a").await;
    let s = seen.clone();
    eventually(|| s.lock().unwrap().contains(&"a".to_string()), "a").await;

    // Cut the stream: the watcher resumes from its version and misses nothing.
    fake.cut_watches();
    create_run(&client, "b").await;
    let s = seen.clone();
    eventually(|| s.lock().unwrap().contains(&"b".to_string()), "b after cut").await;
    assert_eq!(
        inits.load(Ordering::SeqCst),
        1,
        "a cut stream resumes without a re-list"
    );

    // Hold the next re-watch, move on and compact meanwhile: the resume gets 410 and the
    // watcher re-lists.
    fake.with_store(|s| {
        s.inject(ApiFault {
            method: Some("GET".into()),
            path_contains: "/afkruns".into(),
            query_contains: Some("watch=true".into()),
            action: ApiFaultAction::Delay(Duration::from_millis(300)),
            remaining: 1,
        })
    });
    fake.cut_watches();
    create_run(&client, "c").await;
    fake.with_store(|s| s.compact());
    let i = inits.clone();
    eventually(|| i.load(Ordering::SeqCst) >= 2, "re-list after 410").await;
    let s = seen.clone();
    eventually(|| s.lock().unwrap().contains(&"c".to_string()), "c after re-list").await;
    task.abort();
}

#[tokio::test]
async fn stale_writes_conflict_and_generation_tracks_spec_only() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    let created = create_run(&client, "r").await;
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let mut cancelled = created.clone();
    cancelled.spec.cancel = true;
    let updated = api
        .replace("r", &PostParams::default(), &cancelled)
        .await
        .unwrap();
    assert_eq!(updated.metadata.generation, Some(2));

    // The first copy is stale now.
    let err = api
        .replace("r", &PostParams::default(), &cancelled)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err}"
    );

    // Status writes never bump generation, and the main endpoint ignores status.
    let status = AfkRunStatus {
        phase: Some(Phase::Working),
        ..Default::default()
    };
    let patched = api
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
    assert_eq!(
        (patched.metadata.generation, patched.phase()),
        (Some(2), Phase::Working)
    );
    let via_main = api
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        via_main.phase(),
        Phase::Working,
        "status changes through the main endpoint are ignored"
    );
    let spec_via_status = api
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"title": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        spec_via_status.spec.title, "t",
        "spec changes through /status are ignored"
    );
    // Created objects drop status.
    let mut with_status: AfkRun = serde_json::from_value(run_json("s")).unwrap();
    with_status.status = Some(AfkRunStatus {
        phase: Some(Phase::Succeeded),
        ..Default::default()
    });
    assert_eq!(
        api.create(&PostParams::default(), &with_status)
            .await
            .unwrap()
            .status,
        None
    );
}

#[tokio::test]
async fn schema_and_cel_violations_are_422() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    let mut bad = run_json("bad");
    bad["spec"]["repo"] = json!("not a repo");
    let err = api
        .create(&PostParams::default(), &serde_json::from_value(bad).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.repo")),
        "{err}"
    );

    create_run(&client, "r").await;
    let err = api
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"repo": "acme/other"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.repo is immutable")),
        "{err}"
    );

    // Defaults from the schema are applied, unknown fields pruned.
    let configs: Api<AfkConfig> = Api::default_namespaced(client.clone());
    let minimal = json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": "c"},
        "spec": {"tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "t"}}},
                 "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "t"}, "model": "m"}},
                 "unknownField": 1}});
    let created = configs
        .create(&PostParams::default(), &serde_json::from_value(minimal).unwrap())
        .await
        .unwrap();
    assert!(created.spec.suspend);
    let raw = fake
        .with_store(|s| s.get("afk.dev/v1alpha1", "AfkConfig", "default", "c"))
        .unwrap();
    assert_eq!(raw["spec"]["suspend"], json!(true));
    assert_eq!(raw["spec"]["budgets"]["fixForwardMaxAttempts"], json!(5));
    assert!(raw["spec"].get("unknownField").is_none(), "pruned");
}

#[tokio::test]
async fn patches_apply_and_strategic_merge() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    // Apply requires a field manager and creates when absent.
    let obj: AfkRun = serde_json::from_value(run_json("applied")).unwrap();
    let created = api
        .patch("applied", &PatchParams::apply("tester"), &Patch::Apply(&obj))
        .await
        .unwrap();
    assert_eq!(created.spec.issue, 42);
    let req = client.request::<Value>(
        http::Request::patch("/apis/afk.dev/v1alpha1/namespaces/default/afkruns/applied")
            .header("content-type", "application/apply-patch+yaml")
            .body(serde_json::to_vec(&run_json("applied")).unwrap())
            .unwrap(),
    );
    let err = req.await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "fieldManager required: {err}"
    );
    // JSON patch with a failing test.
    let p: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/issue", "value": 7}, {"op": "replace", "path": "/spec/cancel", "value": true}])).unwrap();
    assert!(
        api.patch("applied", &PatchParams::default(), &Patch::<()>::Json(p))
            .await
            .is_err()
    );
    let p: json_patch::Patch = serde_json::from_value(json!([{"op": "test", "path": "/spec/issue", "value": 42}, {"op": "replace", "path": "/spec/cancel", "value": true}])).unwrap();
    assert!(
        api.patch("applied", &PatchParams::default(), &Patch::<()>::Json(p))
            .await
            .unwrap()
            .spec
            .cancel
    );
    // Strategic merge is not supported for custom resources.
    let err = api
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"cancel": true}})),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 415), "{err}");
}

#[tokio::test]
async fn finalizers_and_deletion_follow_the_real_server() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    create_run(&client, "r").await;
    api.patch(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["a/one"]}})),
    )
    .await
    .unwrap();
    api.delete("r", &DeleteParams::default()).await.unwrap();
    let marked = api.get("r").await.unwrap();
    assert!(
        marked.metadata.deletion_timestamp.is_some(),
        "delete with finalizers marks"
    );
    let err = api
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["a/one", "b/two"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("no new finalizers")),
        "{err}"
    );
    api.patch(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(
        api.get_opt("r").await.unwrap().is_none(),
        "emptying finalizers removes"
    );
    let err = api.get("r").await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"));
    create_run(&client, "dup").await;
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(run_json("dup")).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));
}

#[tokio::test]
async fn selectors_and_faults() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    create_run(&client, "one").await;
    let mut other = run_json("two");
    other["metadata"]["labels"] = json!({"afk.dev/repo": "acme.lib"});
    api.create(&PostParams::default(), &serde_json::from_value(other).unwrap())
        .await
        .unwrap();
    let names = |l: Vec<AfkRun>| l.into_iter().map(|r| r.name_any()).collect::<Vec<_>>();
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("afk.dev/repo=acme.lib"))
                .await
                .unwrap()
                .items
        ),
        vec!["two"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("afk.dev/repo notin (acme.lib)"))
                .await
                .unwrap()
                .items
        ),
        vec!["one"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=one"))
                .await
                .unwrap()
                .items
        ),
        vec!["one"]
    );
    let all: Api<AfkRun> = Api::all(client.clone());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 2);

    fake.with_store(|s| {
        s.inject(ApiFault {
            method: Some("GET".into()),
            path_contains: "/afkruns/one".into(),
            query_contains: None,
            action: ApiFaultAction::Status(500),
            remaining: 1,
        })
    });
    let err = api.get("one").await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 500));
    api.get("one").await.unwrap();
    let log = fake.with_store(|s| s.log.iter().filter(|r| r.path.ends_with("/afkruns/one")).count());
    assert_eq!(log, 2, "the request log records injected faults too");
}

#[tokio::test]
async fn other_controllers_can_be_played() {
    let fake = server();
    fake.with_store(|s| {
        s.seed(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app", "namespace": "app"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "app"}},
                     "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": [{"name": "app", "image": "app:abc1234"}]}}}}));
        s.seed(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app-1", "namespace": "app", "labels": {"app": "app"}},
            "spec": {"containers": [{"name": "app", "image": "app:abc1234"}]}}));
        s.mark_deployment_rolled_out("app", "app");
        s.crashloop_pod("app", "app-1");
    });
    let checker = afk_operator::adapters::rollout::KubeRolloutChecker::new(fake.client());
    use afk_operator::adapters::rollout::RolloutChecker;
    let state = checker.deployment_state("app", "app", None).await.unwrap();
    assert_eq!((state.updated_replicas, state.available_replicas), (2, 2));
    assert_eq!(state.failing_pod_images, vec!["app:abc1234"]);
}

#[tokio::test]
async fn loopback_server_with_kubeconfig_and_kubectl() {
    let fake = server();
    create_run(&fake.client(), "listed").await;
    let mut served = fake.serve().await;
    let path = served.kubeconfig();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = Client::try_from(config).unwrap();
    let api: Api<AfkRun> = Api::default_namespaced(client);
    assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);

    // kubectl, when installed, can use discovery to list our kind by its short name.
    if std::path::Path::new("/usr/bin/kubectl").exists() {
        let path2 = path.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("kubectl")
                .args([
                    "--kubeconfig",
                    path2.to_str().unwrap(),
                    "get",
                    "afkr",
                    "-o",
                    "name",
                ])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("afkrun.afk.dev/listed"),
            "kubectl stdout: {stdout} stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn raw_watch_replays_bookmarks_and_ends_after_timeout() {
    let fake = server();
    fake.with_store(|s| s.bookmark_every_ms = 100);
    let client = fake.client();
    let first = create_run(&client, "x").await;
    let from = first.metadata.resource_version.clone().unwrap();
    create_run(&client, "y").await;
    let served = fake.serve().await;
    let started = std::time::Instant::now();
    let body = reqwest::get(format!(
        "{}/apis/afk.dev/v1alpha1/namespaces/default/afkruns?watch=true&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=1",
        served.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream ends after timeoutSeconds"
    );
    let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(
        events[0]["object"]["metadata"]["name"], "y",
        "only events after the given version are replayed"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "BOOKMARK" && e["object"]["metadata"]["resourceVersion"].is_string())
    );
    // A version older than the retained history is 410 Gone.
    fake.with_store(|s| s.compact());
    let body = reqwest::get(format!(
        "{}/apis/afk.dev/v1alpha1/namespaces/default/afkruns?watch=true&resourceVersion={from}",
        served.url()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let gone: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(
        (gone["type"].as_str(), gone["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_lose_watch_events() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    let (seen, task) = collect_names(api.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let writers: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { create_run(&client, &format!("w{i}")).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let s = seen.clone();
    eventually(
        || s.lock().unwrap().len() == 40,
        "all 40 creates seen by the watcher",
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn apply_to_status_removes_what_the_sole_manager_omits() {
    let fake = server();
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    create_run(&client, "r").await;
    let pp = PatchParams::apply(crd::FIELD_MANAGER).force();
    let with = json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "status": {"phase": "Working", "commit": "abc"}});
    api.patch_status("r", &pp, &Patch::Apply(&with)).await.unwrap();
    let without =
        json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "status": {"phase": "Verifying"}});
    let after = api.patch_status("r", &pp, &Patch::Apply(&without)).await.unwrap();
    let status = after.status.unwrap();
    assert_eq!((status.phase, status.commit), (Some(Phase::Verifying), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_never_skip_queued_events() {
    let fake = server();
    fake.with_store(|s| s.bookmark_every_ms = 5);
    let client = fake.client();
    let api: Api<AfkRun> = Api::default_namespaced(client.clone());
    let (seen, task) = collect_names(api.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    for batch in 0..5 {
        let writers: Vec<_> = (0..30)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { create_run(&client, &format!("b{batch}-{i}")).await })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    }
    let s = seen.clone();
    eventually(
        || s.lock().unwrap().len() == 150,
        "all 150 creates seen despite frequent bookmarks",
    )
    .await;
    task.abort();
}
