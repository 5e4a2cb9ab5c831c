//! Bucket origins and mirror back-to-origin through [`Exchange`] and [`CopyBack`] on the fake
//! host: signed routed requests and callouts, the miss → source → copy-back flow, redirects,
//! the source-failure choices and the counters.

use std::rc::Rc;

use super::*;
use crate::config::parse_with_env;
use crate::engine::blocks::BlockTable;
use crate::engine::exchange::{Exchange, RequestInfo, ResponseStep, ERROR_HEADER, MIRROR_HEADER};
use crate::s3::bucket::BucketStats;
use crate::testing::FakeHost;

const SECRET: &str = "SECRET-VALUE-never-logged";

fn config(mirror: &str, slave: &str) -> Rc<PluginConfig> {
    let text = format!(
        r#"{{"debug_headers":true,"domains":[{{"domain":"www.test.com",
            "master":{{"bucket":{{"endpoint":"s3.test:9000","bucket":"bkt","region":"us-east-1","addressing":"path","key_prefix":"cdn/",
                "credentials":{{"access_key_id":"AKIDTEST","secret_access_key_env":"S3_SECRET"}}}}}}
            {slave}{mirror}}}]}}"#
    );
    Rc::new(
        parse_with_env(text.as_bytes(), &|name| {
            (name == "S3_SECRET").then(|| SECRET.to_string())
        })
        .unwrap(),
    )
}

const FETCH: &str = r#","mirror":{"source":{"domain":"src.test:8080"}}"#;

fn request<'a>(method: &'a str, path: &'a str, stats: BucketStats) -> RequestInfo<'a> {
    RequestInfo {
        authority: "www.test.com",
        scheme: "http",
        method,
        path,
        has_body: false,
        worker: "w1",
        stats,
        metrics: None,
    }
}

fn client(host: &mut FakeHost, path: &str) {
    host.request_headers = vec![
        (":method".into(), "GET".into()),
        (":path".into(), path.into()),
        (":authority".into(), "www.test.com".into()),
        (":scheme".into(), "http".into()),
        ("authorization".into(), "Bearer client-token".into()),
        ("x-amz-acl".into(), "public-read".into()),
        ("accept".into(), "*/*".into()),
    ];
}

struct World {
    cfg: Rc<PluginConfig>,
    host: FakeHost,
    blocks: BlockTable,
    stats: BucketStats,
}

fn world(mirror: &str, slave: &str) -> World {
    let mut host = FakeHost::new(7);
    let stats = BucketStats::define(&mut host);
    World {
        cfg: config(mirror, slave),
        host,
        blocks: BlockTable::default(),
        stats,
    }
}

impl World {
    fn start(&mut self, method: &str, path: &str) -> Option<Exchange> {
        client(&mut self.host, path);
        let req = request(method, path, self.stats);
        let mut ex = Exchange::start(&self.cfg, &mut self.blocks, &mut self.host, &req)?;
        // As the glue does: the request headers read in the request phase.
        ex.keep_request_headers(&crate::headers::HeaderMap::from_pairs(
            &self.host.request_headers,
        ));
        Some(ex)
    }
    fn no_secret_anywhere(&self) {
        let logs = format!("{:?}", self.host.logs());
        let rest = format!("{:?} {:?}", self.host.callouts, self.host.replies);
        assert!(!logs.contains(SECRET) && !rest.contains(SECRET));
    }
}

#[test]
fn routed_requests_to_a_private_bucket_are_signed() {
    let mut w = world("", "");
    let ex = w.start("GET", "/a%20b.jpg?x=1").unwrap();
    let (route, _) = ex.route().unwrap();
    assert_eq!(&*route.cluster, "origin_pull|http|s3.test|9000");
    let (authority, req) = ex.bucket_request().unwrap();
    assert_eq!(authority, "s3.test:9000");
    assert_eq!(req.path, "/bkt/cdn/a%20b.jpg");
    let names: Vec<&str> = req.headers.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        ["x-amz-date", "x-amz-content-sha256", "authorization"]
    );
    assert!(req.headers[2]
        .1
        .contains("Credential=AKIDTEST/20231114/us-east-1/s3/aws4_request"));
    w.no_secret_anywhere();
}

