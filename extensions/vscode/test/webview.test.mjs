// The webview side: message validation and dispatch (fake target and a real session),
// the controller's posts, the HTML (CSP + nonce) and the markdown sanitizer.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import {
  ChatViewController,
  contentSecurityPolicy,
  handleWebviewMessage,
  makeNonce,
  parseWebviewMessage,
  renderChatHtml,
  renderMarkdown,
} from "../out/core.mjs";
import { makeSession, tempEnv, waitUntil } from "./helpers.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
let env;
before(() => {
  env = tempEnv();
});
after(() => env.cleanup());

function fakeTarget() {
  const calls = [];
  return {
    calls,
    ready: () => void calls.push(["ready"]),
    send: (text) => void calls.push(["send", text]),
    interrupt: () => void calls.push(["interrupt"]),
    approve: (id, d) => void calls.push(["approve", id, d]),
    showLog: () => void calls.push(["showLog"]),
  };
}

test("handleWebviewMessage maps send/interrupt/approve/ready to target calls", async () => {
  const t = fakeTarget();
  assert.deepEqual(await handleWebviewMessage({ type: "ready" }, t), { ok: true, type: "ready" });
  assert.deepEqual(await handleWebviewMessage({ type: "send", text: "  hi there \n" }, t), { ok: true, type: "send" });
  assert.deepEqual(await handleWebviewMessage({ type: "interrupt" }, t), { ok: true, type: "interrupt" });
  assert.deepEqual(
    await handleWebviewMessage({ type: "approve", approvalId: "apr_1", decision: "always" }, t),
    { ok: true, type: "approve" },
  );
  await handleWebviewMessage({ type: "showLog" }, t);
  assert.deepEqual(t.calls, [["ready"], ["send", "hi there"], ["interrupt"], ["approve", "apr_1", "always"], ["showLog"]]);
});

test("handleWebviewMessage refuses malformed messages and reports target errors", async () => {
  const t = fakeTarget();
  for (const bad of [
    null,
    "send",
    { type: "nope" },
    { type: "send" },
    { type: "send", text: "   " },
    { type: "send", text: 42 },
    { type: "approve", approvalId: "a", decision: "maybe" },
    { type: "approve", decision: "allow" },
  ]) {
    const r = await handleWebviewMessage(bad, t);
    assert.equal(r.ok, false, JSON.stringify(bad));
  }
  assert.equal(t.calls.length, 0);
  assert.deepEqual(parseWebviewMessage({ type: "approve", approvalId: "x", decision: "deny", extra: 1 }), {
    type: "approve",
    approvalId: "x",
    decision: "deny",
  });
  const failing = { ...t, send: async () => { throw new Error("boom"); } };
  assert.deepEqual(await handleWebviewMessage({ type: "send", text: "x" }, failing), { ok: false, error: "boom" });
});

test("dispatcher over a real session: ready -> reset, send -> streamed echo, interrupt, approve", async (t) => {
  const { session, host } = makeSession(env, { visible: true });
  t.after(() => session.dispose());
  const echo = await session.createAgent({ provider: "echo" });
  const posted = [];
  const ctl = new ChatViewController(session, echo.agentId, (m) => posted.push(m));
  t.after(() => ctl.dispose());

  // Nothing is posted before the webview says it is ready.
  assert.deepEqual(await handleWebviewMessage({ type: "send", text: "early" }, ctl), { ok: true, type: "send" });
  await waitUntil(session, () => echo.model.assistantText() === "early" && echo.model.state === "READY");
  assert.equal(posted.length, 0);

  await handleWebviewMessage({ type: "ready" }, ctl);
  assert.equal(posted[0].type, "reset");
  assert.equal(posted[0].agentId, echo.agentId);
  assert.deepEqual(posted[0].items.map((i) => i.kind), ["user", "assistant"]);
  assert.equal(posted[0].header.state, "READY");
  assert.match(posted[0].header.statusText, /^ready · \d+\/128k \([\d.]+%\) · \$0\.00$/);
  assert.equal(posted[0].header.stateLabel, "ready");
  assert.equal(posted[0].header.title, "early", "titled from the first message");
  assert.equal(posted[0].header.model, "echo/echo");

  posted.length = 0;
  await handleWebviewMessage({ type: "send", text: "second message here" }, ctl);
  await waitUntil(session, () => echo.model.assistantText().endsWith("second message here") && echo.model.state === "READY");
  await new Promise((r) => setTimeout(r, 50));
  const itemPosts = posted.filter((m) => m.type === "items").flatMap((m) => m.items);
  assert.ok(itemPosts.some((i) => i.kind === "user" && i.text === "second message here"));
  const lastAssistant = itemPosts.filter((i) => i.kind === "assistant").at(-1);
  assert.equal(lastAssistant.text, "second message here");
  assert.equal(lastAssistant.streaming, false);
  assert.ok(posted.some((m) => m.type === "header" && m.header.state === "WORKING"));
  assert.equal(posted.filter((m) => m.type === "header").at(-1).header.state, "READY");

  // interrupt + approve on a scripted agent waiting on an fs_write approval.
  const sc = await session.createAgent({
    provider: "scripted",
    permissionMode: "approval",
    script: [
      { toolCalls: [{ name: "fs_write", input: { path: "via-webview.txt", content: "ok" } }] },
      { text: "written" },
      { text: "slow step", delayMs: 5000 },
    ],
  });
  const out2 = [];
  const ctl2 = new ChatViewController(session, sc.agentId, (m) => out2.push(m));
  t.after(() => ctl2.dispose());
  await handleWebviewMessage({ type: "ready" }, ctl2);
  await handleWebviewMessage({ type: "send", text: "write" }, ctl2);
  const card = await waitUntil(session, () => sc.model.pendingApprovals()[0], 20_000, "approval");
  assert.ok(out2.some((m) => m.type === "items" && m.items.some((i) => i.kind === "tool" && i.approval?.status === "pending")));
  assert.equal(host.notified.length, 0);
  await handleWebviewMessage({ type: "approve", approvalId: card.approval.approvalId, decision: "allow" }, ctl2);
  await waitUntil(session, () => sc.model.assistantText().includes("written") && sc.model.state === "READY");
  assert.equal(readFileSync(join(env.work, "via-webview.txt"), "utf8"), "ok");
  // Answering again posts an error instead of throwing.
  await handleWebviewMessage({ type: "approve", approvalId: card.approval.approvalId, decision: "deny" }, ctl2);
  assert.ok(out2.some((m) => m.type === "error" && /already answered/.test(m.message)));

  await handleWebviewMessage({ type: "send", text: "next" }, ctl2);
  await waitUntil(session, () => sc.model.state === "WORKING", 10_000, "working");
  await handleWebviewMessage({ type: "interrupt" }, ctl2);
  await waitUntil(session, () => sc.model.lastDoneReason === "interrupted", 10_000, "interrupted");
  assert.ok(out2.some((m) => m.type === "items" && m.items.some((i) => i.kind === "notice" && i.text === "Turn interrupted.")));
});

