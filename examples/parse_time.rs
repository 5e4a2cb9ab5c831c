//! Time of `config::parse` for a large configuration, natively (the filter's `on_configure`
//! parses the same way in the VM).
//!
//!     cargo run --release --example parse_time -- [domains] [runs]
//!
//! Builds a configuration of `domains` (default 10,000) domains, each with three weighted
//! master IPs and one slave IP on 127.x addresses, as the CDN-scale issue does, and prints the
//! minimum and the median of `runs` (default 21) parses, in milliseconds.

use std::time::Instant;

fn config(domains: usize) -> String {
    let mut text = String::from(r#"{"domains":["#);
    for i in 0..domains {
        if i > 0 {
            text.push(',');
        }
        let (a, b) = (i / 250 % 250 + 1, i % 250 + 1);
        text.push_str(&format!(
            r#"{{"domain":"d{i}.example.com","master":{{"ips":["127.1.{a}.{b}:8080:5","127.2.{a}.{b}:8080:3","127.3.{a}.{b}:8080:2"]}},"slave":{{"ips":["127.4.{a}.{b}:8080"]}},"failover":{{"on":["4xx","5xx"]}}}}"#
        ));
    }
    text.push_str("]}");
    text
}

fn main() {
    let mut args = std::env::args().skip(1);
    let domains = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(21);
    let text = config(domains);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let parsed = origin_pull::config::parse(text.as_bytes());
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if let Err(e) = parsed {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    times.sort_by(f64::total_cmp);
    let min = times.first().copied().unwrap_or(0.0);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{domains} domains, {} bytes, {runs} parses: min {min:.1} ms, median {median:.1} ms",
        text.len()
    );
}
