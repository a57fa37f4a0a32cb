// Stream speech from the `/run` door and write the audio to a file as it arrives (fetch, Node 18+).
//
//   node examples/stream_client.mjs --url http://localhost:8000 --text "Hello there." --out hello.wav
//   node examples/stream_client.mjs --url https://ENDPOINT_ID.api.runpod.ai --text "Hi." --out hi.wav
//
// Works unchanged against the self-hosted server and a RunPod load-balancing endpoint. The key comes
// from --key, else FISH_API_KEY, else RUNPOD_API_KEY. The response is NDJSON: one JSON object per
// line; streamChunks() is plain fetch + ReadableStream, so it runs in browsers too.
import { openSync, writeSync, closeSync } from "node:fs";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";

// Yield each chunk's `output` as its line arrives; lines may be split across network reads.
export async function* streamChunks(url, jobInput, key) {
  const response = await fetch(url.replace(/\/+$/, "") + "/run", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({ input: { ...jobInput, stream: true } }),
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${(await response.text()).slice(0, 500)}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffered += value;
    const lines = buffered.split("\n");
    buffered = done ? "" : lines.pop(); // keep the unfinished line for the next read
    for (const line of lines) {
      if (!line.trim()) continue;
      const event = JSON.parse(line);
      if (event.status !== "success") throw new Error(`job ${event.id} failed: ${event.error}`);
      yield event.output;
    }
    if (done) return;
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      url: { type: "string", default: "http://localhost:8000" },
      text: { type: "string" },
      out: { type: "string" },
      format: { type: "string", default: "wav" },
      key: { type: "string", default: process.env.FISH_API_KEY || process.env.RUNPOD_API_KEY },
      "max-tokens": { type: "string" },
    },
  });
  if (!values.text || !values.out) throw new Error("--text and --out are required");
  const jobInput = { message: values.text, audio_format: values.format };
  if (values["max-tokens"]) jobInput.max_tokens = Number(values["max-tokens"]);
  const fd = openSync(values.out, "w");
  const texts = [];
  let chunks = 0, bytes = 0;
  try {
    for await (const chunk of streamChunks(values.url, jobInput, values.key)) {
      const data = Buffer.from(chunk.audio, "base64");
      writeSync(fd, data); // playable as it grows
      chunks += 1;
      bytes += data.length;
      if (chunk.text) texts.push(chunk.text);
    }
  } finally {
    closeSync(fd);
  }
  console.log(JSON.stringify({ text: texts.join(" "), chunks, bytes }));
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error) => {
    console.error(`error: ${error.message}`);
    process.exit(1);
  });
}
