"""LangChain's ChatOpenAI, talking to keygate.

Run (with keygate serving and a client key from `keygate client add my-app`):
    pip install langchain-openai
    KEYGATE_CLIENT_KEY=kg_... python3 examples/langchain_chat.py [http://127.0.0.1:8080/v1]

Prints one answer and one streamed answer; LangChain only ever holds the kg_
client key. Exits non-zero on any failure.
"""

import os
import sys

from langchain_openai import ChatOpenAI

base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
llm = ChatOpenAI(
    model="gpt-4o-mini",
    base_url=base_url,
    api_key=os.environ["KEYGATE_CLIENT_KEY"],
    max_retries=0,
    timeout=20,
)
print("langchain:", llm.invoke("Say hello").content)
print("langchain stream:", "".join(chunk.content for chunk in llm.stream("Say hello")))
