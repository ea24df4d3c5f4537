//! Integration tests: real namespaces, real TAP devices, real sockets, real processes.
//!
//! Every test builds its own throwaway world namespace ([`world`]) and runs usernet inside
//! it, so no packet leaves namespaces the test created. This binary doubles as the tools the
//! tests run in those namespaces (`__tool ...`, see [`tools`]), which is why it has its own
//! `main` (libtest-mimic provides the usual test-runner command line).

mod lifecycle;
mod tcp;
mod tools;
mod world;

use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__tool") {
        std::process::exit(tools::main(&args[2..]));
    }
    let tests: Vec<(&str, fn())> = vec![
        (
            "tcp_64mib_each_way_to_a_remote_address",
            tcp::tcp_64mib_each_way_to_a_remote_address,
        ),
        (
            "tcp_64mib_each_way_to_host_loopback_through_the_gateway",
            tcp::tcp_64mib_each_way_to_host_loopback_through_the_gateway,
        ),
        (
            "tcp_64mib_both_directions_at_once",
            tcp::tcp_64mib_both_directions_at_once,
        ),
        (
            "refused_port_gives_econnrefused_immediately",
            tcp::refused_port_gives_econnrefused_immediately,
        ),
        (
            "disable_host_loopback_blocks_the_gateway_and_host_addresses",
            tcp::disable_host_loopback_blocks_the_gateway_and_host_addresses,
        ),
        (
            "two_hundred_concurrent_connections_carry_data",
            tcp::two_hundred_concurrent_connections_carry_data,
        ),
        (
            "exit_code_of_command_is_propagated",
            lifecycle::exit_code_of_command_is_propagated,
        ),
        (
            "command_killed_by_signal_gives_128_plus_signal",
            lifecycle::command_killed_by_signal_gives_128_plus_signal,
        ),
        (
            "sigint_sigterm_sighup_are_forwarded_to_the_command",
            lifecycle::sigint_sigterm_sighup_are_forwarded_to_the_command,
        ),
        (
            "command_not_found_gives_127_and_one_line",
            lifecycle::command_not_found_gives_127_and_one_line,
        ),
        (
            "bad_flag_values_are_one_line_and_nonzero",
            lifecycle::bad_flag_values_are_one_line_and_nonzero,
        ),
        (
            "missing_tun_device_is_a_clear_error",
            lifecycle::missing_tun_device_is_a_clear_error,
        ),
        (
            "disabled_user_namespaces_are_a_clear_error",
            lifecycle::disabled_user_namespaces_are_a_clear_error,
        ),
        (
            "namespace_has_tap0_route_and_resolv_conf",
            lifecycle::namespace_has_tap0_route_and_resolv_conf,
        ),
        (
            "net_none_has_only_loopback_and_net_host_shares_the_network",
            lifecycle::net_none_has_only_loopback_and_net_host_shares_the_network,
        ),
        (
            "nothing_is_left_behind_after_exit",
            lifecycle::nothing_is_left_behind_after_exit,
        ),
        (
            "state_dir_holds_child_pid_and_a_lock",
            lifecycle::state_dir_holds_child_pid_and_a_lock,
        ),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::test(name, move || catch(f)))
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}

/// Turn a panicking test body into a failure with the panic message.
fn catch(f: fn()) -> Result<(), Failed> {
    std::panic::catch_unwind(f).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "test panicked".into());
        Failed::from(msg)
    })
}
