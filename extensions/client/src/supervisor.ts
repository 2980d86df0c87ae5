/**
 * Process supervision: starts the server (discovery + launch + initialize), owns the
 * current generation and the client state, restarts a server that exited unexpectedly
 * (backoff, a bounded number of consecutive attempts, agents re-subscribed by the
 * `resume` hook), and stops it (`shutdown` + `exit`, wait, kill).
 */
import type { CancellationToken } from "vscode-jsonrpc/node";
import { resolveServerCommand, type ServerCommand } from "./discovery.js";
import { KodeConnectionError } from "./errors.js";
import { exitText, failPending, kill, launchServer, rawRequest, type Generation } from "./serverProcess.js";
import type { ApprovalRequest, ApprovalResponse, EventEnvelope, InitializeResult } from "./protocol.js";
import { PROTOCOL_VERSION } from "./protocol.js";
import type { ClientState, Disposable, KodeClientOptions, Logger, RestartInfo } from "./types.js";
import { deferred, notifyAll, sleep, type Deferred } from "./util.js";

export interface SupervisorHooks {
  /** An `agent/event` of the current server. */
  onEvent(envelope: EventEnvelope): void;
  onApprovalRequest(request: ApprovalRequest, token: CancellationToken): Promise<ApprovalResponse>;
  /** After a restart, before the client is `running` again: re-subscribe the followed agents. */
  resume(gen: Generation): Promise<{ resumed: RestartInfo["resumed"]; failed: RestartInfo["failed"] }>;
}

export class ServerSupervisor {
  private _state: ClientState = "starting";
  private _gen: Generation | undefined;
  private _command: ServerCommand | undefined;
  private _initResult: InitializeResult | undefined;
  private ready: Deferred<void> = deferred();
  private readonly stateListeners = new Set<(state: ClientState, previous: ClientState) => void>();
  private readonly restartListeners = new Set<(info: RestartInfo) => void>();
  private consecutiveRestarts = 0;
  private readonly stopAbort = new AbortController();
  private disposePromise: Promise<void> | undefined;
  private expectExit = false;

  constructor(
    private readonly opts: KodeClientOptions,
    private readonly logger: Logger,
    private readonly approvalsCapability: boolean,
    private readonly hooks: SupervisorHooks,
  ) {}

  get state(): ClientState {
    return this._state;
  }

  get gen(): Generation | undefined {
    return this._gen;
  }

  get command(): ServerCommand | undefined {
    return this._command;
  }

  get initializeResult(): InitializeResult | undefined {
    return this._initResult;
  }

  whenReady(): Promise<void> {
    return this.ready.promise;
  }

  onStateChange(listener: (state: ClientState, previous: ClientState) => void): Disposable {
    this.stateListeners.add(listener);
    return { dispose: () => this.stateListeners.delete(listener) };
  }

  onRestart(listener: (info: RestartInfo) => void): Disposable {
    this.restartListeners.add(listener);
    return { dispose: () => this.restartListeners.delete(listener) };
  }

  /** The next exit is the end of a `shutdown`, not a crash. */
  expectShutdown(): void {
    this.expectExit = true;
  }

  private setState(s: ClientState): void {
    const prev = this._state;
    if (prev === s) return;
    this._state = s;
    notifyAll(this.stateListeners, [s, prev], this.logger, "onStateChange");
  }

  // --- start -------------------------------------------------------------------------

  /** Discovery, spawn, `initialize`; the state is `running` after, `failed` on error (rethrown). */
  async start(): Promise<void> {
    const o = this.opts;
    try {
      this._command = await resolveServerCommand({
        command: o.command,
        args: o.args,
        serverPath: o.serverPath,
        bundledPath: o.bundledPath,
        serverArgs: o.serverArgs,
        env: o.env,
        warn: (m) => this.logger.warn(m),
      });
      this.logger.info(`kode-rpc: starting ${this._command.command} ${this._command.args.join(" ")} (${this._command.source})`);
      await this.launch();
    } catch (e) {
      this.setState("failed");
      this.ready.reject(e);
      const g = this._gen;
      if (g && g.exited.settled === false) kill(g);
      throw e;
    }
    this.setState("running");
    this.ready.resolve();
  }

