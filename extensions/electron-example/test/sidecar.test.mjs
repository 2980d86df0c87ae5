// Headless tests of src/sidecar.js against the REAL kode-rpc server: a fake ipcMain (a Map
// of handlers, invoked like `ipcRenderer.invoke` would) and a fake webContents (records
// every `send`). Payloads go through structuredClone both ways, like Electron's IPC.
// KODE_RPC_SERVER=/path/to/kode-rpc tests a frozen binary (passed as serverPath).
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import vm from "node:vm";
import { resolveServerCommand } from "@kode-rpc/client";
import { CHANNELS, createSidecar, PUSH } from "../src/sidecar.js";

const LONG = 60_000;

function tempDir(prefix = "kode-electron-test-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Electron's webContents, as far as the sidecar uses it; `on(channel, fn)` plays the renderer. */
function fakeWebContents() {
  const sent = [];
  const listeners = [];
  const waiters = [];
  return {
    sent,
    send(channel, payload) {
      const msg = { channel, payload: structuredClone(payload) };
      sent.push(msg);
      for (const l of [...listeners]) if (l.channel === channel) queueMicrotask(() => l.fn(msg.payload));
      for (const w of [...waiters]) {
        if (w.channel === channel && w.pred(msg.payload)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(msg.payload);
        }
      }
    },
    isDestroyed: () => false,
    /** Plays the renderer's `ipcRenderer.on`; returns an unsubscribe function. */
    on(channel, fn) {
      const l = { channel, fn };
      listeners.push(l);
      return () => listeners.includes(l) && listeners.splice(listeners.indexOf(l), 1);
    },
    of(channel) {
      return sent.filter((m) => m.channel === channel).map((m) => m.payload);
    },
    /** First payload on `channel` matching `pred`, already sent or future. */
    waitFor(channel, pred = () => true, timeoutMs = LONG) {
      const found = sent.find((m) => m.channel === channel && pred(m.payload));
      if (found) return Promise.resolve(found.payload);
      return new Promise((resolve, reject) => {
        const w = { channel, pred, resolve };
        waiters.push(w);
        setTimeout(() => {
          if (waiters.includes(w)) {
            waiters.splice(waiters.indexOf(w), 1);
            reject(new Error(`timed out waiting for ${channel}; sent: ${sent.map((m) => m.payload?.event?.type ?? m.channel).join(",")}`));
          }
        }, timeoutMs).unref();
      });
    },
  };
}

/** Electron's ipcMain; `invoke` is what the renderer's `ipcRenderer.invoke` ends up doing. */
function fakeIpcMain(webContents) {
  const handlers = new Map();
  return {
    handlers,
    handle(channel, fn) {
      if (handlers.has(channel)) throw new Error(`Attempted to register a second handler for '${channel}'`);
      handlers.set(channel, fn);
    },
    removeHandler(channel) {
      handlers.delete(channel);
    },
    async invoke(channel, arg, sender = webContents) {
      const fn = handlers.get(channel);
      if (!fn) throw new Error(`No handler registered for '${channel}'`);
      return structuredClone(await fn({ sender }, structuredClone(arg)));
    },
  };
}

function memoryLogger() {
  const lines = [];
  const push = (lvl) => (m) => lines.push(`${lvl} ${m}`);
  return { lines, info: push("I"), warn: push("W"), error: push("E"), debug: push("D") };
}

function startSidecar(t, extra = {}) {
  const dir = tempDir();
  const workDir = join(dir, "work");
  mkdirSync(workDir);
  const webContents = fakeWebContents();
  const ipcMain = fakeIpcMain(webContents);
  const logger = memoryLogger();
  const sidecar = createSidecar({
    ipcMain,
    webContents,
    workDir,
    serverPath: process.env.KODE_RPC_SERVER || undefined,
    dataDir: join(dir, "data"),
    logDir: join(dir, "log"),
    configDir: join(dir, "config"),
    logger,
    ...extra,
  });
  t.after(async () => {
    await sidecar.dispose();
    if (process.env.KODE_TEST_VERBOSE) console.error(logger.lines.join("\n"));
    rmSync(dir, { recursive: true, force: true });
  });
  return { sidecar, ipcMain, webContents, workDir, dir };
}

/** True while `pid` is a live (non-zombie) process. */
function isAlive(pid) {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return e.code === "EPERM";
  }
  if (process.platform === "linux") {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      return state !== "Z" && state !== "X";
    } catch {
      return false;
    }
  }
  return true;
}

