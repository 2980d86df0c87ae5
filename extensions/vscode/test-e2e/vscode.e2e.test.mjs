// The extension in a real VS Code: code-server 4.139 (VS Code 1.139's workbench and
// extension host) with the built .vsix installed into a fresh profile, a workspace
// folder, and the workbench driven by playwright-core in Debian's Chromium, as a user
// would: Command Palette, chat tabs, notifications, the Agents view, the status bar.
//
// Run by ../ci.sh after ./setup.sh, which provides NODE24, CODE_SERVER, CHROMIUM;
// KODE_E2E_VSIX is the .vsix to install; KODE_RPC_SERVER (or `kode-rpc` / `python3 -m
// kode_rpc` found here) is the server the user points `kode.serverPath` at.
// Screenshots: every failing step saves one in KODE_E2E_ARTIFACTS (default
// test-e2e/artifacts/); KODE_E2E_README_SHOT=<png> also saves the README's screenshot.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const { NODE24, CODE_SERVER, CHROMIUM = "/usr/bin/chromium", KODE_E2E_VSIX } = process.env;
const artifacts = process.env.KODE_E2E_ARTIFACTS || join(here, "artifacts");
const T = 30_000; // generous for one UI step on a loaded 2-core machine

for (const [k, v] of Object.entries({ NODE24, CODE_SERVER, KODE_E2E_VSIX })) {
  if (!v || !existsSync(v)) throw new Error(`e2e: ${k} is not set or missing (${v}); run through ci.sh`);
}

// --- the workspace, the profile, the server ------------------------------------------

const root = mkdtempSync(join(tmpdir(), "kode-e2e-"));
const dirs = {
  ws: join(root, "workspace"),
  userData: join(root, "user-data"),
  extensions: join(root, "extensions"),
  data: join(root, "kode-data"),
  home: join(root, "home"),
  bin: join(root, "bin"),
};
for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
mkdirSync(join(dirs.userData, "User"), { recursive: true });

/** The kode-rpc executable the user points `kode.serverPath` at. */
function kodeRpcPath() {
  if (process.env.KODE_RPC_SERVER) return process.env.KODE_RPC_SERVER;
  const onPath = spawnSync("sh", ["-c", "command -v kode-rpc"], { encoding: "utf8" }).stdout.trim();
  if (onPath) return onPath;
  const py = spawnSync("python3", ["-c", "import sys, kode_rpc; print(sys.executable)"], { encoding: "utf8" });
  if (py.status !== 0) throw new Error("e2e: no kode-rpc server found (set KODE_RPC_SERVER)");
  const wrapper = join(dirs.bin, "kode-rpc");
  writeFileSync(wrapper, `#!/bin/sh\nexec '${py.stdout.trim()}' -m kode_rpc "$@"\n`, { mode: 0o755 });
  return wrapper;
}
const serverPath = kodeRpcPath();

const approvalScript = [
  { text: "Writing `inline.txt`.", toolCalls: [{ name: "fs_write", input: { path: "inline.txt", content: "allowed inline\n" } }] },
  { text: "Wrote **inline.txt**." },
  // Turn 2 waits before asking: the user has switched away from the chat by then.
  { delayMs: 5000, text: "Writing `notified.txt`.", toolCalls: [{ name: "fs_write", input: { path: "notified.txt", content: "allowed from a notification\n" } }] },
  { text: "Wrote **notified.txt**." },
];
const longScript = [{ delayMs: 60_000, text: "This reply comes too late." }, { text: "A new turn after the interrupt." }];

// A fresh profile: User settings, and keybindings that run "Kode: New Agent" with a
// scripted model (deterministic, offline), as a user could bind it.
writeFileSync(
  join(dirs.userData, "User", "settings.json"),
  JSON.stringify(
    {
      "kode.defaultProvider": "echo",
      "kode.dataDir": dirs.data,
      "workbench.startupEditor": "none",
      "workbench.tips.enabled": false,
      "workbench.secondarySideBar.defaultVisibility": "hidden",
      "chat.disableAIFeatures": true,
      "telemetry.telemetryLevel": "off",
      "update.mode": "none",
      "extensions.ignoreRecommendations": true,
      "extensions.autoCheckUpdates": false,
      "security.workspace.trust.enabled": false,
      "git.enabled": false,
      "window.restoreWindows": "none",
    },
    null,
    2,
  ),
);
writeFileSync(
  join(dirs.userData, "User", "keybindings.json"),
  JSON.stringify([
    { key: "ctrl+alt+1", command: "kode.newAgent", args: { provider: "scripted", permissionMode: "approval", script: approvalScript } },
    { key: "ctrl+alt+2", command: "kode.newAgent", args: { provider: "scripted", permissionMode: "auto", script: longScript } },
  ]),
);
writeFileSync(join(dirs.ws, "README.txt"), "A workspace for the Kode e2e test.\n");

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

