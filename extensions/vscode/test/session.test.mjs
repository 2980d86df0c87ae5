// KodeSession + ChatModel against the real kode-rpc server (echo and scripted providers).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ChatViewController, rewindPrompt } from "../out/core.mjs";
import { makeSession, sendAndWait, tempEnv, waitUntil } from "./helpers.mjs";

let env;
before(() => {
  env = tempEnv();
});
after(() => env.cleanup());

test("echo agent: the chat model ends with the streamed assistant text", async (t) => {
  const { session } = makeSession(env, { settings: { defaultProvider: "echo" } });
  t.after(() => session.dispose());
  const streamed = [];
  session.onDidChange((e) => {
    if (e.type === "items") for (const it of e.items) if (it.kind === "assistant") streamed.push(it.text);
  });
  const a = await session.createAgent();
  assert.match(a.agentId, /^chat-\d{8}-\d{6}-[0-9a-f]{4}$/);
  assert.equal(session.currentAgentId, a.agentId);
  assert.equal(a.info.model.provider, "echo");
  assert.equal(a.info.workDir, env.work, "the workspace folder is the sandbox workDir");

  const text = "Hello **world**, this is a streamed echo.";
  const r = await sendAndWait(session, a.agentId, text);
  assert.equal(r.done.event.reason, "completed");
  const items = a.model.items;
  assert.equal(items[0].kind, "user");
  assert.equal(items[0].text, text);
  assert.equal(items[0].turnId, r.turnId);
  const assistant = items.filter((i) => i.kind === "assistant");
  assert.equal(assistant.length, 1);
  assert.equal(assistant[0].text, text);
  assert.equal(assistant[0].streaming, false);
  assert.equal(a.model.assistantText(r.turnId), text);
  // It streamed: several intermediate texts, each a prefix of the final one.
  assert.ok(streamed.length >= 3, `streamed ${streamed.length} updates`);
  for (const s of streamed) assert.ok(text.startsWith(s), `${JSON.stringify(s)} is a prefix`);
  assert.equal(a.model.state, "READY");
});

test("scripted agent with two tool calls renders two tool cards with final states and output", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "auto",
    script: [
      {
        text: "Running two tools.",
        toolCalls: [
          { name: "bash_run", input: { cmd: "echo one; echo two >&2" } },
          { name: "fs_read", input: { path: "missing.txt" } },
        ],
      },
      { chunks: ["All ", "done", "."] },
    ],
  });
  const r = await sendAndWait(session, a.agentId, "go");
  assert.equal(r.done.event.reason, "completed");
  const m = a.model;
  const kinds = m.items.map((i) => i.kind);
  assert.deepEqual(kinds, ["user", "assistant", "tool", "tool", "assistant"]);
  const [bash, read] = m.tools();
  assert.equal(bash.name, "bash_run");
  assert.equal(bash.state, "COMPLETED");
  assert.equal(bash.inputPreview, "echo one; echo two >&2");
  assert.match(bash.output, /one\n/);
  assert.match(bash.output, /two\n/);
  assert.equal(bash.result.ok, true);
  assert.equal(bash.result.data.exitCode, 0);
  assert.ok(typeof bash.durationMs === "number");
  assert.equal(read.name, "fs_read");
  assert.equal(read.state, "FAILED");
  assert.equal(read.result.ok, false);
  assert.equal(read.result.errorType, "not_found");
  assert.equal(m.assistantText(), "Running two tools.All done.");
});

test("status text shows state and token usage after a turn", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    script: [{ text: "Counted.", usage: { inputTokens: 1200, outputTokens: 34 } }],
  });
  const before = session.status(a.agentId);
  assert.equal(before.text, `${a.agentId}: ready · 0/128k (0%) · $0.00`);
  await sendAndWait(session, a.agentId, "count");
  const st = session.status(a.agentId);
  // Titled from the first message; context = the last call's input + output, of 128k (scripted: not in the table).
  assert.equal(st.text, "count: ready · 1.2k/128k (1%) · $0.00");
  assert.equal(st.context.used, 1234);
  assert.match(st.tooltip, /State: ready/);
  assert.match(st.tooltip, /Tokens so far: 1,200 in, 34 out/);
  assert.equal(st.busy, false);
  // agent/status agrees (and refreshing does not double count).
  const again = await session.refreshStatus(a.agentId);
  assert.equal(again.text, st.text);
});

