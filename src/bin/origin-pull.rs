//! Native companion of the filter:
//! - `origin-pull check <config.json>` validates a plugin configuration with exactly the filter's
//!   code and prints the normalized configuration or the filter's error;
//! - `origin-pull render <config.json> …` writes the Envoy (or Istio) configuration it needs;
//! - `origin-pull status --admin IP:PORT` shows a running Envoy's origins, blocked or not.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use origin_pull::config::PluginConfig;
use origin_pull::render::{self, envoy, istio, Options};

const USAGE: &str = "\
usage: origin-pull check  <plugin-config.json | ->
       origin-pull render <plugin-config.json | -> [options]
       origin-pull status [--admin IP:PORT] [--json]
       origin-pull --version

check   Validates a plugin configuration exactly as the filter does. Prints the normalized
        configuration (every default filled in) and the Envoy clusters it needs on stdout and
        exits 0, or prints the filter's error message on stderr and exits 1. Credentials named
        by `*_env` fields are read from this process's environment.

render  Writes the Envoy configuration the plugin configuration needs: the clusters
        (ORIGINAL_DST for IP origins, plain and TLS; DNS clusters for domain origins), the listener
        with the route (cluster_header), the wasm filter carrying the configuration and an access
        log with origin-pull's fields, admin on loopback. Named clusters (cluster origins) are left
        to you: they are listed in the output's header and on stderr.
  (default)            one static bootstrap on stdout (or -o FILE)
  --out-dir DIR        DIR/envoy.yaml (bootstrap) + DIR/lds.yaml + DIR/cds.yaml + DIR/ecds.json,
                       file-watched: re-render elsewhere and `mv` cds.yaml then ecds.json over
                       them to reload (ecds.json holds the plugin configuration: a change applies
                       to the next request, keep-alive connections included)
    --delivery lds     put the plugin configuration in lds.yaml instead (no ecds.json): a change
                       replaces the listener; open connections keep the old one until they close
  --config-dir PATH    the directory of the watched files as Envoy sees it (default: DIR as given)
  --wasm-url URL       Envoy downloads the module from http(s)://HOST[:PORT]/PATH (a `remote`
                       code source through the cluster origin_pull_wasm_fetch, retried with
                       backoff) instead of reading --wasm; needs --sha256
  --sha256 HEX         the module's sha256 (dist/origin_pull.wasm.sha256): Envoy refuses a
                       download with another one
  --wasm-fetch-retries N  download retries, backoff 1 s..10 s (default 5); Envoy is not ready
                       before the module is loaded or the retries are spent
  --istio              Istio objects instead (WasmPlugin, EnvoyFilter, Gateway, VirtualService,
                       ServiceEntry, DestinationRule) on stdout (or -o FILE); needs --wasm-url:
                       oci://REGISTRY/origin-pull:TAG or https://HOST/origin_pull.wasm
    --namespace NS     default istio-system
    --selector K=V     gateway workload label, default istio=ingressgateway
  -o FILE              write to FILE instead of stdout
  --listen IP:PORT     listener address (default 127.0.0.1:10000)
  --admin IP:PORT      admin address, loopback only (default 127.0.0.1:9901)
  --wasm PATH          the .wasm as Envoy sees it (default target/wasm32-wasip1/release/origin_pull.wasm)
  --ca-file PATH       CA bundle for HTTPS origins (default /etc/ssl/certs/ca-certificates.crt)
  --connect-timeout D  origin connect timeout (default 1s)
  --first-byte-timeout D  time an origin has to start its answer (response headers), per
                       attempt; past it the request fails over and the origin gets a strike (default 10s)
  --idle-timeout D     longest silence in a response under way, body included (default 30s)
  --route-timeout D    whole response, body included (default 0s = none: never cut a long
                       healthy download)
  --node-id ID         Envoy node id (default origin-pull)
Exit status: 0 written, 1 invalid plugin configuration, 2 usage or I/O error.

status  Reads a running Envoy's admin interface (--admin, default 127.0.0.1:9901): the plugin
        configuration from /config_dump and the filter's stats from /stats. Prints per domain
        its failovers and per origin: role, state (BLOCKED until when), requests (`-` when not
        counted per origin), failures by kind (connect, timeout, 4xx, 5xx, other) and blocks.
  --json               one JSON document instead of the table
