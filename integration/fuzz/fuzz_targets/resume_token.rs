//! `resume_token`: see `zdr_integration::fuzz::resume_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zdr_integration::fuzz::resume_token(data);
});