test("a chat for an agent that does not exist shows an error", async (t) => {
  const { session } = makeSession(env);
  t.after(() => session.dispose());
  const posted = [];
  const ctl = new ChatViewController(session, "no-such-agent", (m) => posted.push(m));
  t.after(() => ctl.dispose());
  assert.deepEqual(await handleWebviewMessage({ type: "ready" }, ctl), { ok: true, type: "ready" });
  assert.equal(posted.length, 1);
  assert.equal(posted[0].type, "error");
  assert.match(posted[0].message, /not found/);
});

test("chat HTML: CSP with nonce, only nonce'd scripts, escaped title", () => {
  const nonce = makeNonce();
  assert.match(nonce, /^[A-Za-z0-9]{32}$/);
  assert.notEqual(makeNonce(), nonce);
  const html = renderChatHtml({
    cspSource: "https://file+.vscode-resource.vscode-cdn.net",
    nonce,
    scriptUri: "https://file+.vscode-resource.vscode-cdn.net/ext/dist/webview.js",
    styleUri: "https://file+.vscode-resource.vscode-cdn.net/ext/media/chat.css",
    title: 'agent <"x">',
  });
  const csp = contentSecurityPolicy("https://file+.vscode-resource.vscode-cdn.net", nonce);
  assert.ok(html.includes(`content="${csp.replace(/'/g, "&#39;")}"`));
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, new RegExp(`script-src 'nonce-${nonce}'`));
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const scripts = [...html.matchAll(/<script\b[^>]*>/g)].map((m) => m[0]);
  assert.equal(scripts.length, 1);
  for (const s of scripts) {
    assert.ok(s.includes(`nonce="${nonce}"`));
    assert.ok(s.includes('src="'), "no inline script bodies");
  }
  assert.ok(html.includes("agent &lt;&quot;x&quot;&gt;"));
  assert.ok(!html.includes('<"x">'));
  for (const id of ["transcript", "input", "send", "interrupt", "status-text"]) assert.ok(html.includes(`id="${id}"`));
  assert.throws(() => renderChatHtml({ cspSource: "x", nonce: "short", scriptUri: "a", styleUri: "b", title: "t" }));
});

test("markdown: rendered, raw HTML escaped, unsafe links dropped", () => {
  const html = renderMarkdown(
    "# T\n\n**bold** `code` <script>alert(1)</script> <img src=x onerror=alert(1)>\n\n" +
      "[bad](javascript:alert(1)) [ok](https://example.com)\n\n```js\nlet a = '<b>';\n```\n",
  );
  assert.match(html, /<h1>T<\/h1>/);
  assert.match(html, /<strong>bold<\/strong>/);
  assert.match(html, /<code>code<\/code>/);
  assert.doesNotMatch(html, /<script|<img/);
  assert.match(html, /&lt;script&gt;/);
  assert.doesNotMatch(html, /href="javascript:/);
  assert.match(html, /<a href="https:\/\/example.com" rel="noopener noreferrer">ok<\/a>/);
  assert.match(html, /<pre><code class="language-js">let a = '&lt;b&gt;';/);
});

test("the built webview bundle and stylesheet exist and carry markdown-it", () => {
  const js = join(root, "dist", "webview.js");
  assert.ok(existsSync(js), "npm run build made dist/webview.js");
  const src = readFileSync(js, "utf8");
  assert.ok(src.length > 50_000, "markdown-it is bundled in");
  assert.ok(!/require\(["']vscode["']\)/.test(src));
  assert.ok(existsSync(join(root, "media", "chat.css")));
});
