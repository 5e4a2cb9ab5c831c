use super::types::strip_port;
use super::*;
use serde_json::json;

fn parse_str(text: &str) -> Result<PluginConfig, ConfigError> {
    parse(text.as_bytes())
}

#[test]
fn escaped_strings_parse_like_plain_ones() {
    // The fast path borrows strings from the bytes; escapes take the tracked path.
    let plain = parse_str(
            r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80:1","127.0.0.3:80:2"]}}]}"#,
        )
        .unwrap();
    let escaped = parse_str(
            r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:80:1","127.0.0.3:80:2"]}}]}"#,
        )
        .unwrap();
    assert_eq!(plain.normalized(), escaped.normalized());
    let err =
        parse_str(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["127.0.0.2:0"]}}]}"#)
            .unwrap_err();
    assert_eq!(
            err.to_string(),
            "invalid origin-pull configuration: domain \"www.test.com\": field master.ips[0] value \"127.0.0.2:0\": port 0 is not allowed: ports are 1..=65535"
        );
}

#[test]
fn defaults_are_the_vendors() {
    let cfg = parse_str(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]}}]}"#)
        .unwrap();
    let d = cfg.domain_for_host("www.test.com").unwrap();
    assert!(d.failover.on_4xx && d.failover.on_5xx && d.failover.on_connect_error);
    assert_eq!(*d.failover.methods, ["GET", "HEAD"]);
    assert_eq!(d.detection.block_ms, 60_000);
    assert!(!d.detection.block_on_5xx);
    assert_eq!(d.detection.failure_threshold, 3);
    assert_eq!(d.detection.failure_window_ms, 10_000);
    let route = d.master.targets[0].route(Scheme::Http);
    assert_eq!(&*route.cluster, "origin_pull_ip_http");
    assert_eq!(route.original_dst.as_deref(), Some("1.1.1.1:80"));
    assert_eq!(cfg.unknown_host_status, 404);
    assert!(!cfg.uses_buckets);
}

#[test]
fn host_lookup_exact_wildcard_default() {
    let cfg = parse_str(
        r#"{"domains":[
              {"domain":"www.test.com","master":{"ips":["1.1.1.1"]}},
              {"domain":"*.test.com","master":{"ips":["2.2.2.2"]}},
              {"domain":"*.img.test.com","master":{"ips":["3.3.3.3"]}},
              {"domain":"*","master":{"ips":["4.4.4.4"]}}
            ]}"#,
    )
    .unwrap();
    let name = |h: &str| cfg.domain_for_host(h).map(|d| d.name.clone());
    assert_eq!(name("WWW.Test.com.:8080").as_deref(), Some("www.test.com"));
    assert_eq!(name("a.test.com").as_deref(), Some("*.test.com"));
    assert_eq!(name("a.b.test.com").as_deref(), Some("*.test.com"));
    assert_eq!(name("x.img.test.com").as_deref(), Some("*.img.test.com"));
    assert_eq!(name("test.com").as_deref(), Some("*"));
    assert_eq!(name("[::1]:80").as_deref(), Some("*"));
    let no_default =
        parse_str(r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]}}]}"#)
            .unwrap();
    assert!(no_default.domain_for_host("other.com").is_none());
    assert!(no_default.domain_for_host("").is_none());
}

#[test]
fn follow_and_ports() {
    let cfg = parse_str(
            r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1","2.2.2.2:8443"],"protocol":"follow"},
                "slave":{"domain":"b.com","protocol":"follow"}}]}"#,
        )
        .unwrap();
    let d = cfg.domain_for_host("a.com").unwrap();
    let t = &d.master.targets[0];
    assert_eq!(
        t.route(Scheme::Http).original_dst.as_deref(),
        Some("1.1.1.1:80")
    );
    assert_eq!(
        t.route(Scheme::Https).original_dst.as_deref(),
        Some("1.1.1.1:443")
    );
    assert_eq!(&*t.route(Scheme::Https).cluster, "origin_pull_ip_https");
    let t = &d.master.targets[1];
    assert_eq!(
        t.route(Scheme::Http).original_dst.as_deref(),
        Some("2.2.2.2:8443")
    );
    let s = &d.slave.as_ref().unwrap().targets[0];
    assert_eq!(&*s.route(Scheme::Http).cluster, "origin_pull|http|b.com|80");
    assert_eq!(
        &*s.route(Scheme::Https).cluster,
        "origin_pull|https|b.com|443"
    );
    assert_eq!(s.route(Scheme::Https).original_dst, None);
}

