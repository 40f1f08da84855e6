//! Server PDUs on the RDP clipboard channel through IronRDP's CLIPRDR client and the bridge's text
//! backend (`bridge/src/rdp/clipboard.rs`); see `portico_bridge::rdp::fuzzing::cliprdr` for the format.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portico_bridge::rdp::fuzzing::cliprdr(data));
