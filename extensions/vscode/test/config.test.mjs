// Settings -> library options, server discovery order, agent config, small formatters.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { resolveServerCommand } from "@kode-rpc/client";
import {
  AGENT_ID_RE,
  agentConfig,
  agentEntry,
  bundledServerPath,
  clientStartOptions,
  DEFAULT_SETTINGS,
  ensureExecutable,
  expandPath,
  formatStatus,
  formatTokens,
  contextWindow,
  contextTokens,
  formatPercent,
  formatCost,
  DEFAULT_CONTEXT_WINDOW,
  titleFromText,
  validateTitle,
  TitleBook,
  TITLE_STORAGE_KEY,
  MAX_TITLE_CHARS,
  startErrorHelp,
  newAgentId,
  readSettings,
  selectionMessage,
  emptyUsage,
} from "../out/core.mjs";
import { makeSession, sendAndWait, tempEnv } from "./helpers.mjs";

test("readSettings: defaults and validation", () => {
  assert.deepEqual(readSettings(() => undefined), DEFAULT_SETTINGS);
  const s = readSettings((k) => ({ serverPath: " /x/kode-rpc ", permissionMode: "bogus", defaultProvider: "echo" })[k]);
  assert.equal(s.serverPath, "/x/kode-rpc");
  assert.equal(s.permissionMode, "approval");
  assert.equal(s.defaultProvider, "echo");
});

test("bundled path and start options", () => {
  assert.equal(bundledServerPath("/ext", "linux"), join("/ext", "bin", "kode-rpc", "kode-rpc"));
  assert.equal(bundledServerPath("/ext", "win32"), join("/ext", "bin", "kode-rpc", "kode-rpc.exe"));
  const host = { extensionPath: "/ext", workspaceFolder: "/ws", home: "/home/u", platform: "linux" };
  assert.deepEqual(clientStartOptions(DEFAULT_SETTINGS, host), {
    bundledPath: "/ext/bin/kode-rpc/kode-rpc",
    workspaceFolders: ["/ws"],
    cwd: "/ws",
  });
  const o = clientStartOptions({ ...DEFAULT_SETTINGS, serverPath: "~/bin/kode-rpc", dataDir: "${workspaceFolder}/.kode" }, host);
  assert.equal(o.serverPath, "/home/u/bin/kode-rpc");
  assert.equal(o.dataDir, "/ws/.kode");
  assert.equal(expandPath("rel/dir", { home: "/h", workspaceFolder: "/ws" }), "/ws/rel/dir");
  assert.equal(expandPath("${userHome}/d", { home: "/h" }), "/h/d");
  const noWs = clientStartOptions(DEFAULT_SETTINGS, { extensionPath: "/ext", home: "/h", platform: "linux" });
  assert.equal(noWs.workspaceFolders, undefined);
});

