//! The request phase: whether the filter handles the request, where it goes, and the request
//! headers that say so. Every header the routed request carries is decided here (the glue only
//! reads the client's headers and hands them over): the routing headers a client sent are
//! always overwritten or removed, and a bucket never sees the client's credentials.

use super::*;

/// Headers that choose a retry policy, which the filter sets for some logged chains only.
const RESERVED_RETRY_HEADERS: [&str; 1] = [RETRIABLE_CODES_HEADER];

/// What the glue read in the request phase, for [`Exchange::on_request_headers`].
pub struct ClientRequest<'a> {
    /// Every request header, in one read as Envoy encoded it (also the copy a callout failover
    /// replays: Envoy hides the request headers once the response is under way).
    pub headers: &'a HeaderMap,
    /// The request has a body (the headers did not end the stream).
    pub has_body: bool,
    /// Shown in the debug header, to tell workers apart.
    pub worker: &'a str,
    pub stats: BucketStats,
    /// This VM's stats for the configuration in use (`None`: not counted).
    pub metrics: Option<&'a Rc<Metrics>>,
}

impl Exchange {
    /// Starts the exchange for a client request and sets its routing headers through
    /// [`Host::set_request_header`], or answers locally (and returns `None`): not configured,
    /// an unknown host, a request a bucket cannot serve.
    pub fn on_request_headers(
        config: Option<&Rc<PluginConfig>>,
        blocks: &mut BlockTable,
        host: &mut impl Host,
        client: ClientRequest,
    ) -> Option<Exchange> {
        let Some(config) = config else {
            // Never route a request this filter has not decided on.
            host.send_local_reply(
                503,
                "origin_pull_not_configured",
                &[(ERROR_HEADER, "not-configured")],
                b"origin-pull: not configured\n",
            );
            host.set_filter_state(ATTRIBUTION_KEY, NO_ORIGIN_ATTRIBUTION);
            return None;
        };
        let headers = client.headers;
        // One pass over the map for the four pseudo-headers (Envoy's names are lowercase).
        let [mut authority, mut scheme, mut method, mut path] = [None::<&str>; 4];
        // Only these values are checked for UTF-8 (one that is not reads as absent).
        for (name, value) in headers.iter_bytes() {
            let slot = match name {
                b":authority" => &mut authority,
                b":scheme" => &mut scheme,
                b":method" => &mut method,
                b":path" => &mut path,
                _ => continue,
            };
            if slot.is_none() {
                *slot = std::str::from_utf8(value).ok();
            }
        }
        let request = RequestInfo {
            authority: authority.unwrap_or(""),
            scheme: scheme.unwrap_or(""),
            method: method.unwrap_or(""),
            // Only bucket origins and mirrors look at the path; others pass it through untouched.
            path: if config.uses_buckets {
                path.unwrap_or("")
            } else {
                ""
            },
            has_body: client.has_body,
            worker: client.worker,
            stats: client.stats,
            metrics: client.metrics,
        };
        // Returned as started (no move of the exchange: it is large).
        let mut started = Exchange::start(config, blocks, host, &request);
        let Some(exchange) = started.as_mut() else {
            // Answered locally before any origin was chosen (e.g. an unknown host).
            host.set_filter_state(ATTRIBUTION_KEY, NO_ORIGIN_ATTRIBUTION);
            return None;
        };
        // A bucket never sees the client's credentials: note which headers to drop before the
        // copy moves into the exchange (no second read of the map).
        let dropped: Vec<String> = if exchange.bucket_request().is_some() {
            headers
                .iter_bytes()
                .filter_map(|(name, _)| std::str::from_utf8(name).ok())
                .filter(|name| is_client_header_dropped(name))
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        // Retry headers only the filter may set (a client's copy would pick a retry policy).
        let reserved: Vec<&'static str> = RESERVED_RETRY_HEADERS
            .into_iter()
            .filter(|reserved| {
                headers
                    .iter_bytes()
                    .any(|(name, _)| name == reserved.as_bytes())
            })
            .collect();
        exchange.keep_request_headers(headers);
        exchange.set_routing_headers(host, &dropped, &reserved);
        started
    }

    /// Overwrites or removes every header that routes the request, whatever the client sent,
    /// and puts the bucket's `Host`, path and signature in place of the client's credentials.
    fn set_routing_headers(&self, host: &mut impl Host, dropped: &[String], reserved: &[&str]) {
        let chain = if self.routes_chain() {
            self.chain_headers()
        } else {
            Vec::new()
        };
        if self.routes_chain() {
            // Envoy's router carries the failover: composite cluster, per-attempt addresses,
            // retry headers, plan (always overwritten: a client never sets any of them).
            for (name, value) in &chain {
                host.set_request_header(name, value.as_deref());
            }
        } else if let Some((route, host_override)) = self.route() {
            // Always overwrite or remove: a client's copy of a routing header is never obeyed.
            host.set_request_header(self.cluster_header(), Some(&route.cluster));
            host.set_request_header(ORIGINAL_DST_HEADER, route.original_dst.as_deref());
            if let Some(authority) = host_override {
                host.set_request_header(":authority", Some(authority));
            }
        }
        for name in reserved
            .iter()
            .filter(|r| !chain.iter().any(|(set, _)| set == *r))
        {
            host.set_request_header(name, None);
        }
        if let Some((authority, request)) = self.bucket_request() {
            // The bucket sees our signature only, never the client's credentials.
            for name in dropped {
                host.set_request_header(name, None);
            }
            host.set_request_header(":authority", Some(authority));
            host.set_request_header(":path", Some(&request.path));
            for (name, value) in &request.headers {
                host.set_request_header(name, Some(value));
            }
        }
    }
}