#[test]
fn quoted_input_keys_cannot_break_the_log_line() {
    // Found by the fuzzer: a key with an escaped newline was printed raw.
    let key = format!("unkno\\n{}", "w".repeat(5_000));
    let text = format!(r#"{{"domains":[],"{key}":1}}"#);
    let message = parse_str(&text).unwrap_err().to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains(r"unkno\n"), "{message}");
    assert!(message.len() < 1_000, "{} bytes", message.len());
}

#[test]
fn normalized_configurations_are_accepted_again() {
    // Found by the fuzzer: `check` printed weights on single IPs/clusters and IPv6 lists.
    for (origin, expected) in [
        (r#"{"ips":["1.1.1.1"]}"#, json!(["1.1.1.1:80"])),
        (
            r#"{"ips":["1.1.1.1","2.2.2.2:81"]}"#,
            json!(["1.1.1.1:80:1", "2.2.2.2:81:1"]),
        ),
        (
            r#"{"ips":["2001:db8::1","1.1.1.1"]}"#,
            json!(["[2001:db8::1]:80", "1.1.1.1:80"]),
        ),
        (
            r#"{"ips":["1.1.1.1::1","2.2.2.2::3"],"protocol":"follow"}"#,
            json!(["1.1.1.1::1", "2.2.2.2::3"]),
        ),
        (
            r#"{"ips":["1.1.1.1"],"protocol":"follow"}"#,
            json!(["1.1.1.1"]),
        ),
        (r#"{"clusters":[{"name":"c"}]}"#, json!([{"name": "c"}])),
    ] {
        let text = format!(r#"{{"domains":[{{"domain":"a.com","master":{origin}}}]}}"#);
        let n = parse_str(&text).unwrap().normalized();
        let master = &n["domains"][0]["master"];
        assert_eq!(
            master.get("ips").or(master.get("clusters")),
            Some(&expected),
            "{origin}"
        );
        let again = parse(&serde_json::to_vec(&n).unwrap());
        assert!(again.is_ok(), "{origin}: {again:?}");
    }
}

#[test]
fn switch_swaps_roles() {
    let cfg = parse_str(
        r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"slave":{"ips":["2.2.2.2"]},
                "master_slave_switch":true}]}"#,
    )
    .unwrap();
    let d = cfg.domain_for_host("a.com").unwrap();
    assert_eq!(&*d.master.targets[0].routes[0].label, "2.2.2.2:80");
    assert_eq!(
        &*d.slave.as_ref().unwrap().targets[0].routes[0].label,
        "1.1.1.1:80"
    );
    // normalized output shows the configuration as written, not swapped
    let n = cfg.normalized();
    assert_eq!(n["domains"][0]["master"]["ips"][0], "1.1.1.1:80");
}

#[test]
fn cluster_origins() {
    let cfg = parse_str(
            r#"{"domains":[{"domain":"a.com","master":{"clusters":[{"name":"outbound|80||a.svc","weight":1},{"name":"b","weight":3}]}}]}"#,
        )
        .unwrap();
    let d = cfg.domain_for_host("a.com").unwrap();
    assert_eq!(d.master.cumulative_weights, vec![1, 4]);
    assert_eq!(cfg.required_clusters(), vec!["b", "outbound|80||a.svc"]);
}

