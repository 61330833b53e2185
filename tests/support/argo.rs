//! Argo CD's verdict on an object, computed the way Argo CD computes it: the shipped health-check
//! Lua (`deploy/argocd/*.lua`) run with the object as the global `obj` (JSON `null` as `nil`),
//! returning `{status, message}`. Lets process-level tests assert what Argo CD would show for a
//! real object the controller wrote. Vendored Lua 5.4; the scripts are also kept Lua 5.1-clean
//! for Argo CD's interpreter.

use mlua::{Lua, LuaSerdeExt, Table, serde::SerializeOptions};

/// The shipped health check for `AfkConfig`.
pub const AFKCONFIG_SCRIPT: &str = include_str!("../../deploy/argocd/health-afkconfig.lua");
/// The shipped health check for `AfkRun`.
pub const AFKRUN_SCRIPT: &str = include_str!("../../deploy/argocd/health-afkrun.lua");

/// `(status, message)` of the health `script` (Lua source) for `obj`. Panics if the script fails
/// or returns no table: Argo CD would show the resource as `Unknown` with the error.
pub fn argo_health(script: &str, obj: &serde_json::Value) -> (String, String) {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("object converts to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: Table = lua
        .load(script)
        .set_name("health check")
        .eval()
        .unwrap_or_else(|e| panic!("health check failed on {obj}: {e}"));
    let status: Option<String> = hs.get("status").expect("status is a string");
    let message: Option<String> = hs.get("message").expect("message is a string");
    (
        status.expect("the health check sets a status"),
        message.unwrap_or_default(),
    )
}

/// Argo CD's verdict on an `AfkConfig` (as JSON, e.g. read back from the API server).
pub fn config_health(obj: &serde_json::Value) -> (String, String) {
    argo_health(AFKCONFIG_SCRIPT, obj)
}

/// Argo CD's verdict on an `AfkRun`.
pub fn run_health(obj: &serde_json::Value) -> (String, String) {
    argo_health(AFKRUN_SCRIPT, obj)
}
