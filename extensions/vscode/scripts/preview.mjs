// The chat webview outside VS Code: the real dist/webview.js and media/chat.css, the HTML
// from renderChatHtml, and a stub `acquireVsCodeApi` that answers `ready` with a sample
// transcript. Used by scripts/screenshot.mjs and the (optional) browser test.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { makeNonce, renderChatHtml } from "../out/core.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

const usage = { inputTokens: 1840, outputTokens: 362, cacheReadTokens: 0, cacheWriteTokens: 0, totalTokens: 2202, costUsd: 0.0109 };
export const items = [
  { kind: "user", id: "u1", text: "Why does `parseConfig` fail on an empty file? Fix it and run the tests." },
  {
    kind: "assistant",
    id: "a1",
    text: "Let me look at the parser first.",
    streaming: false,
  },
  {
    kind: "tool",
    id: "c1",
    name: "fs_read",
    inputPreview: "src/config.py",
    input: { path: "src/config.py" },
    state: "COMPLETED",
    output: "",
    outputTruncated: false,
    result: { ok: true, data: { path: "src/config.py", lines: 42 } },
    durationMs: 3,
  },
  {
    kind: "assistant",
    id: "a2",
    text:
      "`json.loads(\"\")` raises `JSONDecodeError`. An empty file should mean *no settings*:\n\n" +
      "```python\ndef parse_config(text: str) -> dict:\n    if not text.strip():\n        return {}\n    return json.loads(text)\n```\n\nRunning the tests:",
    streaming: false,
  },
  {
    kind: "tool",
    id: "c2",
    name: "bash_run",
    inputPreview: "python -m pytest -q tests/test_config.py",
    input: { cmd: "python -m pytest -q tests/test_config.py" },
    state: "COMPLETED",
    output: "....                                     [100%]\n4 passed in 0.12s\n",
    outputTruncated: false,
    result: { ok: true, data: { exitCode: 0 } },
    durationMs: 812,
  },
  {
    kind: "tool",
    id: "c3",
    name: "fs_edit",
    inputPreview: "src/config.py (replace 1)",
    input: { path: "src/config.py", old_string: "    return json.loads(text)", new_string: "    if not text.strip():\n        return {}\n    return json.loads(text)" },
    state: "APPROVAL_REQUIRED",
    output: "",
    outputTruncated: false,
    approval: {
      approvalId: "apr_1",
      status: "pending",
      subject: {
        type: "file_change",
        path: "/home/me/project/src/config.py",
        diff:
          "--- src/config.py\n+++ src/config.py\n@@ -12,4 +12,6 @@\n def parse_config(text: str) -> dict:\n-    return json.loads(text)\n+    if not text.strip():\n+        return {}\n+    return json.loads(text)\n",
      },
    },
  },
];
export const header = {
  agentId: "chat-20260115-101500-3f2a",
  title: "Make parse_config accept an empty file",
  state: "PAUSED",
  busy: true,
  stateLabel: "awaiting approval",
  statusText: "awaiting approval · 2.2k/200k (1.1%) · $0.0109",
  tooltip: "",
  usage,
  context: { used: 2202, window: 200_000, percent: 1.1, known: true },
  costUsd: 0.0109,
  model: "anthropic/claude-sonnet-4-5",
};

/** Writes out/preview/chat.html (+ the stub script); returns the HTML file's path. */
export function writePreview(outDir = join(root, "out", "preview")) {
  mkdirSync(outDir, { recursive: true });
  // A stub of VS Code's webview API: answers `ready` with the sample transcript.
  const stub = `
window.acquireVsCodeApi = () => ({
  postMessage(m) {
    if (m && m.type === "ready") {
      setTimeout(() => window.postMessage(${JSON.stringify({ type: "reset", agentId: header.agentId, items, header })}, "*"), 0);
    }
  },
  getState() { return undefined; },
  setState() {},
});
`;
  writeFileSync(join(outDir, "vscode-stub.js"), stub);
  const html = renderChatHtml({
    cspSource: "file:",
    nonce: makeNonce(),
    scriptUri: pathToFileURL(join(root, "dist", "webview.js")).href,
    styleUri: pathToFileURL(join(root, "media", "chat.css")).href,
    title: header.title,
    preludeScripts: [pathToFileURL(join(outDir, "vscode-stub.js")).href],
  });
  const htmlPath = join(outDir, "chat.html");
  writeFileSync(htmlPath, html);
  return htmlPath;
}

