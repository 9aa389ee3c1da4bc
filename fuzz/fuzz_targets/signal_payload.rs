#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| videocall_fuzz::signal_payload(data));
