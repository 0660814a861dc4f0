#![no_main]
// See vxmesh_dataplane::fuzzing::switch_underlay.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vxmesh_dataplane::fuzzing::switch_underlay(data));