Exit status: 0 shown, 2 usage error or admin interface unreachable, 3 no origin-pull filter there.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    let wants_help = rest.iter().any(|a| a == "--help" || a == "-h");
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("check" | "render") if wants_help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("check") if rest.len() == 1 => check(rest.first().map_or("-", String::as_str)),
        Some("render") => match render_command(rest) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("origin-pull render: {message} (see `origin-pull --help`)");
                ExitCode::from(2)
            }
        },
        Some("status") if wants_help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("status") => status_command(rest),
        Some("--version" | "version") if rest.is_empty() => {
            println!("origin-pull {}", origin_pull::BUILD);
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn read_input(path: &str) -> Result<Vec<u8>, String> {
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(buf)
    } else {
        std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
    }
}

fn check(path: &str) -> ExitCode {
    let bytes = match read_input(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("origin-pull: {e}");
            return ExitCode::from(2);
        }
    };
    match origin_pull::config::parse(&bytes) {
        Ok(config) => match serde_json::to_string_pretty(&config.check_document()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("origin-pull: cannot print the configuration: {e}");
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct RenderArgs {
    input: Option<String>,
    out_dir: Option<String>,
    output: Option<String>,
    istio: bool,
    opts: Options,
    istio_opts: istio::IstioOptions,
    config_dir: Option<String>,
    delivery_given: bool,
}

fn parse_render_args(args: &[String]) -> Result<RenderArgs, String> {
    let mut r = RenderArgs::default();
    let mut wasm_given = false;
    let mut fetch_retries: Option<u32> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--istio" => r.istio = true,
            "--out-dir" => r.out_dir = Some(value(arg)?),
            "--config-dir" => r.config_dir = Some(value(arg)?),
            "--delivery" => {
                r.opts.delivery = match value(arg)?.as_str() {
                    "ecds" => render::Delivery::Ecds,
                    "lds" => render::Delivery::Lds,
                    other => {
                        return Err(format!("--delivery {other}: expected ecds or lds"));
                    }
                };
                r.delivery_given = true;
            }
            "-o" | "--output" => r.output = Some(value(arg)?),
            "--listen" => {
                (r.opts.listen_ip, r.opts.listen_port) = render::parse_socket(&value(arg)?)?
            }
            "--admin" => {
                let (ip, port) = render::parse_socket(&value(arg)?)?;
                let loopback = ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
                if !loopback {
                    return Err(format!(
                        "--admin {ip}: Envoy's admin interface can stop the server and dump its \
                         configuration; keep it on loopback (127.0.0.1 or ::1)"
                    ));
                }
                (r.opts.admin_ip, r.opts.admin_port) = (ip, port);
            }
            "--wasm" => {
                r.opts.wasm = value(arg)?;
                wasm_given = true;
            }
            "--ca-file" => r.opts.ca_file = value(arg)?,
            "--connect-timeout" => {
                r.opts.connect_timeout = value(arg)?;
                render::check_duration(&r.opts.connect_timeout)?;
            }
            "--route-timeout" => {
                r.opts.route_timeout = value(arg)?;
                render::check_duration(&r.opts.route_timeout)?;
            }
            "--first-byte-timeout" => {
                r.opts.first_byte_timeout = value(arg)?;
                render::check_duration(&r.opts.first_byte_timeout)?;
            }
            "--idle-timeout" => {
                r.opts.idle_timeout = value(arg)?;
                render::check_duration(&r.opts.idle_timeout)?;
            }
            "--node-id" => r.opts.node_id = value(arg)?,
            "--wasm-url" => r.istio_opts.wasm_url = value(arg)?,
            "--sha256" => {
                let sha = value(arg)?;
                if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("--sha256 {sha}: expected 64 hex digits"));
                }
                r.istio_opts.sha256 = Some(sha.to_ascii_lowercase());
            }
            "--wasm-fetch-retries" => {
                let v = value(arg)?;
                fetch_retries = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 100)
                        .ok_or_else(|| format!("--wasm-fetch-retries {v}: expected 0..=100"))?,
                );
            }
            "--namespace" => r.istio_opts.namespace = value(arg)?,
            "--selector" => {
                let v = value(arg)?;
                let (k, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--selector {v}: expected KEY=VALUE"))?;
                r.istio_opts.selector = (k.to_string(), val.to_string());
            }
            other if other.starts_with('-') && other != "-" => {
                return Err(format!("unknown option {other}"))
            }
            other => {
                if r.input.replace(other.to_string()).is_some() {
                    return Err("give one plugin configuration".into());
                }
            }
        }
    }
    if r.out_dir.is_some() && (r.output.is_some() || r.istio) {
        return Err(
            "--out-dir writes the file-watched set; it does not go with -o or --istio".into(),
        );
    }
    if r.config_dir.is_some() && r.out_dir.is_none() {
        return Err("--config-dir goes with --out-dir".into());
    }
    if !r.istio && !r.istio_opts.wasm_url.is_empty() {
        if wasm_given {
            return Err("give the module as --wasm PATH or --wasm-url URL, not both".into());
        }
        let mut remote =
            render::RemoteWasm::parse(&r.istio_opts.wasm_url, r.istio_opts.sha256.as_deref())?;
        if let Some(n) = fetch_retries {
            remote.retries = n;
        }
        r.opts.remote_wasm = Some(remote);
    } else if fetch_retries.is_some() {
        return Err("--wasm-fetch-retries goes with --wasm-url (plain Envoy)".into());
    } else if !r.istio && r.istio_opts.sha256.is_some() {
        return Err("--sha256 goes with --wasm-url (a local --wasm file is not checked)".into());
    }
    if r.delivery_given && r.out_dir.is_none() {
        return Err("--delivery goes with --out-dir".into());
    }
    Ok(r)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn render_command(args: &[String]) -> Result<ExitCode, String> {
    let mut r = parse_render_args(args)?;
    let input = r.input.clone().ok_or("which plugin configuration?")?;
    let bytes = read_input(&input)?;
    let (config, env_keys): (PluginConfig, Vec<String>) = match render::parse(&bytes) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if !env_keys.is_empty() {
        eprintln!(
            "origin-pull render: the filter reads {} from Envoy's environment (host_env_keys): set \
             them where Envoy runs",
            env_keys.join(", ")
        );
    }
    r.opts.env_keys = env_keys;
    let text = String::from_utf8(bytes).map_err(|_| "the configuration is not UTF-8")?;
    r.opts.source = if input == "-" {
        "(stdin)".into()
    } else {
        input
    };
    let provided = render::provided_clusters(&config);
    if !provided.is_empty() {
        eprintln!(
            "origin-pull render: define these clusters yourself (cluster origins): {}",
            provided.join(", ")
        );
    }
    if let Some(dir) = &r.out_dir {
        r.opts.config_dir = r.config_dir.clone().unwrap_or_else(|| dir.clone());
        let dir = Path::new(dir);
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for (name, body) in envoy::dynamic_files(&config, &text, &r.opts) {
            write(&dir.join(name), &body)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = if r.istio {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("configuration: {e}"))?;
        istio::manifests(&config, &value, &r.opts, &r.istio_opts)?
    } else {
        envoy::static_bootstrap(&config, &text, &r.opts)
    };
    match &r.output {
        Some(path) => write(Path::new(path), &out)?,
        None => print!("{out}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn status_command(args: &[String]) -> ExitCode {
    use origin_pull::status::{self, StatusError};
    let mut admin = format!("{}:{}", render::DEFAULT_ADMIN.0, render::DEFAULT_ADMIN.1);
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => as_json = true,
            "--admin" => match it.next() {
                Some(v) => admin = v.clone(),
                None => {
                    eprintln!("origin-pull status: --admin needs IP:PORT");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("origin-pull status: unexpected {other} (see `origin-pull --help`)");
                return ExitCode::from(2);
            }
        }
    }
    let addr: std::net::SocketAddr = match admin.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("origin-pull status: --admin {admin}: expected IP:PORT, e.g. 127.0.0.1:9901");
            return ExitCode::from(2);
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match status::fetch(&addr, now) {
        Ok(domains) => {
            if as_json {
                println!("{}", status::to_json(&addr, &domains, now));
            } else {
                print!("{}", status::table(&domains, now));
            }
            ExitCode::SUCCESS
        }
        Err(e @ StatusError::Unreachable(_)) => {
            eprintln!("origin-pull status: {e}");
            ExitCode::from(2)
        }
        Err(e @ StatusError::NotLoaded(_)) => {
            eprintln!("origin-pull status: {e}");
            ExitCode::from(3)
        }
    }
}
