//! The model-tarball unpacker: list, unpack, unpack only the files chosen.
//! The body is `neoc_fuzz_harness::unpack` (fuzz/harness), shared with CI's
//! stable run of it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| neoc_fuzz_harness::unpack(data));
