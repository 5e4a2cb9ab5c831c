//! `origin-pull render`: the Envoy (or Istio) configuration a plugin configuration needs, built
//! from [`PluginConfig::cluster_specs`] so that clusters, route and filter can never disagree
//! with what the filter routes to. Native only (never compiled into the filter).

pub mod clusters;
pub mod ecds;
pub mod envoy;
pub mod istio;
pub mod yaml;

use std::cell::RefCell;

use crate::config::{parse_with_env, ConfigError, PluginConfig};

pub const DEFAULT_LISTEN: (&str, u16) = ("127.0.0.1", 10000);
pub const DEFAULT_ADMIN: (&str, u16) = ("127.0.0.1", 9901);
pub const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/origin_pull.wasm";
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
pub const DEFAULT_CONNECT_TIMEOUT: &str = "1s";
/// No bound on the whole response: a long healthy download is never cut.
pub const DEFAULT_ROUTE_TIMEOUT: &str = "0s";
/// Time an origin has to send its response headers, per attempt (CloudFront's origin response
/// timeout is 30 s, nginx's proxy_read_timeout 60 s; an edge with a hot backup fails over sooner).
pub const DEFAULT_FIRST_BYTE_TIMEOUT: &str = "10s";
/// Longest silence inside a response (or request) under way.
pub const DEFAULT_IDLE_TIMEOUT: &str = "30s";

/// Knobs of the rendered Envoy configuration (the plugin configuration itself is not one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub listen_ip: String,
    pub listen_port: u16,
    pub admin_ip: String,
    pub admin_port: u16,
    /// The `.wasm` file as Envoy sees it (relative paths resolve from Envoy's working directory).
    pub wasm: String,
    /// CA bundle that HTTPS origins' certificates are checked against.
    pub ca_file: String,
    /// Protobuf durations (`"1s"`, `"0.25s"`).
    pub connect_timeout: String,
    /// The route's `timeout` (whole response; `0s` = none).
    pub route_timeout: String,
    /// The route's `retry_policy.per_try_timeout`: until the response headers, per attempt.
    pub first_byte_timeout: String,
    /// The route's `idle_timeout`: no byte either way for this long ends the stream.
    pub idle_timeout: String,
    pub node_id: String,
    /// Directory holding lds.yaml / cds.yaml as Envoy sees it (file-watched reload).
    pub config_dir: String,
    /// Where the plugin configuration came from, named in the files' header.
    pub source: String,
    /// Variables of Envoy's environment the VM must see (`*_env` credentials).
    pub env_keys: Vec<String>,
    /// Envoy fetches the module over HTTP(S) instead of reading `wasm` (`render --wasm-url`).
    pub remote_wasm: Option<RemoteWasm>,
    /// How the file-watched set delivers the plugin configuration.
    pub delivery: Delivery,
}

/// Where the file-watched set (`--out-dir`) puts the wasm filter's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Its own ECDS resource (`ecds.json`): a change applies to the next request, also on
    /// keep-alive connections, without touching the listener.
    #[default]
    Ecds,
    /// Inside the listener (`lds.yaml`): a change replaces the listener; open connections keep
    /// the old configuration until they close.
    Lds,
}

/// The cluster Envoy fetches a remote module through.
pub const WASM_FETCH_CLUSTER: &str = "origin_pull_wasm_fetch";

/// A module Envoy downloads itself (`vm_config.code.remote`), checked against its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWasm {
    pub url: String,
    pub tls: bool,
    /// Host of the URL (an IP or a DNS name; IPv6 without brackets) and its port.
    pub host: String,
    pub port: u16,
    pub sha256: String,
    /// Download attempts after the first (`--wasm-fetch-retries`); Envoy is not ready until
    /// the module is loaded or the retries are spent (then the filter fails closed: 503).
    pub retries: u32,
}

pub const DEFAULT_WASM_FETCH_RETRIES: u32 = 5;

