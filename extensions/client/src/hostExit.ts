/**
 * Host-exit cleanup: no server survives the Node process. Every live server process is
 * tracked; on the host's `exit` (and, unless a host opts out, on SIGINT/SIGTERM/SIGHUP)
 * each gets SIGTERM. The hooks are installed with the first server and removed with the last.
 */
import type { ChildProcess } from "node:child_process";

const liveProcesses = new Set<ChildProcess>();
let hooksInstalled = false;
let signalHooks = false;

function killAllServers(signal: NodeJS.Signals): void {
  for (const p of liveProcesses) {
    try {
      // SIGTERM: the server shuts down gracefully and kills its tool process trees.
      p.kill(signal);
    } catch {
      /* already gone */
    }
  }
}

function onHostExit(): void {
  killAllServers("SIGTERM");
}

function onHostSignal(sig: NodeJS.Signals): void {
  killAllServers("SIGTERM");
  // If nobody else handles the signal, restore the default behaviour (terminate).
  if (process.listenerCount(sig) <= 1) {
    uninstallHooks();
    process.kill(process.pid, sig);
  }
}
const onSigint = () => onHostSignal("SIGINT");
const onSigterm = () => onHostSignal("SIGTERM");
const onSighup = () => onHostSignal("SIGHUP");

function installHooks(signals: boolean): void {
  if (!hooksInstalled) {
    hooksInstalled = true;
    process.on("exit", onHostExit);
  }
  if (signals && !signalHooks) {
    signalHooks = true;
    process.on("SIGINT", onSigint);
    process.on("SIGTERM", onSigterm);
    if (process.platform !== "win32") process.on("SIGHUP", onSighup);
  }
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  signalHooks = false;
  process.off("exit", onHostExit);
  process.off("SIGINT", onSigint);
  process.off("SIGTERM", onSigterm);
  process.off("SIGHUP", onSighup);
}

/** Kill `p` when the host exits (and on its signals when `signals`). */
export function track(p: ChildProcess, signals: boolean): void {
  liveProcesses.add(p);
  installHooks(signals);
}

/** `p` ended: forget it; the hooks go with the last one. */
export function untrack(p: ChildProcess): void {
  liveProcesses.delete(p);
  if (liveProcesses.size === 0) uninstallHooks();
}
