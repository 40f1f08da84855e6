//! PROXY protocol v2 headers from a trusted load balancer: never a panic; a parsed header lies within the
//! bytes, and every shorter prefix of it asks for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_proto::proxy::{FIXED_LEN, MAX_PAYLOAD, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(header)) = parse(data) {
        assert!(header.len >= FIXED_LEN && header.len <= data.len() && header.len <= FIXED_LEN + MAX_PAYLOAD);
        for n in 0..header.len {
            assert_eq!(
                parse(&data[..n]),
                Ok(None),
                "a {n}-byte prefix of a {}-byte header",
                header.len
            );
        }
    }
});
