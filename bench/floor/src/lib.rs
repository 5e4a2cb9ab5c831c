//! Trivial one-header filter: the cost of any Rust proxy-wasm filter in this Envoy (VM entry,
//! context creation, one header hostcall), measured by `make bench` next to origin-pull.
//!
//! With the plugin configuration `hostcalls` it makes, with no logic between them, the same
//! hostcalls as origin-pull's listener filter on a routed happy-path request (9: the request
//! header map, the clock, a shared-data key that does not exist, four request headers, then
//! the response's `:status` and one filter-state value): what those crossings cost Envoy and
//! the VM by themselves (`make bench` system `floorhc`).
#![allow(unsafe_code)] // the raw header-map hostcall, as origin-pull's glue makes it

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { hostcalls: Rc::new(Cell::new(false)) })
    });
}}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

struct Root {
    hostcalls: Rc<Cell<bool>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, 64)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.hostcalls.set(config == b"hostcalls");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            hostcalls: self.hostcalls.get(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    hostcalls: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.hostcalls {
            self.set_http_request_header("x-bench-floor", Some("1"));
            return Action::Continue;
        }
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: Envoy hands over a buffer from this module's allocator, `size` bytes long.
        if unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) }
            == Status::Ok
            && !data.is_null()
        {
            // SAFETY: as above; dropped at once.
            drop(unsafe { Vec::from_raw_parts(data, size, size) });
        }
        let _ = hostcalls::get_current_time();
        let _ = hostcalls::get_shared_data("bench_floor.blocked|www.test.com");
        for (name, value) in [
            ("x-bench-dst-1", "127.5.10.2:8080"),
            ("x-bench-dst-2", "127.5.0.2:8080"),
            ("x-bench-cluster", "origin_pull_chain(origin_pull_ip_http)(origin_pull_ip_http_2)"),
            ("x-bench-plan", "9f1c5a528a534d1e"),
        ] {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.hostcalls {
            let _ = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status");
            let _ = hostcalls::set_property(
                vec!["bench_floor.served"],
                Some(b"origin=127.5.10.2:8080 role=master attempts=1 failed_over=false"),
            );
        }
        Action::Continue
    }
}
