//! Component names, pod IDs and the pod labels that name a component.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vimanad_fuzz::names(data);
});