#[test]
fn only_get_and_head_with_a_key_reach_a_bucket() {
    let mut w = world("", "");
    assert!(w.start("POST", "/a.jpg").is_none());
    assert_eq!(w.host.replies[0].status, 405);
    assert_eq!(w.host.replies[0].header("allow"), Some("GET, HEAD"));
    assert!(w.start("GET", "/?list-type=2").is_none());
    assert_eq!(w.host.replies[1].status, 404);
    assert!(w.start("HEAD", "/a.jpg").is_some());
}

#[test]
fn a_clock_failure_is_a_counted_sign_failure() {
    let mut w = world("", "");
    w.host.now_ms = 0;
    assert!(w.start("GET", "/a.jpg").is_none());
    assert_eq!(w.host.replies[0].status, 502);
    assert_eq!(
        w.host.metric("origin_pull_bucket_sign_failures_total"),
        Some(1)
    );
}

#[test]
fn a_bucket_slave_gets_a_signed_callout_without_the_clients_credentials() {
    let text = r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},
        "slave":{"bucket":{"endpoint":"s3.test","bucket":"bkt","region":"r","credentials":{"access_key_id":"AK","secret_access_key":"SK"}}}}]}"#;
    let cfg = Rc::new(crate::config::parse(text.as_bytes()).unwrap());
    let mut host = FakeHost::new(1);
    let mut blocks = BlockTable::default();
    client(&mut host, "/x.jpg?v=2");
    let req = request("GET", "/x.jpg?v=2", BucketStats::default());
    let mut ex = Exchange::start(&cfg, &mut blocks, &mut host, &req).unwrap();
    ex.keep_request_headers(&crate::headers::HeaderMap::from_pairs(
        &host.request_headers,
    ));
    assert!(ex.bucket_request().is_none());
    ex.on_response_headers(&mut host, &mut blocks, 404, 0);
    let c = &host.callouts[0];
    assert_eq!(c.cluster, "origin_pull|http|bkt.s3.test|80");
    assert_eq!(c.header(":authority"), Some("bkt.s3.test"));
    assert_eq!(c.header(":path"), Some("/x.jpg"));
    assert!(c
        .header("authorization")
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=AK/"));
    assert_eq!(c.header("x-amz-acl"), None);
    assert_eq!(c.header("accept"), Some("*/*"));
    assert_eq!(
        c.headers
            .iter()
            .filter(|(k, _)| k == "authorization")
            .count(),
        1
    );
}

#[test]
fn a_bucket_miss_is_fetched_from_the_source_served_and_copied_back() {
    let mut w = world(FETCH, "");
    let mut ex = w.start("GET", "/img/a.jpg?token=1").unwrap();
    let step = ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    assert_eq!(step, ResponseStep::Pause);
    let c = w.host.callouts[0].clone();
    assert_eq!(c.cluster, "origin_pull|http|src.test|8080");
    assert_eq!(
        c.header(":path"),
        Some("/img/a.jpg"),
        "query not passed by default"
    );
    assert_eq!(c.header(":authority"), Some("www.test.com"));
    assert_eq!(c.header("authorization"), Some("Bearer client-token"));
    w.host.respond(
        200,
        &[
            ("content-type", "image/jpeg"),
            ("x-envoy-upstream-service-time", "1"),
        ],
        b"JPEG",
    );
    ex.on_callout_response(&mut w.host, &mut w.blocks, c.token, 3, 4);
    let reply = w.host.replies.last().unwrap().clone();
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"JPEG"[..]));
    assert_eq!(reply.header(MIRROR_HEADER), Some("source"));
    assert_eq!(
        reply.header("x-origin-pull-origin"),
        Some("mirror=src.test:8080")
    );
    assert!(
        w.host.filter_state[crate::engine::exchange::ATTRIBUTION_KEY]
            .starts_with("origin=src.test:8080 role=mirror ")
    );
    assert_eq!(w.host.metric("origin_pull_mirror_fetches_total"), Some(1));

    // The copy-back: queued by the stream, signed and sent by the root context.
    let job = ex.take_copy_job().unwrap();
    assert_eq!(job.key, b"cdn/img/a.jpg");
    assert_eq!(job.content_type.as_deref(), Some("image/jpeg"));
    let mut copy = CopyBack::default();
    assert!(copy.submit(&mut w.host, &w.stats, job));
    copy.run(&mut w.host, &w.stats);
    let put = w.host.callouts.last().unwrap().clone();
    assert_eq!(put.header(":method"), Some("PUT"));
    assert_eq!(put.header(":path"), Some("/bkt/cdn/img/a.jpg"));
    assert_eq!(put.header(":authority"), Some("s3.test:9000"));
    assert_eq!(put.header("content-length"), Some("4"));
    assert_eq!(
        put.header("x-amz-content-sha256"),
        Some(sigv4::sha256_hex(b"JPEG").as_str())
    );
    assert!(put
        .header("authorization")
        .unwrap()
        .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date"));
    assert_eq!(put.body.as_deref(), Some(&b"JPEG"[..]));
    assert_eq!(copy.pending(), 1);
    w.host.respond(200, &[], b"");
    assert!(copy.on_response(&mut w.host, &w.stats, put.token, 1, 0));
    assert_eq!(copy.pending(), 0);
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_done_total"),
        Some(1)
    );
    assert!(!copy.on_response(&mut w.host, &w.stats, 999, 1, 0));
    w.no_secret_anywhere();
}

