//! `spec`: see `zdr_integration::fuzz::spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zdr_integration::fuzz::spec(data);
});
