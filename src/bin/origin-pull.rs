//! Native companion: `origin-pull check <config.json>` validates a plugin configuration with
//! exactly the filter's code and prints the normalized configuration or the filter's error.

use std::io::Read;
use std::process::ExitCode;

const USAGE: &str = "usage: origin-pull check <plugin-config.json | ->\n\
  Validates an origin-pull plugin configuration exactly as the filter does.\n\
  Prints the normalized configuration (every default filled in) and the Envoy clusters it\n\
  needs on stdout and exits 0, or prints the filter's error message on stderr and exits 1.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["check", path] => check(path),
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