#[test]
fn failed_and_refused_copy_backs_are_counted() {
    let mut w = world(FETCH, "");
    let job = |body: &[u8], cfg: &Rc<PluginConfig>| CopyJob {
        config: cfg.clone(),
        domain: 0,
        scheme: Scheme::Http,
        key: b"cdn/k".to_vec(),
        content_type: None,
        body: body.to_vec(),
        fetch: None,
    };
    let mut copy = CopyBack::default();
    assert!(copy.submit(&mut w.host, &w.stats, job(b"1", &w.cfg)));
    assert!(
        !copy.submit(&mut w.host, &w.stats, job(b"2", &w.cfg)),
        "same key twice"
    );
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_skipped_total"),
        Some(1)
    );
    copy.run(&mut w.host, &w.stats);
    let token = w.host.callouts.last().unwrap().token;
    w.host.respond(403, &[], b"SignatureDoesNotMatch");
    copy.on_response(&mut w.host, &w.stats, token, 1, 21);
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_failed_total"),
        Some(1)
    );
    assert_eq!(w.host.metric("origin_pull_bucket_denied_total"), Some(1));
    assert!(w
        .host
        .logged("copy-back of 'cdn/k' to bucket bkt (www.test.com) failed: status 403"));
    // Envoy refusing the callout fails the job at once.
    w.host.fail_dispatch = true;
    assert!(copy.submit(&mut w.host, &w.stats, job(b"3", &w.cfg)));
    copy.run(&mut w.host, &w.stats);
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_failed_total"),
        Some(2)
    );
    assert_eq!(copy.pending(), 0);
    // Memory budget.
    let big = vec![0u8; (MAX_COPY_BACK_BYTES + 1) as usize];
    assert!(!copy.submit(&mut w.host, &w.stats, job(&big, &w.cfg)));
}

#[test]
fn large_objects_are_served_but_not_copied_back() {
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"max_copy_bytes":3}"#,
        "",
    );
    let mut ex = w.start("GET", "/big.bin").unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    let token = w.host.callouts[0].token;
    w.host
        .respond(200, &[("x-envoy-upstream-service-time", "1")], b"ABCD");
    ex.on_callout_response(&mut w.host, &mut w.blocks, token, 2, 4);
    assert_eq!(w.host.replies[0].status, 200);
    assert!(ex.take_copy_job().is_none());
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_skipped_total"),
        Some(1)
    );
}

