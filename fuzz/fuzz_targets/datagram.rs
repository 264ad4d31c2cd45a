//! The datagram receive path of a shard (vimanad::shard::fuzz::Datagrams).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vimanad::shard::fuzz::Datagrams::new().run(data);
});
