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

test("status, tree entries and the selection message", () => {
  assert.equal(formatTokens(950), "950");
  assert.equal(formatTokens(1234), "1.2k");
  assert.equal(formatTokens(45_678), "46k");
  assert.equal(formatTokens(2_500_000), "2.5M");
  const u = { ...emptyUsage(), inputTokens: 10, outputTokens: 5, costUsd: 0.0123 };
  const st = formatStatus({ agentId: "a", state: "PAUSED", usage: u, pendingApprovals: 1 });
  assert.equal(st.text, "a: awaiting approval · 15 tokens");
  assert.match(st.tooltip, /Cost: \$0\.0123/);
  assert.equal(st.icon, "question");

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
