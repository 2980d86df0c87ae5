// compact(), checkpoints(), rewind() against the real server (scripted provider).
import assert from "node:assert/strict";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { collect, isDone, LONG, startClient, tempDir } from "./helpers.mjs";

test("checkpoints + rewind: dry run previews, conflicts block, force restores", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  const work = tempDir("kode-client-work-");
  writeFileSync(join(work, "a.txt"), "original\n");
  const ev = collect(client, "cp-1");
  await client.createAgent({
    agentId: "cp-1",
    model: {
      provider: "scripted",
      script: [
        { text: "Writing.", toolCalls: [{ name: "fs_write", input: { path: "a.txt", content: "changed\n" } }] },
        { text: "Done." },
      ],
    },
    permission: { mode: "auto" },
    sandbox: { workDir: work },
  });
  const r = await client.complete({ agentId: "cp-1", text: "change a.txt" });
  assert.equal(r.status, "ok");
  const diff = await ev.waitFor((e) => e.event.type === "turn_diff");
  assert.deepEqual(diff.event.files.map((f) => [f.path, f.change]), [["a.txt", "modified"]]);
  assert.match(diff.event.diff, /-original/);

  const { checkpoints } = await client.checkpoints("cp-1");
  assert.equal(checkpoints.length, 1);
  assert.equal(checkpoints[0].checkpointId, diff.event.checkpointId);
  assert.equal(checkpoints[0].files, 1);

  const dry = await client.rewind("cp-1", checkpoints[0].checkpointId, { dryRun: true });
  assert.equal(dry.restored, false);
  assert.deepEqual(dry.files, [{ path: "a.txt", change: "modified" }]);
  assert.deepEqual(dry.conflicts, []);
  assert.equal(readFileSync(join(work, "a.txt"), "utf8"), "changed\n");

  // An edit outside the agent is a conflict: nothing restored without force.
  writeFileSync(join(work, "a.txt"), "edited by the user\n");
  const blocked = await client.rewind("cp-1", checkpoints[0].checkpointId, { restore: "code" });
  assert.equal(blocked.restored, false);
  assert.deepEqual(blocked.conflicts, ["a.txt"]);
  assert.equal(readFileSync(join(work, "a.txt"), "utf8"), "edited by the user\n");

  const forced = await client.rewind("cp-1", checkpoints[0].checkpointId, { force: true });
  assert.equal(forced.restored, true);
  assert.equal(readFileSync(join(work, "a.txt"), "utf8"), "original\n");
  const rw = await ev.waitFor((e) => e.event.type === "rewound");
  assert.equal(rw.event.restore, "both");
  const msgs = await client.messages({ agentId: "cp-1" });
  assert.ok(msgs.messages.some((m) => m.rewound === true));
  assert.ok(existsSync(join(work, "a.txt")));

  await assert.rejects(client.rewind("cp-1", "cp_999"), (e) => e.code === -32002);
});

test("compact(): context_compression events and a summary message", { timeout: LONG }, async (t) => {
  const { client } = await startClient(t);
  const ev = collect(client, "cmp-1");
  const long = "word ".repeat(400);
  await client.createAgent({
    agentId: "cmp-1",
    model: {
      provider: "scripted",
      script: [{ text: long }, { text: long }, { text: "SUMMARY: we talked." }],
    },
    context: { maxTokens: 100000, keepRecentTokens: 10 },
  });
  await client.complete({ agentId: "cmp-1", text: "first " + long });
  await client.complete({ agentId: "cmp-1", text: "second " + long });
  const r = await client.compact("cmp-1", "keep it short");
  assert.equal(r.compressed, true);
  assert.ok(r.compactedMessages > 0);
  const end = await ev.waitFor((e) => e.event.type === "context_compression" && e.event.phase === "end");
  assert.equal(end.event.compactedMessages, r.compactedMessages);
  assert.match(end.event.summary, /SUMMARY/);
  const msgs = await client.messages({ agentId: "cmp-1" });
  assert.ok(msgs.messages.some((m) => m.kind === "summary"));
  assert.ok(msgs.messages.some((m) => m.compacted === true));
  assert.ok(ev.events.some(isDone()));
});
