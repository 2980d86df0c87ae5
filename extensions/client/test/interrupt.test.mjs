import assert from "node:assert/strict";
import { test } from "node:test";
import { collect, isDone, LONG, startClient, tempDir } from "./helpers.mjs";

test("interrupt during bash_run sleep 30 ends the turn with done interrupted", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t, process.env.KODE_TEST_DEBUG ? { serverArgs: ["--log-level", "debug"] } : {});
  const ev = collect(client, "sleeper");
  await client.createAgent({
    agentId: "sleeper",
    model: {
      provider: "scripted",
      script: [{ toolCalls: [{ name: "bash_run", input: { cmd: "echo started; sleep 30" } }] }, { text: "never" }],
    },
    permission: { mode: "auto" },
    sandbox: { workDir: tempDir() },
  });
  const started = Date.now();
  const completed = client.complete({ agentId: "sleeper", text: "sleep" });
  const toolStart = await ev.waitFor((e) => e.event.type === "tool:start");
  assert.equal(toolStart.event.call.name, "bash_run");
  // Interrupt once the command really runs: an interrupt that lands while the server is
  // still spawning the shell is not applied until the command ends (a server race).
  await ev.waitFor((e) => e.event.type === "tool:output" && e.event.delta.includes("started"));
  const r = await client.interrupt({ agentId: "sleeper", note: "stop" });
  assert.equal(r.interrupted, true);
  const done = await ev.waitFor(isDone());
  assert.equal(done.event.reason, "interrupted");
  const result = await completed;
  assert.equal(result.status, "interrupted");
  assert.ok(Date.now() - started < 25_000, "interrupt did not wait for sleep 30");
  const end = ev.events.find((e) => e.event.type === "tool:end");
  assert.equal(end.event.call.state, "FAILED");
  assert.equal(ev.events.filter(isDone()).length, 1);
});