test("discovery order: serverPath, then bundled binary, then kode-rpc on PATH, then python -m kode_rpc", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "kode-disc-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const ext = join(dir, "ext");
  const pathDir = join(dir, "pathbin");
  mkdirSync(pathDir);
  const host = { extensionPath: ext, home: dir, platform: process.platform };
  const fake = (p) => {
    mkdirSync(join(p, ".."), { recursive: true });
    writeFileSync(p, "#!/bin/sh\nexit 0\n");
    chmodSync(p, 0o755);
  };
  const onlyPython = { PATH: process.env.PATH.split(":").filter((d) => !/kode-rpc/.test(d)).join(":") };

  // 4. Nothing bundled, no kode-rpc on this PATH: python -m kode_rpc (the editable install).
  const pyEnv = { ...process.env, PATH: `${pathDir}:${process.env.PATH}` };
  let cmd = await resolveServerCommand({ ...clientStartOptions(DEFAULT_SETTINGS, host), env: pyEnv });
  assert.ok(["path", "python"].includes(cmd.source), cmd.source);
  if (cmd.source === "python") assert.deepEqual(cmd.args.slice(-3), ["-m", "kode_rpc", "serve"]);

  // 3. kode-rpc on PATH wins over python.
  fake(join(pathDir, "kode-rpc"));
  cmd = await resolveServerCommand({ ...clientStartOptions(DEFAULT_SETTINGS, host), env: { ...onlyPython, PATH: `${pathDir}:${onlyPython.PATH}` } });
  assert.equal(cmd.source, "path");
  assert.equal(cmd.command, join(pathDir, "kode-rpc"));
  assert.deepEqual(cmd.args, ["serve"]);

  // 2. A bundled binary in the extension folder wins over PATH.
  fake(bundledServerPath(ext));
  cmd = await resolveServerCommand({ ...clientStartOptions(DEFAULT_SETTINGS, host), env: { PATH: pathDir } });
  assert.equal(cmd.source, "bundledPath");
  assert.equal(cmd.command, bundledServerPath(ext));

  // 1. kode.serverPath wins over everything; a missing one is an error (not a silent fallback).
  const mine = join(dir, "my", "kode-rpc");
  fake(mine);
  cmd = await resolveServerCommand({ ...clientStartOptions({ ...DEFAULT_SETTINGS, serverPath: mine }, host), env: { PATH: pathDir } });
  assert.equal(cmd.source, "serverPath");
  assert.equal(cmd.command, mine);
  await assert.rejects(
    resolveServerCommand({ ...clientStartOptions({ ...DEFAULT_SETTINGS, serverPath: join(dir, "nope") }, host) }),
    /not an executable file/,
  );
});

test("agentConfig from settings", () => {
  const s = { ...DEFAULT_SETTINGS, defaultProvider: "anthropic", defaultModel: "claude-x", permissionMode: "readonly" };
  assert.deepEqual(agentConfig(s, "/ws", { agentId: "a" }), {
    agentId: "a",
    model: { provider: "anthropic", model: "claude-x" },
    permission: { mode: "readonly" },
    sandbox: { workDir: "/ws" },
    metadata: { client: "vscode" },
  });
  // No provider: the server's default model; no workspace: the server picks the workDir.
  const d = agentConfig(DEFAULT_SETTINGS, undefined);
  assert.equal(d.model, undefined);
  assert.equal(d.sandbox, undefined);
  assert.deepEqual(d.permission, { mode: "approval" });
  assert.throws(() => agentConfig({ ...DEFAULT_SETTINGS, defaultProvider: "gemini" }, undefined), /Unknown provider/);
  const id = newAgentId(new Date(2026, 0, 2, 3, 4, 5), () => 0.5);
  assert.equal(id, "chat-20260102-030405-8000");
  assert.match(id, AGENT_ID_RE);
});

test("context windows from the extension's table; percent and cost formatting", () => {
  assert.deepEqual(contextWindow("claude-sonnet-4-5"), { tokens: 200_000, known: true });
  assert.deepEqual(contextWindow("claude-3-5-haiku-latest"), { tokens: 200_000, known: true });
  assert.deepEqual(contextWindow("gpt-4o-mini"), { tokens: 128_000, known: true });
  assert.deepEqual(contextWindow("gpt-4.1"), { tokens: 1_047_576, known: true });
  assert.deepEqual(contextWindow("gpt-4.1-mini"), { tokens: 1_047_576, known: true });
  assert.deepEqual(contextWindow("o3"), { tokens: 200_000, known: true });
  assert.deepEqual(contextWindow("o4-mini"), { tokens: 200_000, known: true });
  assert.deepEqual(contextWindow("o1-mini"), { tokens: 128_000, known: true });
  assert.deepEqual(contextWindow("openrouter/claude-opus-4"), { tokens: 200_000, known: true });
  assert.deepEqual(contextWindow("qwen2.5"), { tokens: DEFAULT_CONTEXT_WINDOW, known: false });
  assert.deepEqual(contextWindow(undefined), { tokens: 128_000, known: false });
  assert.equal(contextTokens({ inputTokens: 100, outputTokens: 20, cacheReadTokens: 1000, cacheWriteTokens: 5 }), 1125);
  assert.equal(formatPercent(0), "0%");
  assert.equal(formatPercent(0.01), "0.1%");
  assert.equal(formatPercent(3.14), "3.1%");
  assert.equal(formatPercent(42.6), "43%");
  assert.equal(formatCost(0), "$0.00");
  assert.equal(formatCost(0.00123), "$0.0012");
  assert.equal(formatCost(2.345), "$2.35");
});

