//! Browser key and pointer messages through the wire decoder and the RDP input translation into fast-path
//! input PDUs; see `portico_bridge::rdp::fuzzing::input` for the format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portico_bridge::rdp::fuzzing::input(data));
