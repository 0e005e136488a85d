//! `frame`: see `zdr_integration::fuzz::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zdr_integration::fuzz::frame(data);
});
