// @ts-check
// The kode-rpc server as a sidecar of an Electron main process, bridged to one renderer.
//
// Only `ipcMain.handle(channel, fn)` (+ optional `removeHandler`) and
// `webContents.send(channel, payload)` (+ optional `isDestroyed`) are used, exactly as
// Electron defines them, so this file runs unchanged under Electron and in plain Node
// (the tests pass fakes). It never imports 'electron'.
import { KodeClient, KodeRpcError } from "@kode-rpc/client";

/** @typedef {import("@kode-rpc/client").ApprovalRequest} ApprovalRequest */
/** @typedef {import("@kode-rpc/client").ApprovalDecision} ApprovalDecision */
/** @typedef {import("@kode-rpc/client").AgentConfig} AgentConfig */
/** @typedef {import("@kode-rpc/client").KodeClientOptions} KodeClientOptions */
/** @typedef {import("@kode-rpc/client").Logger} Logger */
/**
 * @typedef {{ handle(channel: string, fn: (event: any, ...args: any[]) => any): void,
 *             removeHandler?(channel: string): void }} IpcMainLike
 * @typedef {{ send(channel: string, payload: unknown): void, isDestroyed?(): boolean }} WebContentsLike
 * @typedef {"starting" | "ready" | "restarting" | "stopped" | "failed"} ServerState
 * @typedef {{ approvalId: string, agentId: string, turnId: string, title: string,
 *             subject: ApprovalRequest["subject"], call: { id: string, name: string, input?: unknown, inputPreview?: string },
 *             timeoutMs: number, expiresAt: string }} ApprovalPrompt
 */

/** Renderer -> main (`ipcRenderer.invoke`). */
export const CHANNELS = Object.freeze({
  createAgent: "kode:createAgent",
  send: "kode:send",
  interrupt: "kode:interrupt",
  listAgents: "kode:listAgents",
  decide: "kode:decide",
  status: "kode:status",
});

/** Main -> renderer (`webContents.send`). */
export const PUSH = Object.freeze({
  event: "kode:event",
  approval: "kode:approval",
  serverState: "kode:server-state",
});

const AGENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const PROVIDERS = ["echo", "scripted", "anthropic", "openai"];

/** What crosses IPC: Electron keeps only an Error's message, so put code and reason in it. @param {unknown} e */
function ipcError(e) {
  if (e instanceof KodeRpcError) {
    return new Error(`kode-rpc ${e.code}${e.reason ? ` (${e.reason})` : ""}: ${e.message}`);
  }
  return e instanceof Error ? e : new Error(String(e));
}

/** @param {unknown} v @param {string} what */
function str(v, what) {
  if (typeof v !== "string" || v.length === 0) throw new Error(`${what} must be a non-empty string`);
  return v;
}

/** @param {unknown} v */
function agentIdOf(v) {
  const id = str(v, "agentId");
  if (!AGENT_ID_RE.test(id)) throw new Error(`invalid agentId ${JSON.stringify(id)}`);
  return id;
}

/**
 * Starts `kode-rpc serve` through `@kode-rpc/client` and bridges it to a renderer.
 * Returns at once (handlers are registered before the server is up; requests wait for
 * it); `sidecar.ready` resolves when the server answered `initialize`.
 *
 * @param {{
 *   ipcMain: IpcMainLike,
 *   webContents: WebContentsLike,
 *   serverPath?: string,          // a user-chosen kode-rpc binary (must exist)
 *   bundledPath?: string,         // the frozen binary shipped with the app (skipped when missing)
 *   workDir: string,              // sandbox.workDir of every agent the renderer creates
 *   approvalTimeoutMs?: number,   // the renderer's time to answer an approval; then deny (default 120000)
 *   allowAutoMode?: boolean,      // let the renderer create agents with permission.mode "auto" (default false)
 *   dataDir?: string, logDir?: string, configDir?: string,
 *   logger?: Logger,
 *   clientOptions?: KodeClientOptions, // anything else for KodeClient.start (trusted: main process only)
 * }} options
 */
