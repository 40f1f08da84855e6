//! Browser → bridge messages: the decoder never panics, and what it accepts encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proto::wire::ClientMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ClientMsg::decode(data) {
        assert_eq!(ClientMsg::decode(&msg.encode()).as_ref(), Ok(&msg), "round trip");
    }
});
