#!/bin/sh
# curl through keygate: a chat completion and a streamed one.
# Run (with keygate serving and a client key from `keygate client add my-app`):
#   KEYGATE_CLIENT_KEY=kg_... sh examples/curl.sh [http://127.0.0.1:8080/v1]
set -eu
BASE="${1:-http://127.0.0.1:8080/v1}"
curl -sS --fail-with-body "$BASE/chat/completions" \
  -H "Authorization: Bearer $KEYGATE_CLIENT_KEY" -H "Content-Type: application/json" \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
echo
curl -sS -N --fail-with-body "$BASE/chat/completions" \
  -H "Authorization: Bearer $KEYGATE_CLIENT_KEY" -H "Content-Type: application/json" \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"stream":true}'