const writeScript = (path, content) => [
  { toolCalls: [{ name: "fs_write", input: { path, content } }] },
  { text: "done writing" },
];

const isDone = (agentId) => (e) => e.agentId === agentId && e.event.type === "done";

test("server state starting -> ready; an echo chat streams kode:event text chunks and done", { timeout: LONG }, async (t) => {
  const { sidecar, ipcMain, webContents, workDir } = startSidecar(t);
  // Handlers exist and `starting` is pushed before the server is up.
  assert.deepEqual([...ipcMain.handlers.keys()].sort(), Object.values(CHANNELS).sort());
  assert.deepEqual(webContents.of(PUSH.serverState).map((s) => s.state), ["starting"]);
  await sidecar.ready;
  const states = webContents.of(PUSH.serverState);
  assert.deepEqual(states.map((s) => s.state), ["starting", "ready"]);
  assert.equal(states[1].pid, sidecar.serverPid);
  assert.ok(isAlive(sidecar.serverPid));

  const info = await ipcMain.invoke(CHANNELS.createAgent, { agentId: "chat", model: { provider: "echo" } });
  assert.equal(info.agentId, "chat");
  assert.equal(info.workDir, workDir);
  const text = "hello from the renderer, streamed back word by word";
  const sent = await ipcMain.invoke(CHANNELS.send, { agentId: "chat", text });
  assert.match(sent.turnId, /\S/);

  const done = await webContents.waitFor(PUSH.event, isDone("chat"));
  assert.equal(done.event.reason, "completed");
  assert.equal(done.turnId, sent.turnId);
  const events = webContents.of(PUSH.event).filter((e) => e.agentId === "chat");
  const seqs = events.map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "every event once, in seq order, from seq 1");
  const chunks = events.filter((e) => e.event.type === "text_chunk");
  assert.ok(chunks.length >= 1);
  assert.ok(chunks.every((e) => e.turnId === sent.turnId && e.seq < done.seq));
  assert.equal(chunks.map((e) => e.event.delta).join(""), text);

  const list = await ipcMain.invoke(CHANNELS.listAgents, {});
  assert.ok(list.agents.some((a) => a.agentId === "chat"));
  const status = await ipcMain.invoke(CHANNELS.status, { agentId: "chat" });
  assert.equal(status.state, "READY");
  const self = await ipcMain.invoke(CHANNELS.status);
  assert.equal(self.state, "ready");
  assert.equal(self.pid, sidecar.serverPid);
  assert.equal(self.serverInfo.name, "kode-rpc");
  assert.deepEqual(self.pendingApprovals, []);
});

test("a provider failure reaches the renderer as an error event and done {reason: error}", { timeout: LONG }, async (t) => {
  // No OPENAI_API_KEY in the server's environment: the turn fails (authentication) without
  // any network. kode:send still resolves (the turn was queued); the failure streams.
  const env = { ...process.env };
  delete env.OPENAI_API_KEY;
  const { sidecar, ipcMain, webContents } = startSidecar(t, { clientOptions: { env } });
  await ipcMain.invoke(CHANNELS.createAgent, { agentId: "nokey", model: { provider: "openai", model: "gpt-test" } });
  const sent = await ipcMain.invoke(CHANNELS.send, { agentId: "nokey", text: "hi" });
  const done = await webContents.waitFor(PUSH.event, isDone("nokey"));
  assert.equal(done.event.reason, "error");
  assert.equal(done.turnId, sent.turnId);
  const err = webContents.of(PUSH.event).find((e) => e.agentId === "nokey" && e.event.type === "error");
  assert.ok(err && err.seq < done.seq, "the error event comes before done");
  assert.equal(err.event.severity, "error");
  assert.match(err.event.message, /authentication.*OPENAI_API_KEY/);
  // agent/complete answers the same failure with a result (status "error"), not a rejection.
  const r = await sidecar.client.complete({ agentId: "nokey", text: "again" });
  assert.equal(r.status, "error");
  assert.equal(r.error?.type, "authentication");
  const status = await ipcMain.invoke(CHANNELS.status, { agentId: "nokey" });
  assert.equal(status.state, "READY");
});

