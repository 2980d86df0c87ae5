/**
 * One server process and its JSON-RPC connection (a "generation"): spawn, stderr to the
 * logger, `initialize` with a timeout, requests that fail with the library's errors,
 * and the exit (after reading what the server wrote before it died). No restarts here:
 * the supervisor decides what an exit means.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import {
  createMessageConnection,
  ResponseError,
  StreamMessageReader,
  StreamMessageWriter,
  type CancellationToken,
  type MessageConnection,
} from "vscode-jsonrpc/node";
import type { ServerCommand } from "./discovery.js";
import { KodeConnectionError, KodeRpcError } from "./errors.js";
import { track, untrack } from "./hostExit.js";
import type {
  ApprovalRequest,
  ApprovalResponse,
  ClientRequestName,
  EventEnvelope,
  InitializeParams,
  InitializeResult,
  ParamsOf,
  ResultOf,
} from "./protocol.js";
import type { Logger } from "./types.js";
import { deferred, sleep, type Deferred } from "./util.js";

/** One server process and its connection. */
export interface Generation {
  proc: ChildProcess;
  conn: MessageConnection;
  pid: number | undefined;
  startedAt: number;
  pending: Map<number, { method: string; reject(e: Error): void }>;
  exited: Deferred<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderrTail: string[];
  /** The exit was handled (pending requests failed, connection disposed). */
  handled: boolean;
}

export interface LaunchOptions {
  command: ServerCommand;
  env: NodeJS.ProcessEnv;
  cwd?: string;
  handleSignals: boolean;
  startTimeoutMs: number;
  initialize: InitializeParams;
  logger: Logger;
  /** Called with the new generation before `initialize` is sent (events may come right after). */
  onSpawned(gen: Generation): void;
  onEvent(gen: Generation, envelope: EventEnvelope): void;
  onApprovalRequest(request: ApprovalRequest, token: CancellationToken): Promise<ApprovalResponse>;
  /** The process exited (stdout read to its end first). */
  onExit(gen: Generation, code: number | null, signal: NodeJS.Signals | null): void;
}

const LEVEL_RE = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) /;

let nextKey = 1;