test("chat titles: from the first user message, renamed by the user, kept in storage", () => {
  assert.equal(titleFromText("Fix the login bug"), "Fix the login bug");
  assert.equal(titleFromText("\n\n## Why does `npm ci` fail?\nmore"), "Why does npm ci fail?");
  assert.equal(titleFromText("```js\nconst x = 1;\n```"), "const x = 1;");
  assert.equal(titleFromText("   "), undefined);
  const long = titleFromText("word ".repeat(40));
  assert.ok(long.length <= MAX_TITLE_CHARS && long.endsWith("…"), long);
  assert.equal(validateTitle("ok"), undefined);
  assert.ok(validateTitle("a\u0007b"));

  const store = new Map();
  const storage = { get: (k) => store.get(k), update: (k, v) => void store.set(k, v) };
  const book = new TitleBook(storage);
  const changed = [];
  book.onDidChange((id) => changed.push(id));
  assert.equal(book.display("a1"), "a1");
  assert.equal(book.setAuto("a1", "First question"), true);
  assert.equal(book.setAuto("a1", "Second question"), false, "the first message titles the chat");
  book.rename("a1", "  My   chat ");
  assert.equal(book.get("a1"), "My chat");
  assert.equal(book.isCustom("a1"), true);
  assert.equal(book.setAuto("a1", "x"), false);
  assert.deepEqual(changed, ["a1", "a1"]);
  // A new book over the same storage (a new window) has the titles.
  const again = new TitleBook(storage);
  assert.equal(again.get("a1"), "My chat");
  again.rename("a1", "");
  assert.equal(again.has("a1"), false, "an empty title goes back to the automatic one");
  assert.deepEqual(store.get(TITLE_STORAGE_KEY), {});
});

test("start errors name kode.serverPath and where to set it (local and remote windows)", () => {
  const notFound = Object.assign(new Error("kode-rpc: server not found. Tried: x"), {
    name: "KodeServerNotFoundError",
    reason: "not_found",
    tried: ["kode-rpc on PATH", "python3 -m kode_rpc"],
  });
  const local = startErrorHelp(notFound, {});
  assert.match(local.message, /not found on this machine \(tried: kode-rpc on PATH, python3 -m kode_rpc\)/);
  assert.match(local.message, /set "kode\.serverPath" .* in your User settings/);
  assert.equal(local.remote, false);
  const remote = startErrorHelp(notFound, { remoteName: "wsl" });
  assert.match(remote.message, /on the remote machine \(wsl\)/);
  assert.match(remote.message, /Remote settings \("Preferences: Open Remote Settings"\)/);
  assert.match(remote.message, /local User settings does not apply/);
  assert.equal(remote.remote, true);
  assert.equal(startErrorHelp(notFound, { web: true }).remote, true, "code-server / a browser window");
  const bad = Object.assign(new Error("x"), { name: "KodeServerNotFoundError", reason: "bad_server_path", path: "/opt/kode" });
  assert.match(startErrorHelp(bad).message, /^The setting "kode\.serverPath" is \/opt\/kode, which is not an executable file on this machine/);
  assert.equal(startErrorHelp(new Error("other")), undefined);
});