test("status shows working while a turn runs", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    script: [{ text: "slow", delayMs: 600 }],
  });
  const client = await session.start();
  const working = client.waitForEvent(a.agentId, (e) => e.event.type === "state_changed" && e.event.state === "WORKING");
  const done = client.waitForEvent(a.agentId, (e) => e.event.type === "done");
  await session.send(a.agentId, "go");
  await working;
  assert.match(session.status(a.agentId).text, /: working · /);
  assert.equal(session.status(a.agentId).icon, "sync~spin");
  await done;
  assert.match(session.status(a.agentId).text, /: ready · /);
});

test("list, open (history from the store), fork and delete", async (t) => {
  const first = makeSession(env);
  const a = await first.session.createAgent({
    provider: "scripted",
    permissionMode: "auto",
    script: [
      { text: "Writing.", toolCalls: [{ name: "fs_write", input: { path: "hist.txt", content: "x" } }] },
      { text: "Written." },
    ],
  });
  await sendAndWait(first.session, a.agentId, "write it");
  await first.session.dispose();

  // A new session (as after a VS Code restart) rebuilds the chat from agent/messages.
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const list = await session.listAgents();
  assert.ok(list.some((x) => x.agentId === a.agentId));
  const opened = await session.openAgent(a.agentId);
  assert.equal(session.currentAgentId, a.agentId);
  const items = opened.model.items;
  assert.deepEqual(
    items.map((i) => i.kind),
    ["user", "assistant", "tool", "assistant", "diff"],
    "the turn's diff card is read back too, where it arrived live",
  );
  assert.equal(items[0].text, "write it");
  assert.equal(items[2].name, "fs_write");
  assert.equal(items[2].state, "COMPLETED");
  assert.equal(items[3].text, "Written.");
  assert.equal(items[4].turnId, items[0].turnId);
  assert.deepEqual(items[4].files.map((f) => `${f.path}:${f.change}`), ["hist.txt:added"]);
  assert.equal(session.turnFileDiff(a.agentId, items[4].checkpointId, "hist.txt", "x").before, "");
  assert.match(session.status(a.agentId).text, /^write it: ready · \d+\/128k \([\d.]+%\) · \$0\.00$/);
  assert.ok(session.status(a.agentId).context.used > 0, "the last token_usage is read back from the store");

  const fork = await session.forkAgent(a.agentId, `${a.agentId}-copy`);
  assert.equal(fork.agentId, `${a.agentId}-copy`);
  assert.equal(fork.messageCount, 4);
  const forked = await session.openAgent(fork.agentId);
  assert.equal(forked.model.items.length, 4);

  assert.equal(await session.deleteAgent(fork.agentId), true);
  const after = await session.listAgents();
  assert.ok(!after.some((x) => x.agentId === fork.agentId));
  assert.ok(after.some((x) => x.agentId === a.agentId));
  assert.equal(session.getAgent(fork.agentId), undefined);
  assert.ok(existsSync(join(env.work, "hist.txt")));
});

test("interrupt ends a running turn", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "auto",
    script: [{ toolCalls: [{ name: "bash_run", input: { cmd: "sleep 20" } }] }, { text: "never" }],
  });
  const client = await session.start();
  // The tool is running (not just announced: a call interrupted before it runs is denied, not failed).
  const executing = client.waitForEvent(
    a.agentId,
    (e) => e.event.type === "breakpoint_changed" && e.event.current === "TOOL_EXECUTING",
  );
  const done = client.waitForEvent(a.agentId, (e) => e.event.type === "done", { timeoutMs: 15_000 });
  await session.send(a.agentId, "sleep");
  await executing;
  assert.equal(await session.interrupt(a.agentId), true);
  const d = await done;
  assert.equal(d.event.reason, "interrupted");
  const card = a.model.tools()[0];
  assert.equal(card.state, "FAILED");
  assert.ok(a.model.items.some((i) => i.kind === "notice" && i.text === "Turn interrupted."));
});

