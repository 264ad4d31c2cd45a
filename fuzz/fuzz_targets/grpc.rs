//! gRPC framing and grpc-timeout parsing (vimanad::shard::fuzz::grpc).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vimanad::shard::fuzz::grpc(data);
});
