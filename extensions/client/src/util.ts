/** Small helpers shared by the client's modules. */
import type { Logger } from "./types.js";

export const silentLogger: Logger = {
  info() {},
  warn: (m) => console.warn(m),
  error: (m) => console.error(m),
};

export interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
  settled: boolean;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const d = {} as Deferred<T>;
  d.settled = false;
  d.promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  d.promise.catch(() => {}); // nobody waiting is fine
  d.resolve = (v) => {
    if (!d.settled) {
      d.settled = true;
      resolve(v);
    }
  };
  d.reject = (e) => {
    if (!d.settled) {
      d.settled = true;
      reject(e);
    }
  };
  return d;
}

/** `unref`: the timer alone does not keep Node alive (for timeouts raced against real work). */
export function sleep(ms: number, abort?: AbortSignal, unref = false): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(done, ms);
    if (unref) t.unref();
    function done() {
      clearTimeout(t);
      abort?.removeEventListener("abort", done);
      res();
    }
    abort?.addEventListener("abort", done, { once: true });
  });
}

/** Calls each listener with `args`; a listener that throws is logged and the others still run. */
export function notifyAll<A extends unknown[]>(
  listeners: Iterable<(...args: A) => void>,
  args: A,
  logger: Logger,
  what: string,
): void {
  for (const l of [...listeners]) {
    try {
      l(...args);
    } catch (e) {
      logger.error(`kode-rpc: ${what} listener threw: ${String(e)}`);
    }
  }
}

export const AGENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
