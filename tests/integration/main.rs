//! Integration tests: real namespaces, real TAP devices, real sockets, real processes.
//!
//! Every test builds its own throwaway world namespace ([`world`]) and runs usernet inside
//! it, so no packet leaves namespaces the test created. This binary doubles as the tools the
//! tests run in those namespaces (`__tool ...`, see [`tools`]), which is why it has its own
//! `main` (libtest-mimic provides the usual test-runner command line).
//!
//! The list of tests is below. A test that needs more of the machine than every test does
//! (root of the initial user namespace, IPv6...) says so in its own first line ([`needs`]),
//! and is reported as ignored, with the reason, where it cannot run.

mod attach;
mod clients;
mod engines;
mod faults;
mod inbound;
mod ipv6;
mod lifecycle;
mod limits;
mod needs;
mod observe;
mod offload;
mod rootlesskit;
mod security;
mod services;
mod tcp;
mod tools;
mod world;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

use needs::Unmet;

/// `module::test_name, ...` to (name, function) pairs.
macro_rules! trials {
    ($($module:ident :: $name:ident),* $(,)?) => {
        vec![$((
            stringify!($name),
            (|| $module::$name().completion()) as fn() -> Completion,
        )),*]
    };
}

/// What a test function returns: nothing (it ran; a panic is its failure), or, for a test
/// with [needs](needs::needs), whether this machine met them.
trait TestOutcome {
    fn completion(self) -> Completion;
}

impl TestOutcome for () {
    fn completion(self) -> Completion {
        Completion::Completed
    }
}

