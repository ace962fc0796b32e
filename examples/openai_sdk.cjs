// The official OpenAI Node SDK, talking to keygate.
//
// Run (with keygate serving and a client key from `keygate client add my-app`):
//   npm install openai
//   KEYGATE_CLIENT_KEY=kg_... node examples/openai_sdk.cjs [http://127.0.0.1:8080/v1]
//
// Prints a chat completion, a streamed one (as it arrives), the model list and
// one model, all through keygate: the SDK only ever holds the kg_ client key.
// Exits non-zero on any failure.
const OpenAI = require("openai");

async function main() {
  const baseURL = process.argv[2] || "http://127.0.0.1:8080/v1";
  const client = new OpenAI({ baseURL, apiKey: process.env.KEYGATE_CLIENT_KEY, maxRetries: 0, timeout: 20000 });
  const chat = await client.chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Say hello" }],
  });
  console.log(`chat: ${chat.choices[0].message.content} | usage: ${chat.usage.total_tokens}`);
  const stream = await client.chat.completions.create({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Say hello" }],
    stream: true,
  });
  let text = "";
  let chunks = 0;
  for await (const chunk of stream) {
    if (chunk.choices.length > 0) {
      text += chunk.choices[0].delta.content || "";
      chunks += 1;
    } else if (chunk.usage) {
      throw new Error("got a usage-only chunk that this client did not ask for");
    }
  }
  console.log(`stream: ${text} (${chunks} chunks)`);
  const models = await client.models.list();
  console.log(`models: ${models.data.map((m) => m.id).join(",")}`);
  const model = await client.models.retrieve("gpt-4o-mini");
  console.log(`model: ${model.id}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
