//! Test tool, not part of the product: signs one request per JSON line on stdin with the
//! filter's SigV4 code, to compare it with other signers (tests/e2e/test_sigv4_botocore.py
//! against botocore). Run with `cargo run --release --example sigv4_sign < requests.jsonl`.
//!
//! Input per line: {"method", "path" (client form), "query", "headers": [[name, value], ..],
//! "payload_sha256", "amz_date", "access_key_id", "secret", "region", "service"}.
//! Output per line: {"canonical_request", "authorization"}. Exit 2 on a line that is not JSON.

use std::io::BufRead;
use std::process::ExitCode;

use origin_pull::s3::sigv4::{
    canonical_request, encode_path, percent_decode, Request, Secret, Signer,
};

fn main() -> ExitCode {
    let text = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let item = |h: &serde_json::Value, i: usize| {
        h.get(i)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else {
            return ExitCode::from(2);
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("sigv4_sign: not a JSON request: {line}");
            return ExitCode::from(2);
        };
        let headers: Vec<(String, String)> = v
            .get("headers")
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().map(|h| (item(h, 0), item(h, 1))).collect())
            .unwrap_or_default();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (method, path, query, payload) = (
            text(&v, "method"),
            text(&v, "path"),
            text(&v, "query"),
            text(&v, "payload_sha256"),
        );
        // As the filter does with a client path: decode, then encode the S3 way.
        let path = encode_path(&percent_decode(&path));
        let request = Request {
            method: &method,
            canonical_uri: &path,
            query: &query,
            headers: &headers,
            payload_sha256: &payload,
        };
        let signer = Signer::new(
            text(&v, "access_key_id"),
            Secret::new(text(&v, "secret")),
            text(&v, "region"),
            text(&v, "service"),
        );
        let out = serde_json::json!({
            "canonical_request": canonical_request(&request).0,
            "authorization": signer.authorization(&request, &text(&v, "amz_date")),
        });
        println!("{out}");
    }
    ExitCode::SUCCESS
}
