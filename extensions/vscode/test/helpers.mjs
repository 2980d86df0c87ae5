// Shared test helpers: temp dirs, a KodeSession on the real server, waiting for turns.
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KodeSession, DEFAULT_SETTINGS } from "../out/core.mjs";

export const VERBOSE = process.env.KODE_TEST_VERBOSE === "1";

export const logger = {
  info: (m) => VERBOSE && console.log(m),
  warn: (m) => VERBOSE && console.warn(m),
  error: (m) => console.error(m),
  debug: () => {},
};

/** Fresh data/log/config dirs and a workspace folder; `cleanup()` removes them. */
export function tempEnv() {
  const root = mkdtempSync(join(tmpdir(), "kode-vscode-"));
  const dirs = {
    root,
    data: join(root, "data"),
    log: join(root, "log"),
    config: join(root, "config"),
    work: join(root, "workspace"),
  };
  for (const d of [dirs.data, dirs.log, dirs.config, dirs.work]) mkdirSync(d, { recursive: true });
  return { ...dirs, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

/** Library options for the test server: temp dirs; KODE_RPC_SERVER=/path/to/kode-rpc tests a frozen binary. */
export function clientOptions(env) {
  const o = {
    dataDir: env.data,
    logDir: env.log,
    configDir: env.config,
    workspaceFolders: [env.work],
    cwd: env.work,
    clientInfo: { name: "kode-vscode-tests" },
    logger,
    startTimeoutMs: 60_000,
  };
  if (process.env.KODE_RPC_SERVER) o.serverPath = process.env.KODE_RPC_SERVER;
  return o;
}

/**
 * A session on the real server. `host.visible` decides the approval route; `host.notify`
 * is the notification stub (records every call in `host.notified`).
 */
export function makeSession(env, { settings = {}, visible = false, notify, client = {} } = {}) {
  const host = {
    visible,
    notified: [],
    notifyImpl: notify ?? (async () => undefined),
    isVisible: (agentId) => (typeof host.visible === "function" ? host.visible(agentId) : host.visible),
    notify: (req, signal) => {
      host.notified.push(req);
      return host.notifyImpl(req, signal);
    },
  };
  const session = new KodeSession({
    client: { ...clientOptions(env), ...client },
    settings: () => ({ ...DEFAULT_SETTINGS, ...settings }),
    workDir: () => env.work,
    approvalHost: host,
    logger,
  });
  return { session, host };
}

/** Sends and resolves with the turn's `done` event. */
export async function sendAndWait(session, agentId, text, timeoutMs = 30_000) {
  const client = await session.start();
  const done = client.waitForEvent(agentId, (e) => e.event.type === "done", { timeoutMs });
  const r = await session.send(agentId, text);
  const ev = await done;
  return { ...r, done: ev };
}

/** Resolves when `predicate()` is true (checked on every session change and every 20 ms). */
export function waitUntil(session, predicate, timeoutMs = 20_000, what = "condition") {
  return new Promise((resolve, reject) => {
    const check = () => {
      let v;
      try {
        v = predicate();
      } catch (e) {
        finish();
        reject(e);
        return;
      }
      if (v) {
        finish();
        resolve(v);
      }
    };
    const sub = session.onDidChange(check);
    const iv = setInterval(check, 20);
    const to = setTimeout(() => {
      finish();
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    function finish() {
      sub.dispose();
      clearInterval(iv);
      clearTimeout(to);
    }
    check();
  });
}
