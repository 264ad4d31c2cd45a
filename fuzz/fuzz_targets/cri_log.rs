//! The CRI log writer: container output into kubelet log records.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vimanad_fuzz::cri_log(data);
});
