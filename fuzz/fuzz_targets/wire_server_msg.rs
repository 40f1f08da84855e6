//! Bridge → browser messages (decoded by the test clients; the web client has its own decoder): the
//! decoder never panics, and what it accepts encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proto::wire::ServerMsg;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = ServerMsg::decode(data) {
        assert_eq!(ServerMsg::decode(&msg.encode()).as_ref(), Ok(&msg), "round trip");
    }
});
