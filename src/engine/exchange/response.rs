//! The routed response's headers: whose answer it is, what the client is shown, and the
//! response headers the filter changes (the origin's own status for a marked answer, hop-by-hop
//! headers of a failed-over answer, debug headers).

use super::*;

/// Hop-by-hop headers Envoy's codec lets through: a failed-over answer carries none (as the
/// callout path guarantees).
const FAILED_OVER_DROPPED: [&str; 6] = [
    "te",
    "trailer",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
    "upgrade",
];

impl Exchange {
    /// The routed request's response headers arrived with `status` and Envoy's
    /// `response_flags`. `answered`: for a routed failover, the attempt whose origin answered
    /// and the origin's status (0: outside 100..=599), as the upstream instance noted it;
    /// `None` on Envoy's own replies. Sets what the client must see through
    /// [`Host::set_response_header`].
    pub fn on_routed_response(
        &mut self,
        host: &mut impl Host,
        blocks: &mut BlockTable,
        status: u32,
        response_flags: u64,
        answered: Option<(usize, u32)>,
    ) -> ResponseStep {
        let step = if self.routes_chain() {
            if status == FAILOVER_STATUS {
                if let Some((_, origin)) = answered {
                    // An answer marked for a failover that the router relayed (no retry left):
                    // the client gets the origin's own status, never the marker; an origin's
                    // own 590 (a logged chain relays it unmarked) is a 502.
                    let shown = if origin == 0 || origin == FAILOVER_STATUS {
                        502
                    } else {
                        origin
                    };
                    host.set_response_header(":status", Some(&shown.to_string()));
                }
            }
            let (attempt, status) = match answered {
                Some((attempt, 0)) => (Some(attempt), 0), // the origin's status was invalid
                Some((attempt, origin)) if status == FAILOVER_STATUS => (Some(attempt), origin),
                Some((attempt, _)) => (Some(attempt), status),
                None => (None, status),
            };
            if attempt.is_some_and(|a| a > 1) {
                for name in FAILED_OVER_DROPPED {
                    host.set_response_header(name, None);
                }
            }
            self.on_chain_response(host, status, response_flags, attempt)
        } else {
            self.on_response_headers(host, blocks, status, response_flags)
        };
        if step == ResponseStep::Continue {
            for (name, value) in self.debug_headers() {
                host.set_response_header(name, Some(&value));
            }
        }
        step
    }
}
