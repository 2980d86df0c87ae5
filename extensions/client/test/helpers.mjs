// Shared helpers of the tests: a real server per client, in temp data/log/config dirs.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KodeClient } from "../dist/index.js";

/** Generous on a loaded 2-core machine. */
export const LONG = 60_000;

const made = [];
process.on("exit", () => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** A temp dir removed when the test process exits. */
export function tempDir(prefix = "kode-client-test-") {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** A logger that keeps lines (printed when a test fails via `dump`). */
export function memoryLogger() {
  const lines = [];
  const push = (lvl) => (m) => lines.push(`${lvl} ${m}`);
  return { lines, info: push("I"), warn: push("W"), error: push("E"), debug: push("D") };
}

/**
 * Starts a client with its own temp dirs. `KODE_RPC_SERVER` (e.g. a frozen binary) is
 * used as `serverPath` when set; otherwise discovery finds the server.
 */
export async function startClient(t, options = {}) {
  const dir = tempDir();
  const logger = memoryLogger();
  const client = await KodeClient.start({
    dataDir: join(dir, "data"),
    logDir: join(dir, "log"),
    configDir: join(dir, "config"),
    clientInfo: { name: "kode-client-tests", version: "0" },
    logger,
    serverPath: process.env.KODE_RPC_SERVER || undefined,
    ...options,
  });
  t?.after(async () => {
    await client.dispose();
    if (process.env.KODE_TEST_VERBOSE) console.error(logger.lines.join("\n"));
    rmSync(dir, { recursive: true, force: true });
  });
  return { client, dir, logger };
}

/** Polls `predicate` until truthy (no fixed sleeps); returns its value. */
export async function waitUntil(predicate, { timeoutMs = LONG, intervalMs = 10, what = "condition" } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** True while `pid` is a live (non-zombie) process. */
export function isAlive(pid) {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return e.code === "EPERM";
  }
  if (process.platform === "linux") {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      if (state === "Z" || state === "X") return false;
    } catch {
      return false;
    }
  }
  return true;
}

/** Collects one agent's events; `waitFor(pred)` resolves with the first match (already seen or future). */
export function collect(client, agentId, options) {
  const events = [];
  const waiters = [];
  client.onAgentEvent(
    agentId,
    (e) => {
      events.push(e);
      for (const w of [...waiters]) {
        if (w.pred(e)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(e);
        }
      }
    },
    options,
  );
  return {
    events,
    types: () => events.map((e) => e.event.type),
    /** `from`: only events at index >= from of `events` count (e.g. `events.length` before a send). */
    waitFor(pred, { timeoutMs = LONG, from = 0 } = {}) {
      const found = events.slice(from).find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = { pred, resolve };
        waiters.push(w);
        setTimeout(() => {
          const i = waiters.indexOf(w);
          if (i >= 0) {
            waiters.splice(i, 1);
            reject(new Error(`timed out waiting for an event of ${agentId}; saw ${events.map((e) => e.event.type).join(",")}`));
          }
        }, timeoutMs).unref();
      });
    },
  };
}

export const isDone = (reason) => (e) => e.event.type === "done" && (reason === undefined || e.event.reason === reason);
