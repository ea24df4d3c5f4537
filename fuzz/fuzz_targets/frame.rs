//! `frame`: one arbitrary Ethernet frame from the guest, through the classifier into the
//! whole stack.
//!
//! The input is the frame's bytes, exactly as the guest would write them to tap0 (checksums
//! are not verified in fuzzing builds: smoltcp skips them under `cfg(fuzzing)`). Each run
//! classifies the frame (twice: the classifier must be pure), then hands it to a fresh
//! [`Stack`](usernet::stack::Stack) with small tables, lets the event loop turn a few times so
//! the simulated host (echo, discard, chargen, reset and DNS servers on the namespace's
//! loopback, see `usernet_fuzz::host`) can answer whatever host socket the frame opened, and
//! checks every frame the stack sends back. Asserts: no panic, every frame out parses and fits
//! the MTU, and a single frame leaves at most one entry in any table.
//!
//! Runs only inside a throwaway network namespace (see `fuzz/run.sh`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use usernet::stack::frame;
use usernet_fuzz::harness::{Harness, small_config};
use usernet_fuzz::{guest, host, world};

fuzz_target!(
    init: {
        world::enter();
        host::start();
    },
    |data: &[u8]| {
        let net = guest::net();
        let first = format!("{:?}", frame::classify(data, &net));
        assert_eq!(first, format!("{:?}", frame::classify(data, &net)));

        let mut h = Harness::new(small_config(1500));
        h.inject(data);
        h.answer_one_frame();
        h.check_bounds();
        let t = h.sizes();
        for (what, n) in [
            ("tcp_flows", t.tcp_flows),
            ("udp_flows", t.udp_flows),
            ("dns_queries", t.dns_queries),
            ("pings", t.pings),
            ("neighbors", t.neighbors),
        ] {
            assert!(n <= 1, "one frame left {n} {what}: {t:?}");
        }
    }
);
