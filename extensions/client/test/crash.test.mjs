import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { KodeClient, KodeConnectionError, resolveServerCommand } from "../dist/index.js";
import { collect, isAlive, isDone, LONG, startClient, tempDir, waitUntil } from "./helpers.mjs";

/** A long scripted turn: `steps` model calls, each streaming 20 chunks after `delayMs`, each
 * calling todo_read (so the turn goes on), then a closing step; then one step for the next turn. */
function longScript(steps, delayMs) {
  const script = [];
  for (let i = 0; i < steps; i++) {
    script.push({
      chunks: Array.from({ length: 20 }, (_, j) => `s${i}c${j} `),
      delayMs,
      toolCalls: [{ name: "todo_read", input: {} }],
    });
  }
  script.push({ text: "end of the long turn" });
  script.push({ text: "reply after the restart" });
  return script;
}

test("crash recovery: SIGKILL mid-turn, restart, resume; every seq exactly once, in order", { timeout: 2 * LONG }, async (t) => {
  const { client, logger } = await startClient(t, { restartDelayMs: 100 });
  const agentId = "crashy";
  const ev = collect(client, agentId);
  const states = [];
  client.onStateChange((s, prev) => states.push(`${prev}->${s}`));
  const restarted = new Promise((resolve) => client.onRestart(resolve));

  await client.createAgent({
    agentId,
    model: { provider: "scripted", script: longScript(16, 150) },
    permission: { mode: "auto" },
    sandbox: { workDir: tempDir() },
  });
  const pending = client.complete({ agentId, text: "stream a long reply" });
  pending.catch(() => {});
  // Mid-turn: a few steps in, well before the end.
  await waitUntil(() => ev.events.filter((e) => e.event.type === "text_chunk_end").length >= 2, {
    what: "two steps",
  }).catch((e) => {
    throw new Error(`${e.message}; events: ${ev.types().join(",")}\n${logger.lines.join("\n")}`);
  });
  assert.equal(ev.events.filter(isDone()).length, 0, "the turn must still be running");
  const oldPid = client.serverPid;
  const seenBeforeKill = ev.events.length;
  process.kill(oldPid, "SIGKILL");

  // The request pending at crash time rejects with a clear error.
  await assert.rejects(pending, (e) => {
    assert.ok(e instanceof KodeConnectionError, `got ${e}`);
    assert.match(e.message, /exited \(signal SIGKILL\) before answering agent\/complete/);
    assert.equal(e.signal, "SIGKILL");
    return true;
  });

  const info = await restarted;
  assert.equal(info.previousPid, oldPid);
  assert.notEqual(client.serverPid, oldPid);
  assert.equal(info.signal, "SIGKILL");
  assert.equal(info.resumed.length, 1);
  assert.equal(info.resumed[0].agentId, agentId);
  assert.ok(info.resumed[0].since >= seenBeforeKill);
  assert.equal(client.state, "running");
  assert.ok(states.includes("running->restarting") && states.includes("restarting->running"), states.join(" "));
  await waitUntil(() => !isAlive(oldPid), { what: "old server gone" });

  // The crashed turn ends with done {interrupted} (crash strategy), after agent_resumed's sealing.
  const crashedDone = await ev.waitFor(isDone());
  assert.equal(crashedDone.event.reason, "interrupted");
  assert.ok(ev.events.some((e) => e.event.type === "agent_resumed"));

  // The conversation goes on on the new server.
  const from = ev.events.length;
  const sent = await client.send({ agentId, text: "still there?" });
  const nextDone = await ev.waitFor(isDone(), { from });
  assert.equal(nextDone.turnId, sent.turnId);
  assert.equal(nextDone.event.reason, "completed");

  // Exactly 1..N, no gap, no duplicate; and N is what the store holds.
  const seqs = ev.events.map((e) => e.seq);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1));
  const stored = await client.events({ agentId, since: 0, limit: 100000 });
  assert.equal(stored.lastSeq, seqs.at(-1));
  assert.equal(stored.events.length, seqs.length);
  // Replayed events (stored by the dead server but not yet seen) come after the cursor and
  // were delivered like live ones.
  for (const e of ev.events.filter((x) => x.replay)) assert.ok(e.seq > info.resumed[0].since);
  t.diagnostic(
    `killed after seq ${seenBeforeKill}; resumed since ${info.resumed[0].since}; ` +
      `${ev.events.filter((x) => x.replay).length} replayed delivered, ${client.duplicatesDropped} duplicates dropped; N=${seqs.length}`,
  );
});

