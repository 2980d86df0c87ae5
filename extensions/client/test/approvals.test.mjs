import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { collect, isDone, LONG, startClient, tempDir } from "./helpers.mjs";

const writeScript = (content) => [
  { toolCalls: [{ name: "fs_write", input: { path: "out.txt", content } }] },
  { text: "wrote it" },
];

async function approvalAgent(client, agentId, workDir, content) {
  return client.createAgent({
    agentId,
    model: { provider: "scripted", script: writeScript(content) },
    permission: { mode: "approval" },
    sandbox: { workDir },
  });
}

test("approval handler allows: the file is written", { timeout: LONG }, async (t) => {
  const seen = [];
  const { client } = await startClient(t, {
    approvalHandler: async (req, ctx) => {
      seen.push(req);
      assert.ok(ctx.signal instanceof AbortSignal);
      return { decision: "allow", note: "fine" };
    },
  });
  const workDir = tempDir();
  const ev = collect(client, "appr-allow");
  await approvalAgent(client, "appr-allow", workDir, "allowed content");
  const r = await client.complete({ agentId: "appr-allow", text: "write the file" });
  assert.equal(r.status, "ok");
  assert.equal(seen.length, 1);
  assert.equal(seen[0].agentId, "appr-allow");
  assert.equal(seen[0].call.name, "fs_write");
  assert.equal(seen[0].subject.type, "file_change");
  assert.equal(readFileSync(join(workDir, "out.txt"), "utf8"), "allowed content");
  const decided = await ev.waitFor((e) => e.event.type === "permission_decided");
  assert.equal(decided.event.decision, "allow");
  assert.equal(decided.event.decidedBy, "client");
  const end = await ev.waitFor((e) => e.event.type === "tool:end");
  assert.equal(end.event.call.state, "COMPLETED");
});

test("approval handler denies: the file is untouched", { timeout: LONG }, async (t) => {
  let calls = 0;
  const { client } = await startClient(t, {
    approvalHandler: () => {
      calls++;
      return { decision: "deny", note: "not now" };
    },
  });
  const workDir = tempDir();
  const ev = collect(client, "appr-deny");
  await approvalAgent(client, "appr-deny", workDir, "must not appear");
  const r = await client.complete({ agentId: "appr-deny", text: "write the file" });
  assert.equal(r.status, "ok");
  assert.equal(calls, 1);
  assert.ok(!existsSync(join(workDir, "out.txt")));
  const end = await ev.waitFor((e) => e.event.type === "tool:end");
  assert.equal(end.event.call.state, "DENIED");
});

test("a throwing handler, a bogus answer or no handler all mean deny", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t, {
    approvalHandler: () => {
      throw new Error("handler bug");
    },
  });
  const workDir = tempDir();
  await approvalAgent(client, "appr-throw", workDir, "x");
  await client.complete({ agentId: "appr-throw", text: "go" });
  assert.ok(!existsSync(join(workDir, "out.txt")));

  client.setApprovalHandler(() => ({ decision: "maybe" }));
  const ev2 = collect(client, "appr-bogus");
  await approvalAgent(client, "appr-bogus", workDir, "x");
  await client.complete({ agentId: "appr-bogus", text: "go" });
  assert.equal((await ev2.waitFor((e) => e.event.type === "tool:end")).event.call.state, "DENIED");

  client.setApprovalHandler(undefined);
  const ev3 = collect(client, "appr-none");
  await approvalAgent(client, "appr-none", workDir, "x");
  await client.complete({ agentId: "appr-none", text: "go" });
  const decided = await ev3.waitFor((e) => e.event.type === "permission_decided");
  assert.equal(decided.event.decision, "deny");
  assert.ok(!existsSync(join(workDir, "out.txt")));
});

test("approvals: false -> permission_required events; a handler set later answers via agent/decide", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t, { approvals: false });
  const workDir = tempDir();
  const ev = collect(client, "appr-events");
  await approvalAgent(client, "appr-events", workDir, "via decide");
  // complete returns early with status "paused" and the approval ids.
  const paused = await client.complete({ agentId: "appr-events", text: "go" });
  assert.equal(paused.status, "paused");
  assert.equal(paused.permissionIds.length, 1);
  const req = await ev.waitFor((e) => e.event.type === "permission_required");
  assert.equal(req.event.approvalId, paused.permissionIds[0]);
  const ok = await client.decide({ agentId: "appr-events", approvalId: req.event.approvalId, decision: "allow" });
  assert.equal(ok.accepted, true);
  await ev.waitFor(isDone());
  assert.equal(readFileSync(join(workDir, "out.txt"), "utf8"), "via decide");

  // Event-driven handler: runs on live permission_required events.
  client.setApprovalHandler(() => ({ decision: "allow" }));
  const ev2 = collect(client, "appr-events-2");
  const workDir2 = tempDir();
  await approvalAgent(client, "appr-events-2", workDir2, "via handler");
  await client.send({ agentId: "appr-events-2", text: "go" });
  await ev2.waitFor(isDone());
  assert.equal(readFileSync(join(workDir2, "out.txt"), "utf8"), "via handler");
});
