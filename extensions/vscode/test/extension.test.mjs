// The built dist/extension.js, activated under Node with a stub `vscode` module (no VS Code
// download), against the real server: commands, chat panel + webview messages, tree,
// status bar, approval notification when the chat is hidden, fork, delete, log, deactivate.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createVscodeStub } from "./vscode-stub.mjs";
import { tempEnv } from "./helpers.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

let env;
let saved;
before(() => {
  env = tempEnv();
  // The extension passes process.env to the server: keep its logs and config in the temp dir.
  saved = { log: process.env.KODE_LOG_DIR, cfg: process.env.KODE_CONFIG_DIR };
  process.env.KODE_LOG_DIR = env.log;
  process.env.KODE_CONFIG_DIR = env.config;
});
after(() => {
  for (const [k, v] of [["KODE_LOG_DIR", saved.log], ["KODE_CONFIG_DIR", saved.cfg]]) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  env.cleanup();
});

async function until(pred, what, timeoutMs = 20_000) {
  const t0 = Date.now();
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

test("package.json: contributions are consistent and vsce-ready", () => {
  assert.equal(pkg.main, "./dist/extension.js");
  assert.match(pkg.engines.vscode, /^\^1\.9\d\.0$/);
  const typesVscode = pkg.devDependencies["@types/vscode"];
  const ver = (v) => v.replace(/^[\^~]/, "").split(".").map(Number);
  const [a, b] = [ver(typesVscode), ver(pkg.engines.vscode)];
  const cmp = a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
  assert.ok(cmp <= 0, "@types/vscode is not newer than engines.vscode (vsce refuses otherwise)");
  assert.equal(pkg.dependencies["@kode-rpc/client"], "file:../client");
  assert.ok(pkg.license && pkg.publisher);
  assert.match(pkg.scripts.package, /--allow-missing-repository/, "vsce must not prompt");
  const ids = pkg.contributes.commands.map((c) => c.command);
  for (const id of ["kode.newAgent", "kode.sendSelection", "kode.interrupt", "kode.showServerLog", "kode.openAgent", "kode.deleteAgent", "kode.forkAgent"]) {
    assert.ok(ids.includes(id), id);
  }
  assert.equal(pkg.contributes.commands.find((c) => c.command === "kode.sendSelection").title, "Send Selection to Agent");
  const props = Object.keys(pkg.contributes.configuration.properties);
  assert.deepEqual(props.sort(), ["kode.dataDir", "kode.defaultModel", "kode.defaultProvider", "kode.permissionMode", "kode.serverPath"]);
  assert.deepEqual(pkg.contributes.configuration.properties["kode.permissionMode"].enum, ["auto", "approval", "readonly"]);
  assert.equal(pkg.contributes.viewsContainers.activitybar[0].id, "kode");
  assert.equal(pkg.contributes.views.kode[0].id, "kode.agents");
  for (const m of Object.values(pkg.contributes.menus).flat()) assert.ok(ids.includes(m.command), m.command);
  assert.ok(existsSync(join(root, pkg.contributes.viewsContainers.activitybar[0].icon)));
});

test("extension under a stub vscode: new agent, chat, tree, status, approvals, fork, delete", async (t) => {
  const stub = createVscodeStub({
    workspaceFolder: env.work,
    config: { "kode.defaultProvider": "echo", "kode.permissionMode": "approval", "kode.dataDir": env.data },
  });
  const uninstall = stub.install();
  t.after(uninstall);
  const ext = stub.loadExtension(join(root, "dist", "extension.js"));
  const { rec } = stub;
  const context = {
    extensionPath: root,
    extensionUri: stub.vscode.Uri.file(root),
    subscriptions: [],
    extension: { packageJSON: pkg },
    globalState: memento(),
  };
  ext.activate(context);
  let deactivated = false;
  t.after(async () => {
    if (!deactivated) await ext.deactivate();
  });

  // Every contributed command is registered.
  for (const c of pkg.contributes.commands) assert.ok(rec.commands.has(c.command), `registered ${c.command}`);
  assert.equal(rec.treeViews[0].id, "kode.agents");
  const tree = rec.treeViews[0].options.treeDataProvider;
  const status = rec.statusItems[0];

  // kode.newAgent: an echo agent (kode.defaultProvider) and its chat panel.
  const agentId = await rec.commands.get("kode.newAgent")();
  assert.match(agentId, /^chat-/);
  const panel = rec.panels.at(-1);
  assert.equal(panel.viewType, "kode.chat");
  assert.equal(panel.title, agentId);
  assert.equal(panel.options.enableScripts, true);
  const html = panel.webview.html;
  const nonce = /script-src 'nonce-([A-Za-z0-9]+)'/.exec(html.replace(/&#39;/g, "'"))[1];
  assert.ok(html.includes(`<script nonce="${nonce}" src="https://stub.vscode-cdn.net${join(root, "dist", "webview.js")}">`));
  assert.ok(html.includes("default-src &#39;none&#39;"));
  assert.ok(rec.output.lines.some((l) => /kode: connected to kode-rpc/.test(l)), "the server log is fed by the library's logger");
  assert.ok(rec.output.lines.some((l) => l.includes(`data dir ${env.data}`)), "kode.dataDir is used");

  // The webview script says ready, then sends a message.
  panel.receive({ type: "ready" });
  await until(() => panel.posted.find((m) => m.type === "reset"), "reset");
  panel.receive({ type: "send", text: "hello from the webview" });
  await until(
    () => panel.posted.some((m) => m.type === "items" && m.items.some((i) => i.kind === "assistant" && !i.streaming && i.text === "hello from the webview")),
    "echo reply",
  );
  await until(() => status.visible && /: ready · [1-9]\d*\/128k/.test(status.text), "status ready");
  assert.match(status.text, /^\$\(hubot\) hello from the webview: ready · \d+\/128k \([\d.]+%\) · \$0\.00$/);
  assert.deepEqual(status.command.arguments, [agentId]);

  // The agents tree lists it.
  const agents = await tree.getChildren();
  const info = agents.find((a) => a.agentId === agentId);
  assert.ok(info);
  const item = tree.getTreeItem(info);
  assert.equal(item.contextValue, "kodeAgent");
  assert.equal(item.command.command, "kode.openAgent");
  assert.match(item.description, /echo/);

  // Approvals. Turn 1: the user sends, then switches away: the chat is hidden when the
  // approval comes -> a notification; "Allow" there writes the file.
  const sc = await rec.commands.get("kode.newAgent")({
    provider: "scripted",
    permissionMode: "approval",
    script: [
      { delayMs: 300, text: "Writing.", toolCalls: [{ name: "fs_write", input: { path: "from-notification.txt", content: "yes" } }] },
      { text: "Done." },
      { text: "Writing again.", toolCalls: [{ name: "fs_write", input: { path: "from-card.txt", content: "inline" } }] },
      { text: "Done again." },
    ],
  });
  const scPanel = rec.panels.at(-1);
  scPanel.receive({ type: "ready" });
  await until(() => scPanel.posted.find((m) => m.type === "reset"), "reset 2");
  rec.answer = (kind, message) => (kind === "info" && /wants to change/.test(message) ? "Allow" : undefined);
  scPanel.receive({ type: "send", text: "write it" });
  scPanel.setVisible(false); // the user switched to another tab
  await until(() => existsSync(join(env.work, "from-notification.txt")), "file written after Allow");
  const note = rec.messages.find((m) => /wants to change/.test(m.message));
  assert.deepEqual(note.items, ["Allow", "Deny", "Always allow", "Open Chat"]);
  assert.match(note.message, new RegExp(`Kode agent "${sc}" wants to change .*from-notification\\.txt`));
  assert.equal(readFileSync(join(env.work, "from-notification.txt"), "utf8"), "yes");
  await until(() => status.text.includes("write it: ready"), "turn 1 done");

  // Turn 2: Send Selection to Agent reveals the chat (visible) -> the approval is inline
  // on the card; the webview's Allow answers it, no notification.
  const lines = ["line one", "line two"];
  rec.activeTextEditor = {
    selection: { isEmpty: false, active: { line: 0 }, start: { line: 0, character: 0 }, end: { line: 1, character: 8 } },
    document: {
      uri: stub.vscode.Uri.file(join(env.work, "notes.txt")),
      fileName: join(env.work, "notes.txt"),
      isUntitled: false,
      languageId: "plaintext",
      getText: () => lines.join("\n"),
      lineAt: (n) => ({ range: { start: { line: n, character: 0 }, end: { line: n, character: lines[n].length } } }),
    },
  };
  const notes = rec.messages.length;
  await rec.commands.get("kode.sendSelection")();
  assert.equal(scPanel.visible, true, "the chat was revealed");
  scPanel.receive({ type: "ready" }); // the revealed webview reloads
  const pending = await until(
    () =>
      scPanel.posted
        .flatMap((m) => (m.type === "reset" || m.type === "items" ? m.items : []))
        .find((i) => i.kind === "tool" && i.approval?.status === "pending"),
    "inline approval",
  );
  scPanel.receive({ type: "approve", approvalId: pending.approval.approvalId, decision: "allow" });
  await until(() => existsSync(join(env.work, "from-card.txt")), "file written after inline Allow");
  assert.equal(rec.messages.slice(notes).filter((m) => /wants to/.test(m.message)).length, 0, "no notification");
  await until(() => status.text.includes("write it: ready") && scPanel.posted.some((m) => m.type === "items" && m.items.some((i) => i.text === "Done again.")), "turn 2 done");
  const resets = scPanel.posted.filter((m) => m.type === "reset").length;
  scPanel.receive({ type: "ready" });
  await until(() => scPanel.posted.filter((m) => m.type === "reset").length > resets, "reset 3");
  const reset = panelReset(scPanel, () => true);
  const users = reset.items.filter((i) => i.kind === "user");
  assert.equal(users[1].text, "From `notes.txt` (lines 1-2):\n\n```plaintext\nline one\nline two\n```\n");
  const cards = reset.items.filter((i) => i.kind === "tool");
  assert.deepEqual(cards.map((c) => [c.state, c.approval.status]), [["COMPLETED", "allowed"], ["COMPLETED", "allowed"]]);

  // Interrupt with nothing running says so.
  await rec.commands.get("kode.interrupt")(sc);
  assert.ok(rec.messages.some((m) => m.message === 'Kode: "write it" had no running turn.'));

  // Rename (the header's button runs kode.renameAgent): the tab, the status bar and the tree follow.
  rec.inputBox = "Write two files";
  scPanel.receive({ type: "rename" });
  await until(() => scPanel.title === "Write two files", "tab renamed");
  await until(() => status.text.startsWith("$(hubot) Write two files: ready"), "status renamed");
  const renamed = (await tree.getChildren()).find((a) => a.agentId === sc);
  assert.equal(tree.getTreeItem(renamed).label, "Write two files");
  assert.equal(context.globalState.get("kode.chatTitles")[sc].title, "Write two files");

  // Fork (id from the input box), then delete the fork (confirmed).
  rec.inputBox = `${agentId}-fork`;
  const forkId = await rec.commands.get("kode.forkAgent")(info);
  assert.equal(forkId, `${agentId}-fork`);
  const forkPanel = rec.panels.at(-1);
  assert.equal(forkPanel.title, "hello from the webview (fork)");
  forkPanel.receive({ type: "ready" });
  const forkReset = await until(() => panelReset(forkPanel, () => true), "fork reset");
  assert.ok(forkReset.items.some((i) => i.kind === "assistant" && i.text === "hello from the webview"));
  rec.answer = (kind, message, items) => (kind === "warning" && items.includes("Delete") ? "Delete" : undefined);
  await rec.commands.get("kode.deleteAgent")(forkId);
  assert.equal(forkPanel.disposed, true);
  assert.ok(!(await tree.getChildren()).some((a) => a.agentId === forkId));

  // openAgent on a closed chat opens a new panel and loads the history.
  panel.dispose();
  await rec.commands.get("kode.openAgent")(agentId);
  const reopened = rec.panels.at(-1);
  assert.notEqual(reopened, panel);
  reopened.receive({ type: "ready" });
  const r2 = await until(() => panelReset(reopened, () => true), "reopened reset");
  assert.deepEqual(r2.items.map((i) => i.kind), ["user", "assistant"]);

  // Show Server Log.
  await rec.commands.get("kode.showServerLog")();
  assert.equal(rec.output.shown, 1);
  assert.ok(!rec.messages.some((m) => m.kind === "error"), JSON.stringify(rec.messages.filter((m) => m.kind === "error")));

  deactivated = true;
  await ext.deactivate();
});

/** An in-memory `Memento` (context.globalState). */
function memento() {
  const m = new Map();
  return { get: (k, d) => (m.has(k) ? m.get(k) : d), update: async (k, v) => void m.set(k, v), keys: () => [...m.keys()] };
}

test("a server that cannot be found: the error names kode.serverPath and where to set it", async (t) => {
  const stub = createVscodeStub({
    workspaceFolder: env.work,
    remoteName: "ssh-remote",
    config: { "kode.serverPath": join(env.root, "no-such-kode-rpc") },
  });
  const uninstall = stub.install();
  t.after(uninstall);
  const ext = stub.loadExtension(join(root, "dist", "extension.js"));
  const { rec } = stub;
  const context = {
    extensionPath: root,
    extensionUri: stub.vscode.Uri.file(root),
    subscriptions: [],
    extension: { packageJSON: pkg },
    globalState: memento(),
  };
  ext.activate(context);
  t.after(() => ext.deactivate());
  await rec.commands.get("kode.newAgent")();
  const err = await until(() => rec.messages.find((m) => m.kind === "error"), "error message");
  assert.match(err.message, /"kode\.serverPath" is .*no-such-kode-rpc, which is not an executable file on the remote machine \(ssh-remote\)/);
  assert.match(err.message, /Remote settings/);
  assert.doesNotMatch(err.message, /`command`/);
  assert.deepEqual(err.items, ["Open Settings", "Show Server Log"]);
});

function panelReset(panel, pred) {
  return panel.posted.filter((m) => m.type === "reset").reverse().find(pred);
}
