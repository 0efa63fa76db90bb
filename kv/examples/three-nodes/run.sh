#!/usr/bin/env bash
# Three walship-kv nodes on loopback, n1 leading: Redis clients connect to
# 127.0.0.1:6379 (n1), :6380 (n2), :6381 (n3). Ctrl-C stops them cleanly.
# Certificates (cluster CA, the nodes, an operator "admin" for `walship promote`) are
# made on the first run, in certs/; the nodes' data goes to data/.
set -euo pipefail
cd "$(dirname "$0")"
bin=${WALSHIP_BIN:-../../../target/release}
for b in walship walship-kv; do
    [ -x "$bin/$b" ] || { echo "build first: cargo build --release -p walship-tools -p walship-kv" >&2; exit 1; }
done
[ -f certs/ca.pem ] || "$bin/walship" certs --out certs --cluster kv-demo --nodes n1,n2,n3 --operators admin
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
    "$bin/walship-kv" serve --config "n$i.toml" &
    pids+=($!)
done
wait
