#![no_main]
// See vxmesh_control::fuzzing::cni_config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vxmesh_control::fuzzing::cni_config(data));
