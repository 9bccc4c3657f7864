#!/usr/bin/env bash
# Instructions and L1 data-cache misses per member pick, 3 vs 1,000 members, per selection mode,
# under cachegrind (deterministic: no timing noise). Each case runs 10 and 20 batches of 100,000
# picks; the difference divided by 1,000,000 is the cost of one pick, without the pool's setup.
# Needs valgrind (scripts/ensure-deps.sh does not install it: this is a diagnosis, not a test).
# SELECT_ALIGNED=1 in the environment measures line-aligned members, the floor (benches/select.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
exe=$(cargo bench --bench select --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "select" and m.get("executable"):
        print(m["executable"])')
count() { # mode members down-every batches -> "instructions d1misses"
  SELECT_ONE="$1:$2:$3:$4" valgrind --tool=cachegrind --cache-sim=yes --cachegrind-out-file=/dev/null \
    "$exe" 2>&1 | awk '/I +refs/ {gsub(",", "", $4); i = $4} /D1 +misses/ {gsub(",", "", $4); d = $4} END {print i, d}'
}
printf '%-18s %-6s %8s %14s %18s\n' mode down members "instr/pick" "L1d misses/pick"
modes=(RoundRobin LeastConnections RandomTwo)
for m in 0 1 2; do
  for down in 0 3; do
    for n in 3 1000; do
      read -r i10 d10 < <(count "$m" "$n" "$down" 10)
      read -r i20 d20 < <(count "$m" "$n" "$down" 20)
      label=$([ "$down" = 0 ] && echo 0% || echo 33%)
      python3 -c "print('%-18s %-6s %8d %14.1f %18.2f' % ('${modes[$m]}', '$label', $n, ($i20 - $i10) / 1e6, max(0.0, ($d20 - $d10) / 1e6)))"
    done
  done
done