test("status, tree entries and the selection message", () => {
  assert.equal(formatTokens(950), "950");
  assert.equal(formatTokens(1234), "1.2k");
  assert.equal(formatTokens(45_678), "46k");
  assert.equal(formatTokens(2_500_000), "2.5M");
  assert.equal(formatTokens(128_000), "128k");
  assert.equal(formatTokens(200_000), "200k");
  const u = { ...emptyUsage(), inputTokens: 10, outputTokens: 5, costUsd: 0.0123 };
  const st = formatStatus({ agentId: "a", state: "PAUSED", usage: u, pendingApprovals: 1 });
  assert.equal(st.text, "a: awaiting approval · 0/128k (0%) · $0.01");
  assert.match(st.tooltip, /Cost so far: \$0\.01/);
  assert.equal(st.icon, "question");
  // Awaiting approval also from the breakpoint alone (the approval/request not there yet).
  assert.equal(formatStatus({ agentId: "a", state: "PAUSED", usage: u, breakpoint: "AWAITING_APPROVAL" }).label, "awaiting approval");
  assert.equal(formatStatus({ agentId: "a", state: "PAUSED", usage: u }).label, "paused");
  // Context used (last model call) of the model's window, and the cost so far; the title first.
  const c = formatStatus({
    agentId: "a",
    title: "Fix the flaky upload test in the storage module please",
    state: "READY",
    usage: { ...u, costUsd: 0.004 },
    contextTokens: 50_000,
    model: { provider: "anthropic", model: "claude-sonnet-4-5" },
  });
  assert.equal(c.detail, "ready · 50k/200k (25%) · $0.0040");
  assert.equal(c.text, "Fix the flaky upload test in th…: ready · 50k/200k (25%) · $0.0040");
  assert.deepEqual(c.context, { used: 50_000, window: 200_000, percent: 25, known: true });
  assert.match(c.tooltip, /Context: 50,000 of 200,000 tokens \(25%\)/);
  assert.match(c.tooltip, /\(a\)/);

  const now = new Date("2026-01-01T12:00:00Z");
  const e = agentEntry(
    {
      agentId: "a1",
      templateId: "default",
      createdAt: "2026-01-01T10:00:00Z",
      updatedAt: "2026-01-01T11:58:00Z",
      state: "WORKING",
      lastSeq: 3,
      messageCount: 2,
      model: { provider: "anthropic", model: "claude-x" },
      workDir: "/ws",
    },
    now,
  );
  assert.equal(e.description, "working · anthropic/claude-x · 2 min ago");
  assert.equal(e.icon, "sync~spin");
  assert.match(e.tooltip, /Work dir: \/ws/);

  const msg = selectionMessage({ text: "const a = 1;\n", path: "src/a.ts", languageId: "typescript", startLine: 3, endLine: 3 });
  assert.equal(msg, "From `src/a.ts` (line 3):\n\n```typescript\nconst a = 1;\n```\n");
  const fenced = selectionMessage({ text: "```\nx\n```", path: "R.md", languageId: "markdown", startLine: 1, endLine: 3 });
  assert.ok(fenced.includes("````markdown\n```\nx\n```\n````"));
});

test("ensureExecutable restores a lost executable bit of the bundled binary", (t) => {
  const dir = mkdtempSync(join(tmpdir(), "kode-mode-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const p = join(dir, "kode-rpc");
  assert.equal(ensureExecutable(p), "missing");
  writeFileSync(p, "#!/bin/sh\n");
  chmodSync(p, 0o644);
  if (process.platform === "win32") {
    assert.equal(ensureExecutable(p), "ok");
    return;
  }
  assert.equal(ensureExecutable(p), "fixed"); // (root too: X_OK needs some x bit)
  assert.ok(statSync(p).mode & 0o100);
  assert.equal(ensureExecutable(p), "ok");
});

// The frozen build from `python packaging/build.py` (dist/kode-rpc/kode-rpc at the repo
// root), placed where a release puts it: used before PATH. Skipped when not built.
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const frozen = join(repoRoot, "dist", "kode-rpc", process.platform === "win32" ? "kode-rpc.exe" : "kode-rpc");
test("a bundled frozen server is found and runs an agent", { skip: !existsSync(frozen) && "no frozen build" }, async (t) => {
  const env = tempEnv();
  t.after(() => env.cleanup());
  // Discovery gets the frozen binary as bundledPath, as the extension passes <extensionPath>/bin/kode-rpc/kode-rpc.
  const { session } = makeSession(env, {
    settings: { defaultProvider: "echo" },
    client: { serverPath: undefined, bundledPath: frozen },
  });
  t.after(() => session.dispose());
  const client = await session.start();
  assert.equal(client.serverCommand.source, "bundledPath");
  assert.equal(client.serverCommand.command, frozen);
  const a = await session.createAgent();
  await sendAndWait(session, a.agentId, "frozen hello");
  assert.equal(a.model.assistantText(), "frozen hello");
});
