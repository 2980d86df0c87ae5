// A failed turn is an `agent/complete` RESULT (status "error" + error {type, message,
// retryable}), not a JSON-RPC error; JSON-RPC errors of agent/complete are for the request
// itself. And the ErrorCodes table generated from the schema keeps its names.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createServer } from "node:net";
import { test } from "node:test";
import { ErrorCodes, KodeRpcError } from "../dist/index.js";
import { collect, isDone, LONG, startClient } from "./helpers.mjs";

/** A local port nothing listens on (bound, then closed). */
async function closedPort() {
  const srv = createServer();
  await new Promise((res) => srv.listen(0, "127.0.0.1", res));
  const { port } = srv.address();
  await new Promise((res) => srv.close(res));
  return port;
}

/** The server's environment without the variable the agent's model names. */
function envWithout(name, extra = {}) {
  const env = { ...process.env, ...extra };
  delete env[name];
  return env;
}

test("a provider failure (no API key) resolves complete() with status error / authentication", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t, { env: envWithout("KODE_TEST_UNSET_KEY") });
  const ev = collect(client, "nokey");
  await client.createAgent({
    agentId: "nokey",
    model: { provider: "openai", model: "gpt-test", apiKeyEnv: "KODE_TEST_UNSET_KEY" },
  });
  const r = await client.complete({ agentId: "nokey", text: "hi" });
  assert.equal(r.status, "error");
  if (r.status !== "error") return; // narrows r.error to TurnError for the checks below
  assert.equal(r.error.type, "authentication");
  assert.equal(r.error.retryable, false);
  assert.match(r.error.message, /KODE_TEST_UNSET_KEY/);
  assert.deepEqual(r.permissionIds, []);
  assert.equal(typeof r.text, "string");
  // The result comes after the turn's events: done {reason: "error"} and the error event.
  const done = await ev.waitFor(isDone());
  assert.equal(done.event.reason, "error");
  assert.equal(done.turnId, r.turnId);
  assert.equal(r.lastSeq, done.seq);
  const err = ev.events.find((e) => e.event.type === "error" && e.turnId === r.turnId);
  assert.ok(err, "an error event precedes done");
  assert.equal(err.event.severity, "error");
  assert.equal(err.event.phase, "model");
  // The agent is not broken: another turn fails the same way, as a result again.
  const again = await client.complete({ agentId: "nokey", text: "again" });
  assert.equal(again.status, "error");
  assert.equal(again.error?.type, "authentication");
  assert.notEqual(again.turnId, r.turnId);
});

test("a connection failure (nothing listening, no retries) is status error / connection", { timeout: LONG }, async (t) => {
  const port = await closedPort();
  const { client } = await startClient(t, { env: { ...process.env, KODE_TEST_SET_KEY: "sk-test-not-a-key" } });
  await client.createAgent({
    agentId: "down",
    model: {
      provider: "openai",
      model: "gpt-test",
      baseUrl: `http://127.0.0.1:${port}/v1`,
      apiKeyEnv: "KODE_TEST_SET_KEY",
      retry: { maxRetries: 0 },
    },
  });
  const r = await client.complete({ agentId: "down", text: "hi" });
  assert.equal(r.status, "error");
  assert.equal(r.error?.type, "connection");
  assert.equal(typeof r.error?.retryable, "boolean");
  assert.ok(!r.error?.message.includes("sk-test-not-a-key"), "the key is never echoed");
});

test("a turn that succeeds has no error; request errors still reject", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  await client.createAgent({ agentId: "fine", model: { provider: "echo" } });
  const ok = await client.complete({ agentId: "fine", text: "hello" });
  assert.equal(ok.status, "ok");
  assert.equal(ok.error ?? null, null);
  // Only the request itself fails with a JSON-RPC error: unknown agent, bad params.
  await assert.rejects(client.complete({ agentId: "ghost", text: "x" }), (e) => {
    assert.ok(e instanceof KodeRpcError);
    assert.equal(e.code, ErrorCodes.NotFound);
    assert.equal(e.method, "agent/complete");
    return true;
  });
  await assert.rejects(
    client.complete({ agentId: "fine" }),
    (e) => e instanceof KodeRpcError && e.code === ErrorCodes.InvalidParams,
  );
});

test("ErrorCodes: generated from the schema, same names and numbers as before", () => {
  assert.deepEqual(
    { ...ErrorCodes },
    {
      ParseError: -32700,
      InvalidRequest: -32600,
      MethodNotFound: -32601,
      InvalidParams: -32602,
      InternalError: -32603,
      RequestCancelled: -32800,
      Unavailable: -32001,
      NotFound: -32002,
      NotInitialized: -32003,
      ApprovalNotPending: -32011,
      AgentLocked: -32012,
      TooLarge: -32013,
      UnsupportedProtocol: -32014,
      ProviderError: -32020,
    },
  );
});

test("ErrorCodes matches the running server's schema", (t) => {
  // As scripts/gen-types.mjs: python, then python3 (or the KODE_RPC_SERVER binary).
  const cmds = process.env.KODE_RPC_SERVER
    ? [[process.env.KODE_RPC_SERVER, ["schema"]]]
    : [["python", ["-m", "kode_rpc", "schema"]], ["python3", ["-m", "kode_rpc", "schema"]]];
  let r;
  for (const [exe, args] of cmds) {
    r = spawnSync(exe, args, { encoding: "utf8", maxBuffer: 64 << 20, windowsHide: true });
    if (!r.error && r.status === 0) break;
  }
  if (r.error || r.status !== 0) {
    t.skip("no `kode-rpc schema` to compare with");
    return;
  }
  const errors = JSON.parse(r.stdout).errors;
  assert.deepEqual(Object.fromEntries(errors.map((e) => [e.name, e.code])), { ...ErrorCodes });
});
