import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import {
  ErrorCodes,
  KodeClient,
  KodeConnectionError,
  KodeRpcError,
  KodeServerNotFoundError,
  METHODS,
  PROTOCOL_VERSION,
  resolveServerCommand,
} from "../dist/index.js";
import { collect, isDone, LONG, startClient, tempDir } from "./helpers.mjs";

test("create + send (echo) streams text_chunk events and one done", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  assert.equal(client.state, "running");
  assert.equal(client.initializeResult.protocolVersion, PROTOCOL_VERSION);
  assert.equal(client.initializeResult.serverInfo.name, "kode-rpc");
  assert.ok(client.serverPid > 0);

  const ev = collect(client, "echo-1");
  const all = [];
  client.onEvent((e) => all.push(e));
  const progressOnly = collect(client, "echo-1", { channels: ["progress"] });

  const info = await client.createAgent({ agentId: "echo-1", model: { provider: "echo" } });
  assert.equal(info.agentId, "echo-1");
  const sent = await client.send({ agentId: "echo-1", text: "hello streaming world" });
  assert.equal(typeof sent.turnId, "string");
  assert.equal(sent.queued, false);
  const done = await ev.waitFor(isDone());
  assert.equal(done.event.reason, "completed");
  assert.equal(done.turnId, sent.turnId);

  const chunks = ev.events.filter((e) => e.event.type === "text_chunk");
  assert.ok(chunks.length >= 1);
  assert.equal(chunks.map((e) => e.event.delta).join(""), "hello streaming world");
  // seq 1.. with no gap, exactly one done, progress filter works, onEvent saw the same.
  assert.deepEqual(ev.events.map((e) => e.seq), ev.events.map((_, i) => i + 1));
  assert.equal(ev.events.filter(isDone()).length, 1);
  assert.ok(progressOnly.events.length > 0 && progressOnly.events.every((e) => e.channel === "progress"));
  assert.deepEqual(all.map((e) => e.seq), ev.events.map((e) => e.seq));
  assert.equal(client.lastSeq("echo-1"), done.seq);

  // complete() waits for the turn and returns its text.
  const r = await client.complete({ agentId: "echo-1", text: "second" });
  assert.equal(r.status, "ok");
  assert.equal(r.text, "second");
  assert.equal(r.lastSeq, client.lastSeq("echo-1"));
});

test("typed errors: -32002 unknown agent, -32602 invalid params", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  await assert.rejects(client.status({ agentId: "no-such-agent" }), (e) => {
    assert.ok(e instanceof KodeRpcError);
    assert.equal(e.code, -32002);
    assert.equal(e.code, ErrorCodes.NotFound);
    assert.equal(e.reason, "agent_not_found");
    assert.equal(e.method, "agent/status");
    return true;
  });
  await assert.rejects(client.createAgent({ agentId: "bad/id", model: { provider: "echo" } }), (e) => {
    assert.ok(e instanceof KodeRpcError);
    assert.equal(e.code, ErrorCodes.InvalidParams);
    assert.ok(Array.isArray(e.data.errors) && e.data.errors.some((x) => x.field.includes("agentId")));
    return true;
  });
  await assert.rejects(client.request("agent/send", { text: "no agent id" }), (e) => e.code === -32602);
  await client.createAgent({ agentId: "dup", model: { provider: "echo" } });
  await assert.rejects(client.createAgent({ agentId: "dup" }), (e) => e.code === -32602 && e.reason === "agent_exists");
  await assert.rejects(client.send({ agentId: "ghost", text: "x" }), (e) => e.code === -32002);
  assert.ok(!client.watchedAgents.includes("ghost"), "a -32002 unwatches the agent");
  await assert.rejects(
    client.decide({ agentId: "dup", approvalId: "kode-nope", decision: "allow" }),
    (e) => e.code === ErrorCodes.NotFound,
  );
});

test("complete can be cancelled ($/cancelRequest -> -32800); the turn goes on", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  const ev = collect(client, "slow");
  await client.createAgent({
    agentId: "slow",
    model: { provider: "scripted", script: [{ text: "late reply", delayMs: 1500 }] },
  });
  const ac = new AbortController();
  const p = client.complete({ agentId: "slow", text: "go" }, { signal: ac.signal });
  await ev.waitFor((e) => e.event.type === "state_changed" && e.event.state === "WORKING");
  ac.abort();
  await assert.rejects(p, (e) => e instanceof KodeRpcError && e.code === ErrorCodes.RequestCancelled);
  const done = await ev.waitFor(isDone());
  assert.equal(done.event.reason, "completed");
});

test("the rest of the typed API", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  const tpl = await client.templates();
  assert.ok(tpl.templates.some((x) => x.id === "default"));
  const a = await client.createAgent({ agentId: "api-1", model: { provider: "echo" }, metadata: { k: 1 } });
  assert.deepEqual(a.metadata, { k: 1 });
  await client.complete({ agentId: "api-1", text: "one" });
  const st = await client.status({ agentId: "api-1" });
  assert.equal(st.agentId, "api-1");
  assert.equal(st.breakpoint, "READY");
  const list = await client.list({ prefix: "api-" });
  assert.deepEqual(list.agents.map((x) => x.agentId), ["api-1"]);
  const msgs = await client.messages({ agentId: "api-1" });
  assert.equal(msgs.total, 2);
  assert.equal(msgs.messages[1].role, "assistant");
  const evs = await client.events({ agentId: "api-1", since: 0 });
  assert.equal(evs.lastSeq, client.lastSeq("api-1"));
  const fork = await client.fork({ agentId: "api-1", newAgentId: "api-2" });
  assert.equal(fork.agentId, "api-2");
  const todos = await client.todos({ agentId: "api-1", todos: [{ id: "1", title: "t", status: "pending" }] });
  assert.equal(todos.todos.length, 1);
  assert.equal((await client.todos({ agentId: "api-1" })).todos[0].title, "t");
  const pool = await client.poolStats();
  assert.equal(typeof pool.maxAgents, "number");
  assert.equal((await client.storeHealth()).healthy, true);
  assert.equal((await client.storeConsistency({ agentId: "api-1" })).consistent, true);
  assert.ok((await client.storeMetrics()).storage.totalAgents >= 2);
  const prom = await client.prometheus();
  assert.match(prom.text, /kode_agents_total/);
  assert.equal((await client.interrupt({ agentId: "api-1" })).interrupted, false);
  assert.equal((await client.deleteAgent({ agentId: "api-2" })).deleted, true);
  assert.ok(!client.watchedAgents.includes("api-2"));
  assert.ok(client.watchedAgents.includes("api-1"));
  assert.equal(METHODS["agent/complete"].kind, "request");
});

