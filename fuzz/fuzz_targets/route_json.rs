//! A route sent to the admin API (`POST /api/v1/routes`): any bytes as JSON,
//! then the `[[route]]` schema, then validation with the file's routes.
//! Typed errors for anything, never a panic; what validates compiles, and
//! its stored form reads back the same.
#![no_main]

use hexon_core::config::{Config, RouteConfig};
use hexon_proxy::gateway::routes::parse_definition;

const FILE: &str = r#"
[[group]]
name = "staff"
users = ["alice"]
[[route]]
name = "app"
path = "/app/*"
upstream = ["http://127.0.0.1:9"]
[[route.allow]]
groups = ["staff"]
"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(route) = parse_definition(value) else {
        return;
    };
    // The stored form (what the store keeps) reads back unchanged.
    let stored = route.to_json().to_string();
    let back: serde_json::Value = serde_json::from_str(&stored).expect("stored JSON parses");
    assert_eq!(RouteConfig::from_json(back).expect("stored route parses"), route);
    let file = Config::parse(FILE, &|_| None).expect("fixed file");
    if let Ok(merged) = file.with_routes(vec![route]) {
        merged.policy().expect("validated routes compile");
    }
});
