//! Native companion: `origin-pull check <config.json>` validates a plugin configuration with
//! exactly the filter's code and prints the normalized configuration or the filter's error.

use std::io::Read;
use std::process::ExitCode;

const USAGE: &str = "usage: origin-pull check <plugin-config.json | ->\n\
  Validates an origin-pull plugin configuration exactly as the filter does.\n\
  Prints the normalized configuration (every default filled in) and the Envoy clusters it\n\
  needs on stdout and exits 0, or prints the filter's error message on stderr and exits 1.\n\
  Credentials named by `*_env` fields are read from this process's environment.\n\
usage: origin-pull sigv4-sign < requests.jsonl\n\
  Signs one request per JSON line with the filter's SigV4 code (for comparing with other\n\
  signers): {\"method\",\"path\" (client form),\"query\",\"headers\":[[name,value],..],\n\
  \"payload_sha256\",\"amz_date\",\"access_key_id\",\"secret\",\"region\",\"service\"}.\n\
  Prints {\"canonical_request\",\"authorization\"} per line.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["check", path] => check(path),
        ["sigv4-sign"] => sigv4_sign(),
        ["--version"] | ["version"] => {
            println!("origin-pull {}", origin_pull::VERSION);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &str) -> ExitCode {
    let bytes = if path == "-" {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("origin-pull: cannot read standard input: {e}");
            return ExitCode::from(2);
        }
        buf
    } else {
        match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("origin-pull: cannot read {path}: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match origin_pull::config::parse(&bytes) {
        Ok(config) => {
            let mut out = config.normalized();
            if let Some(map) = out.as_object_mut() {
                map.insert(
                    "required_envoy_clusters".into(),
                    config.required_clusters().into(),
                );
            }
            match serde_json::to_string_pretty(&out) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("origin-pull: cannot print the configuration: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn sigv4_sign() -> ExitCode {
    use origin_pull::sigv4::{
        canonical_request, encode_path, percent_decode, Request, Secret, Signer,
    };
    use std::io::BufRead;
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
            eprintln!("origin-pull: not a JSON request: {line}");
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