/// Every SPEC rule, and the shape of the message: domain, field, value, reason.
#[test]
fn invalid_configurations_name_domain_field_value() {
    let d =
        |origin: &str| format!(r#"{{"domains":[{{"domain":"www.test.com","master":{origin}}}]}}"#);
    let cases: Vec<(String, &str)> = vec![
            ("{".into(), "field (document): not valid JSON"),
            ("[]".into(), "field (document)"),
            (r#"{"domains":[]}"#.into(), "field domains value \"[]\": the list is empty"),
            (r#"{"domains":[],"x":1}"#.into(), "field x: unknown field `x`"),
            (d(r#"{"ips":["1.1.1.1:8080:5"]}"#), "domain \"www.test.com\": field master.ips[0] value \"1.1.1.1:8080:5\": a single origin IP may not carry a weight"),
            (d(r#"{"ips":["1.1.1.1:80:1","2.2.2.2"]}"#), "field master.ips[1] value \"2.2.2.2\": either every IP has a weight or none does"),
            (d(r#"{"ips":["1.1.1.1::1001","2.2.2.2::1"]}"#), "field master.ips[0] value \"1.1.1.1::1001\": weight 1001 is out of range 0..=1000"),
            (d(r#"{"ips":["1.1.1.1:0"]}"#), "field master.ips[0] value \"1.1.1.1:0\": port 0 is not allowed: ports are 1..=65535"),
            (d(r#"{"ips":["1.1.1.1:70000"]}"#), "port 70000 is out of range 1..=65535"),
            (d(r#"{"ips":["[2001:db8::1]:80:5","1.1.1.1:80:5"]}"#), "field master.ips[0] value \"[2001:db8::1]:80:5\": IPv6 addresses may not carry a weight"),
            (d(r#"{"ips":["2001:db8::1","1.1.1.1::5"]}"#), "field master.ips[0] value \"2001:db8::1\": either every IP has a weight or none does; IPv6"),
            (d(r#"{"ips":["1.1.1.1::0","2.2.2.2::0"]}"#), "field master.ips value \"1.1.1.1::0,2.2.2.2::0\": every weight is 0"),
            (d(r#"{"ips":[]}"#), "field master.ips value \"[]\": the list is empty"),
            (d(r#"{"ips":["1.1.1.1","1.1.1.1:80"]}"#), "field master.ips[1] value \"1.1.1.1:80\": is listed twice"),
            (d(r#"{"ips":["origin.example.com"]}"#), "field master.ips[0] value \"origin.example.com\": is a domain name"),
            (d(r#"{"domain":"origin.example.com:80:5"}"#), "field master.domain value \"origin.example.com:80:5\": a domain origin may not carry a weight"),
            (d(r#"{"domain":"origin.example.com:0"}"#), "field master.domain value \"origin.example.com:0\": port 0 is not allowed"),
            (d(r#"{"domain":"WWW.test.com"}"#), "field master.domain value \"WWW.test.com\": is the accelerated domain 'www.test.com' itself"),
            (d(r#"{"domain":"1.2.3.4"}"#), "field master.domain value \"1.2.3.4\": is an IP address"),
            (d(r#"{"ips":["1.1.1.1"],"domain":"a.com"}"#), "field master value \"2 of ips/domain/clusters/bucket\": set exactly one of"),
            (d(r#"{}"#), "field master value \"0 of ips/domain/clusters/bucket\""),
            (d(r#"{"ips":["1.1.1.1"],"protocol":"ftp"}"#), "field master.protocol value \"ftp\": must be one of"),
            (d(r#"{"ips":["1.1.1.1"],"host":"a.com\r\nx: y"}"#), "field master.host value \"a.com\\r\\nx: y\": contains whitespace or control characters"),
            (d(r#"{"ips":["1.1.1.1"],"host":"a .com"}"#), "field master.host value \"a .com\": contains whitespace"),
            (d(r#"{"ips":["1.1.1.1"],"weight":3}"#), "field master.weight: unknown field `weight`"),
            (d(r#"{"ips":"1.1.1.1"}"#), "field master.ips: invalid type: string \"1.1.1.1\", expected a sequence"),
            (d(r#"{"clusters":[{"name":"a","weight":2}]}"#), "field master.clusters[0].weight value \"2\": a single origin cluster may not carry a weight"),
            (d(r#"{"clusters":[{"name":"a"}],"protocol":"https"}"#), "field master.protocol value \"https\": is decided by the cluster"),
            (d(r#"{"clusters":[{"name":""}]}"#), "field master.clusters[0].name value \"\": is empty"),
            (r#"{"domains":[{"domain":"*.test.com","master":{"domain":"o.test.com"}}]}"#.into(), "domain \"*.test.com\": field master.domain value \"o.test.com\": is the accelerated domain"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}},{"domain":"A.com","master":{"ips":["1.1.1.1"]}}]}"#.into(), "domain \"a.com\": field domain value \"a.com\": appears more than once"),
            (r#"{"domains":[{"domain":"a.*.com","master":{"ips":["1.1.1.1"]}}]}"#.into(), "domain \"a.*.com\": field domain value \"a.*.com\": a wildcard is only allowed"),
            (r#"{"domains":[{"domain":"a.com:80","master":{"ips":["1.1.1.1"]}}]}"#.into(), "must be a host name without a port"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"master_slave_switch":true}]}"#.into(), "domain \"a.com\": field master_slave_switch value \"true\": there is no slave origin"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"on":["4xx","404"]}}]}"#.into(), "field failover.on[1] value \"404\": must be one of"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"status_codes":[200]}}]}"#.into(), "field failover.status_codes[0] value \"200\": must be a status code 300..=599"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"max_response_body_bytes":99999999999}}]}"#.into(), "field failover.max_response_body_bytes value \"99999999999\": must be 1..=33554432"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"failover":{"methods":["GET","PO ST"]}}]}"#.into(), "field failover.methods[1] value \"PO ST\": is not an HTTP method name"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"block_seconds":86401}}]}"#.into(), "field detection.block_seconds value \"86401\": must be 0..=86400"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"block_seconds":-1}}]}"#.into(), "field detection.block_seconds: invalid value: integer `-1`"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_threshold":0}}]}"#.into(), "domain \"a.com\": field detection.failure_threshold value \"0\": must be 1..=100"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_threshold":101}}]}"#.into(), "field detection.failure_threshold value \"101\": must be 1..=100"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_window_seconds":0}}]}"#.into(), "field detection.failure_window_seconds value \"0\": must be 1..=3600"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"detection":{"failure_window_seconds":3601}}]}"#.into(), "field detection.failure_window_seconds value \"3601\": must be 1..=3600"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}}],"unknown_host_status":200}"#.into(), "field unknown_host_status value \"200\": must be an error status"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}}],"envoy":{"cluster_header":"X-Bad Header"}}"#.into(), "field envoy.cluster_header value \"X-Bad Header\""),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]},"slave":{"ips":["1.1.1.1:0"]}}]}"#.into(), "domain \"a.com\": field slave.ips[0] value \"1.1.1.1:0\": port 0"),
        ];
    for (text, want) in &cases {
        let err = parse_str(text).map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("SECRET-VALUE"), "{err}");
        assert!(
            err.starts_with("invalid origin-pull configuration: "),
            "{err}"
        );
        assert!(
            err.contains(want),
            "config {text}\n got: {err}\nwant: {want}"
        );
    }
    assert!(cases.len() >= 40);
}

const BUCKET: &str = r#"{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1"}"#;

fn bucket_config(bucket: &str, rest: &str) -> String {
    format!(r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{bucket}{rest}}}}}]}}"#)
}

fn with_env(text: &str) -> Result<PluginConfig, ConfigError> {
    parse_with_env(text.as_bytes(), &|name| match name {
        "S3_KEY_ID" => Some("AKIDFROMENV".into()),
        "S3_SECRET" => Some("SECRET-VALUE-FROM-ENV".into()),
        "S3_EMPTY" => Some(String::new()),
        _ => None,
    })
}

#[test]
fn bucket_origins_compile_to_dns_routes() {
    let cfg = parse_str(&bucket_config(BUCKET, r#","protocol":"follow""#)).unwrap();
    assert!(cfg.uses_buckets);
    let d = cfg.domain_for_host("www.test.com").unwrap();
    let b = d.master.bucket.as_ref().unwrap();
    assert_eq!(b.authority, "media-bkt.s3.example.com");
    assert!(b.signer.is_none());
    let t = &d.master.targets[0];
    assert_eq!(
        &*t.route(Scheme::Http).cluster,
        "origin_pull|http|media-bkt.s3.example.com|80"
    );
    assert_eq!(
        &*t.route(Scheme::Https).cluster,
        "origin_pull|https|media-bkt.s3.example.com|443"
    );
    let path = bucket_config(
        r#"{"endpoint":"minio.internal:9000","bucket":"b01","region":"r","addressing":"path","key_prefix":"cdn/"}"#,
        "",
    );
    let cfg = parse_str(&path).unwrap();
    let d = cfg.domain_for_host("www.test.com").unwrap();
    assert_eq!(
        d.master.bucket.as_ref().unwrap().authority,
        "minio.internal:9000"
    );
    assert_eq!(
        cfg.required_clusters(),
        vec!["origin_pull|http|minio.internal|9000"]
    );
    assert_eq!(
        &*d.master.targets[0].routes[0].label,
        "minio.internal:9000/b01"
    );
}

#[test]
fn credentials_from_the_vm_environment_and_never_shown() {
    let text = bucket_config(
        r#"{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1","credentials":{"access_key_id_env":"S3_KEY_ID","secret_access_key_env":"S3_SECRET"}}"#,
        "",
    );
    let cfg = with_env(&text).unwrap();
    let signer = cfg.domains[0]
        .master
        .bucket
        .as_ref()
        .unwrap()
        .signer
        .as_ref()
        .unwrap();
    assert_eq!(signer.access_key_id, "AKIDFROMENV");
    let shown = cfg.normalized().to_string();
    assert!(
        shown.contains(r#""secret_access_key_env":"S3_SECRET""#),
        "{shown}"
    );
    assert!(!shown.contains("SECRET-VALUE"), "{shown}");
    assert!(!format!("{cfg:?}").contains("SECRET-VALUE"));
    let inline = bucket_config(
        r#"{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET-VALUE-INLINE"}}"#,
        "",
    );
    let cfg = with_env(&inline).unwrap();
    let shown = cfg.normalized().to_string();
    assert!(
        shown.contains(r#""secret_access_key":"(redacted)""#),
        "{shown}"
    );
    assert!(!shown.contains("SECRET-VALUE") && !format!("{cfg:?}").contains("SECRET-VALUE"));
}

#[test]
fn mirror_configuration() {
    let text = r#"{"domains":[{"domain":"www.test.com",
            "master":{"bucket":{"endpoint":"s3.example.com","bucket":"media-bkt","region":"us-east-1"}},
            "mirror":{"source":{"domain":"src.example.com:8080"},"mode":"redirect","pass_query_string":true,"key_prefixes":["img/"],"copy_back":false}}]}"#;
    let cfg = parse_str(text).unwrap();
    let m = cfg.domains[0].mirror.as_ref().unwrap();
    assert_eq!(m.redirect_base[0], "http://src.example.com:8080");
    assert_eq!(
        m.redirect_location(Scheme::Http, "/img/a.jpg?x=1")
            .as_deref(),
        Some("http://src.example.com:8080/img/a.jpg?x=1")
    );
    // Issue 13: the source is asked for the normalized key, re-encoded the S3 way.
    assert_eq!(
        m.redirect_location(Scheme::Http, "/img/%61%20b.jpg?")
            .as_deref(),
        Some("http://src.example.com:8080/img/a%20b.jpg")
    );
    assert_eq!(m.redirect_location(Scheme::Http, "/img/../a.jpg"), None);
    assert_eq!(m.max_copy_backs_per_minute, 600);
    assert!(m.triggers(404, "GET", "/img/a.jpg"));
    assert!(!m.triggers(404, "GET", "/doc/a.jpg"));
    assert!(!m.triggers(403, "GET", "/img/a.jpg"));
    assert!(!m.triggers(404, "POST", "/img/a.jpg"));
    assert!(cfg
        .required_clusters()
        .contains(&"origin_pull|http|src.example.com|8080".to_string()));
    let n = cfg.normalized();
    assert_eq!(n["domains"][0]["mirror"]["mode"], "redirect");
    assert_eq!(n["domains"][0]["mirror"]["max_copy_bytes"], 8 << 20);
    assert_eq!(n["domains"][0]["mirror"]["on_source_failure"], "not_found");
}

/// Bucket and mirror rules, with the exact error texts; a secret never appears.
#[test]
fn invalid_bucket_and_mirror_configurations() {
    let b = |bucket: &str| bucket_config(bucket, "");
    let m = |mirror: &str, slave: &str| {
        format!(
            r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{BUCKET}}}{slave},"mirror":{mirror}}}]}}"#
        )
    };
    let cases: Vec<(String, &str)> = vec![
            (b(r#"{"endpoint":"https://s3.example.com","bucket":"bkt","region":"r"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.endpoint value \"https://s3.example.com\": give the host name without a scheme (set `protocol` for https)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"Bad_Bucket","region":"r"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.bucket value \"Bad_Bucket\": must be 3-63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"us east"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.region value \"us east\": must be a region name such as \"us-east-1\" (letters, digits, '-', '_')"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","key_prefix":"/media/"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.key_prefix value \"/media/\": must not start with '/' or contain control characters (e.g. \"media/\")"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","addressing":"vhost"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.addressing value \"vhost\": must be \"virtual-hosted\" (bucket.endpoint/key) or \"path\" (endpoint/bucket/key)"),
            (b(r#"{"endpoint":"s3.example.com:0","bucket":"bkt","region":"r"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.endpoint value \"s3.example.com:0\": port 0 is not allowed"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key: is missing: set `secret_access_key` or `secret_access_key_env` (leave out `credentials` for a public bucket)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET-VALUE","secret_access_key_env":"S3_SECRET"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key value \"(redacted)\": set either `secret_access_key` or `secret_access_key_env`, not both"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key_env":"NOT_SET_ANYWHERE"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key_env value \"(redacted)\": the variable it names is not set in the VM's environment; pass it with vm_config.environment_variables (host_env_keys or key_values)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key_env":"S3_EMPTY"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key_env value \"(redacted)\": is empty or contains characters a credential cannot hold (white space, control characters)"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":"SECRET-VALUE with space"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key value \"(redacted)\": is empty or contains characters"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_key":"SECRET-VALUE"}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_key: unknown field `secret_key`"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{"access_key_id":"AKID","secret_access_key":["SECRET-VALUE"]}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials.secret_access_key: invalid type: sequence, expected a string"),
            (b(r#"{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":"SECRET-VALUE"}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.bucket.credentials: invalid type: string \"(redacted)\", expected struct RawCredentials"),
            (bucket_config(BUCKET, r#","host":"cdn.example.com""#),
             "invalid origin-pull configuration: domain \"www.test.com\": field master.host value \"cdn.example.com\": is the bucket's own host name for `bucket` origins (it is signed); remove it"),
            (r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},"mirror":{"source":{"domain":"s.example.com"}}}]}"#.to_string(),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror value \"master is ips\": mirror back-to-origin needs a `bucket` master"),
            (format!(r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{BUCKET}}},"slave":{{"ips":["1.1.1.1"]}},"master_slave_switch":true,"mirror":{{"source":{{"domain":"s.example.com"}}}}}}]}}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror value \"master_slave_switch: true\": the switch would make the mirrored bucket the slave; remove `mirror` or the switch"),
            (m(&format!(r#"{{"source":{{"bucket":{BUCKET}}}}}"#), ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.source value \"bucket\": the mirror source must be `ips`, `domain` or `clusters`, not another bucket"),
            (m(r#"{"source":{"domain":"s.example.com"},"mode":"copy"}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.mode value \"copy\": must be \"fetch\" (serve from the source and copy back) or \"redirect\" (answer 302 to the source)"),
            (m(r#"{"source":{"ips":["1.1.1.1"]},"mode":"redirect"}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.mode value \"redirect\": redirect mode needs a `domain` source: clients are sent to it by name"),
            (m(r#"{"source":{"domain":"s.example.com"},"key_prefixes":["/img/"]}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.key_prefixes[0] value \"/img/\": must be a non-empty object key prefix without a leading '/' (e.g. \"images/\")"),
            (m(r#"{"source":{"domain":"s.example.com"},"on_status":[200]}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_status[0] value \"200\": must be an error status 400..=599 (404 for a missing object; 403 where the bucket hides missing keys)"),
            (m(r#"{"source":{"domain":"s.example.com"},"on_status":[]}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_status value \"[]\": the list is empty; the default is [404]"),
            (m(r#"{"source":{"domain":"s.example.com"},"max_copy_bytes":0}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.max_copy_bytes value \"0\": must be 1..=33554432 (Envoy's 32 MiB async response buffer limit)"),
            (m(r#"{"source":{"domain":"s.example.com"},"on_source_failure":"slave"}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_source_failure value \"slave\": there is no slave origin; add `slave` or choose \"not_found\" or \"source\""),
            (m(r#"{"source":{"domain":"s.example.com"},"on_source_failure":"retry"}"#, r#","slave":{"ips":["1.1.1.1"]}"#),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.on_source_failure value \"retry\": must be \"not_found\" (the bucket's answer), \"source\" (the source's answer) or \"slave\" (fail over)"),
            (m(r#"{"source":{"domain":"www.test.com"}}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.source.domain value \"www.test.com\": is the accelerated domain"),
            (m(r#"{"source":{"domain":"s.example.com"}}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.copy_back value \"true\": copying objects back writes to the bucket and needs `credentials` on the master bucket; add them or set copy_back to false"),
            (m(r#"{"source":{"domain":"s.example.com"},"max_copy_backs_per_minute":0}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.max_copy_backs_per_minute value \"0\": must be 1..=1000000"),
            (m(r#"{"source":{"domain":"s.example.com"},"copy":true}"#, ""),
             "invalid origin-pull configuration: domain \"www.test.com\": field mirror.copy: unknown field `copy`"),
        ];
    for (text, want) in &cases {
        let err = with_env(text).map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("SECRET-VALUE"), "secret leaked: {err}");
        assert!(
            err.starts_with(want),
            "config {text}\n got: {err}\nwant: {want}"
        );
    }
}

/// Issue 13, item 5: a credential in the wrong field (or a malformed one) is never printed,
/// whatever the field; `check` and the filter's log line both use this text.
#[test]
fn credential_errors_never_show_the_value() {
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY";
    const ALNUM: &str = "Wq7Lq0ZbXyAlnumOnlySecret9Kx3Pm";
    let creds = |body: &str| {
        format!(
            r#"{{"domains":[{{"domain":"www.test.com","master":{{"bucket":{{"endpoint":"s3.example.com","bucket":"bkt","region":"r","credentials":{{{body}}}}}}}}}]}}"#
        )
    };
    let cases = [
        (
            format!(r#""access_key_id":"AKID","secret_access_key_env":"{SECRET}""#),
            SECRET,
            "secret_access_key_env",
        ),
        (
            format!(r#""access_key_id_env":"{SECRET}","secret_access_key":"x""#),
            SECRET,
            "access_key_id_env",
        ),
        (
            format!(r#""access_key_id":"{SECRET}","secret_access_key":"x""#),
            SECRET,
            "access_key_id",
        ),
        (
            r#""access_key_id":"AKID/x+y","secret_access_key":"x""#.to_string(),
            "AKID/x+y",
            "access_key_id",
        ),
        (
            format!(r#""access_key_id":"AKID","secret_access_key_env":"{ALNUM}""#),
            ALNUM,
            "secret_access_key_env",
        ),
        (
            format!(r#""access_key_id_env":"{ALNUM}","secret_access_key":"x""#),
            ALNUM,
            "access_key_id_env",
        ),
        (
            format!(
                r#""access_key_id":"{ALNUM}","access_key_id_env":"S3_KEY_ID","secret_access_key":"x""#
            ),
            ALNUM,
            "access_key_id",
        ),
        (
            format!(r#""access_key_id":"AKID","secret_access_key":"{SECRET}","{SECRET}":1"#),
            SECRET,
            "credentials",
        ),
        (
            format!(r#""access_key_id":"AKID","secret_access_key_env":["{SECRET}"]"#),
            SECRET,
            "secret_access_key_env",
        ),
        (
            r#""access_key_id":"AKID","secret_access_key":735120966431"#.to_string(),
            "735120966431",
            "secret_access_key",
        ),
    ];
    for (body, secret, field) in &cases {
        let text = creds(body);
        let err = with_env(&text).map(|_| ()).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains(secret), "value shown: {shown}");
        assert!(shown.contains(field), "field not named: {shown}");
        assert!(
            err.value.is_none() || err.value.as_deref() == Some(REDACTED),
            "{shown}"
        );
        assert!(
            shown.contains("domain \"www.test.com\""),
            "domain not named: {shown}"
        );
    }
}

/// Issue 13, item 9: a key given twice is refused, naming the domain and the key, instead of
/// the last one silently winning.
#[test]
fn duplicate_keys_are_refused() {
    let cases = [
            (r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},"slave":{"ips":["2.2.2.2"]},"master_slave_switch":true,"master_slave_switch":false}]}"#,
             "invalid origin-pull configuration: domain \"www.test.com\": field master_slave_switch: is given twice in the same object (duplicate key); JSON parsers would silently keep only one of them, so the configuration is refused"),
            (r#"{"domains":[{"domain":"a.com","master":{"ips":["1.1.1.1"]}},{"domain":"www.test.com","master":{"ips":["1.1.1.1"]},"failover":{"on":["5xx"],"timeout_ms":100,"timeout_ms":200}}]}"#,
             "invalid origin-pull configuration: domain \"www.test.com\": field failover.timeout_ms: is given twice"),
            (r#"{"debug_headers":true,"domains":[],"debug_headers":false}"#,
             "invalid origin-pull configuration: field debug_headers: is given twice"),
            (r#"{"domains":[{"domain":"www.test.com","master":{"ips":["1.1.1.1","2.2.2.2"]},"master":{"ips":["3.3.3.3"]}}]}"#,
             "invalid origin-pull configuration: domain \"www.test.com\": field master: is given twice"),
        ];
    for (text, want) in cases {
        let err = parse_str(text).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.starts_with(want),
            "config {text}\n got: {err}\nwant: {want}"
        );
    }
}

#[test]
fn long_values_are_shortened_in_errors() {
    let long = "a".repeat(5000);
    let text = format!(
        r#"{{"domains":[{{"domain":"a.com","master":{{"ips":["1.1.1.1"],"protocol":"{long}"}}}}]}}"#
    );
    let err = parse_str(&text).unwrap_err().to_string();
    assert!(err.len() < 400, "{}", err.len());
}

#[test]
fn strip_port_forms() {
    assert_eq!(strip_port("a.com:80"), "a.com");
    assert_eq!(strip_port("a.com"), "a.com");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("::1"), "::1");
}

#[test]
fn some_status_triggers_exactly_when_a_status_in_range_does() {
    // `triggers_some_status` stands for asking every status 300..=599 (the range `status_codes`
    // is validated to): both must agree for every mix of the rules.
    for (on, codes) in [
        ("[]", "[]"),
        (r#"["4xx"]"#, "[]"),
        (r#"["5xx"]"#, "[]"),
        (r#"["connect_error","timeout"]"#, "[]"),
        (r#"["connect_error"]"#, "[302]"),
        ("[]", "[599]"),
        (r#"["4xx","5xx"]"#, "[404,502]"),
    ] {
        let cfg = parse(
            format!(
                r#"{{"domains":[{{"domain":"a.com","master":{{"ips":["1.1.1.1"]}},"failover":{{"on":{on},"status_codes":{codes}}}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let f = &cfg.domains[0].failover;
        let scanned = (300..600u32).any(|c| f.status_triggers(c));
        assert_eq!(
            f.triggers_some_status(),
            scanned,
            "on {on}, status_codes {codes}"
        );
    }
}