impl TestOutcome for Result<(), Unmet> {
    fn completion(self) -> Completion {
        match self {
            Ok(()) => Completion::Completed,
            Err(Unmet(why)) => Completion::ignored_with(why),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__tool") {
        std::process::exit(tools::main(&args[2..]));
    }
    let tests = trials![
        tcp::tcp_64mib_each_way_to_a_remote_address,
        tcp::tcp_64mib_each_way_to_host_loopback_through_the_gateway,
        tcp::tcp_64mib_both_directions_at_once,
        tcp::refused_port_gives_econnrefused_immediately,
        tcp::disable_host_loopback_blocks_the_gateway_and_host_addresses,
        tcp::two_hundred_concurrent_connections_carry_data,
        tcp::host_reset_reaches_the_guest_as_connection_reset,
        tcp::guest_reset_reaches_the_host_as_connection_reset,
        tcp::reused_source_port_connects_at_once,
        offload::offloaded_tcp_64mib_each_way_at_mtu_1500_and_65520_over_ipv4_and_ipv6,
        offload::without_offloads_tcp_64mib_each_way_at_mtu_1500_and_65520_over_ipv4_and_ipv6,
        offload::through_the_rings_tcp_64mib_each_way_at_mtu_1500_and_65520_over_ipv4_and_ipv6,
        offload::offloaded_resets_mid_transfer_reach_each_side_over_ipv4_and_ipv6,
        offload::without_offloads_resets_mid_transfer_reach_each_side_over_ipv4_and_ipv6,
        offload::udp_segmentation_offload_splits_into_the_guests_datagrams_over_ipv4_and_ipv6,
        lifecycle::exit_code_of_command_is_propagated,
        lifecycle::command_killed_by_signal_gives_128_plus_signal,
        lifecycle::sigint_sigterm_sighup_are_forwarded_to_the_command,
        lifecycle::command_not_found_gives_127_and_one_line,
        lifecycle::bad_flag_values_are_one_line_and_nonzero,
        lifecycle::missing_tun_device_is_a_clear_error,
        lifecycle::disabled_user_namespaces_are_a_clear_error,
        lifecycle::namespace_has_tap0_route_and_resolv_conf,
        lifecycle::net_none_has_only_loopback_and_net_host_shares_the_network,
        lifecycle::nothing_is_left_behind_after_exit,
        lifecycle::usernet_killed_with_sigkill_leaves_nothing_behind,
        lifecycle::killing_the_process_inside_ends_everything_command_started,
        lifecycle::copy_up_gives_a_writable_etc_with_resolv_conf_as_a_file,
        lifecycle::propagation_rslave_shows_mounts_made_later_on_the_host,
        lifecycle::pidns_makes_usernet_init_and_nothing_outlives_it,
        lifecycle::state_dir_holds_child_pid_and_a_lock,
        lifecycle::state_dir_removes_only_what_usernet_created,
        lifecycle::stale_state_dir_of_a_killed_usernet_is_reused,
        lifecycle::unprivileged_user_is_root_inside_with_or_without_subordinate_ids,
        services::udp_round_trips_to_a_remote_address_and_through_the_gateway,
        services::udp_entries_expire_after_the_timeout,
        services::udp_burst_of_100k_flows_keeps_memory_bounded_and_tcp_flowing,
        services::udp_to_dns_address_other_ports_is_refused,
        services::dns_lookups_use_the_host_resolv_conf_over_udp_and_tcp,
        services::dns_fails_over_when_upstreams_are_dead,
        services::dns_answer_too_big_for_the_link_is_truncated_and_retried_over_tcp,
        services::disable_dns_leaves_resolv_conf_and_makes_10_0_2_3_ordinary,
        services::ping_reaches_the_gateway_and_a_remote_address,
        services::ping_without_ping_sockets_is_refused_cleanly,
        services::dhcp_client_gets_the_lease_and_its_options,
        services::arp_is_answered_only_for_the_gateway_and_dns,
        services::cidr_moves_the_whole_network,
        services::macaddress_sets_the_tap_address,
        services::outbound_addr_binds_host_sockets,
        services::udp_errors_from_the_host_reach_the_guest_and_loopback_policy_applies,
        services::dns_forwards_to_an_ipv6_upstream,
        ipv6::ipv6_namespace_has_its_address_route_and_resolver,
        ipv6::ipv6_tcp_64mib_both_ways_to_a_remote_address_and_the_host_loopback,
        ipv6::ipv6_refused_and_unreachable_destinations_fail_fast,
        ipv6::ipv6_udp_dns_and_ping_reach_their_targets,
        inbound::published_tcp_port_carries_64mib_each_way,
        inbound::published_tcp_port_carries_64mib_both_ways_at_once,
        inbound::udp_echo_through_a_published_port,
        inbound::inside_server_sees_the_clients_real_address,
        inbound::two_hundred_concurrent_inbound_connections,
        inbound::refused_target_inside_gives_an_immediate_reset,
        inbound::rootlessctl_manages_ports_and_reads_info,
        inbound::usernet_ports_and_info_manage_a_running_usernet,
        inbound::publish_errors_are_one_line_and_leave_nothing,
        inbound::ps_lists_running_usernets_and_info_finds_the_only_one,
        inbound::privileged_port_as_a_user_says_how_to_allow_it,
        inbound::stack_port_driver_forwards_through_the_stack,
        limits::tcp_flow_bound_resets_new_connections_and_keeps_the_open_ones,
        limits::pending_connect_bound_evicts_the_least_recent_and_keeps_the_open_ones,
        limits::udp_flow_bound_refuses_new_flows_and_keeps_the_conversations,
        limits::api_bounds_answer_503_for_connections_and_413_for_requests,
        security::host_loopback_policy_cannot_be_bypassed,
        security::other_users_cannot_reach_the_state_dir_or_the_api,
        security::other_users_state_dirs_and_api_servers_are_refused,
        security::after_setup_usernet_holds_no_capability_it_does_not_need,
        security::guest_cannot_inspect_or_drive_the_host_side_process,
        faults::host_peer_resets_mid_transfer_with_data_in_flight_both_ways,
        faults::guest_killed_mid_transfer_ends_the_host_connections_and_frees_the_flows,
        faults::dns_with_every_upstream_dead_fails_fast_without_piling_up,
        faults::tap_queue_full_for_seconds_then_tcp_completes,
        faults::command_exit_with_connections_open_ends_them_and_leaves_nothing,
        faults::syn_flood_from_the_guest_stays_bounded_and_responsive,
        faults::port_scan_of_a_silent_address_leaves_new_connections_instant,
        faults::stalled_flows_stay_within_the_buffer_budget_and_a_new_transfer_completes,
        faults::stalled_flows_stay_within_the_default_buffer_budget,
        faults::flows_the_guest_does_not_read_stay_within_the_buffer_budget,
        attach::slirp4netns_configure_ready_fd_and_exit_fd,
        attach::slirp4netns_api_socket_adds_lists_removes_and_forwards,
        attach::slirp4netns_cidr_macaddress_and_disable_host_loopback,
        attach::slirp4netns_disable_dns_makes_the_dns_address_ordinary,
        attach::slirp4netns_dhcp_leases_from_15_as_libslirp,
        attach::slirp4netns_outbound_addr_applies_to_the_host_loopback_too,
        attach::slirp4netns_sandbox_and_seccomp,
        attach::slirp4netns_netns_by_path_with_its_userns_path,
        attach::slirp4netns_help_version_and_errors_keep_the_contract,
        attach::slirp4netns_tapfd_plain_or_with_vnet_headers_carries_tcp,
        attach::usernet_attach_connects_a_namespace_made_with_unshare,
        attach::usernet_attach_by_path_exits_when_the_namespace_file_is_removed,
        attach::real_rootlesskit_uses_usernet_as_its_slirp4netns,
        attach::usernet_attach_ipv6_guest_configures_itself_from_router_advertisements,
        attach::real_rootlesskit_with_ipv6_reaches_an_ipv6_host,
        clients::rootlesskit_docker_proxy_publishes_the_port_while_docker_proxy_runs,
        clients::rootlessctl_personality_prints_what_rootlessctl_prints,
        clients::install_links_makes_the_links_and_leaves_other_files_alone,
        rootlesskit::rootlesskit_exit_code_is_the_commands_with_pidns_and_reaper_variants,
        rootlesskit::rootlesskit_command_killed_by_a_signal_exits_255_and_names_it,
        rootlesskit::rootlesskit_reuses_its_state_dir_after_sigkill,
        rootlesskit::rootlesskit_killed_leaves_nothing_running,
        rootlesskit::rootlesskit_keeps_the_terminal_with_or_without_the_reaper,
        rootlesskit::rootlesskit_propagation_modes_show_host_mounts_as_rootlesskit_does,
        rootlesskit::rootlesskit_published_ports_follow_tcp_tcp4_tcp6_over_ipv4_and_ipv6,
        rootlesskit::rootlesskit_dns_resolves_through_the_forwarder_to_the_worlds_resolver,
        rootlesskit::rootlesskit_ipv6_reaches_an_ipv6_host,
        rootlesskit::rootlesskit_socket_activation_hands_the_sockets_to_the_command,
        rootlesskit::rootlesskit_detach_netns_keeps_the_command_in_the_callers_network,
        rootlesskit::rootlessctl_drives_the_personalitys_api_socket,
        rootlesskit::rootlesskit_other_drivers_get_their_own_addresses,
        rootlesskit::rootlesskit_help_version_and_errors_keep_the_contract,
        rootlesskit::rootlesskit_evacuate_cgroup2_moves_its_processes_into_the_subgroup,
        rootlesskit::rootlesskit_exports_the_state_dir_and_the_callers_ids,
        engines::dockerd_rootless_runs_on_usernet_as_rootlesskit,
        engines::podman_runs_on_usernet_as_slirp4netns,
        observe::flows_show_a_live_transfer_a_half_closed_flow_a_udp_entry_and_a_ping,
        observe::flows_show_a_published_port_connection,
        observe::counters_move_for_a_malformed_frame_a_policy_refusal_and_a_bound_hit,
        observe::pcap_holds_a_known_exchange_frame_by_frame,
        observe::pcap_stops_at_its_cap_and_never_overwrites_a_file,
        observe::slirp4netns_personality_serves_flows_stats_and_usernet_pcap,
        observe::other_users_cannot_read_the_capture_the_flows_or_the_counters,
        observe::rootlesskit_personality_captures_with_its_pcap_flag,
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| Trial::ignorable_test(name, move || catch(f)))
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}

/// Turn a panicking test body into a failure with the panic message.
fn catch(f: fn() -> Completion) -> Result<Completion, Failed> {
    std::panic::catch_unwind(f).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "test panicked".into());
        Failed::from(msg)
    })
}
