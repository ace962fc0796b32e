"""The official OpenAI Python SDK, talking to keygate.

Run (with keygate serving and a client key from `keygate client add my-app`):
    pip install openai
    KEYGATE_CLIENT_KEY=kg_... python3 examples/openai_sdk.py [http://127.0.0.1:8080/v1]

You will see a chat completion, a streamed chat completion (printed as it
arrives), a Responses API answer, the model list and an embedding's length, all through keygate: the
SDK only ever holds the kg_ client key; keygate injects the upstream key.
Exits non-zero on any failure.
"""

import os
import sys

from openai import OpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
client = OpenAI(base_url=base_url, api_key=os.environ["KEYGATE_CLIENT_KEY"], max_retries=0, timeout=20)

chat = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
)
print("chat:", chat.choices[0].message.content, "| usage:", chat.usage.total_tokens)

print("stream: ", end="")
chunks = 0
for chunk in client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}], stream=True
):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
        chunks += 1
    elif chunk.usage is not None:
        raise SystemExit("got a usage-only chunk that this client did not ask for")
print(f" ({chunks} chunks)")

response = client.responses.create(model="gpt-4o-mini", input="Say hello")
print("responses:", response.output_text, "| usage:", response.usage.total_tokens)

models = client.models.list()
print("models:", [m.id for m in models.data])

embedding = client.embeddings.create(model="text-embedding-3-small", input="hello")
print("embedding length:", len(embedding.data[0].embedding))
