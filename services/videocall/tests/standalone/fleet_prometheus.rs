//! Observability (issue 21) against the distributed fleet: Debian's Prometheus scrapes every
//! service while a call runs through the web pages, with the fleet's alert rules loaded; every
//! metric docs/operations.md names is there (labelled families show zero series from the start,
//! the rest appear with the call), the rules load and evaluate, and the gateway reports ready.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    fleet::Fleet,
    pages::{ONE_AT_A_TIME, Pages},
    process::{Process, temp_dir},
};

/// Metrics the documentation names that only the standalone binary's workers endpoint has.
const STANDALONE_ONLY: [&str; 1] = ["videocall_local_event_messages_total"];

/// Every `videocall_*` metric name in docs/operations.md.
fn documented_metrics() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
    let text = std::fs::read_to_string(path).expect("docs/operations.md");
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("videocall_") && w.len() > "videocall_".len())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names.retain(|n| !STANDALONE_ONLY.contains(&n.as_str()));
    names
}

async fn api(prometheus: SocketAddr, path: &str) -> Value {
    let (status, body) = videocall_testkit::http_get(prometheus, path).await.expect("Prometheus answers");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The metric names Prometheus has.
async fn scraped_names(prometheus: SocketAddr) -> HashSet<String> {
    api(prometheus, "/api/v1/label/__name__/values").await["data"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

/// Starts Prometheus scraping `targets` every second with the fleet's alert rules.
async fn start_prometheus(targets: &[(&'static str, SocketAddr)], dir: &Path) -> (Process, SocketAddr) {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/prometheus/alerts.yml");
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for (job, addr) in targets {
        config.push_str(&format!("  - job_name: {job}\n    static_configs: [{{ targets: ['{addr}'] }}]\n"));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, config).expect("config");
    for _ in 0..3 {
        let listen = videocall_testkit::process::loopback();
        let mut command = tokio::process::Command::new("prometheus");
        command
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{}", listen.port())).display()))
            .arg(format!("--web.listen-address={listen}"));
        let mut process = Process::spawn("prometheus", command, dir);
        if process.try_wait_ready(listen, "/-/ready").await.is_ok() {
            return (process, listen);
        }
    }
    panic!("prometheus did not start; see {}", dir.display());
}

#[tokio::test]
async fn prometheus_scrapes_every_documented_metric_from_the_fleet_and_loads_the_alert_rules() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fleet = Fleet::start(&[]).await;
    let dir = temp_dir("vc-prometheus");
    let (_prometheus, prometheus) = start_prometheus(&fleet.metrics, &dir).await;
    // A call through the pages: quality samples, events through the consumers, a final summary.
    let mut pages = Pages::open(&fleet.base(), &fleet.agent_token(), &fleet.customer_token()).await;
    pages.customer_calls().await;
    pages.agent_accepts(20).await;
    let agent = pages.agent.clone();
    pages.video_advances(&agent, 4.0, 15).await; // two quality reports each
    pages.customer_hangs_up().await;

    let wanted = documented_metrics();
    assert!(wanted.len() > 35, "the documentation names the metrics: {wanted:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let targets = api(prometheus, "/api/v1/targets").await;
        let up =
            targets["data"]["activeTargets"].as_array().map_or(0, |t| t.iter().filter(|t| t["health"] == "up").count());
        let names = scraped_names(prometheus).await;
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !["", "_bucket", "_count"].iter().any(|suffix| names.contains(&format!("{n}{suffix}"))))
            .collect();
        if up == fleet.metrics.len() && missing.is_empty() {
            break missing;
        }
        if Instant::now() >= deadline {
            panic!("after 30 s: {up} of {} targets up; not scraped: {missing:?}", fleet.metrics.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(missing.is_empty());
    eprintln!("all {} documented metrics scraped from {} services", wanted.len(), fleet.metrics.len());

    // Every panel of the Grafana dashboard is a valid query over metrics the fleet has.
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/grafana/videocall.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard")).expect("JSON");
    let scraped = scraped_names(prometheus).await;
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let encoded: String = expr
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            let reply = api(prometheus, &format!("/api/v1/query?query={encoded}")).await;
            assert_eq!(reply["status"], "success", "{}: {expr}: {reply}", panel["title"]);
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("videocall_") {
                    assert!(scraped.contains(name), "{}: `{name}` is not a scraped metric", panel["title"]);
                }
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "the dashboard has its panels: {queries}");
    let ready = api(prometheus, "/api/v1/query?query=videocall_ready%7Bjob%3D%22api-gateway%22%7D").await;
    assert_eq!(ready["data"]["result"][0]["value"][1], "1", "{ready}");
    let rules = api(prometheus, "/api/v1/rules").await;
    let loaded: Vec<(String, String)> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (r["name"].as_str().unwrap_or_default().to_owned(), r["health"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(loaded.len(), 7, "{loaded:?}");
    for (name, health) in &loaded {
        assert_eq!(health, "ok", "{name} evaluates");
    }
    let alerts = api(prometheus, "/api/v1/alerts").await;
    let firing: Vec<&Value> =
        alerts["data"]["alerts"].as_array().expect("alerts").iter().filter(|a| a["state"] == "firing").collect();
    assert!(firing.is_empty(), "a healthy fleet fires nothing: {firing:?}");

    drop(pages);
    let exchange = fleet.events_exchange.clone();
    fleet.stop().await;
    videocall_testkit::EventTap::bind(&exchange).await.delete_exchange(&exchange).await;
}