let codeServer;
let codeServerLog = "";
let browser;
let page;
let port;
const started = Date.now();
const node24Dir = dirname(NODE24);
// No kode-rpc on this PATH (and no venv): the user has to tell the extension where it is.
const serverEnv = {
  PATH: `${node24Dir}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin`,
  HOME: dirs.home,
  XDG_CONFIG_HOME: join(dirs.home, ".config"),
  XDG_DATA_HOME: join(dirs.home, ".local", "share"),
  XDG_CACHE_HOME: join(dirs.home, ".cache"),
  LANG: "C.UTF-8",
};

function log(m) {
  console.log(`# e2e ${((Date.now() - started) / 1000).toFixed(1)}s ${m}`);
}

before(async () => {
  const csArgs = ["--config", join(root, "code-server.yaml"), "--user-data-dir", dirs.userData, "--extensions-dir", dirs.extensions];
  execFileSync(NODE24, [CODE_SERVER, ...csArgs, "--install-extension", KODE_E2E_VSIX], { env: serverEnv, stdio: "pipe" });
  log(`installed ${KODE_E2E_VSIX}`);
  port = await freePort();
  codeServer = spawn(
    NODE24,
    [
      CODE_SERVER,
      ...csArgs,
      "--auth", "none",
      "--bind-addr", `127.0.0.1:${port}`,
      "--disable-telemetry",
      "--disable-update-check",
      "--disable-workspace-trust",
      "--disable-getting-started-override",
      "--ignore-last-opened",
      dirs.ws,
    ],
    { env: serverEnv, stdio: ["ignore", "pipe", "pipe"] },
  );
  codeServer.stdout.on("data", (b) => (codeServerLog += b));
  codeServer.stderr.on("data", (b) => (codeServerLog += b));
  const t0 = Date.now();
  while (!/HTTP server listening/.test(codeServerLog)) {
    if (codeServer.exitCode !== null || Date.now() - t0 > 60_000) throw new Error(`code-server did not start:\n${codeServerLog}`);
    await sleep(100);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 880 } });
  page = await context.newPage();
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.ws)}`);
  await page.waitForSelector(".monaco-workbench .part.statusbar", { timeout: 90_000 });
  // The explorer shows the folder once the remote file system is up.
  await page.locator(".explorer-folders-view").getByText("README.txt").waitFor({ timeout: 60_000 });
  // The extension's contributions are registered once the extension host has scanned it.
  await page.locator('.activitybar .action-item a[aria-label^="Kode"]').first().waitFor({ timeout: 60_000 });
  log(`workbench up on port ${port}`);
});

after(async () => {
  await browser?.close().catch(() => {});
  if (codeServer && codeServer.exitCode === null) {
    codeServer.kill("SIGTERM");
    await Promise.race([new Promise((r) => codeServer.once("exit", r)), sleep(5000)]);
    if (codeServer.exitCode === null) codeServer.kill("SIGKILL");
  }
  // The kode-rpc servers the extension host spawned die with it (stdin EOF, host-exit hooks).
  if (process.env.KODE_E2E_KEEP !== "1") rmSync(root, { recursive: true, force: true });
  log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** A test step: on failure, a screenshot and the tail of code-server's log. */
function step(name, fn) {
  test(name, { timeout: 3 * 60_000 }, async () => {
    try {
      await fn();
      log(`ok: ${name}`);
    } catch (e) {
      mkdirSync(artifacts, { recursive: true });
      const file = join(artifacts, `${name.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60)}.png`);
      await page?.screenshot({ path: file }).catch(() => {});
      console.error(`# e2e: FAILED "${name}": screenshot ${file}`);
      console.error(`# code-server log (tail):\n${codeServerLog.split("\n").slice(-15).join("\n")}`);
      throw e;
    }
  });
}

// --- workbench helpers -----------------------------------------------------------------