/** Spawns a server process, connects and initializes it. */
export async function launchServer(o: LaunchOptions): Promise<{ gen: Generation; result: InitializeResult }> {
  const cmd = o.command;
  const logger = o.logger;
  const proc = spawn(cmd.command, cmd.args, {
    stdio: ["pipe", "pipe", "pipe"],
    windowsHide: true,
    env: o.env,
    cwd: o.cwd,
  });
  await new Promise<void>((res, rej) => {
    const onErr = (e: Error) => {
      proc.off("spawn", onSpawn);
      rej(new KodeConnectionError(`kode-rpc: cannot start ${cmd.command}: ${e.message}`));
    };
    const onSpawn = () => {
      proc.off("error", onErr);
      res();
    };
    proc.once("error", onErr);
    proc.once("spawn", onSpawn);
  });
  track(proc, o.handleSignals);
  proc.on("error", (e) => logger.warn(`kode-rpc: server process error: ${e.message}`));
  proc.stdin!.on("error", () => {}); // EPIPE after a crash: handled by the exit path
  proc.stdout!.on("error", () => {});
  proc.stderr!.on("error", () => {});

  const conn = createMessageConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!), {
    error: (m) => logger.debug?.(`kode-rpc connection: ${m}`),
    warn: (m) => logger.debug?.(`kode-rpc connection: ${m}`),
    info: (m) => logger.debug?.(`kode-rpc connection: ${m}`),
    log: (m) => logger.debug?.(`kode-rpc connection: ${m}`),
  });
  const gen: Generation = {
    proc,
    conn,
    pid: proc.pid,
    startedAt: Date.now(),
    pending: new Map(),
    exited: deferred(),
    stderrTail: [],
    handled: false,
  };
  o.onSpawned(gen);

  // stderr -> logger, by the level in the server's log line format.
  let level: "debug" | "info" | "warn" | "error" = "info";
  createInterface({ input: proc.stderr! }).on("line", (line) => {
    const m = LEVEL_RE.exec(line);
    if (m) level = m[1] === "DEBUG" ? "debug" : m[1] === "INFO" ? "info" : m[1] === "WARNING" ? "warn" : "error";
    gen.stderrTail.push(line);
    if (gen.stderrTail.length > 20) gen.stderrTail.shift();
    const text = `[kode-rpc ${gen.pid}] ${line}`;
    if (level === "debug") logger.debug?.(text);
    else logger[level](text);
  });

  conn.onNotification("agent/event", (params: EventEnvelope) => o.onEvent(gen, params));
  conn.onRequest("approval/request", (params: ApprovalRequest, token: CancellationToken) =>
    o.onApprovalRequest(params, token),
  );
  conn.onUnhandledNotification((n) => logger.debug?.(`kode-rpc: unhandled notification ${n.method}`));
  conn.onError(([err]) => logger.debug?.(`kode-rpc: connection error: ${err?.message ?? String(err)}`));
  conn.listen();

  let stdoutClosed = false;
  const stdoutDone = new Promise<void>((res) => {
    proc.stdout!.once("close", () => {
      stdoutClosed = true;
      res();
    });
  });
  proc.once("exit", (code, signal) => {
    untrack(proc);
    // Read what the server wrote before it died (responses, events) before failing requests.
    const wait = stdoutClosed ? Promise.resolve() : Promise.race([stdoutDone, sleep(1000, undefined, true)]);
    void wait.then(() => {
      gen.exited.resolve({ code, signal });
      o.onExit(gen, code, signal);
    });
  });

  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, rej) => {
    timer = setTimeout(
      () =>
        rej(new KodeConnectionError(`kode-rpc: server did not answer initialize within ${o.startTimeoutMs} ms`, "initialize")),
      o.startTimeoutMs,
    );
  });
  try {
    const result = await Promise.race([rawRequest(gen, "initialize", o.initialize), timeout]);
    void conn.sendNotification("initialized", {}).catch(() => {});
    return { gen, result };
  } catch (e) {
    kill(gen);
    if (e instanceof KodeConnectionError && gen.stderrTail.length) {
      throw new KodeConnectionError(
        `${e.message}\n--- server stderr (last lines) ---\n${gen.stderrTail.join("\n")}`,
        e.method,
        e.exitCode,
        e.signal,
      );
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** SIGKILL, ignoring a process that is already gone. */
export function kill(gen: Generation): void {
  try {
    gen.proc.kill("SIGKILL");
  } catch {
    /* gone */
  }
}

/**
 * Marks the generation's exit as handled: every pending request rejects with a
 * `KodeConnectionError` naming how the process ended, and the connection is disposed.
 * Returns false when it was handled already.
 */
export function failPending(gen: Generation, code: number | null, signal: NodeJS.Signals | null): boolean {
  if (gen.handled) return false;
  gen.handled = true;
  const how = exitText(code, signal);
  for (const [, p] of gen.pending) {
    p.reject(
      new KodeConnectionError(`kode-rpc server (pid ${gen.pid}) exited (${how}) before answering ${p.method}`, p.method, code, signal),
    );
  }
  gen.pending.clear();
  gen.conn.dispose();
  return true;
}

export function exitText(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `signal ${signal}` : `code ${code}`;
}

/**
 * Sends a request on one generation. An error response rejects with `KodeRpcError`
 * (code, message, data as sent); a dead or closing connection with `KodeConnectionError`.
 */
export function rawRequest<M extends ClientRequestName>(
  gen: Generation,
  method: M,
  params: ParamsOf<M>,
  token?: CancellationToken,
): Promise<ResultOf<M>> {
  return new Promise<ResultOf<M>>((resolve, reject) => {
    if (gen.handled || gen.exited.settled) {
      reject(new KodeConnectionError(`kode-rpc server (pid ${gen.pid}) is not running`, method));
      return;
    }
    const key = nextKey++;
    let p: Promise<ResultOf<M>>;
    try {
      p = token ? gen.conn.sendRequest<ResultOf<M>>(method, params, token) : gen.conn.sendRequest<ResultOf<M>>(method, params);
    } catch (e) {
      // The connection closed (the process is going away); the exit path restarts it.
      reject(new KodeConnectionError(`kode-rpc: cannot send ${method}: ${e instanceof Error ? e.message : String(e)}`, method));
      return;
    }
    gen.pending.set(key, { method, reject });
    p.then(
      (r) => {
        gen.pending.delete(key);
        resolve(r);
      },
      (e: unknown) => {
        gen.pending.delete(key);
        if (e instanceof ResponseError && e.code >= -32099 && e.code <= -32096) {
          // vscode-jsonrpc's own codes (write failed, connection disposed/inactive): the server is gone.
          reject(new KodeConnectionError(`kode-rpc: ${method} failed: ${e.message}`, method));
        } else if (e instanceof ResponseError) {
          reject(new KodeRpcError(e.code, e.message, (e.data ?? {}) as KodeRpcError["data"], method));
        } else {
          reject(new KodeConnectionError(`kode-rpc: ${method} failed: ${e instanceof Error ? e.message : String(e)}`, method));
        }
      },
    );
  });
}