  private serverEnv(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...(this.opts.env ?? process.env) };
    if (this.opts.dataDir) env.KODE_DATA_DIR = this.opts.dataDir;
    if (this.opts.logDir) env.KODE_LOG_DIR = this.opts.logDir;
    if (this.opts.configDir) env.KODE_CONFIG_DIR = this.opts.configDir;
    return env;
  }

  /** Spawns a server process, connects and initializes it; it becomes the current generation. */
  private async launch(): Promise<Generation> {
    const { gen, result } = await launchServer({
      command: this._command!,
      env: this.serverEnv(),
      cwd: this.opts.cwd,
      handleSignals: this.opts.handleSignals ?? true,
      startTimeoutMs: this.opts.startTimeoutMs ?? 30_000,
      initialize: {
        protocolVersion: PROTOCOL_VERSION,
        clientInfo: this.opts.clientInfo ?? { name: "@kode-rpc/client" },
        processId: process.pid,
        workspaceFolders: this.opts.workspaceFolders,
        capabilities: { approvals: this.approvalsCapability },
      },
      logger: this.logger,
      onSpawned: (g) => {
        this._gen = g;
      },
      onEvent: (g, env) => {
        if (this._gen === g) this.hooks.onEvent(env); // else: a dead server's leftovers
      },
      onApprovalRequest: (req, token) => this.hooks.onApprovalRequest(req, token),
      onExit: (g, code, signal) => this.onExit(g, code, signal),
    });
    this._initResult = result;
    return gen;
  }

  // --- exits and restarts --------------------------------------------------------------

  private onExit(gen: Generation, code: number | null, signal: NodeJS.Signals | null): void {
    if (!failPending(gen, code, signal)) return;
    if (gen !== this._gen) return;
    const how = exitText(code, signal);
    const s = this._state;
    if (s === "stopping" || s === "stopped" || s === "failed" || s === "starting" || s === "restarting") {
      // start()/dispose()/the restart loop handle this exit.
      return;
    }
    if (this.expectExit) {
      this.logger.info(`kode-rpc: server exited after shutdown (${how})`);
      this.setState("stopped");
      this.ready = deferred();
      this.ready.reject(new KodeConnectionError("kode-rpc: the server was shut down"));
      return;
    }
    this.logger.warn(`kode-rpc: server (pid ${gen.pid}) exited unexpectedly (${how})`);
    if (this.opts.autoRestart === false) {
      this.setState("failed");
      this.ready = deferred();
      this.ready.reject(new KodeConnectionError(`kode-rpc: the server exited (${how}); autoRestart is off`));
      return;
    }
    void this.restartLoop(gen, code, signal);
  }

  private async restartLoop(dead: Generation, code: number | null, signal: NodeJS.Signals | null): Promise<void> {
    this.ready = deferred();
    this.setState("restarting");
    const resetMs = this.opts.restartResetMs ?? 60_000;
    if (Date.now() - dead.startedAt >= resetMs) this.consecutiveRestarts = 0;
    const max = this.opts.maxRestarts ?? 5;
    const base = this.opts.restartDelayMs ?? 200;
    const cap = this.opts.maxRestartDelayMs ?? 5000;
    let lastError: unknown;
    while (this.consecutiveRestarts < max) {
      this.consecutiveRestarts++;
      const attempt = this.consecutiveRestarts;
      const delay = Math.min(base * 2 ** (attempt - 1), cap);
      await sleep(delay, this.stopAbort.signal);
      if (this.stopAbort.signal.aborted) return;
      try {
        this.logger.info(`kode-rpc: restarting the server (attempt ${attempt}/${max})`);
        const gen = await this.launch();
        if (this.stopAbort.signal.aborted) return; // dispose() takes it from here
        const { resumed, failed } = await this.hooks.resume(gen);
        if (this.stopAbort.signal.aborted) return;
        if (gen.exited.settled || gen !== this._gen) throw new Error("the server exited while resuming");
        this.setState("running");
        this.ready.resolve();
        const info: RestartInfo = { attempt, exitCode: code, signal, previousPid: dead.pid, pid: gen.pid, resumed, failed };
        this.logger.info(`kode-rpc: server restarted (pid ${gen.pid}); resumed ${resumed.length} agent(s)`);
        notifyAll(this.restartListeners, [info], this.logger, "onRestart");
        return;
      } catch (e) {
        lastError = e;
        if (this.stopAbort.signal.aborted) return; // dispose() takes it from here
        this.logger.warn(`kode-rpc: restart attempt ${attempt} failed: ${e instanceof Error ? e.message : String(e)}`);
        const g = this._gen;
        if (g && !g.exited.settled) {
          kill(g);
          await g.exited.promise;
        }
        if (this.stopAbort.signal.aborted) return;
      }
    }
    const msg = `kode-rpc: the server could not be restarted after ${max} attempts: ${
      lastError instanceof Error ? lastError.message : String(lastError)
    }`;
    this.logger.error(msg);
    this.setState("failed");
    this.ready.reject(new KodeConnectionError(msg));
  }

  // --- stop --------------------------------------------------------------------------

  /** `shutdown` + `exit`, waits up to `shutdownTimeoutMs` for the process to end, then kills it. Idempotent. */
  dispose(): Promise<void> {
    if (!this.disposePromise) this.disposePromise = this.doDispose();
    return this.disposePromise;
  }

  private async doDispose(): Promise<void> {
    this.setState("stopping");
    this.stopAbort.abort();
    const gen = this._gen;
    const deadline = Date.now() + (this.opts.shutdownTimeoutMs ?? 3000);
    if (gen && !gen.exited.settled) {
      try {
        const shutdown = rawRequest(gen, "shutdown", {});
        await Promise.race([shutdown, sleep(Math.max(0, deadline - Date.now()), undefined, true)]);
        await gen.conn.sendNotification("exit", {});
      } catch {
        /* dead or refusing: killed below */
      }
      try {
        gen.proc.stdin?.end();
      } catch {
        /* closed */
      }
      const exited = await Promise.race([
        gen.exited.promise.then(() => true),
        sleep(Math.max(0, deadline - Date.now()), undefined, true).then(() => false),
      ]);
      if (!exited) {
        this.logger.warn(`kode-rpc: server (pid ${gen.pid}) did not exit in time; killing it`);
        kill(gen);
        await Promise.race([gen.exited.promise, sleep(5000, undefined, true)]);
      }
    }
    if (gen) this.onExit(gen, gen.proc.exitCode, gen.proc.signalCode);
    this.ready = deferred();
    this.ready.reject(new KodeConnectionError("kode-rpc: the client is disposed"));
    this.setState("stopped");
  }
}