async function until(fn, what, timeoutMs = T) {
  const t0 = Date.now();
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (${last.message})` : ""}`);
    await sleep(100);
  }
}

/** Runs a command from the Command Palette (F1), by its title as the palette shows it. */
async function palette(title) {
  const input = page.locator(".quick-input-widget .quick-input-box input");
  await until(async () => {
    await page.keyboard.press("Escape");
    await page.keyboard.press("F1");
    await input.waitFor({ state: "visible", timeout: T });
    await input.fill(`>${title}`);
    await sleep(300);
    const first = await page.locator(".quick-input-widget .monaco-list-row.focused").first().innerText({ timeout: 2000 });
    return first.split("\n")[0].trim() === title;
  }, `"${title}" in the Command Palette`);
  await page.keyboard.press("Enter");
}

async function statusBarText() {
  return page.locator(".part.statusbar").innerText();
}

function toast(text) {
  return page.locator(".notifications-toasts .notification-toast", { hasText: text });
}

const activeGroupTab = () => page.locator(".part.editor .editor-group-container.active .tab.active").first();

/** The active editor's title, from the window title (`<editor> - <folder> - code-server`). */
async function activeTabTitle() {
  return (await page.title()).split(" - ")[0].trim();
}

/** What a chat webview frame shows (undefined for other frames). */
async function frameInfo(f) {
  if (!f.url().includes("/webview/")) return undefined;
  return f
    .evaluate(() => {
      const id = document.body?.dataset.agentId;
      if (!id) return undefined;
      return {
        id,
        title: document.getElementById("agent-title")?.textContent,
        visible: document.visibilityState === "visible" && document.documentElement.clientWidth > 0,
      };
    })
    .catch(() => undefined);
}

/** The chat webview frame of an agent (by id or title, or the first that `match` accepts). */
async function chatFrame(match) {
  try {
    return await until(async () => {
      for (const f of page.frames()) {
        const info = await frameInfo(f);
        if (!info) continue;
        if (typeof match === "function" ? match(info) : info.id === match || info.title === match) return f;
      }
      return undefined;
    }, `chat webview ${typeof match === "string" ? match : ""}`);
  } catch (e) {
    const seen = await Promise.all(page.frames().map(async (f) => `${f.name()} ${f.url().slice(0, 100)} ${JSON.stringify(await frameInfo(f))}`));
    throw new Error(`${e.message}; frames:\n${seen.join("\n")}`);
  }
}

async function chatText(frame) {
  return frame.evaluate(() => document.getElementById("transcript").innerText);
}

async function headerState(frame) {
  return frame.evaluate(() => ({
    title: document.getElementById("agent-title").textContent,
    state: document.getElementById("state-label").textContent,
    context: document.getElementById("context").textContent,
    cost: document.getElementById("cost").textContent,
    interrupt: !document.getElementById("interrupt").disabled,
  }));
}

async function sendInChat(frame, text) {
  const input = frame.locator("#input");
  await input.click();
  await input.fill(text);
  await input.press("Enter");
}

/** Shows the Agents view (the Kode activity bar entry; a second click would close the side bar). */
async function openAgentsView() {
  const sidebar = page.locator(".part.sidebar");
  const title = sidebar.locator(".composite.title");
  const shown = async () => (await sidebar.isVisible()) && /Kode/.test(await title.innerText().catch(() => ""));
  if (!(await shown())) await page.locator('.activitybar .action-item a[aria-label^="Kode"]').first().click();
  await until(shown, "the Agents view");
  return sidebar;
}

async function treeLabels() {
  const view = await openAgentsView();
  return view.locator(".monaco-list-row .label-name").allInnerTexts();
}

// --- the steps, in order: each builds on the previous ones ------------------------------

let echoId;
let echoTitle;