impl RemoteWasm {
    /// `http://HOST[:PORT]/PATH` or `https://…`; the sha256 is required (Envoy refuses a
    /// remote source without one, and a module is never loaded unchecked).
    pub fn parse(url: &str, sha256: Option<&str>) -> Result<RemoteWasm, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "--wasm-url {url}: plain Envoy fetches http:// or https:// URLs (oci:// is for --istio)"
            ));
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "--wasm-url {url}: expected http(s)://HOST[:PORT]/PATH"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("--wasm-url {url}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse::<u16>().ok(),
                None if after.is_empty() => Some(default_port),
                None => None,
            };
            (ip.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse::<u16>().ok()),
                None => (authority.to_string(), Some(default_port)),
            }
        };
        let port = port
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("--wasm-url {url}: bad port"))?;
        let sha256 = sha256.ok_or_else(|| {
            format!(
                "--wasm-url {url} needs --sha256 (cut -d' ' -f1 dist/origin_pull.wasm.sha256): Envoy checks the download against it"
            )
        })?;
        Ok(RemoteWasm {
            url: url.to_string(),
            tls,
            host,
            port,
            sha256: sha256.to_string(),
            retries: DEFAULT_WASM_FETCH_RETRIES,
        })
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen_ip: DEFAULT_LISTEN.0.into(),
            listen_port: DEFAULT_LISTEN.1,
            admin_ip: DEFAULT_ADMIN.0.into(),
            admin_port: DEFAULT_ADMIN.1,
            wasm: DEFAULT_WASM.into(),
            ca_file: DEFAULT_CA_FILE.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.into(),
            route_timeout: DEFAULT_ROUTE_TIMEOUT.into(),
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
            node_id: "origin-pull".into(),
            config_dir: "envoy".into(),
            source: "(stdin)".into(),
            env_keys: Vec::new(),
            remote_wasm: None,
            delivery: Delivery::default(),
        }
    }
}

/// Stands in for a `*_env` credential while rendering: the real value is read where Envoy runs.
const ENV_PLACEHOLDER: &str = "set-where-envoy-runs";

/// Parses a plugin configuration for rendering, exactly as the filter does except that `*_env`
/// credentials are not looked up (render never sees secrets). Returns the configuration and the
/// names of those variables, which the VM must be given (`host_env_keys`).
pub fn parse(bytes: &[u8]) -> Result<(PluginConfig, Vec<String>), ConfigError> {
    let names = RefCell::new(Vec::new());
    let lookup = |name: &str| {
        names.borrow_mut().push(name.to_string());
        Some(ENV_PLACEHOLDER.to_string())
    };
    let config = parse_with_env(bytes, &lookup)?;
    let mut names = names.into_inner();
    names.sort();
    names.dedup();
    Ok((config, names))
}

/// A protobuf JSON duration as Envoy's YAML accepts it: seconds with up to 9 decimals and `s`.
pub fn check_duration(value: &str) -> Result<(), String> {
    let digits = value
        .strip_suffix('s')
        .ok_or_else(|| format!("duration '{value}' must end in 's' (e.g. 1s, 0.25s)"))?;
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, "0"));
    let ok = !whole.is_empty()
        && whole.len() <= 6
        && whole.bytes().all(|b| b.is_ascii_digit())
        && !frac.is_empty()
        && frac.len() <= 9
        && frac.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "duration '{value}' must be seconds like 1s, 0.25s or 30s"
        ))
    }
}

/// `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_socket(value: &str) -> Result<(String, u16), String> {
    let addr: std::net::SocketAddr = value
        .parse()
        .map_err(|_| format!("'{value}' is not IP:PORT (e.g. 127.0.0.1:10000, [::1]:10000)"))?;
    Ok((addr.ip().to_string(), addr.port()))
}

