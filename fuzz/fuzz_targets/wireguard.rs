#![no_main]
// See vxmesh_dataplane::fuzzing::wireguard.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vxmesh_dataplane::fuzzing::wireguard(data));
