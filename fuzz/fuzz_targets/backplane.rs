#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wshub_fuzz::backplane_checks::check_backplane(data);
});
