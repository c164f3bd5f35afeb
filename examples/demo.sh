#!/usr/bin/env bash
# GRASP-01/02 by hand, all on 127.0.0.1, with no git server but the relays themselves:
#   - three reference relays A (:7801), B (:7802), C (:7803); B and C use A as
#     bootstrap relay, so they discover the announcement there;
#   - the maintainer's repository is put into A's git directory (as a push to A would),
#     and the announcement lists the three relays' own smart-HTTP URLs as clone URLs;
#   - the demo client publishes an announcement + state, issue, comment, PR to A,
#     waits until B has them all — B fetched the git data from A over HTTP — then
#     publishes an issue to C and waits until it reaches A and B live;
#   - finally `git clone` from B.
# Then it stops B with SIGINT (what Ctrl-C sends: sync state and purgatory are written)
# and starts it again on the same data dir. (Catching up what B missed while down is
# asserted by the e2e test `restarted_relay_catches_up_what_it_missed`.)
#
# Usage: examples/demo.sh            (builds in release mode; Ctrl-C to stop early)
#        KEEP=1 examples/demo.sh     (leave the relays running at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p grasp-reference-relay
BIN=target/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/grasp-demo.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "logs and data kept in $WORK"
}
trap cleanup EXIT

g() { git -c user.name=demo -c user.email=demo@example.invalid -c init.defaultBranch=main "$@"; }
echo "== the maintainer's repository, put into A's git directory"
mkdir -p "$WORK/src"
( cd "$WORK/src" && g init -q && echo one > f && g add . && g commit -qm one \
  && echo two > f && g commit -qam two )
MAIN=$(git -C "$WORK/src" rev-parse HEAD)
( cd "$WORK/src" && g checkout -qb pr-1 && echo pr > p && g add . && g commit -qm pr )
PR=$(git -C "$WORK/src" rev-parse HEAD)
export GRASP_DEMO_KEY=0000000000000000000000000000000000000000000000000000000000000001
NPUB=$("$BIN/grasp-demo-client" npub "$GRASP_DEMO_KEY")
mkdir -p "$WORK/a/git/$NPUB"
g clone -q --bare "$WORK/src" "$WORK/a/git/$NPUB/demo.git"
CLONE="http://127.0.0.1:7801/$NPUB/demo.git http://127.0.0.1:7802/$NPUB/demo.git http://127.0.0.1:7803/$NPUB/demo.git"

relay() { # name port extra-args...
  local name=$1 port=$2; shift 2
  "$BIN/grasp-reference-relay" --bind "127.0.0.1:$port" --data-dir "$WORK/$name" \
    --allow-private-urls --fast-timers --user-hunt-delay-secs 1 --status-log-secs 3 "$@" \
    >>"$WORK/$name.log" 2>&1 &
  echo $!
}
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open"; exit 1; }

echo "== relays A, B, C"
A_PID=$(relay a 7801); PIDS+=("$A_PID"); wait_port 7801
B_PID=$(relay b 7802 --bootstrap-relay ws://127.0.0.1:7801); PIDS+=("$B_PID")
C_PID=$(relay c 7803 --bootstrap-relay ws://127.0.0.1:7801); PIDS+=("$C_PID")
wait_port 7802; wait_port 7803
curl -s -H 'Accept: application/nostr+json' http://127.0.0.1:7801/ | head -c 400; echo

echo "== publish and watch"
"$BIN/grasp-demo-client" ws://127.0.0.1:7801 ws://127.0.0.1:7802 ws://127.0.0.1:7803 "$CLONE" "$MAIN" "$PR"
echo "B's bare repo:"; ls -d "$WORK"/b/git/*/*.git
echo "== git clone from B (smart HTTP, the relay's own port)"
g clone -q "http://127.0.0.1:7802/$NPUB/demo.git" "$WORK/clone-from-b"
git -C "$WORK/clone-from-b" log --oneline -1
echo "the PR's tip, served at refs/nostr/<PR event id>:"
git ls-remote "http://127.0.0.1:7802/$NPUB/demo.git" 'refs/nostr/*' | grep "$PR"
echo "a push is refused:"; ( cd "$WORK/clone-from-b" && g push "http://127.0.0.1:7802/$NPUB/demo.git" HEAD:refs/heads/x 2>&1 | grep -m1 remote: ) || true
echo "B's status (excerpt):"; curl -s http://127.0.0.1:7802/status | head -c 800; echo

echo "== restart B: Ctrl-C (SIGINT), then start it again on the same data dir"
kill -INT "$B_PID"
for _ in $(seq 100); do kill -0 "$B_PID" 2>/dev/null || break; sleep 0.1; done
ls "$WORK/b"
B_PID=$(relay b 7802 --bootstrap-relay ws://127.0.0.1:7801); PIDS+=("$B_PID"); wait_port 7802
echo "B is back; see $WORK/b.log for its 'sync status' lines. Metrics: curl http://127.0.0.1:7802/metrics"

if [ "${KEEP:-0}" = 1 ]; then
  echo "relays running (A :7801, B :7802, C :7803); Ctrl-C to stop"
  wait
fi
