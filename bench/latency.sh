#!/usr/bin/env bash
# Latency and memory of usernet, slirp4netns and pasta, side by side, in one run.
#
# Usage: bench/latency.sh        (BENCH_SECONDS=5 per latency test, BENCH_CONNECTS=2000,
#                                 BENCH_ROUNDS=3)
#
# Everything runs inside a throwaway user+network namespace (the "world"): the servers listen
# on the world's 127.0.0.1 and each tool's guest reaches them through its gateway alias
# (10.0.2.2 for usernet and slirp4netns, the mapped gateway for pasta), all at MTU 65520. No
# packet leaves the world.
#
# In each tool's guest, one after the other:
# - TCP and UDP request/response round trips of 64 bytes (sockperf ping-pong, --full-rtt),
#   and connect, one byte each way, close, BENCH_CONNECTS times in a row (bench/crr.py), in
#   BENCH_ROUNDS rounds that take the tools in turn (slirp4netns, pasta, usernet, then
#   pasta, usernet, slirp4netns...), each tool's result the median of its rounds (a failed
#   round makes it "failed"): round trips on an idle VM drift by a
#   third within minutes, more than the tools differ, and interleaving spreads the drift over
#   all of them;
# - 1000 idle TCP connections held open (to the echo server, which closes when they do),
#   then 4 iperf3 streams for BENCH_SECONDS.
# Memory is the proportional set size (PSS, so pages shared between usernet's two processes
# count once) of the tool's own processes: usernet's parent and its helper inside the
# namespace, the slirp4netns process, the pasta process. Sampled when the network is up, with
# the 1000 connections open, halfway through the iperf3 run and 2 s after everything closed.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
here=$bench_dir
seconds=${BENCH_SECONDS:-5}
connects=${BENCH_CONNECTS:-2000}
rounds=${BENCH_ROUNDS:-3}

need_packages sockperf:sockperf iperf3:iperf3 slirp4netns:slirp4netns pasta:passt \
    python3:python3 ip:iproute2
enter_world "$0" "$@"

# ---- inside the world namespace from here on ----
world_network_for_pasta

tmp=$(mktemp -d)
servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
sockperf sr -i 127.0.0.1 -p 11111 --tcp >/dev/null 2>&1 & servers+=($!)
sockperf sr -i 127.0.0.1 -p 11112 >/dev/null 2>&1 & servers+=($!)
python3 "$here/echo_server.py" 127.0.0.1 7000 & servers+=($!)
iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 & servers+=($!)
sleep 1

# What runs in each guest, with GW the gateway. "MEM label" asks for a memory sample now;
# "RES name p50 p99" is a result. One round of round trips:
rr_script='
set -e
pp() { sockperf pp -i "$GW" -t '"$seconds"' --full-rtt -m 64 "$@" 2>&1 |
    awk "/percentile 50.000/ {p50 = \$NF} /percentile 99.000/ {p99 = \$NF} END {print p50, p99}"; }
sleep 1
echo "RES tcp_rr $(pp -p 11111 --tcp)"
echo "RES udp_rr $(pp -p 11112)"
echo "RES tcp_crr $(python3 '"$here"'/crr.py "$GW" 7000 '"$connects"')"
'
# The rest, once per tool:
main_script='
set -e
sleep 1; echo "MEM idle"; sleep 0.5
python3 '"$here"'/idle_clients.py "$GW" 7000 1000 2>/dev/null & idle=$!
sleep 4; echo "MEM conns"; sleep 0.5
kill $idle; wait $idle 2>/dev/null || true
iperf3 -c "$GW" -P 4 -t '"$seconds"' >/dev/null & load=$!
sleep '"$((seconds / 2))"'; echo "MEM load"
wait $load
sleep 2; echo "MEM after"; sleep 0.5
'

# Each runs $script in the tool's guest.
run_usernet() {
    GW=10.0.2.2 "$USERNET_BIN" run --mtu 65520 -- sh -c "$script"
}

run_slirp4netns() {
    unshare --user --map-root-user --net sleep infinity &
    local ns=$!
    sleep 0.2
    slirp4netns --configure --mtu 65520 "$ns" tap0 >/dev/null 2>&1 &
    local s4=$!
    for _ in $(seq 50); do
        nsenter -t "$ns" -U -n --preserve-credentials ip -o link show tap0 2>/dev/null | grep -q UP && break
        sleep 0.1
    done
    GW=10.0.2.2 nsenter -t "$ns" -U -n --preserve-credentials sh -c "$script" || true
    kill "$s4" "$ns" 2>/dev/null || true
    wait "$s4" "$ns" 2>/dev/null || true
}

run_pasta() {
    GW=192.0.2.254 pasta --config-net --mtu 65520 --runas 0:0 -q -- sh -c "$script" 2>/dev/null
}

