//! OCI layer tar unpacking: nothing outside the root is ever touched.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vimanad_fuzz::layer(data);
});