#[test]
fn head_range_and_unmatched_keys_are_not_copied_or_not_mirrored() {
    // HEAD: served from the source, nothing to copy.
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"key_prefixes":["img/"],"pass_query_string":true}"#,
        "",
    );
    let mut ex = w.start("HEAD", "/img/a.jpg?v=1").unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    assert_eq!(w.host.callouts[0].header(":path"), Some("/img/a.jpg?v=1"));
    let token = w.host.callouts[0].token;
    w.host
        .respond(200, &[("x-envoy-upstream-service-time", "1")], b"");
    ex.on_callout_response(&mut w.host, &mut w.blocks, token, 2, 0);
    assert!(ex.take_copy_job().is_none());
    // A partial answer (206) is never copied back.
    let mut ex = w.start("GET", "/img/b.jpg").unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    let token = w.host.callouts.last().unwrap().token;
    w.host
        .respond(206, &[("x-envoy-upstream-service-time", "1")], b"AB");
    ex.on_callout_response(&mut w.host, &mut w.blocks, token, 2, 2);
    assert_eq!(w.host.replies.last().unwrap().status, 206);
    assert!(ex.take_copy_job().is_none());
    // Outside the key prefixes the miss is the client's answer (no slave here).
    let before = w.host.callouts.len();
    let mut ex = w.start("GET", "/doc/c.pdf").unwrap();
    assert_eq!(
        ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0),
        ResponseStep::Continue
    );
    assert_eq!(w.host.callouts.len(), before);
}

#[test]
fn redirect_mode_answers_302_to_the_source() {
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test:8080","protocol":"https"},"mode":"redirect"}"#,
        "",
    );
    let mut ex = w.start("GET", "/img/a.jpg?x=1").unwrap();
    assert_eq!(
        ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0),
        ResponseStep::Pause
    );
    let reply = &w.host.replies[0];
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.header("location"),
        Some("https://src.test:8080/img/a.jpg")
    );
    assert_eq!(reply.header(MIRROR_HEADER), Some("redirect"));
    assert!(
        w.host.callouts.is_empty(),
        "the client's stream sends nothing"
    );
    assert_eq!(w.host.metric("origin_pull_mirror_redirects_total"), Some(1));
    // Meanwhile the root context copies the object: source GET, then the signed PUT.
    let job = ex.take_copy_job().unwrap();
    let mut copy = CopyBack::default();
    assert!(copy.submit(&mut w.host, &w.stats, job));
    copy.run(&mut w.host, &w.stats);
    let get = w.host.callouts[0].clone();
    assert_eq!(get.cluster, "origin_pull|https|src.test|8080");
    assert_eq!(get.header(":method"), Some("GET"));
    assert_eq!(get.header(":path"), Some("/img/a.jpg"));
    assert_eq!(
        get.header("authorization"),
        None,
        "the client's headers are not replayed"
    );
    w.host
        .respond(200, &[("content-type", "image/jpeg")], b"JPEG");
    assert!(copy.on_response(&mut w.host, &w.stats, get.token, 2, 4));
    let put = w.host.callouts[1].clone();
    assert_eq!(put.header(":method"), Some("PUT"));
    assert_eq!(put.header("content-type"), Some("image/jpeg"));
    assert_eq!(put.body.as_deref(), Some(&b"JPEG"[..]));
    w.host.respond(200, &[], b"");
    assert!(copy.on_response(&mut w.host, &w.stats, put.token, 1, 0));
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_done_total"),
        Some(1)
    );
    assert_eq!(copy.pending(), 0);
    // A source that fails the background GET: counted, nothing written.
    let mut ex = w.start("GET", "/img/b.jpg").unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    assert!(copy.submit(&mut w.host, &w.stats, ex.take_copy_job().unwrap()));
    copy.run(&mut w.host, &w.stats);
    let get = w.host.callouts.last().unwrap().clone();
    w.host.respond(404, &[], b"");
    copy.on_response(&mut w.host, &w.stats, get.token, 1, 0);
    assert_eq!(
        w.host.metric("origin_pull_mirror_source_failures_total"),
        Some(1)
    );
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_failed_total"),
        Some(1)
    );
    assert_eq!(w.host.callouts.len(), 3);
}