test("approvals reach the renderer: allow writes the file, deny leaves it untouched", { timeout: LONG }, async (t) => {
  const { ipcMain, webContents, workDir } = startSidecar(t);
  // The fake renderer answers each prompt as the agent's name says.
  const answered = [];
  webContents.on(PUSH.approval, async (prompt) => {
    const decision = prompt.agentId.endsWith("allow") ? "allow" : "deny";
    answered.push({ prompt, result: await ipcMain.invoke(CHANNELS.decide, { approvalId: prompt.approvalId, decision }) });
  });

  for (const agentId of ["w-allow", "w-deny"]) {
    await ipcMain.invoke(CHANNELS.createAgent, {
      agentId,
      model: { provider: "scripted", script: writeScript(`${agentId}.txt`, `content of ${agentId}`) },
      permission: { mode: "approval" },
    });
    await ipcMain.invoke(CHANNELS.send, { agentId, text: "write the file" });
    assert.equal((await webContents.waitFor(PUSH.event, isDone(agentId))).event.reason, "completed");
  }

  assert.equal(answered.length, 2);
  for (const { prompt, result } of answered) {
    assert.deepEqual(result, { accepted: true });
    assert.equal(prompt.call.name, "fs_write");
    assert.equal(prompt.subject.type, "file_change");
    assert.equal(prompt.subject.path, join(workDir, `${prompt.agentId}.txt`));
    assert.ok(prompt.timeoutMs > 0 && Date.parse(prompt.expiresAt) > 0);
  }
  const ev = (agentId, type) => webContents.of(PUSH.event).find((e) => e.agentId === agentId && e.event.type === type);

  assert.equal(readFileSync(join(workDir, "w-allow.txt"), "utf8"), "content of w-allow");
  assert.equal(ev("w-allow", "permission_decided").event.decision, "allow");
  assert.equal(ev("w-allow", "tool:end").event.call.state, "COMPLETED");

  assert.ok(!existsSync(join(workDir, "w-deny.txt")));
  assert.equal(ev("w-deny", "permission_decided").event.decision, "deny");
  assert.equal(ev("w-deny", "tool:end").event.call.state, "DENIED");

  // A second answer is not accepted; a bogus decision is refused.
  const again = await ipcMain.invoke(CHANNELS.decide, { approvalId: answered[0].prompt.approvalId, decision: "deny" });
  assert.deepEqual(again, { accepted: false });
  await assert.rejects(ipcMain.invoke(CHANNELS.decide, { approvalId: "x", decision: "yes" }), /allow" or "deny/);
});

test("the approval timeout denies when the renderer never answers", { timeout: LONG }, async (t) => {
  const approvalTimeoutMs = 1500;
  const { ipcMain, webContents, workDir } = startSidecar(t, { approvalTimeoutMs });
  await ipcMain.invoke(CHANNELS.createAgent, {
    agentId: "ignored",
    model: { provider: "scripted", script: writeScript("ignored.txt", "nobody said yes") },
  }); // permission mode defaults to "approval"
  await ipcMain.invoke(CHANNELS.send, { agentId: "ignored", text: "write it" });
  const prompt = await webContents.waitFor(PUSH.approval);
  const asked = Date.now();
  // A renderer that reloads finds the prompt still waiting.
  const self = await ipcMain.invoke(CHANNELS.status);
  assert.deepEqual(self.pendingApprovals.map((p) => p.approvalId), [prompt.approvalId]);

  const done = await webContents.waitFor(PUSH.event, isDone("ignored"));
  assert.ok(Date.now() - asked >= approvalTimeoutMs - 200, "denied by the sidecar's timeout, not earlier");
  assert.equal(done.event.reason, "completed");
  assert.ok(!existsSync(join(workDir, "ignored.txt")));
  const decided = webContents.of(PUSH.event).find((e) => e.agentId === "ignored" && e.event.type === "permission_decided");
  assert.equal(decided.event.approvalId, prompt.approvalId);
  assert.equal(decided.event.decision, "deny");
  // Too late now.
  assert.deepEqual(await ipcMain.invoke(CHANNELS.decide, { approvalId: prompt.approvalId, decision: "allow" }), { accepted: false });
  assert.deepEqual((await ipcMain.invoke(CHANNELS.status)).pendingApprovals, []);
});