export function createSidecar(options) {
  const { ipcMain, webContents, workDir } = options;
  if (!ipcMain || typeof ipcMain.handle !== "function") throw new TypeError("createSidecar: ipcMain.handle is required");
  if (!webContents || typeof webContents.send !== "function") throw new TypeError("createSidecar: webContents.send is required");
  str(workDir, "workDir");
  const approvalTimeoutMs = options.approvalTimeoutMs ?? 120_000;
  const logger = options.logger;

  /** @type {ServerState} */
  let state = "starting";
  /** @type {string | undefined} */
  let lastError;
  let disposed = false;
  /** @type {Promise<void> | undefined} */
  let disposing;
  /** @type {KodeClient | undefined} */
  let client;
  /** @type {Map<string, { prompt: ApprovalPrompt, finish(d: ApprovalDecision): void }>} */
  const pending = new Map();

  /** @param {string} channel @param {unknown} payload */
  function push(channel, payload) {
    try {
      if (webContents.isDestroyed?.()) return;
      webContents.send(channel, payload);
    } catch (e) {
      logger?.warn(`kode sidecar: cannot send ${channel}: ${String(e)}`);
    }
  }

  /** @param {ServerState} s */
  function setState(s) {
    if (s === state) return;
    state = s;
    push(PUSH.serverState, { state: s, pid: client?.serverPid ?? null, error: s === "failed" ? lastError : undefined });
  }

  /** The client's approval handler: ask the renderer, wait for `kode:decide`, deny on timeout. */
  /** @type {import("@kode-rpc/client").ApprovalHandler} */
  function askRenderer(req, { signal }) {
    if (disposed || webContents.isDestroyed?.()) {
      return { decision: "deny", note: "No window to ask the user in." };
    }
    return new Promise((resolve) => {
      /** @type {ApprovalPrompt} */
      const prompt = {
        approvalId: req.approvalId,
        agentId: req.agentId,
        turnId: req.turnId,
        title: req.title,
        subject: req.subject,
        call: { id: req.call.id, name: req.call.name, input: req.call.input, inputPreview: req.call.inputPreview },
        timeoutMs: approvalTimeoutMs,
        expiresAt: new Date(Date.now() + approvalTimeoutMs).toISOString(),
      };
      /** @param {ApprovalDecision} d */
      const finish = (d) => {
        if (!pending.has(req.approvalId)) return;
        pending.delete(req.approvalId);
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        resolve(d);
      };
      const timer = setTimeout(
        () => finish({ decision: "deny", note: `The user did not answer within ${Math.round(approvalTimeoutMs / 1000)} s.` }),
        approvalTimeoutMs,
      );
      // The server withdrew the request (its own timeout, an interrupt, decided elsewhere):
      // our answer is ignored; the renderer sees `permission_decided` and closes its prompt.
      const onAbort = () => finish({ decision: "deny" });
      signal.addEventListener("abort", onAbort, { once: true });
      pending.set(req.approvalId, { prompt, finish });
      push(PUSH.approval, prompt);
    });
  }

  const started = KodeClient.start({
    clientInfo: { name: "kode-electron-example", version: "0.1.0" },
    workspaceFolders: [workDir],
    serverPath: options.serverPath,
    bundledPath: options.bundledPath,
    dataDir: options.dataDir,
    logDir: options.logDir,
    configDir: options.configDir,
    logger,
    handleSignals: false, // Electron quits cleanly on signals and fires before-quit, where we dispose()
    ...options.clientOptions,
    approvalHandler: askRenderer,
  }).then(
    (c) => {
      client = c;
      if (disposed) return c; // dispose() came first: it stops this server
      c.onEvent((e) => push(PUSH.event, e));
      c.onStateChange((s) => {
        if (s === "running") setState("ready");
        else if (s === "restarting") setState("restarting");
        else if (s === "failed") {
          lastError = "the server could not be restarted";
          setState("failed");
        }
        // "stopping"/"stopped": dispose() reports "stopped" once the process is gone.
      });
      setState("ready");
      return c;
    },
    (e) => {
      lastError = e instanceof Error ? e.message : String(e);
      if (!disposed) setState("failed");
      throw e;
    },
  );
  started.catch(() => {}); // reported through `ready` and the handlers

  async function ready() {
    const c = await started;
    if (disposed) throw new Error("kode sidecar is disposed");
    return c;
  }

  /**
   * @param {string} channel
   * @param {(c: KodeClient, arg: any) => Promise<unknown> | unknown} fn
   */
  function handle(channel, fn) {
    ipcMain.handle(channel, async (event, arg) => {
      // Only the window this sidecar serves may drive it.
      if (event && event.sender && event.sender !== webContents) throw new Error(`${channel}: unknown sender`);
      try {
        return await fn(await ready(), arg ?? {});
      } catch (e) {
        throw ipcError(e);
      }
    });
  }

  // The renderer is not trusted with the agent's sandbox, permission mode or API endpoints:
  // the main process sets workDir and the mode; baseUrl/apiKeyEnv/tools are not taken.
  handle(CHANNELS.createAgent, (c, arg) => {
    const model = arg.model ?? { provider: "echo" };
    if (!PROVIDERS.includes(model.provider)) throw new Error(`unknown provider ${JSON.stringify(model.provider)}`);
    const mode = arg.permission?.mode ?? "approval";
    if (!(mode === "approval" || mode === "readonly" || (mode === "auto" && options.allowAutoMode))) {
      throw new Error(`permission mode ${JSON.stringify(mode)} is not allowed from the renderer`);
    }
    /** @type {AgentConfig} */
    const config = {
      model: {
        provider: model.provider,
        ...(typeof model.model === "string" ? { model: model.model } : {}),
        ...(Array.isArray(model.script) ? { script: model.script } : {}),
      },
      permission: {
        mode,
        ...(typeof arg.permission?.approvalTimeoutMs === "number" ? { approvalTimeoutMs: arg.permission.approvalTimeoutMs } : {}),
      },
      sandbox: { workDir },
    };
    if (arg.agentId !== undefined) config.agentId = agentIdOf(arg.agentId);
    if (typeof arg.systemPrompt === "string") config.systemPrompt = arg.systemPrompt;
    return c.createAgent(config);
  });

  handle(CHANNELS.send, (c, arg) => c.send({ agentId: agentIdOf(arg.agentId), text: str(arg.text, "text") }));

  handle(CHANNELS.interrupt, (c, arg) => c.interrupt({ agentId: agentIdOf(arg.agentId) }));

  handle(CHANNELS.listAgents, (c, arg) => {
    /** @type {import("@kode-rpc/client").ListParams} */
    const params = {};
    if (typeof arg.prefix === "string") params.prefix = arg.prefix;
    if (typeof arg.limit === "number") params.limit = arg.limit;
    if (typeof arg.cursor === "string") params.cursor = arg.cursor;
    return c.list(params);
  });

  // The renderer's answer to a `kode:approval`. `accepted: false` when it is no longer
  // pending here (timed out, withdrawn, answered twice).
  handle(CHANNELS.decide, (_c, arg) => {
    const approvalId = str(arg.approvalId, "approvalId");
    if (arg.decision !== "allow" && arg.decision !== "deny") throw new Error('decision must be "allow" or "deny"');
    const p = pending.get(approvalId);
    if (!p) return { accepted: false };
    /** @type {ApprovalDecision} */
    const d = { decision: arg.decision };
    if (arg.decision === "allow" && arg.remember === true) d.remember = true;
    if (typeof arg.note === "string") d.note = arg.note;
    p.finish(d);
    return { accepted: true };
  });

  // With an agentId: `agent/status`. Without: the sidecar itself (a renderer that (re)loads
  // late missed the pushes: it gets the server state and the approvals still waiting).
  ipcMain.handle(CHANNELS.status, async (event, arg) => {
    if (event && event.sender && event.sender !== webContents) throw new Error(`${CHANNELS.status}: unknown sender`);
    if (arg?.agentId !== undefined) {
      try {
        return await (await ready()).status({ agentId: agentIdOf(arg.agentId) });
      } catch (e) {
        throw ipcError(e);
      }
    }
    return {
      state,
      error: state === "failed" ? lastError : undefined,
      pid: client?.serverPid ?? null,
      serverInfo: client?.initializeResult?.serverInfo ?? null,
      source: client?.serverCommand?.source ?? null,
      pendingApprovals: [...pending.values()].map((p) => p.prompt),
    };
  });

  push(PUSH.serverState, { state: "starting", pid: null });

  return {
    /** Resolves when the server is up; rejects when it could not be started. */
    ready: started.then(() => undefined),
    get state() {
      return state;
    },
    get serverPid() {
      return client?.serverPid;
    },
    /** The underlying KodeClient (undefined until started). */
    get client() {
      return client;
    },
    /** Stops the server (shutdown + exit, then kill) and unregisters the handlers. Idempotent. */
    dispose() {
      if (!disposing) {
        disposed = true;
        disposing = (async () => {
          for (const ch of Object.values(CHANNELS)) ipcMain.removeHandler?.(ch);
          for (const p of [...pending.values()]) p.finish({ decision: "deny", note: "The app is closing." });
          const c = await started.catch(() => undefined);
          await c?.dispose();
          state = "stopped";
          push(PUSH.serverState, { state: "stopped", pid: null });
        })();
      }
      return disposing;
    },
  };
}