/// Names of the clusters render leaves to the operator (cluster origins).
pub fn provided_clusters(config: &PluginConfig) -> Vec<String> {
    config
        .cluster_specs()
        .into_iter()
        .filter(|s| s.kind == clusters::ClusterKind::Provided)
        .map(|s| s.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for ok in ["1s", "0.25s", "30s", "0.000000001s"] {
            assert_eq!(check_duration(ok), Ok(()), "{ok}");
        }
        for bad in [
            "1",
            "100ms",
            "s",
            ".5s",
            "1.s",
            "-1s",
            "1.0000000001s",
            "1e3s",
        ] {
            assert!(check_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_from_the_environment_are_named_not_read() {
        let text =
            br#"{"domains":[{"domain":"a.com","master":{"bucket":{"endpoint":"s3.example.com",
            "bucket":"bkt","region":"r","credentials":{"access_key_id_env":"KEY_ID",
            "secret_access_key_env":"SECRET"}}}}]}"#;
        let (_, names) = parse(text).unwrap();
        assert_eq!(names, ["KEY_ID", "SECRET"]);
        let (_, none) =
            parse(br#"{"domains":[{"domain":"a.com","master":{"ips":["10.0.0.1"]}}]}"#).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn remote_wasm_urls() {
        let sha = "ab".repeat(32);
        let r =
            RemoteWasm::parse("https://files.example.com/op/origin_pull.wasm", Some(&sha)).unwrap();
        assert_eq!(
            (r.tls, r.host.as_str(), r.port),
            (true, "files.example.com", 443)
        );
        let r = RemoteWasm::parse("http://127.0.0.7:8080/origin_pull.wasm", Some(&sha)).unwrap();
        assert_eq!((r.tls, r.host.as_str(), r.port), (false, "127.0.0.7", 8080));
        let r = RemoteWasm::parse("http://[::1]/m.wasm", Some(&sha)).unwrap();
        assert_eq!((r.host.as_str(), r.port), ("::1", 80));
        for (url, sha, error) in [
            (
                "oci://r/origin-pull:1",
                Some(sha.as_str()),
                "oci:// is for --istio",
            ),
            ("ftp://h/m.wasm", Some(&sha), "http:// or https://"),
            (
                "http:///m.wasm",
                Some(&sha),
                "expected http(s)://HOST[:PORT]/PATH",
            ),
            ("http://h:0/m.wasm", Some(&sha), "bad port"),
            ("http://h:x/m.wasm", Some(&sha), "bad port"),
            ("http://u:p@h/m.wasm", Some(&sha), "expected http(s)://HOST"),
            ("http://h/m.wasm", None, "needs --sha256"),
        ] {
            let e = RemoteWasm::parse(url, sha).unwrap_err();
            assert!(e.contains(error), "{url}: {e}");
        }
    }

    #[test]
    fn sockets() {
        assert_eq!(
            parse_socket("127.0.0.1:10000"),
            Ok(("127.0.0.1".into(), 10000))
        );
        assert_eq!(parse_socket("[::1]:80"), Ok(("::1".into(), 80)));
        assert!(parse_socket("localhost:80").is_err());
        assert!(parse_socket("127.0.0.1").is_err());
    }
}

#[cfg(test)]
mod shipped {
    //! envoy/envoy.yaml, lds.yaml and cds.yaml are exactly `origin-pull render
    //! envoy/examples/demo.json --out-dir envoy` (`make envoy-config` regenerates them).
    use super::*;

    #[test]
    fn shipped_envoy_files_are_the_render_of_the_demo_example() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("envoy/examples/demo.json")).unwrap();
        let config = crate::config::parse(text.as_bytes()).unwrap();
        let opts = Options {
            source: "envoy/examples/demo.json".into(),
            config_dir: "envoy".into(),
            ..Options::default()
        };
        for (name, body) in envoy::dynamic_files(&config, &text, &opts) {
            let shipped = std::fs::read_to_string(root.join("envoy").join(name)).unwrap();
            assert!(
                shipped == body,
                "envoy/{name} is not what render produces from envoy/examples/demo.json: \
                 run `make envoy-config` (and never edit it by hand)"
            );
        }
    }

    use std::path::Path;
}
