//! The in-process fake API server the step-level reconcile tests run against, with this
//! operator's CRDs installed. Generating the CRD schemas is the slowest part of such a test, so
//! it happens once per test binary.

use afk_testkit::apiserver::FakeApiServer;
use serde_json::Value;

use crate::crd;

/// A fresh fake API server that serves the AfkConfig and AfkRun CRDs.
pub(crate) fn with_crds() -> FakeApiServer {
    static CRDS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    let crds = CRDS.get_or_init(|| {
        crd::all()
            .into_iter()
            .map(|c| serde_json::to_value(c).expect("a CRD serializes"))
            .collect()
    });
    crds.iter()
        .fold(FakeApiServer::new(), |api, crd| api.with_crd(crd))
}
