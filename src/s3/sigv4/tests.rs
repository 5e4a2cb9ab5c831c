//! The published AWS SigV4 vectors that apply to S3-style requests: the cases of the
//! aws-sig-v4-test-suite whose paths S3 signs as sent (the normalize-path cases are left out:
//! S3 never normalizes), and the four worked S3 examples of the AWS documentation
//! ("Examples: Signature Calculations in AWS Signature Version 4": GET Object, PUT Object,
//! GET Bucket Lifecycle, Get Bucket (List Objects)). Randomized agreement with botocore is in
//! tests/e2e/test_sigv4_botocore.py.

use super::*;

const SUITE_KEY_ID: &str = "AKIDEXAMPLE";
const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const SUITE_AUTHZ: &str =
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, ";

/// (name, request as in the suite's .req file, canonical request with `{E}` for the empty
/// payload hash, SignedHeaders + Signature part of the authorization)
const SUITE: &[(&str, &str, &str, &str)] = &[
    ("get-vanilla",
     "GET / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("get-vanilla-empty-query-key",
     "GET /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb"),
    ("get-vanilla-query-order-key-case",
     "GET /?Param2=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
    ("get-vanilla-query-order-key",
     "GET /?Param1=value2&Param1=Value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\nParam1=Value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1"),
    ("get-vanilla-query-order-value",
     "GET /?Param1=value2&Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\nParam1=value1&Param1=value2\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"),
    ("get-vanilla-query-order-encoded",
     "GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n%E1%88%B4=Value1&Param=Value2&Param-3=Value3\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac"),
    ("get-vanilla-query-unreserved",
     "GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
    ("get-vanilla-utf8-query",
     "GET /?\u{1234}=bar HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n%E1%88%B4=bar\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
    ("get-unreserved",
     "GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"),
    ("get-utf8",
     "GET /\u{1234} HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/%E1%88%B4\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
    ("get-space",
     "GET /example space/ HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/example%20space/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
    ("get-special-character",
     "GET /example/$delete HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "GET\n/example/%24delete\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=a853c9b21b528b19643d00910d35b83a10c366a10833ceefb45edd6c80e40f27"),
    ("get-header-key-duplicate",
     "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value2\nMy-Header1:value2\nMy-Header1:value1\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value2,value2,value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{E}",
     "SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
    ("get-header-value-multiline",
     "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value1\n  value2\n     value3\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1 value2 value3\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{E}",
     "SignedHeaders=host;my-header1;x-amz-date, Signature=cfd34249e4b1c8d6b91ef74165d41a32e5fab3306300901bb65a51a73575eefd"),
    ("get-header-value-order",
     "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value4\nMy-Header1:value1\nMy-Header1:value3\nMy-Header1:value2\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value4,value1,value3,value2\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{E}",
     "SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"),
    ("get-header-value-trim",
     "GET / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1: value1\nMy-Header2: \"a   b   c\"\nX-Amz-Date:20150830T123600Z",
     "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nmy-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\nhost;my-header1;my-header2;x-amz-date\n{E}",
     "SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
    ("post-vanilla",
     "POST / HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-vanilla-query",
     "POST /?Param1=value1 HTTP/1.1\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z",
     "POST\n/\nParam1=value1\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{E}",
     "SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-header-key-sort",
     "POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:value1\nX-Amz-Date:20150830T123600Z",
     "POST\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{E}",
     "SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"),
    ("post-header-value-case",
     "POST / HTTP/1.1\nHost:example.amazonaws.com\nMy-Header1:VALUE1\nX-Amz-Date:20150830T123600Z",
     "POST\n/\n\nhost:example.amazonaws.com\nmy-header1:VALUE1\nx-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{E}",
     "SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"),
    ("post-x-www-form-urlencoded",
     "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\n\nParam1=value1",
     "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
     "SignedHeaders=content-type;host;x-amz-date, Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
    ("post-x-www-form-urlencoded-parameters",
     "POST / HTTP/1.1\nContent-Type:application/x-www-form-urlencoded; charset=utf8\nHost:example.amazonaws.com\nX-Amz-Date:20150830T123600Z\n\nParam1=value1",
     "POST\n/\n\ncontent-type:application/x-www-form-urlencoded; charset=utf8\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
     "SignedHeaders=content-type;host;x-amz-date, Signature=1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"),
];

struct Parsed {
    method: String,
    uri: String,
    query: String,
    headers: Vec<(String, String)>,
    body: String,
}

/// The suite's .req format: request line, headers (a line starting with white space continues
/// the header above), a blank line, the body. The path is taken unencoded, as the suite writes it.
fn parse_req(raw: &str) -> Parsed {
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let (method, rest) = request_line.split_once(' ').unwrap();
    let target = &rest[..rest.rfind(' ').unwrap()];
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            let last = headers.last_mut().unwrap();
            last.1.push(' ');
            last.1.push_str(line);
            continue;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.to_string(), value.to_string()));
    }
    Parsed {
        method: method.to_string(),
        uri: encode_path(&percent_decode(path)),
        query: query.to_string(),
        headers,
        body: body.to_string(),
    }
}

fn sign(
    signer: &Signer,
    p: &Parsed,
    payload: &str,
    amz_date: &str,
    extra: &[(&str, &str)],
) -> (String, String) {
    let mut headers: Vec<(&str, &str)> = p
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.extend_from_slice(extra);
    let request = Request {
        method: &p.method,
        canonical_uri: &p.uri,
        query: &p.query,
        headers: &headers,
        payload_sha256: payload,
    };
    (
        canonical_request(&request).0,
        signer.authorization(&request, amz_date),
    )
}

#[test]
fn aws_sig_v4_test_suite() {
    let signer = Signer::new(
        SUITE_KEY_ID.into(),
        Secret::new(SUITE_SECRET.into()),
        "us-east-1".into(),
        "service".into(),
    );
    for (name, req, creq, authz) in SUITE {
        let p = parse_req(req);
        let payload = sha256_hex(p.body.as_bytes());
        let (got_creq, got_authz) = sign(&signer, &p, &payload, "20150830T123600Z", &[]);
        assert_eq!(
            got_creq,
            creq.replace("{E}", EMPTY_PAYLOAD_SHA256),
            "{name}"
        );
        assert_eq!(got_authz, format!("{SUITE_AUTHZ}{authz}"), "{name}");
    }
    assert_eq!(SUITE.len(), 22);
}

/// The S3 examples: bucket `examplebucket`, 2013-05-24, us-east-1.
#[test]
fn aws_s3_documented_examples() {
    let signer = Signer::new(
        "AKIAIOSFODNN7EXAMPLE".into(),
        Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
        "us-east-1".into(),
        "s3".into(),
    );
    let date = "20130524T000000Z";
    let host = "Host:examplebucket.s3.amazonaws.com";
    let put_payload = sha256_hex(b"Welcome to Amazon S3.");
    assert_eq!(
        put_payload,
        "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    );
    let cases = [
        // GET Object (first 10 bytes)
        (
            format!("GET /test.txt HTTP/1.1\n{host}\nRange:bytes=0-9"),
            EMPTY_PAYLOAD_SHA256.to_string(),
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        ),
        // PUT Object
        (
            format!("PUT /test$file.text HTTP/1.1\n{host}\nDate:Fri, 24 May 2013 00:00:00 GMT\nx-amz-storage-class:REDUCED_REDUNDANCY"),
            put_payload.clone(),
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        ),
        // GET Bucket Lifecycle
        (
            format!("GET /?lifecycle HTTP/1.1\n{host}"),
            EMPTY_PAYLOAD_SHA256.to_string(),
            "host;x-amz-content-sha256;x-amz-date",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        ),
        // Get Bucket (List Objects)
        (
            format!("GET /?max-keys=2&prefix=J HTTP/1.1\n{host}"),
            EMPTY_PAYLOAD_SHA256.to_string(),
            "host;x-amz-content-sha256;x-amz-date",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ];
    for (req, payload, signed, signature) in &cases {
        let p = parse_req(req);
        let (creq, authz) = sign(
            &signer,
            &p,
            payload,
            date,
            &[("x-amz-date", date), ("x-amz-content-sha256", payload)],
        );
        assert_eq!(
            authz,
            format!("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders={signed}, Signature={signature}"),
            "{req}\n{creq}"
        );
    }
    // The documented canonical request of "GET Bucket Lifecycle": an empty-valued parameter.
    assert_eq!(canonical_query("lifecycle"), "lifecycle=");
    assert_eq!(encode_path(b"/test$file.text"), "/test%24file.text");
}

#[test]
fn dates_and_the_cached_day_key() {
    assert_eq!(amz_date(0), "19700101T000000Z");
    assert_eq!(amz_date(1_369_353_600_000), "20130524T000000Z");
    assert_eq!(amz_date(1_440_938_160_000), "20150830T123600Z");
    assert_eq!(amz_date(951_782_400_000), "20000229T000000Z");
    assert_eq!(amz_date(4_102_444_799_999), "20991231T235959Z");
    let signer = Signer::new("K".into(), Secret::new("S".into()), "r".into(), "s3".into());
    let p = parse_req("GET /a HTTP/1.1\nHost:h");
    // A cached key from another day must not be reused.
    let day1 = sign(&signer, &p, EMPTY_PAYLOAD_SHA256, "20150830T123600Z", &[]).1;
    let day2 = sign(&signer, &p, EMPTY_PAYLOAD_SHA256, "20150831T123600Z", &[]).1;
    let fresh = Signer::new("K".into(), Secret::new("S".into()), "r".into(), "s3".into());
    assert_eq!(
        sign(&fresh, &p, EMPTY_PAYLOAD_SHA256, "20150831T123600Z", &[]).1,
        day2
    );
    assert_ne!(day1.rsplit('=').next(), day2.rsplit('=').next());
}

#[test]
fn encoding_rules() {
    assert_eq!(percent_decode("a%2Fb%zz%4"), b"a/b%zz%4".to_vec());
    assert_eq!(encode_path("/a b/ü+%".as_bytes()), "/a%20b/%C3%BC%2B%25");
    assert_eq!(canonical_query("b=2&a=&a=1&c"), "a=&a=1&b=2&c=");
    assert_eq!(canonical_query("k=a%2Fb+c"), "k=a%2Fb%2Bc");
    assert_eq!(canonical_query(""), "");
}

#[test]
fn the_secret_never_prints() {
    let signer = Signer::new(
        "AKID".into(),
        Secret::new("very-secret-value".into()),
        "r".into(),
        "s3".into(),
    );
    let shown = format!("{signer:?} {:?}", Secret::new("very-secret-value".into()));
    assert!(!shown.contains("very-secret-value"), "{shown}");
    assert!(shown.contains("(redacted)"));
}