#[test]
fn when_the_source_fails_too_the_client_gets_what_was_configured() {
    let source_503 = |w: &mut World, ex: &mut Exchange| {
        ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
        let token = w.host.callouts.last().unwrap().token;
        w.host.respond(
            503,
            &[("x-envoy-upstream-service-time", "1")],
            b"source down",
        );
        ex.on_callout_response(&mut w.host, &mut w.blocks, token, 2, 11);
    };
    // not_found (default): the bucket's miss.
    let mut w = world(FETCH, "");
    let mut ex = w.start("GET", "/a.jpg").unwrap();
    source_503(&mut w, &mut ex);
    let reply = w.host.replies.last().unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.header("x-origin-pull-error"),
        Some("mirror-source-failed")
    );
    assert_eq!(
        w.host.metric("origin_pull_mirror_source_failures_total"),
        Some(1)
    );
    // source: the source's answer.
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"on_source_failure":"source"}"#,
        "",
    );
    let mut ex = w.start("GET", "/a.jpg").unwrap();
    source_503(&mut w, &mut ex);
    let reply = w.host.replies.last().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (503, &b"source down"[..])
    );
    // slave: fail over as for any master error, and the slave's answer is final.
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"on_source_failure":"slave"}"#,
        r#","slave":{"ips":["2.2.2.2"]}"#,
    );
    let mut ex = w.start("GET", "/a.jpg").unwrap();
    source_503(&mut w, &mut ex);
    let slave = w.host.callouts.last().unwrap().clone();
    assert_eq!(slave.header(ORIGINAL_DST), Some("2.2.2.2:80"));
    assert_eq!(slave.header(":path"), Some("/a.jpg"));
    w.host.respond(
        200,
        &[("x-envoy-upstream-service-time", "1")],
        b"from slave",
    );
    ex.on_callout_response(&mut w.host, &mut w.blocks, slave.token, 2, 10);
    let reply = w.host.replies.last().unwrap();
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (200, &b"from slave"[..])
    );
    assert_eq!(
        reply.header("x-origin-pull-origin"),
        Some("slave=2.2.2.2:80")
    );
    assert!(ex.take_copy_job().is_none());
}

#[test]
fn without_mirror_a_bucket_miss_fails_over_to_the_slave() {
    let mut w = world("", r#","slave":{"ips":["2.2.2.2"]}"#);
    let mut ex = w.start("GET", "/a.jpg").unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 403, 0);
    assert_eq!(w.host.callouts[0].header(ORIGINAL_DST), Some("2.2.2.2:80"));
    assert_eq!(w.host.metric("origin_pull_bucket_denied_total"), Some(1));
}

const ORIGINAL_DST: &str = crate::engine::exchange::ORIGINAL_DST_HEADER;

/// Issue 13, item 1: a path whose decoded key escapes `key_prefixes` (or has any dot segment)
/// is refused with 400 before the bucket, the source or a copy-back see it; the source is asked
/// for the same normalized key the bucket missed and the copy is stored under.
#[test]
fn mirror_keys_are_normalized_and_escapes_refused() {
    let mirror = r#","mirror":{"source":{"domain":"src.test:8080"},"key_prefixes":["images/"]}"#;
    let mut w = world(mirror, "");
    for path in [
        "/images/../private/admin1.txt",
        "/images/%2e%2e/private/admin1.txt",
        "/images/..%2fprivate/admin1.txt",
        "/images/%2E%2E%2Fprivate/admin1.txt",
        "/images/..%5Cprivate/admin1.txt",
        "/images//private/admin1.txt",
    ] {
        let replies = w.host.replies.len();
        assert!(w.start("GET", path).is_none(), "{path} routed");
        let reply = w.host.replies.last().unwrap().clone();
        assert_eq!(w.host.replies.len(), replies + 1);
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.header(ERROR_HEADER), Some("bucket-bad-key"), "{path}");
    }
    assert!(w.host.callouts.is_empty(), "nothing sent anywhere");
    // Percent-encoded unreserved characters name the same key everywhere.
    let mut ex = w.start("GET", "/images/%61%2Db.jpg").unwrap();
    assert_eq!(
        ex.bucket_request().unwrap().1.path,
        "/bkt/cdn/images/a-b.jpg"
    );
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    let c = w.host.callouts[0].clone();
    assert_eq!(c.header(":path"), Some("/images/a-b.jpg"));
    w.host
        .respond(200, &[("x-envoy-upstream-service-time", "1")], b"IMG");
    ex.on_callout_response(&mut w.host, &mut w.blocks, c.token, 2, 3);
    assert_eq!(ex.take_copy_job().unwrap().key, b"cdn/images/a-b.jpg");
    // An encoded '/' is a '/' of the key: the prefix check sees `images/x`.
    let ex = w.start("GET", "/images%2Fx.jpg").unwrap();
    assert_eq!(ex.bucket_request().unwrap().1.path, "/bkt/cdn/images/x.jpg");
}