test("the renderer cannot pick the sandbox or auto mode; errors cross IPC as messages", { timeout: LONG }, async (t) => {
  const { ipcMain, workDir } = startSidecar(t);
  await assert.rejects(
    ipcMain.invoke(CHANNELS.createAgent, { model: { provider: "echo" }, permission: { mode: "auto" } }),
    /permission mode "auto" is not allowed/,
  );
  const info = await ipcMain.invoke(CHANNELS.createAgent, {
    agentId: "boxed",
    model: { provider: "echo", baseUrl: "http://evil.example", apiKeyEnv: "HOME" },
    sandbox: { workDir: "/" },
    tools: "*",
  });
  assert.equal(info.workDir, workDir);
  await assert.rejects(ipcMain.invoke(CHANNELS.createAgent, { agentId: "boxed" }), /kode-rpc -32602 \(agent_exists\)/);
  await assert.rejects(ipcMain.invoke(CHANNELS.send, { agentId: "nope", text: "hi" }), /kode-rpc -32002/);
  await assert.rejects(ipcMain.invoke(CHANNELS.send, { agentId: "a/b", text: "hi" }), /invalid agentId/);
  await assert.rejects(ipcMain.invoke(CHANNELS.status, {}, { other: "window" }), /unknown sender/);
  const r = await ipcMain.invoke(CHANNELS.interrupt, { agentId: "boxed" });
  assert.equal(typeof r.interrupted, "boolean");
});

test("dispose with an approval open stops the server: no process left, state stopped, handlers removed", { timeout: LONG }, async (t) => {
  const { sidecar, ipcMain, webContents } = startSidecar(t);
  await ipcMain.invoke(CHANNELS.createAgent, {
    agentId: "quit",
    model: { provider: "scripted", script: writeScript("quit.txt", "x") },
  });
  await ipcMain.invoke(CHANNELS.send, { agentId: "quit", text: "write" });
  await webContents.waitFor(PUSH.approval); // the user never answers: the app quits
  const pid = sidecar.serverPid;
  assert.ok(pid && isAlive(pid));
  const t0 = Date.now();
  await sidecar.dispose();
  assert.ok(Date.now() - t0 < 10_000);
  assert.ok(!isAlive(pid), `server pid ${pid} still running`);
  assert.equal(sidecar.state, "stopped");
  assert.equal(webContents.of(PUSH.serverState).at(-1).state, "stopped");
  assert.equal(ipcMain.handlers.size, 0);
  await assert.rejects(ipcMain.invoke(CHANNELS.send, { agentId: "quit", text: "x" }), /No handler registered/);
  await sidecar.dispose(); // idempotent
});

test("bundledPath: the binary shipped with the app is used when present, skipped when missing", { timeout: LONG, skip: process.platform === "win32" }, async (t) => {
  // Stand-in for resources/kode-rpc/kode-rpc: a script that execs the real server.
  const real = await resolveServerCommand({ serverPath: process.env.KODE_RPC_SERVER || undefined });
  const q = (s) => `'${s.replaceAll("'", `'\\''`)}'`;
  const resources = tempDir("kode electron resources ");
  t.after(() => rmSync(resources, { recursive: true, force: true }));
  const bundled = join(resources, "kode-rpc", "kode-rpc");
  mkdirSync(join(resources, "kode-rpc"));
  writeFileSync(bundled, `#!/bin/sh\nexec ${[real.command, ...real.args.slice(0, -1)].map(q).join(" ")} "$@"\n`);
  chmodSync(bundled, 0o755);

  const { sidecar, ipcMain, webContents } = startSidecar(t, { serverPath: undefined, bundledPath: bundled });
  await sidecar.ready;
  assert.equal((await ipcMain.invoke(CHANNELS.status)).source, "bundledPath");
  await ipcMain.invoke(CHANNELS.createAgent, { agentId: "b", model: { provider: "echo" } });
  await ipcMain.invoke(CHANNELS.send, { agentId: "b", text: "bundled" });
  await webContents.waitFor(PUSH.event, isDone("b"));
  const pid = sidecar.serverPid;
  await sidecar.dispose();
  assert.ok(!isAlive(pid));

  const missing = startSidecar(t, { serverPath: undefined, bundledPath: join(resources, "nope", "kode-rpc") });
  await missing.sidecar.ready;
  assert.notEqual((await missing.ipcMain.invoke(CHANNELS.status)).source, "bundledPath");
});

