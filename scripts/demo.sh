#!/usr/bin/env bash
# The main job: Ebb's function platform on the embedded memnode. Starts a runtime, builds and
# uploads the C/C++ demo functions, invokes them (sync, async, chained, state), offloads
# demo/bigtable's memory and calls it again, and prints the page counters from /metrics.
# Then the lower-level view: `runtime run` of a C program whose memory leaves and comes back.
# Run as root on Debian: installs what it needs, builds, runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-functions.sh
cargo build --workspace --bins
bin=target/debug
R="$bin/runtime"

data=$(mktemp -d)
log="$data/runtime.log"
"$R" serve --listen 127.0.0.1:0 --data-dir "$data/store" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 200); do grep -q "listening on" "$log" && break; sleep 0.05; done
addr=$(sed -n 's/^runtime listening on \([^ ]*\).*/\1/p' "$log")
[ -n "$addr" ] || { echo "runtime did not start:"; cat "$log"; exit 1; } >&2
export EBB_SERVER="http://$addr"
step() { echo; echo "== $*"; }

step "runtime serving on $EBB_SERVER (embedded memnode); uploading the demo functions"
for f in hello echo chain state bigtable reverse; do "$R" upload demo "$f" "functions/build/demo/$f.wasm"; done

step "sync calls"
"$R" invoke demo hello
"$R" invoke demo echo --input "echo this"
"$R" invoke demo reverse --input "stressed"
step "chained: one call by function pointer, one by name, both awaited"
"$R" invoke demo chain
step "state: a counter under the state's write lock"
"$R" invoke demo state
"$R" invoke demo state
step "async: the call id, then its status"
id=$("$R" invoke demo echo --input "later" --async)
echo "call id $id"
for _ in $(seq 100); do s=$("$R" status "$id"); [ "$s" != RUNNING ] && break; sleep 0.05; done
echo "$s"

step "demo/bigtable: a zygote built a 64 MiB table; each call checksums it"
"$R" invoke demo bigtable
"$R" invoke demo bigtable --input scribble
echo "(that call overwrote the whole table; the next one still starts from the initial state)"
"$R" invoke demo bigtable
step "offloading demo/bigtable's memory to the memnode"
echo "bytes that left this host: $("$R" offload demo bigtable)"
"$R" invoke demo bigtable
echo "(same checksum: the table faulted back from the memnode)"

step "page counters from /metrics"
"$R" metrics | grep -E '^ebb_(faults_total|pages_fetched_total|pager_pages_dropped_clean_total|resident_bytes|remote_bytes|memnode_up|instances_created_total|function_resident_bytes|instances)'

step "runtime run: a C program's memory offloaded between runs and faulted back (embedded memnode)"
"$R" run functions/build/examples/table.wasm --repeat 3 --offload-every-call --stats

step "runtime run against a separately started memnode process over TCP loopback"
mlog="$data/memnode.log"
"$bin/memnode" --listen 127.0.0.1:0 --capacity 1G >"$mlog" 2>/dev/null &
mpid=$!
trap 'kill $pid $mpid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 200); do grep -q "listening on" "$mlog" && break; sleep 0.05; done
maddr=$(sed -n 's/^memnode listening on \([^ ]*\).*/\1/p' "$mlog")
[ -n "$maddr" ] || { echo "memnode did not start" >&2; exit 1; }
echo "memnode at $maddr"
"$R" run functions/build/examples/table.wasm --memnode "$maddr" --repeat 3 --offload-every-call --stats

step "near-data offloading: a storage node and a compute node sharing that memnode"
slog="$data/storage.log"; clog="$data/compute.log"
"$R" serve --listen 127.0.0.1:0 --data-dir "$data/storage" --storage --memnode "$maddr" >"$slog" 2>&1 &
spid=$!
trap 'kill $pid $mpid $spid ${cpid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 200); do grep -q "listening on" "$slog" && break; sleep 0.05; done
saddr=$(sed -n 's/^runtime listening on \([^ ]*\).*/\1/p' "$slog")
[ -n "$saddr" ] || { echo "storage runtime did not start:"; cat "$slog"; exit 1; } >&2
"$R" serve --listen 127.0.0.1:0 --data-dir "$data/compute" --memnode "$maddr" --storage-nodes "http://$saddr" >"$clog" 2>&1 &
cpid=$!
for _ in $(seq 200); do grep -q "listening on" "$clog" && break; sleep 0.05; done
caddr=$(sed -n 's/^runtime listening on \([^ ]*\).*/\1/p' "$clog")
[ -n "$caddr" ] || { echo "compute runtime did not start:"; cat "$clog"; exit 1; } >&2
export EBB_SERVER="http://$caddr"
echo "storage node http://$saddr, compute node $EBB_SERVER"
for f in wordcount grep sha256sum; do "$R" upload demo "$f" "functions/build/ndp/$f.wasm"; done
for i in $(seq 20000); do echo "line $i: near data $([ $((i % 1000)) = 0 ] && echo needle) far code"; done >"$data/log.txt"
"$R" put-object demo log.txt "$data/log.txt"
echo "wordcount, offloaded to the storage node (its memory follows by pages through the memnode):"
"$R" invoke demo wordcount --input log.txt | sort -k2 -n -r | sed -n 1,4p
echo "the same with forbid_ndp (run here, the object fetched):"
"$R" invoke demo wordcount --input log.txt --forbid-ndp | sort -k2 -n -r | sed -n 1,4p
"$R" invoke demo grep --input "log.txt needle" | sed -n 1,3p
echo "sha256sum offloaded: $("$R" invoke demo sha256sum --input log.txt)   local: $(sha256sum "$data/log.txt" | cut -d' ' -f1)"
"$R" metrics | grep -E '^ebb_ndp_(offloads_total|link_bytes_total|pages_returned_total)'