test("discovery order: command, serverPath, bundledPath (skipped when missing), PATH, python", async () => {
  const c = await resolveServerCommand({ command: "/bin/echo", args: ["x"], serverPath: "/nope" });
  assert.deepEqual(c, { command: "/bin/echo", args: ["x"], source: "command" });
  await assert.rejects(resolveServerCommand({ serverPath: "/definitely/not/here/kode-rpc" }), /serverPath/);
  const dir = tempDir();
  const missingBundle = join(dir, "kode-rpc-frozen");
  assert.ok(!existsSync(missingBundle));
  const viaPath = await resolveServerCommand({ bundledPath: missingBundle, serverArgs: ["--log-level", "debug"] });
  assert.ok(["path", "python"].includes(viaPath.source));
  assert.deepEqual(viaPath.args.slice(-3), ["serve", "--log-level", "debug"]);
  const bundled = await resolveServerCommand({ bundledPath: process.execPath });
  assert.equal(bundled.source, "bundledPath");
  // With no kode-rpc on PATH, discovery falls back to `python3 -m kode_rpc` / `python -m kode_rpc`
  // (the first interpreter that can import kode_rpc).
  const py = spawnSync("python3", ["-c", "import sys, kode_rpc; print(sys.executable)"], { encoding: "utf8" });
  if (py.status === 0 && process.platform !== "win32") {
    const bin = tempDir();
    // A wrapper, not a symlink: a symlinked venv interpreter looks for pyvenv.cfg next to
    // the link and loses the venv (and kode_rpc with it).
    writeFileSync(join(bin, "python"), `#!/bin/sh\nexec '${py.stdout.trim().replace(/'/g, "'\\''")}' "$@"\n`, { mode: 0o755 });
    const viaPython = await resolveServerCommand({ env: { ...process.env, PATH: bin } });
    assert.equal(viaPython.source, "python");
    assert.equal(viaPython.command, join(bin, "python"));
    assert.deepEqual(viaPython.args, ["-m", "kode_rpc", "serve"]);
    await assert.rejects(resolveServerCommand({ env: { ...process.env, PATH: tempDir() } }), /server not found/);
  }
});

test("discovery failures are KodeServerNotFoundError, with what was tried", async () => {
  const empty = tempDir();
  await assert.rejects(
    resolveServerCommand({ env: { PATH: empty }, pythonCandidates: [["python3"]], bundledPath: join(empty, "kode-rpc") }),
    (e) => {
      assert.ok(e instanceof KodeServerNotFoundError, `got ${e}`);
      assert.equal(e.reason, "not_found");
      assert.deepEqual(e.tried, [`bundledPath ${join(empty, "kode-rpc")}`, "kode-rpc on PATH", "python3 -m kode_rpc"]);
      assert.match(e.message, /server not found/);
      return true;
    },
  );
  await assert.rejects(KodeClient.start({ serverPath: join(empty, "nope") }), (e) => {
    assert.ok(e instanceof KodeServerNotFoundError, `got ${e}`);
    assert.equal(e.reason, "bad_server_path");
    assert.equal(e.path, join(empty, "nope"));
    return true;
  });
});

test("start fails with a clear error when the server cannot start", { timeout: LONG }, async () => {
  await assert.rejects(
    KodeClient.start({ command: "/definitely/not/a/binary" }),
    (e) => e instanceof KodeConnectionError && /cannot start/.test(e.message),
  );
  await assert.rejects(
    KodeClient.start({ command: process.execPath, args: ["-e", "console.error('boom: no server here'); process.exit(3)"] }),
    (e) => e instanceof KodeConnectionError && /exited \(code 3\)/.test(e.message) && /boom/.test(e.message),
  );
});

test("replayed events already delivered are dropped; new ones are delivered once", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  const ev = collect(client, "replay-1");
  await client.createAgent({ agentId: "replay-1", model: { provider: "echo" } });
  await client.complete({ agentId: "replay-1", text: "one two three" });
  const n = ev.events.length;
  assert.equal(client.lastSeq("replay-1"), n);
  const r = await client.resumeAgent({ agentId: "replay-1", since: 0 });
  assert.equal(r.replayed, n);
  // Everything replayed was a duplicate; agent_resumed (if any) is new and comes once.
  assert.ok(client.duplicatesDropped >= n);
  const seqs = ev.events.map((e) => e.seq);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1));
  await client.complete({ agentId: "replay-1", text: "four" });
  const seqs2 = ev.events.map((e) => e.seq);
  assert.deepEqual(seqs2, Array.from({ length: seqs2.length }, (_, i) => i + 1));
  assert.equal(ev.events.filter(isDone()).length, 2);
});