test("preload.cjs: window.kode drives the sidecar over the same channels", { timeout: LONG }, async (t) => {
  const { sidecar, ipcMain, webContents, workDir } = startSidecar(t);
  // Run the preload as Electron's sandbox would: only require("electron") is there.
  const exposed = {};
  const sender = {};
  const electron = {
    contextBridge: { exposeInMainWorld: (name, api) => (exposed[name] = api) },
    ipcRenderer: {
      invoke: (channel, arg) => ipcMain.invoke(channel, arg),
      on: (channel, l) => (l.off = webContents.on(channel, (payload) => l(sender, payload))),
      removeListener: (_channel, l) => l.off(),
    },
  };
  const preload = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "src", "preload.cjs"), "utf8");
  vm.runInNewContext(preload, {
    require: (m) => {
      if (m !== "electron") throw new Error(`a sandboxed preload cannot require ${m}`);
      return electron;
    },
  });
  const kode = exposed.kode;
  assert.deepEqual(Object.keys(kode).sort(), [
    "createAgent", "decide", "interrupt", "listAgents", "onApproval", "onEvent", "onServerState", "send", "status",
  ]);
  const states = [];
  kode.onServerState((s) => states.push(s.state));
  await sidecar.ready;
  assert.equal((await kode.status()).state, "ready");

  const events = [];
  const unsubscribe = kode.onEvent((e) => events.push(e));
  kode.onApproval((p) => kode.decide(p.approvalId, "allow", { note: "ok from the page" }));
  const info = await kode.createAgent({ model: { provider: "scripted", script: writeScript("page.txt", "via window.kode") } });
  assert.match(info.agentId, /\S/);
  await kode.send(info.agentId, "go");
  await webContents.waitFor(PUSH.event, isDone(info.agentId));
  await new Promise((r) => setImmediate(r)); // listeners run in a microtask
  assert.equal(readFileSync(join(workDir, "page.txt"), "utf8"), "via window.kode");
  assert.ok(events.some((e) => e.event.type === "done" && e.agentId === info.agentId));
  assert.equal((await kode.status(info.agentId)).agentId, info.agentId);
  assert.ok((await kode.listAgents()).agents.some((a) => a.agentId === info.agentId));
  unsubscribe();
  const before = events.length;
  await kode.send(info.agentId, "again");
  await webContents.waitFor(PUSH.event, (e) => isDone(info.agentId)(e) && e.seq > events.at(-1).seq);
  assert.equal(events.length, before, "unsubscribed");
  await sidecar.dispose();
  await new Promise((r) => setImmediate(r));
  assert.equal(states.at(-1), "stopped");
});

test("a server that cannot start: state failed, requests reject with the reason", { timeout: LONG }, async (t) => {
  const { sidecar, ipcMain, webContents } = startSidecar(t, { serverPath: join(tmpdir(), "no-such-dir", "kode-rpc") });
  await assert.rejects(sidecar.ready, /not an executable file/);
  assert.deepEqual(webContents.of(PUSH.serverState).map((s) => s.state), ["starting", "failed"]);
  assert.match(webContents.of(PUSH.serverState)[1].error, /not an executable file/);
  await assert.rejects(ipcMain.invoke(CHANNELS.listAgents, {}), /not an executable file/);
  const self = await ipcMain.invoke(CHANNELS.status);
  assert.equal(self.state, "failed");
  await sidecar.dispose();
  assert.equal(sidecar.state, "stopped");
});

test("a crashed server is restarted: restarting -> ready, and the chat goes on", { timeout: LONG }, async (t) => {
  const { sidecar, ipcMain, webContents } = startSidecar(t);
  await ipcMain.invoke(CHANNELS.createAgent, { agentId: "phoenix", model: { provider: "echo" } });
  const first = sidecar.serverPid;
  process.kill(first, "SIGKILL");
  await webContents.waitFor(PUSH.serverState, (s) => s.state === "ready" && s.pid !== first);
  assert.deepEqual(webContents.of(PUSH.serverState).map((s) => s.state), ["starting", "ready", "restarting", "ready"]);
  assert.ok(!isAlive(first));
  await ipcMain.invoke(CHANNELS.send, { agentId: "phoenix", text: "still here" });
  const done = await webContents.waitFor(PUSH.event, isDone("phoenix"));
  const seqs = webContents.of(PUSH.event).filter((e) => e.agentId === "phoenix").map((e) => e.seq);
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), "no gap, no duplicate across the restart");
  assert.equal(done.event.reason, "completed");
});
