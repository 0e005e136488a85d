//! `envelope`: see `zdr_integration::fuzz::envelope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zdr_integration::fuzz::envelope(data);
});
