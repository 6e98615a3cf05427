#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wshub_fuzz::hub_checks::check_hub_message(data);
});
