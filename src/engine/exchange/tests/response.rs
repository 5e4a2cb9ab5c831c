//! The routed response phase (`Exchange::on_routed_response`): what the client is shown.

use super::*;

const ROUTED: &str = r#"{"debug_headers":true,"domains":[{"domain":"www.test.com",
    "master":{"ips":["127.0.0.2:80"]},"slave":{"domain":"backup.test.com","host":"backup.test.com"}}]}"#;

fn routed(host: &mut FakeHost, blocks: &mut BlockTable) -> Exchange {
    let ex = Exchange::start(&router_config(ROUTED), blocks, host, &get("www.test.com")).unwrap();
    assert!(ex.routes_chain());
    ex
}

fn changed<'a>(host: &'a FakeHost, name: &str) -> Vec<Option<&'a str>> {
    host.response_header_changes
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_deref())
        .collect()
}

#[test]
fn a_relayed_failover_marker_shows_the_origin_status() {
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    let mut ex = routed(&mut host, &mut blocks);
    // The slave's own 503, marked for a retry the router had no more of.
    let step = ex.on_routed_response(&mut host, &mut blocks, FAILOVER_STATUS, 0, Some((2, 503)));
    assert_eq!(step, ResponseStep::Continue);
    assert_eq!(changed(&host, ":status"), vec![Some("503")]);
    // An invalid status is never shown as such.
    let (mut host, mut blocks) = (FakeHost::new(2), BlockTable::default());
    let mut ex = routed(&mut host, &mut blocks);
    ex.on_routed_response(&mut host, &mut blocks, FAILOVER_STATUS, 0, Some((1, 0)));
    assert_eq!(changed(&host, ":status"), vec![Some("502")]);
}

#[test]
fn a_failed_over_answer_loses_its_hop_by_hop_headers_and_names_its_origin() {
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    let mut ex = routed(&mut host, &mut blocks);
    ex.on_routed_response(&mut host, &mut blocks, 200, 0, Some((2, 200)));
    for name in [
        "te",
        "trailer",
        "proxy-authenticate",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(changed(&host, name), vec![None], "{name}");
    }
    assert!(changed(&host, ":status").is_empty());
    assert_eq!(
        changed(&host, DEBUG_ORIGIN_HEADER),
        vec![Some("slave=backup.test.com:80")]
    );
    assert_eq!(changed(&host, DEBUG_ATTEMPTS_HEADER), vec![Some("2")]);
}

#[test]
fn the_first_attempt_answer_is_left_as_it_is() {
    let (mut host, mut blocks) = (FakeHost::new(1), BlockTable::default());
    let mut ex = routed(&mut host, &mut blocks);
    ex.on_routed_response(&mut host, &mut blocks, 200, 0, Some((1, 200)));
    let names: Vec<&str> = host
        .response_header_changes
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        names,
        [
            DEBUG_ORIGIN_HEADER,
            DEBUG_ATTEMPTS_HEADER,
            DEBUG_WORKER_HEADER
        ]
    );
}
