// Pure helpers of turn diffs: a file's section of a unified diff, reverse-applying it,
// the rewind modal's text, and the webview messages of the diff card and Compact button.
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileSection, parseWebviewMessage, reverseApply, rewindPrompt, ChatModel } from "../out/core.mjs";

const DIFF = `diff --git a/a.txt b/a.txt
index 1..2 100644
--- a/a.txt
+++ b/a.txt
@@ -1,3 +1,3 @@
 one
-two
+TWO
 three
@@ -8,2 +8,3 @@
 eight
 nine
+ten
diff --git a/b.txt b/b.txt
deleted file mode 100644
--- a/b.txt
+++ /dev/null
@@ -1,2 +0,0 @@
-gone
-last
\\ No newline at end of file
`;

test("fileSection + reverseApply rebuild the file before the turn", () => {
  const a = fileSection(DIFF, "a.txt");
  assert.match(a, /^diff --git a\/a.txt/);
  assert.doesNotMatch(a, /b\.txt/);
  const after = "one\nTWO\nthree\n4\n5\n6\n7\neight\nnine\nten\n";
  assert.equal(reverseApply(a, after), "one\ntwo\nthree\n4\n5\n6\n7\neight\nnine\n");
  assert.equal(reverseApply(a, "something else\n"), undefined, "a file changed since is not guessed");
  assert.equal(reverseApply(fileSection(DIFF, "b.txt"), ""), "gone\nlast");
  assert.equal(fileSection(DIFF, "c.txt"), undefined);
});

test("rewindPrompt: files, conflicts, and the force button", () => {
  const p = rewindPrompt("My chat", { files: [{ path: "x", change: "added" }, { path: "y", change: "modified" }], conflicts: [] });
  assert.equal(p.button, "Rewind");
  assert.equal(p.force, false);
  assert.match(p.detail, /x \(recreated\)/);
  const q = rewindPrompt("My chat", { files: [{ path: "y", change: "modified" }], conflicts: ["y"] });
  assert.equal(q.force, true);
  assert.match(q.detail, /! y/);
});

test("webview messages: compact, openDiff, rewind", () => {
  assert.deepEqual(parseWebviewMessage({ type: "compact" }), { type: "compact" });
  assert.deepEqual(parseWebviewMessage({ type: "openDiff", checkpointId: "cp_1", path: "a.txt" }), { type: "openDiff", checkpointId: "cp_1", path: "a.txt" });
  assert.ok("error" in parseWebviewMessage({ type: "openDiff", checkpointId: "cp_1" }));
  assert.deepEqual(parseWebviewMessage({ type: "rewind", checkpointId: "cp_2" }), { type: "rewind", checkpointId: "cp_2" });
  assert.ok("error" in parseWebviewMessage({ type: "rewind" }));
});

test("ChatModel: mcp_status events update the server list; compression and turn_diff items", () => {
  const m = new ChatModel("a");
  let seq = 0;
  const env = (event, turnId) => ({ agentId: "a", seq: ++seq, channel: "monitor", turnId, event });
  m.setStatus({ state: "READY", lastSeq: 0, mcp: [{ server: "s1", status: "connecting" }] });
  assert.deepEqual(m.mcp(), [{ server: "s1", status: "connecting", tools: 0 }]);
  assert.equal(m.apply(env({ type: "mcp_status", server: "s1", status: "ready", tools: ["mcp__s1__a", "mcp__s1__b"] })).header, true);
  m.apply(env({ type: "mcp_status", server: "s0", status: "failed", error: "spawn ENOENT" }));
  assert.deepEqual(m.mcp(), [
    { server: "s0", status: "failed", tools: 0, error: "spawn ENOENT" },
    { server: "s1", status: "ready", tools: 2 },
  ]);
  m.apply(env({ type: "context_compression", phase: "start" }));
  assert.equal(m.items.length, 0);
  m.apply(env({ type: "context_compression", phase: "end", summary: "s", ratio: 0.25, compactedMessages: 6 }));
  assert.equal(m.items[0].text, "Context compressed: 6 messages summarised (context now 25% of before).");
  m.apply(env({ type: "turn_diff", turnId: "t1", checkpointId: "cp_1", files: [{ path: "a.txt", change: "modified", additions: 1, deletions: 1 }], diff: DIFF, truncated: false }, "t1"));
  assert.equal(m.diffs()[0].checkpointId, "cp_1");
  m.apply(env({ type: "rewound", checkpointId: "cp_1", restore: "code", messageIndex: 0 }));
  assert.equal(m.diffs()[0].rewound, true);
});