# PSS in MiB of the networking processes under PID (the tool's own, not the guest's).
pss_under() { # pid
    local pids
    pids=$(ps -e -o pid=,ppid=,comm= | awk -v top="$1" '
        { parent[$1] = $2; name[$1] = $3 }
        END {
            for (p in parent) {
                if (name[p] !~ /^(usernet|slirp4netns|pasta|passt)/) continue
                for (q = p; q != "" && q != 0 && q != 1; q = parent[q])
                    if (q == top) { print p; break }
            }
        }')
    local kib=0 p v
    for p in $pids; do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
        kib=$((kib + ${v:-0}))
    done
    if [ "$kib" -eq 0 ]; then echo "-"; else awk -v k="$kib" 'BEGIN {printf "%.1f", k / 1024}'; fi
}

declare -A result
tools=(slirp4netns pasta usernet)
# Run $script in each tool's guest; results as "RES" lines say, appended (space-separated)
# when `append` is set.
measure() { # tool [append]
    local tool=$1 append=${2:-} seen=" "
    rm -f "$tmp/out"
    mkfifo "$tmp/out"
    "run_$tool" >"$tmp/out" &
    top=$!
    while IFS= read -r line; do
        case $line in
            "MEM "*) result[$tool,mem_${line#MEM }]=$(pss_under "$top") ;;
            "RES "*)
                read -r _ name p50 p99 <<<"$line"
                seen+="$name "
                if [ -n "$append" ]; then
                    result[$tool,${name}_all]+="${p50:-failed} "
                    result[$tool,${name}_p99_all]+="${p99:-failed} "
                else
                    result[$tool,$name]=${p50:-failed}
                    result[$tool,${name}_p99]=${p99:-failed}
                fi
                ;;
        esac
    done <"$tmp/out"
    wait "$top" || true
    # A round the tool did not finish counts as failed, so rounds stay aligned across tools.
    if [ -n "$append" ]; then
        local name
        for name in tcp_rr udp_rr tcp_crr; do
            if [[ $seen != *" $name "* ]]; then
                result[$tool,${name}_all]+="failed "
                result[$tool,${name}_p99_all]+="failed "
            fi
        done
    fi
}
# The median of space-separated numbers ("failed" if any failed).
median() {
    echo "$1" | tr ' ' '\n' | awk 'NF' | sort -g | awk '
        /failed/ { bad = 1 } { v[NR] = $1 }
        END {
            if (bad || NR == 0) print "failed"
            else if (NR % 2) print v[(NR + 1) / 2]
            else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}
script=$rr_script
for round in $(seq "$rounds"); do
    # Each round starts with the next tool, so none always follows the same one.
    shift_by=$(((round - 1) % ${#tools[@]}))
    order=("${tools[@]:shift_by}" "${tools[@]:0:shift_by}")
    for tool in "${order[@]}"; do
        echo "measuring $tool, round trips, round $round of $rounds..." >&2
        measure "$tool" append
    done
done
for tool in "${tools[@]}"; do
    for t in tcp_rr udp_rr tcp_crr; do
        result[$tool,$t]=$(median "${result[$tool,${t}_all]:-failed}")
        result[$tool,${t}_p99]=$(median "${result[$tool,${t}_p99_all]:-failed}")
    done
done
script=$main_script
for tool in "${tools[@]}"; do
    echo "measuring $tool..." >&2
    measure "$tool"
done

cell() { # tool key
    echo "${result[$1,$2]:-failed}"
}

echo
echo "round trips through each tool, µs (median / 99th percentile, each the median of $rounds rounds;"
echo "lower is better)"
printf '%-40s %17s %17s %17s %9s %9s\n' "test" "slirp4netns" "pasta" "usernet" "vs s4nns" "vs pasta"
for t in tcp_rr udp_rr tcp_crr; do
    case $t in
        tcp_rr) label="TCP request/response, 64 B" ;;
        udp_rr) label="UDP request/response, 64 B" ;;
        tcp_crr) label="TCP connect+1 B each way+close" ;;
    esac
    printf '%-40s' "$label"
    for tool in "${tools[@]}"; do
        printf ' %17s' "$(cell "$tool" "$t") / $(cell "$tool" "${t}_p99")"
    done
    printf ' %9s %9s\n' "$(ratio "$(cell usernet "$t")" "$(cell slirp4netns "$t")")" \
        "$(ratio "$(cell usernet "$t")" "$(cell pasta "$t")")"
done
echo "per round, median µs (usernet / pasta):"
for t in tcp_rr udp_rr tcp_crr; do
    read -ra u <<<"${result[usernet,${t}_all]:-}"
    read -ra p <<<"${result[pasta,${t}_all]:-}"
    printf '  %-8s' "$t"
    for i in "${!u[@]}"; do
        printf ' %s/%s (%s)' "${u[$i]}" "${p[$i]:-?}" "$(ratio "${u[$i]}" "${p[$i]:-failed}")"
    done
    echo
done
echo
echo "memory of the tool's own processes, PSS MiB (lower is better)"
printf '%-40s %17s %17s %17s %9s %9s\n' "when" "slirp4netns" "pasta" "usernet" "vs s4nns" "vs pasta"
for m in idle conns load after; do
    case $m in
        idle) label="network up, idle" ;;
        conns) label="1000 TCP connections open" ;;
        load) label="4 iperf3 streams" ;;
        after) label="after, everything closed" ;;
    esac
    printf '%-40s' "$label"
    for tool in "${tools[@]}"; do
        printf ' %17s' "$(cell "$tool" "mem_$m")"
    done
    printf ' %9s %9s\n' "$(ratio "$(cell usernet "mem_$m")" "$(cell slirp4netns "mem_$m")")" \
        "$(ratio "$(cell usernet "mem_$m")" "$(cell pasta "mem_$m")")"
done