test("a request made while restarting waits for the new server", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t, { restartDelayMs: 300 });
  await client.createAgent({ agentId: "waiter", model: { provider: "echo" } });
  const restarting = new Promise((resolve) => client.onStateChange((s) => s === "restarting" && resolve()));
  process.kill(client.serverPid, "SIGKILL");
  await restarting;
  const r = await client.complete({ agentId: "waiter", text: "after" });
  assert.equal(r.status, "ok");
  assert.equal(r.text, "after");
});

test("restart gives up after maxRestarts; autoRestart false fails at once", { timeout: LONG, skip: process.platform === "win32" }, async (t) => {
  const dir = tempDir();
  const marker = join(dir, "started-once");
  // The first start runs the real server (exec keeps the pid); later starts fail.
  const real = await resolveServerCommand({ serverPath: process.env.KODE_RPC_SERVER || undefined });
  const script = `if [ -e "${marker}" ]; then echo "refusing to start" >&2; exit 3; fi; touch "${marker}"; exec "$@"`;
  const { client, logger } = await startClient(t, {
    command: "sh",
    args: ["-c", script, "sh", real.command, ...real.args],
    restartDelayMs: 20,
    maxRestarts: 3,
  });
  const failed = new Promise((resolve) => client.onStateChange((s) => s === "failed" && resolve()));
  process.kill(client.serverPid, "SIGKILL");
  await failed;
  assert.ok(existsSync(marker));
  assert.equal(logger.lines.filter((l) => /restart attempt \d failed/.test(l)).length, 3);
  await assert.rejects(client.poolStats(), (e) => e instanceof KodeConnectionError && /after 3 attempts/.test(e.message));

  const { client: c2 } = await startClient(t, { autoRestart: false });
  const failed2 = new Promise((resolve) => c2.onStateChange((s) => s === "failed" && resolve()));
  process.kill(c2.serverPid, "SIGKILL");
  await failed2;
  await assert.rejects(c2.poolStats(), KodeConnectionError);
});

test("dispose leaves no process behind; the client refuses requests afterwards", { timeout: LONG }, async () => {
  const dir = tempDir();
  const client = await KodeClient.start({
    dataDir: join(dir, "data"),
    logDir: join(dir, "log"),
    configDir: join(dir, "config"),
    serverPath: process.env.KODE_RPC_SERVER || undefined,
    logger: { info() {}, warn() {}, error() {} },
  });
  const pid = client.serverPid;
  assert.ok(isAlive(pid));
  let restarts = 0;
  client.onRestart(() => restarts++);
  const t0 = Date.now();
  await client.dispose();
  assert.ok(Date.now() - t0 < 5000);
  assert.equal(client.state, "stopped");
  assert.ok(!isAlive(pid), "server process still alive after dispose");
  await client.dispose(); // idempotent
  await assert.rejects(client.poolStats(), KodeConnectionError);
  assert.equal(restarts, 0);
});

test("no server survives the host process (exit and SIGTERM)", { timeout: LONG }, async () => {
  const dir = tempDir();
  const lib = new URL("../dist/index.js", import.meta.url).href;
  const host = (how) => `
    import { KodeClient } from ${JSON.stringify(lib)};
    const c = await KodeClient.start({ dataDir: ${JSON.stringify(join(dir, "data"))}, logDir: ${JSON.stringify(join(dir, "log"))},
      configDir: ${JSON.stringify(join(dir, "config"))}, serverPath: process.env.KODE_RPC_SERVER || undefined,
      logger: { info() {}, warn() {}, error() {} } });
    process.stdout.write(String(c.serverPid) + "\\n");
    ${how === "exit" ? "process.exit(0);" : "setInterval(() => {}, 1000);"}
  `;
  for (const how of process.platform === "win32" ? ["exit"] : ["exit", "sigterm"]) {
    const child = spawn(process.execPath, ["--input-type=module", "-e", host(how)], { stdio: ["ignore", "pipe", "inherit"] });
    const ended = new Promise((resolve) => child.on("exit", (c, s) => resolve(s ?? c)));
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    await waitUntil(() => out.includes("\n"), { what: "host to print the server pid" });
    const pid = Number(out.trim());
    assert.ok(pid > 0);
    if (how === "sigterm") {
      assert.ok(isAlive(pid));
      child.kill("SIGTERM");
    }
    const code = await ended;
    assert.equal(code, how === "exit" ? 0 : "SIGTERM", "the host ends as it would without the library");
    await waitUntil(() => !isAlive(pid), { timeoutMs: 15_000, what: `server ${pid} to go (${how})` });
  }
});

