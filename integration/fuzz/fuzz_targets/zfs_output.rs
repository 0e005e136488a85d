//! `zfs_output`: see `zdr_integration::fuzz::zfs_output`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    zdr_integration::fuzz::zfs_output(data);
});
