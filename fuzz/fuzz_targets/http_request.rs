#![no_main]

use libfuzzer_sys::fuzz_target;

// Measures the largest allocation before a request's body arrives (see `http_checks`).
#[global_allocator]
static ALLOC: wshub_fuzz::http_checks::CountingAlloc = wshub_fuzz::http_checks::CountingAlloc;

fuzz_target!(|data: &[u8]| {
    wshub_fuzz::http_checks::check_http_request(data);
});
