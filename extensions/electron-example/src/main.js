// The Electron main process: one window, the kode-rpc server as its sidecar.
// Run with Electron (>= 28, for an ESM main): `npx electron .` in this folder. The tests do
// not run this file; they drive src/sidecar.js with fakes of ipcMain and webContents.
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createSidecar } from "./sidecar.js";

if (!process.versions.electron) {
  console.error("src/main.js is an Electron main process: start it with electron (e.g. `npx electron .`).");
  process.exit(1);
}
// Imported only here, after the guard: plain Node has no 'electron' module.
const electronModule = await import("electron");
const { app, BrowserWindow, ipcMain, dialog } = electronModule.default ?? electronModule;

const here = dirname(fileURLToPath(import.meta.url));
const exe = process.platform === "win32" ? "kode-rpc.exe" : "kode-rpc";

/** The frozen one-dir build: shipped via extraResources when packaged, this repo's dist/ in development. */
function bundledServer() {
  if (app.isPackaged) return join(process.resourcesPath, "kode-rpc", exe);
  return join(here, "..", "..", "..", "dist", "kode-rpc", exe); // `python packaging/build.py`
}

/** @type {ReturnType<typeof createSidecar> | undefined} */
let sidecar;
let quitting = false;

await app.whenReady();

const win = new BrowserWindow({
  width: 960,
  height: 720,
  title: "kode-rpc",
  webPreferences: {
    preload: join(here, "preload.cjs"), // CommonJS: sandboxed preloads cannot be ES modules
    contextIsolation: true,
    sandbox: true,
    nodeIntegration: false,
  },
});

const workDir = process.env.KODE_WORKDIR || join(app.getPath("documents"), "kode-workspace");
mkdirSync(workDir, { recursive: true });

// Before the page loads, so the renderer's first invoke finds its handlers.
sidecar = createSidecar({
  ipcMain,
  webContents: win.webContents,
  // A user-chosen binary (a setting; here an env var in development) wins over the bundled one.
  serverPath: app.isPackaged ? undefined : process.env.KODE_RPC_SERVER || undefined,
  // Skipped when missing: then `kode-rpc` on PATH, then `python -m kode_rpc`.
  bundledPath: bundledServer(),
  workDir,
  dataDir: join(app.getPath("userData"), "kode-rpc"), // this app's own agent store
  logDir: join(app.getPath("logs"), "kode-rpc"),
  logger: { info: console.log, warn: console.warn, error: console.error },
});
sidecar.ready.catch((e) => dialog.showErrorBox("kode-rpc did not start", e instanceof Error ? e.message : String(e)));

await win.loadFile(join(here, "..", "renderer", "index.html"));

// The sidecar serves this one window: closing it quits (also on macOS, to keep this short).
app.on("window-all-closed", () => app.quit());

// Stop the server before Electron exits: shutdown + exit, killed after 3 s. The client
// library also SIGTERMs its servers when the process exits, and the server exits by
// itself when its stdin closes or this process is gone: no orphan either way.
app.on("before-quit", (event) => {
  if (!sidecar || quitting) return;
  quitting = true;
  event.preventDefault();
  sidecar.dispose().finally(() => app.quit());
});
