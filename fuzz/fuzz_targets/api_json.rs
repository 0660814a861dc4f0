#![no_main]
// See vxmesh_control::fuzzing::api_requests.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vxmesh_control::fuzzing::api_requests(data));