step("server not found: the error names kode.serverPath and where to set it; set there, New Agent works", async () => {
  await palette("Kode: New Agent");
  const t = toast("kode.serverPath");
  await t.waitFor({ state: "visible", timeout: T });
  const msg = await t.innerText();
  assert.match(msg, /The kode-rpc server was not found/);
  assert.match(msg, /Remote settings/, msg);
  assert.doesNotMatch(msg, /`command`/, "the library's option names are not the user's business");
  // "Open Settings" opens the Remote settings at kode.serverPath; the user types the path there.
  await t.getByRole("button", { name: "Open Settings" }).click();
  const editor = page.locator(".settings-editor");
  await editor.waitFor({ state: "visible", timeout: T });
  await until(async () => /Remote/.test(await editor.locator(".settings-tabs-widget .action-item.checked, .settings-tabs-widget .action-label.checked").first().innerText()), "the Remote tab");
  const search = editor.locator(".settings-header .suggest-input-container .monaco-editor textarea, .settings-header textarea").first();
  const query = await editor.locator(".settings-header .view-lines").first().innerText();
  if (!query.includes("kode.serverPath")) {
    await search.click();
    await page.keyboard.type("kode.serverPath");
  }
  const item = editor.locator(".setting-item-contents", { hasText: "Server Path" }).first();
  await item.waitFor({ state: "visible", timeout: T });
  const box = item.locator("input.input").first();
  await box.click();
  await box.fill(serverPath);
  await box.press("Tab");
  const machineSettings = join(dirs.userData, "Machine", "settings.json");
  await until(() => existsSync(machineSettings) && readFileSync(machineSettings, "utf8").includes(serverPath), "Machine/settings.json", T);
  await page.keyboard.press("Escape");
  await palette("View: Close All Editors");
  await palette("Kode: New Agent");
  const frame = await chatFrame(() => true);
  echoId = await frame.evaluate(() => document.body.dataset.agentId);
  assert.match(echoId, /^chat-/);
  await until(async () => (await headerState(frame)).state === "ready", "ready");
});

step("a streamed reply rendered as markdown; the chat is titled from the first message", async () => {
  const frame = await chatFrame(echoId);
  assert.equal(await activeTabTitle(), echoId, "untitled until the first message");
  await sendInChat(frame, "Say **hello** to `code-server` please");
  await until(async () => (await frame.locator(".msg.assistant strong").allInnerTexts()).includes("hello"), "bold text");
  assert.equal(await frame.locator(".msg.assistant code").first().innerText(), "code-server");
  assert.equal(await frame.locator(".msg.assistant .cursor").count(), 0, "the streaming cursor is gone at the end");
  echoTitle = "Say hello to code-server please";
  await until(async () => (await activeTabTitle()) === echoTitle, `tab title "${echoTitle}"`);
  const h = await headerState(frame);
  assert.equal(h.title, echoTitle);
  assert.equal(h.state, "ready");
  // Context used (tokens, % of the window) and cost so far, in the header and the status bar.
  assert.match(h.context, /^\d+\/128k \([\d.]+%\)$/);
  assert.notEqual(h.context.split("/")[0], "0");
  assert.equal(h.cost, "$0.00");
  await until(async () => (await statusBarText()).includes(`${echoTitle}: ready · ${h.context} · $0.00`), "status bar numbers");
});

step("the Agents view lists the chat by its title", async () => {
  await until(async () => (await treeLabels()).includes(echoTitle), "tree entry");
});

let approvalId;
step("approval answered inline: awaiting approval in header and status bar; Allow writes the file", async () => {
  await page.locator(".part.editor").click({ position: { x: 5, y: 5 } }).catch(() => {});
  await page.keyboard.press("Control+Alt+1");
  const frame = await chatFrame((i) => i.id !== echoId && i.visible);
  approvalId = await frame.evaluate(() => document.body.dataset.agentId);
  await sendInChat(frame, "Write inline.txt, then notified.txt");
  const bar = frame.locator(".approval", { hasText: "Allow fs_write?" });
  await bar.waitFor({ state: "visible", timeout: T });
  assert.match(await frame.locator(".tool-card .diff").first().innerText(), /\+allowed inline/);
  await until(async () => (await headerState(frame)).state === "awaiting approval", "header: awaiting approval", 10_000);
  await until(async () => /Write inline\.txt, then notified…: awaiting approval · \d+\/128k/.test(await statusBarText()), "status bar: awaiting approval", 10_000);
  assert.equal(await toast("wants to change").count(), 0, "the chat is visible: no notification");
  if (process.env.KODE_E2E_README_SHOT) await page.screenshot({ path: process.env.KODE_E2E_README_SHOT });
  await bar.getByRole("button", { name: "Allow", exact: true }).click();
  await until(() => existsSync(join(dirs.ws, "inline.txt")), "inline.txt on disk");
  assert.equal(readFileSync(join(dirs.ws, "inline.txt"), "utf8"), "allowed inline\n");
  await until(async () => (await chatText(frame)).includes("Wrote inline.txt."), "the turn's last reply");
  await until(async () => (await headerState(frame)).state === "ready", "ready again");
});