test("a provider failure (no API key) shows the error and the failed turn in the chat", async (t) => {
  // The server's environment has no OPENAI_API_KEY: the turn fails with `authentication`
  // before any network. The failure arrives as events (error, then done {reason: "error"});
  // agent/complete would answer it with status "error", not a JSON-RPC error.
  const serverEnv = { ...process.env };
  delete serverEnv.OPENAI_API_KEY;
  const { session } = makeSession(env, { client: { env: serverEnv } });
  t.after(() => session.dispose());
  const a = await session.createAgent({ provider: "openai", model: "gpt-test" });
  const r = await sendAndWait(session, a.agentId, "hi");
  assert.equal(r.done.event.reason, "error");
  const notices = a.model.items.filter((i) => i.kind === "notice" && i.turnId === r.turnId);
  const detail = notices.find((n) => n.level === "error" && /^model error: authentication: .*OPENAI_API_KEY/.test(n.text));
  assert.ok(detail, `the provider's message is shown: ${JSON.stringify(notices)}`);
  assert.ok(notices.some((n) => n.level === "error" && n.text === "Turn ended with an error."));
  assert.ok(notices.indexOf(detail) < notices.findIndex((n) => n.text === "Turn ended with an error."));
  assert.equal(a.model.state, "READY", "the agent is ready for the next message");

  // The same failure through agent/complete (the client library): a result, not a rejection.
  const client = await session.start();
  const c = await client.complete({ agentId: a.agentId, text: "again" });
  assert.equal(c.status, "error");
  assert.equal(c.error?.type, "authentication");
  assert.equal(c.error?.retryable, false);
});

// --- issues 12-14 on the client side: MCP status, compaction marker, turn diffs and rewind ---

test("MCP servers: the header lists each server, ready with its tool count or failed with the error", async (t) => {
  const { session } = makeSession(env, { settings: { defaultProvider: "echo" } });
  t.after(() => session.dispose());
  const mcpServer = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "tests", "mcp_server.py");
  const a = await session.createAgent({
    mcpServers: {
      notes: { command: "python3", args: [mcpServer] },
      broken: { command: "/nonexistent/kode-mcp-server" },
    },
  });
  const sent = [];
  const view = new ChatViewController(session, a.agentId, (m) => sent.push(m));
  t.after(() => view.dispose());
  await view.ready();
  const settled = () => a.model.mcp().length === 2 && a.model.mcp().every((m) => m.status === "ready" || m.status === "failed");
  await waitUntil(session, settled, 30_000, "both MCP servers settled");
  const [broken, notes] = a.model.mcp();
  assert.equal(broken.server, "broken");
  assert.equal(broken.status, "failed");
  assert.ok(broken.error && broken.error.length > 0, "failed server carries its error");
  assert.equal(notes.server, "notes");
  assert.equal(notes.status, "ready", `notes: ${notes.error ?? ""}`);
  assert.ok(notes.tools >= 5, `notes offers its tools (${notes.tools})`);
  await waitUntil(session, () => sent.some((m) => m.type === "header" && m.header.mcp.length === 2), 5_000, "header with mcp");
  // A reopened chat (another window, once this one closed) gets the same list from agent/status.mcp.
  view.dispose();
  await session.dispose();
  const { session: s2 } = makeSession(env);
  t.after(() => s2.dispose());
  const b = await s2.openAgent(a.agentId);
  assert.deepEqual(b.model.mcp().map((m) => m.server), ["broken", "notes"], "listed at once (reconnecting)");
  await waitUntil(s2, () => b.model.mcp().every((m) => m.status === "ready" || m.status === "failed"), 30_000, "reconnected");
  assert.deepEqual(b.model.mcp().map((m) => [m.server, m.status]), [["broken", "failed"], ["notes", "ready"]]);
});

