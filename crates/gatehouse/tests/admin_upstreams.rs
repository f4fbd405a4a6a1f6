//! The admin API's live view of upstream targets, against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use gatehouse_testkit::client::get;
use gatehouse_testkit::process::{Process, TempDir};
use gatehouse_testkit::upstream::{Upstream, refused_addr};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_states_are_served_as_json() {
    let dir = TempDir::new("gh-admin-up");
    let live = Upstream::echo().await;
    let dead = refused_addr();
    let token = "t0ken-t0ken-t0ken-t0ken-t0ken-t0ken";
    let toml = format!(
        "[server]\nhttp = [\"127.0.0.1:0\"]\nworkers = 1\nadmin = \"127.0.0.1:0\"\nadmin_token = \"{token}\"\n\
         data_dir = \"{}\"\n[log]\naccess_log = \"off\"\n\
         [upstream.api]\ntargets = [\"{dead}\", {{ addr = \"{}\", weight = 2 }}]\nbalance = \"least_conn\"\n\
         passive = {{ failures = 1, cooldown = \"60s\" }}\n\
         [[site]]\ndefault = true\n[[site.route]]\npath = \"/\"\nupstream = \"api\"\n",
        dir.0.join("data").display(),
        live.addr
    );
    let gh = Process::serve(Path::new(BIN), &toml);
    let admin_line = gh.stdout.recv_timeout(Duration::from_secs(5)).unwrap();
    let admin = admin_line.rsplit(' ').next().unwrap().trim_end_matches('/').to_owned();
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin_line}");

    // Traffic finds the dead target (and is retried on the live one).
    for _ in 0..4 {
        assert_eq!(get(&format!("http://{}/", gh.addr), &[]).await.status, 200);
    }
    let url = format!("{admin}/upstreams");
    assert_eq!(get(&url, &[]).await.status, 401, "the view needs the token");
    let r = get(&url, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let up = &v["upstreams"][0];
    assert_eq!(up["name"], "api");
    assert_eq!(up["policy"], "least_conn");
    assert_eq!(up["targets"][0]["address"], dead.to_string());
    assert_eq!(up["targets"][0]["state"], "ejected");
    assert!(up["targets"][0]["ejected_for_ms"].as_u64().unwrap() > 50_000);
    assert_eq!(up["targets"][1]["state"], "up");
    assert_eq!(up["targets"][1]["weight"], 2);
}
