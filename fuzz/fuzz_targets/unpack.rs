//! The model-tarball unpacker on arbitrary bytes (gzip or plain tar), with
//! small limits: entries, sizes, ratios, links and paths must all be
//! refused or unpacked inside the destination, never outside it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use neoc_bundle::unpack::{unpack, Limits};

fuzz_target!(|data: &[u8]| {
    // in memory where there is a tmpfs: the filesystem bounds the speed
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("a temp dir");
    let archive = dir.path().join("m.tar.gz");
    std::fs::write(&archive, data).expect("writing the input");
    let dest = dir.path().join("out");
    std::fs::create_dir(&dest).expect("the destination");
    let _ = unpack(&archive, &dest, Limits { max_entries: 64, max_bytes: 1 << 20, max_ratio: 200 });
    // nothing may land outside `dest` (the archive and `out` are all there is)
    for e in std::fs::read_dir(dir.path()).expect("listing") {
        let n = e.expect("an entry").file_name();
        assert!(n == "m.tar.gz" || n == "out", "unpack wrote {n:?} outside its destination");
    }
});