/// Issue 13, item 2: an answer fetched with the client's query string is served but never
/// stored under the query-less key; without `pass_query_string` the query is dropped and the
/// object is copied back as before.
#[test]
fn answers_fetched_with_a_query_are_never_copied_back() {
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"pass_query_string":true}"#,
        "",
    );
    let mut ex = w
        .start("GET", "/images/poison.jpg?payload=ATTACKER")
        .unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    let c = w.host.callouts[0].clone();
    assert_eq!(
        c.header(":path"),
        Some("/images/poison.jpg?payload=ATTACKER")
    );
    w.host
        .respond(200, &[("x-envoy-upstream-service-time", "1")], b"EVIL");
    ex.on_callout_response(&mut w.host, &mut w.blocks, c.token, 2, 4);
    assert_eq!(w.host.replies[0].body, b"EVIL", "served to this client");
    assert!(ex.take_copy_job().is_none(), "never stored");
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_skipped_total"),
        Some(1)
    );
    // The same key without a query string (or with an empty one) is copied back.
    for path in ["/images/ok.jpg", "/images/ok2.jpg?"] {
        let mut ex = w.start("GET", path).unwrap();
        ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
        let c = w.host.callouts.last().unwrap().clone();
        w.host
            .respond(200, &[("x-envoy-upstream-service-time", "1")], b"OK");
        ex.on_callout_response(&mut w.host, &mut w.blocks, c.token, 2, 2);
        assert!(ex.take_copy_job().is_some(), "{path}");
    }
    // Redirect mode: the client goes to the source with its query; no copy is made.
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"mode":"redirect","pass_query_string":true}"#,
        "",
    );
    let mut ex = w
        .start("GET", "/images/poison.jpg?payload=ATTACKER")
        .unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    assert_eq!(w.host.replies[0].status, 302);
    assert!(ex.take_copy_job().is_none());
    // Without pass_query_string the query never reaches the source, so the copy is safe.
    let mut w = world(r#","mirror":{"source":{"domain":"src.test"}}"#, "");
    let mut ex = w.start("GET", "/images/q.jpg?payload=x").unwrap();
    ex.on_response_headers(&mut w.host, &mut w.blocks, 404, 0);
    let c = w.host.callouts[0].clone();
    assert_eq!(c.header(":path"), Some("/images/q.jpg"));
    w.host
        .respond(200, &[("x-envoy-upstream-service-time", "1")], b"Q");
    ex.on_callout_response(&mut w.host, &mut w.blocks, c.token, 2, 1);
    assert_eq!(ex.take_copy_job().unwrap().key, b"cdn/images/q.jpg");
}

/// Issue 13, item 2: clients cannot grow the bucket faster than
/// `mirror.max_copy_backs_per_minute` (per domain and worker); the next minute copies again.
#[test]
fn copy_backs_are_limited_per_minute() {
    let mut w = world(
        r#","mirror":{"source":{"domain":"src.test"},"max_copy_backs_per_minute":2}"#,
        "",
    );
    let job = |key: &str, cfg: &Rc<PluginConfig>| CopyJob {
        config: cfg.clone(),
        domain: 0,
        scheme: Scheme::Http,
        key: key.as_bytes().to_vec(),
        content_type: None,
        body: b"x".to_vec(),
        fetch: None,
    };
    let mut copy = CopyBack::default();
    assert!(copy.submit(&mut w.host, &w.stats, job("cdn/1", &w.cfg)));
    assert!(copy.submit(&mut w.host, &w.stats, job("cdn/2", &w.cfg)));
    w.host.now_ms += 59_000;
    assert!(!copy.submit(&mut w.host, &w.stats, job("cdn/3", &w.cfg)));
    assert!(!copy.submit(&mut w.host, &w.stats, job("cdn/4", &w.cfg)));
    assert_eq!(
        w.host.metric("origin_pull_mirror_copy_back_skipped_total"),
        Some(2)
    );
    let warnings = w
        .host
        .logs()
        .iter()
        .filter(|(_, l)| l.contains("max_copy_backs_per_minute"))
        .count();
    assert_eq!(warnings, 1, "one line per minute, not one per object");
    w.host.now_ms += 1_000;
    assert!(copy.submit(&mut w.host, &w.stats, job("cdn/5", &w.cfg)));
}
