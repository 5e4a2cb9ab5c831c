use super::*;
use crate::config::parse;
use crate::engine::classify::flags;
use crate::engine::metrics::Metrics;
use crate::testing::FakeHost;

const UF: u64 = flags::UPSTREAM_CONNECTION_FAILURE;
const UT: u64 = flags::UPSTREAM_REQUEST_TIMEOUT;

/// Whether `label` is blocked for `domain`, as any worker sees it.
fn blocked(host: &FakeHost, domain: &str, label: &str) -> bool {
    let table = BlockTable::default();
    table.domain_has_blocks(host, domain, host.now_ms)
        && table.is_blocked(host, domain, label, host.now_ms)
}

/// The failover flow by callout (`envoy.failover: callout`), which most tests here drive;
/// the router-carried flow has its own tests below (`router_*`).
fn config(text: &str) -> Rc<PluginConfig> {
    let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
    if value.get("envoy").is_none() {
        value["envoy"] = serde_json::json!({"failover": "callout"});
    }
    Rc::new(parse(value.to_string().as_bytes()).unwrap())
}

fn router_config(text: &str) -> Rc<PluginConfig> {
    Rc::new(parse(text.as_bytes()).unwrap())
}

fn header<'a>(headers: &'a [ChainHeader<'_>], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The seeds' example: master 1.1.1.1, slave 2.2.2.2, for www.test.com.
fn seeds_config(extra: &str) -> Rc<PluginConfig> {
    config(&format!(
        r#"{{"debug_headers":true,"domains":[{{"domain":"www.test.com",
            "master":{{"ips":["1.1.1.1"]}},"slave":{{"ips":["2.2.2.2"]}}{extra}}}]}}"#
    ))
}

fn get(authority: &str) -> RequestInfo<'_> {
    RequestInfo {
        authority,
        scheme: "http",
        method: "GET",
        path: "/1.jpg",
        has_body: false,
        worker: "w1",
        stats: crate::s3::bucket::BucketStats::default(),
        metrics: None,
    }
}

fn client_headers(host: &mut FakeHost, method: &str, path: &str) {
    host.request_headers = vec![
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        (":authority".into(), "www.test.com".into()),
        (":scheme".into(), "http".into()),
        ("x-origin-pull-cluster".into(), "origin_pull_ip_http".into()),
        ("x-envoy-original-dst-host".into(), "1.1.1.1:80".into()),
        ("x-envoy-expected-rq-timeout-ms".into(), "5000".into()),
        ("connection".into(), "keep-alive, x-client-hop".into()),
        ("x-client-hop".into(), "1".into()),
        ("accept".into(), "image/*".into()),
    ];
}

fn start(
    cfg: &Rc<PluginConfig>,
    host: &mut FakeHost,
    blocks: &mut BlockTable,
    req: &RequestInfo,
) -> Exchange {
    let mut ex = Exchange::start(cfg, blocks, host, req).expect("a configured host");
    ex.keep_request_headers(&HeaderMap::from_pairs(&host.request_headers));
    ex
}

mod blocks;
mod callout;
mod request;
mod response;
mod router;
mod stats;