test("compact: agent/compact adds 'Context compressed: N messages summarised' to the transcript", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const long = "word ".repeat(300);
  const a = await session.createAgent({
    provider: "scripted",
    script: [{ text: long }, { text: long }, { text: "SUMMARY of the chat." }],
    context: { keepRecentTokens: 10 },
  });
  await sendAndWait(session, a.agentId, `first ${long}`);
  await sendAndWait(session, a.agentId, `second ${long}`);
  const r = await session.compact(a.agentId);
  assert.equal(r.compressed, true);
  const marker = await waitUntil(
    session,
    () => a.model.items.find((i) => i.kind === "notice" && i.text.startsWith("Context compressed:")),
    10_000,
    "compression marker",
  );
  assert.match(marker.text, new RegExp(`^Context compressed: ${r.compactedMessages} messages summarised`));
  // Reopened: the summary message shows as a marker, not as a user message.
  await session.dispose();
  const { session: s2 } = makeSession(env);
  t.after(() => s2.dispose());
  const b = await s2.openAgent(a.agentId);
  assert.ok(b.model.items.some((i) => i.kind === "notice" && /Context compressed/.test(i.text)));
  assert.ok(!b.model.items.some((i) => i.kind === "user" && /SUMMARY/.test(i.text)));
});

test("turn_diff card: files with +/- counts, the file before the turn, rewind dry run / conflicts / force", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  writeFileSync(join(env.work, "keep.txt"), "one\ntwo\nthree\n");
  const a = await session.createAgent({
    provider: "scripted",
    permissionMode: "auto",
    script: [
      {
        text: "Editing.",
        toolCalls: [
          { name: "fs_write", input: { path: "keep.txt", content: "one\nTWO\nthree\nfour\n" } },
          { name: "fs_write", input: { path: "new.txt", content: "fresh\n" } },
        ],
      },
      { text: "Done." },
    ],
  });
  const r = await sendAndWait(session, a.agentId, "edit");
  assert.equal(r.done.event.reason, "completed");
  const card = await waitUntil(session, () => a.model.diffs()[0], 5_000, "diff card");
  assert.equal(card.turnId, r.turnId);
  const byPath = Object.fromEntries(card.files.map((f) => [f.path, f]));
  assert.equal(byPath["keep.txt"].change, "modified");
  assert.equal(byPath["keep.txt"].additions, 2);
  assert.equal(byPath["keep.txt"].deletions, 1);
  assert.equal(byPath["new.txt"].change, "added");
  // The diff editor's left side: reverse-applied from the file as it is now.
  const now = readFileSync(join(env.work, "keep.txt"), "utf8");
  const d = session.turnFileDiff(a.agentId, card.checkpointId, "keep.txt", now);
  assert.equal(d.before, "one\ntwo\nthree\n");
  assert.match(d.unified, /^-two$/m);
  assert.equal(session.turnFileDiff(a.agentId, card.checkpointId, "new.txt", "fresh\n").before, "");
  // Changed since: no reverse apply, the unified diff only.
  assert.equal(session.turnFileDiff(a.agentId, card.checkpointId, "keep.txt", "edited\n").before, undefined);

  // Rewind: preview, conflicts block, force restores; the card is marked.
  const dry = await session.rewind(a.agentId, card.checkpointId, { dryRun: true });
  assert.equal(dry.restored, false);
  assert.deepEqual(dry.files.map((f) => `${f.path}:${f.change}`).sort(), ["keep.txt:modified", "new.txt:deleted"]);
  const prompt = rewindPrompt("t", dry);
  assert.equal(prompt.force, false);
  assert.match(prompt.detail, /new\.txt \(removed\)/);
  writeFileSync(join(env.work, "keep.txt"), "edited by the user\n");
  const dry2 = await session.rewind(a.agentId, card.checkpointId, { dryRun: true });
  assert.deepEqual(dry2.conflicts, ["keep.txt"]);
  const p2 = rewindPrompt("t", dry2);
  assert.equal(p2.force, true);
  assert.equal(p2.button, "Rewind Anyway");
  const done = await session.rewind(a.agentId, card.checkpointId, { force: p2.force });
  assert.equal(done.restored, true);
  assert.equal(readFileSync(join(env.work, "keep.txt"), "utf8"), "one\ntwo\nthree\n");
  assert.equal(existsSync(join(env.work, "new.txt")), false);
  await waitUntil(session, () => card.rewound === true, 5_000, "card marked rewound");
  assert.ok(a.model.items.some((i) => i.kind === "notice" && /^Rewound code and conversation/.test(i.text)));
});
