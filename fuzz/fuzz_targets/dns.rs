#![no_main]
// See vxmesh_dataplane::fuzzing::dns.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vxmesh_dataplane::fuzzing::dns(data));