step("approval answered in a notification while the chat is hidden; the file is then on disk", async () => {
  const frame = await chatFrame(approvalId);
  await sendInChat(frame, "And the second file");
  // Switch away from the chat: open a file in its editor group (Quick Open).
  await activeGroupTab().click();
  // The approval arriving meanwhile can re-render the chat and take the focus, closing a
  // Quick Open that was just opened: open it again until it takes the text.
  await until(async () => {
    await page.keyboard.press("Control+P");
    await page.locator(".quick-input-widget .quick-input-box input").fill("README.txt", { timeout: 3000 });
    return true;
  }, "Quick Open taking the file name");
  await page.locator(".quick-input-widget .monaco-list-row", { hasText: "README.txt" }).first().waitFor({ timeout: T });
  await page.keyboard.press("Enter");
  await until(async () => (await activeTabTitle()) === "README.txt", "README.txt in front");
  const t = toast("wants to change");
  await t.waitFor({ state: "visible", timeout: T });
  assert.match(await t.innerText(), /notified\.txt/);
  await t.getByRole("button", { name: "Allow", exact: true }).click();
  await until(() => existsSync(join(dirs.ws, "notified.txt")), "notified.txt on disk");
  assert.equal(readFileSync(join(dirs.ws, "notified.txt"), "utf8"), "allowed from a notification\n");
});

let longId;
step("Esc in the chat input does not stop a long turn; Interrupt does", async () => {
  await page.keyboard.press("Control+Alt+2");
  const frame = await chatFrame((i) => i.id !== echoId && i.id !== approvalId && i.visible);
  longId = await frame.evaluate(() => document.body.dataset.agentId);
  await sendInChat(frame, "Take your time");
  await until(async () => (await headerState(frame)).state === "working", "working");
  // Esc right after sending (e.g. to close a toast) must not kill the turn.
  await frame.locator("#input").press("Escape");
  await page.keyboard.press("Escape");
  await sleep(1500);
  assert.equal((await headerState(frame)).state, "working", "Esc interrupted the turn");
  assert.doesNotMatch(await chatText(frame), /Turn interrupted/);
  assert.equal((await headerState(frame)).interrupt, true);
  await frame.locator("#interrupt").click();
  await until(async () => (await chatText(frame)).includes("Turn interrupted."), "Turn interrupted.");
  await until(async () => (await headerState(frame)).state === "ready", "ready after the interrupt");
  assert.doesNotMatch(await chatText(frame), /too late/);
});

step("Restart Server: the chats reload and go on", async () => {
  await palette("Kode: Restart Server");
  await toast("server restarted").waitFor({ state: "visible", timeout: T });
  await palette("Notifications: Clear All Notifications");
  const frame = await chatFrame(longId);
  assert.match(await chatText(frame), /Take your time/, "the transcript is back after the restart");
  await sendInChat(frame, "After the restart");
  await until(async () => (await chatText(frame)).includes("A new turn after the interrupt."), "a reply after the restart");
});

step("a closed chat reopened from the Agents view shows its transcript; Rename retitles it", async () => {
  await palette("View: Close All Editors");
  await until(async () => (await page.locator(".part.editor .tab").count()) === 0, "no tabs");
  const view = await openAgentsView();
  const row = view.locator(".monaco-list-row", { hasText: echoTitle }).first();
  await row.waitFor({ state: "visible", timeout: T });
  await row.click();
  const frame = await chatFrame(echoId);
  await until(async () => (await frame.locator(".msg.assistant strong").allInnerTexts()).includes("hello"), "the transcript again");
  assert.equal(await frame.locator(".msg.user").count(), 1);
  assert.equal(await activeTabTitle(), echoTitle);
  // Rename from the chat header's ✎ button.
  await frame.locator("#rename").click();
  const input = page.locator(".quick-input-widget .quick-input-box input");
  await input.waitFor({ state: "visible", timeout: T });
  assert.equal(await input.inputValue(), echoTitle);
  await input.fill("Greeting code-server");
  await page.keyboard.press("Enter");
  await until(async () => (await activeTabTitle()) === "Greeting code-server", "renamed tab");
  await until(async () => (await treeLabels()).includes("Greeting code-server"), "renamed in the tree");
  await until(async () => (await statusBarText()).includes("Greeting code-server: ready"), "renamed in the status bar");
});
