//! Any bytes a plugin could send as a `Status`: decoding either fails or
//! gives a status that, once held to the limits, respects every one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use npd_ext::rpc::{LIMITS, pb, status_from_plugin};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(status) = pb::Status::decode(data) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let (s, trimmed) = status_from_plugin(status, now, &LIMITS);
    assert!(s.conditions.len() <= LIMITS.conditions);
    assert!(s.events.len() <= LIMITS.events);
    for c in &s.conditions {
        assert!(c.type_.len() <= LIMITS.reason && c.reason.len() <= LIMITS.reason);
        assert!(c.message.len() <= LIMITS.message);
        if let Some(t) = c.transition {
            assert!(t <= now + std::time::Duration::from_secs(86_400));
        }
    }
    for e in &s.events {
        assert!(e.reason.len() <= LIMITS.reason && e.message.len() <= LIMITS.message);
    }
    let _ = trimmed.to_string();
});
