#!/usr/bin/env bash
# benches/shared_harness.sh [ROUNDS] — keygate with everything on beside nginx
# and HAProxy in the shared harness (../shared/bench), in one run, interleaved
# rounds (docs/performance.md "Round of 2026-12-06").
#
# keygate runs the workspace this script prepares in $BUILD_DIR/keygate-all:
# the client has rpm, tpm and a dollar budget (admission reserves and settles
# tokens and micro-dollars, priced by the built-in table), `[[notify]]` is
# configured, per-key usage is counted and every answer's rate-limit headers
# are read (the shared mock sends none, so the read finds nothing). Its key is
# the CLIENT_KEY of every target of the run.
#
# HARNESS_PLAIN=1 adds keygate as `proxies/keygate.sh` sets it up (no
# limits, no notify) under its own client key, to price "everything on";
# HARNESS_TARGETS (default "direct nginx") and HARNESS_TESTS (default all)
# narrow a run.
#
# Needs: `../shared/bench/build.sh core`, `apt-get install haproxy`, and a
# release build (KEYGATE_BIN, default target/release/keygate).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bench="${SHARED_BENCH:-$here/../shared/bench}"
rounds="${1:-2}"
source "$bench/lib/common.sh"
KEYGATE_BIN="${KEYGATE_BIN:-$here/target/release/keygate}"
ws="$BUILD_DIR/keygate-all"
listen=127.0.0.1:18090

rm -rf "$ws"; mkdir -p "$ws"; chmod 700 "$ws"
cat > "$ws/keygate.toml" <<CONF
[server]
listen = "$listen"
admin_listen = "127.0.0.1:18091"

[vault]
path = "$ws/keygate.vault"
master_key_file = "$ws/master.key"

[metering]
db = "$ws/usage.sqlite"

[routing]
default = "openai"

[providers.openai]
base_url = "$MOCK_URL"
auth = "bearer"
prefix = "/openai"
pool = "headroom"

[events]
give_up_after = "1h"

[[notify]]
name = "bench"
url = "http://127.0.0.1:9/keygate-events"
format = "json"
CONF
kg() { "$KEYGATE_BIN" --config "$ws/keygate.toml" "$@"; }
kg vault init >/dev/null
printf '%s\n' "$UPSTREAM_KEY" | kg key add openai --label bench >/dev/null
CLIENT_KEY="$(kg client add bench --rpm 100000000 --tpm 100000000000 --budget-usd 1000000 \
  | grep -o 'kg_[A-Za-z0-9]*' | head -n1)"
export CLIENT_KEY

cat > "$ws/serve.sh" <<SERVE
#!/usr/bin/env bash
RUST_LOG=warn exec "$KEYGATE_BIN" --config "$ws/keygate.toml" serve
SERVE
chmod 700 "$ws/serve.sh"

tests=()
[[ -n "${HARNESS_TESTS:-}" ]] && tests=(--tests "$HARNESS_TESTS")
targets=(--target "haproxy|http://127.0.0.1:18082|$bench/proxies/haproxy.sh 127.0.0.1:18082|${tests[*]}")
if [[ -n "${HARNESS_PLAIN:-}" ]]; then
  plain_key="$(KEYGATE_BIN="$KEYGATE_BIN" "$bench/proxies/keygate.sh" prepare)"
  targets+=(--target "keygate|http://127.0.0.1:18090|env KEYGATE_BIN=$KEYGATE_BIN $bench/proxies/keygate.sh serve $listen|--key $plain_key ${tests[*]}")
fi
targets+=(--target "keygate-all|http://127.0.0.1:18090|$ws/serve.sh|${tests[*]}")
cd "$bench"
./compare.sh --rounds "$rounds" --targets "${HARNESS_TARGETS:-direct nginx}" "${targets[@]}"
