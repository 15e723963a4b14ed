// The official openai Node SDK as a real client of `sluice serve`.
//
// Run by crates/sluice/tests/sdk.rs, which starts the mock upstream and
// sluice and passes their addresses and keys in the environment. Each test
// prints what it checked; any failure exits non-zero.
//
// The Node SDK honours `retry-after-ms` / `retry-after` however long they
// are (the Python SDK caps them at 60 s): a day limit without
// `x-should-retry: false` would make it sleep for hours. The day-limit test
// checks that it gives up at once.
import assert from "node:assert/strict";
import OpenAI from "openai";

const BASE = `${process.env.SLUICE_URL}/v1`;
// An SDK told to wait for hours must not hold the test suite for hours.
setTimeout(() => {
  console.error("the SDK tests did not finish in 60 s (did the SDK sleep on a retry-after?)");
  process.exit(2);
}, 60_000).unref();
const MESSAGES = [{ role: "user", content: "Say something." }];

// A client that records every HTTP request it sends (retries included).
function client(key, sent) {
  return new OpenAI({
    baseURL: BASE,
    apiKey: key,
    maxRetries: 2,
    fetch: (url, init) => {
      sent.push(String(url));
      return fetch(url, init);
    },
  });
}

async function dayLimitRaisesRateLimitErrorWithoutRetrying() {
  const sent = [];
  const c = client(process.env.SLUICE_DAY_KEY, sent);
  await c.chat.completions.create({ model: "day-model", messages: MESSAGES, max_tokens: 5 });
  const started = performance.now();
  await assert.rejects(
    c.chat.completions.create({ model: "day-model", messages: MESSAGES, max_tokens: 5 }),
    (e) => {
      assert.ok(e instanceof OpenAI.RateLimitError, `not a RateLimitError: ${e}`);
      assert.equal(e.status, 429);
      assert.equal(e.code, "rate_limit_exceeded");
      assert.equal(e.type, "requests");
      assert.match(e.message, /on requests per day \(RPD\): Limit 1, Used 1, Requested 1\./);
      assert.equal(e.headers.get("x-should-retry"), "false");
      assert.ok(e.headers.get("x-request-id").startsWith("req_"));
      return true;
    },
  );
  const elapsed = (performance.now() - started) / 1000;
  assert.equal(sent.length, 2, `the SDK retried a day limit: ${sent.length} requests`);
  assert.ok(elapsed < 1.0, `the SDK waited ${elapsed.toFixed(2)}s before giving up`);
  console.log(`day limit: RateLimitError after ${sent.length} requests, no retry`);
}

async function shortWindowRetriesAfterRetryAfterMsAndSucceeds() {
  const sent = [];
  const c = client(process.env.SLUICE_SHORT_KEY, sent);
  await c.chat.completions.create({ model: "short-model", messages: MESSAGES, max_tokens: 5 });
  const started = performance.now();
  const r = await c.chat.completions.create({
    model: "short-model",
    messages: MESSAGES,
    max_tokens: 5,
  });
  const elapsed = (performance.now() - started) / 1000;
  assert.ok(r.choices[0].message.content.startsWith("tok"), JSON.stringify(r));
  assert.equal(sent.length, 3, `expected one 429 and one retry, saw ${sent.length} requests`);
  // One request per second: the SDK waited what retry-after-ms said.
  assert.ok(elapsed >= 0.5 && elapsed < 5.0, `retried after ${elapsed.toFixed(2)}s`);
  console.log(`short window: retried once after ${elapsed.toFixed(2)}s and succeeded`);
}

async function streamWorksUnchangedAndIsCounted() {
  const c = new OpenAI({ baseURL: BASE, apiKey: process.env.SLUICE_STREAM_KEY });
  let text = "";
  let usage = null;
  const stream = await c.chat.completions.create({
    model: "stream-model",
    messages: MESSAGES,
    max_tokens: 9,
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, "tok ".repeat(9));
  assert.equal(usage?.completion_tokens, 9, JSON.stringify(usage));

  // Without include_usage the SDK sees no usage chunk at all.
  const chunks = [];
  const plain = await c.chat.completions.create({
    model: "stream-model",
    messages: MESSAGES,
    max_tokens: 4,
    stream: true,
  });
  for await (const chunk of plain) chunks.push(chunk);
  assert.ok(chunks.every((ch) => !ch.usage), "a usage chunk leaked");
  assert.ok(chunks.every((ch) => ch.choices.length > 0), "a chunk without choices leaked");

  // Counted: 9 + 4 output tokens settled; this request reserves 1 more.
  const { response } = await c.chat.completions
    .create({ model: "stream-model", messages: MESSAGES, max_tokens: 1 })
    .withResponse();
  const remaining = Number(response.headers.get("x-ratelimit-remaining-output-tokens-day"));
  assert.equal(remaining, 1_000_000 - 9 - 4 - 1);
  console.log(`stream: ${text.trim().split(" ").length} tokens received, counted exactly (remaining ${remaining})`);
}

const tests = [
  dayLimitRaisesRateLimitErrorWithoutRetrying,
  shortWindowRetriesAfterRetryAfterMsAndSucceeds,
  streamWorksUnchangedAndIsCounted,
];
console.log(`openai ${OpenAI.VERSION ?? "?"} (node ${process.version}) against ${BASE}`);
for (const t of tests) await t();
console.log(`${tests.length} SDK tests passed`);
