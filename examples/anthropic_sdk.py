"""The official Anthropic Python SDK, talking to keygate.

Run (with keygate serving a provider `anthropic` — base_url
https://api.anthropic.com, auth = "x-api-key", prefix /anthropic — and a client
key from `keygate client add my-app`):
    pip install anthropic
    KEYGATE_CLIENT_KEY=kg_... python3 examples/anthropic_sdk.py [http://127.0.0.1:8080/anthropic]

You will see a message and a streamed message (printed as it arrives), each
with the input and output tokens Anthropic reported, all through keygate: the
SDK only ever holds the kg_ client key (sent as x-api-key); keygate injects
the upstream key. Exits non-zero on any failure.
"""

import os
import sys

import anthropic

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/anthropic"
model = os.environ.get("ANTHROPIC_MODEL", "claude-sonnet-4-5")
client = anthropic.Anthropic(
    base_url=base_url, api_key=os.environ["KEYGATE_CLIENT_KEY"], max_retries=0, timeout=20
)
ask = [{"role": "user", "content": "Say hello"}]

message = client.messages.create(model=model, max_tokens=256, messages=ask)
print(
    "message:", message.content[0].text,
    "| usage:", message.usage.input_tokens, message.usage.output_tokens,
)

print("stream: ", end="")
pieces = 0
with client.messages.stream(model=model, max_tokens=256, messages=ask) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
        pieces += 1
    final = stream.get_final_message()
print(f" ({pieces} pieces) | usage: {final.usage.input_tokens} {final.usage.output_tokens}")
