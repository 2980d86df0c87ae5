/**
 * `KodeClient`: the public face of the library. It wires together the modules that do
 * the work, each with one job:
 *   supervisor.ts     starting, restarting and stopping the server process (serverProcess.ts: one process + connection)
 *   eventRouter.ts    exactly-once, in-order event delivery and replay cursors
 *   approvals.ts      the approval handler and its answers
 *   hostExit.ts       no server survives the host process
 * and adds the typed requests of the protocol.
 */
import { CancellationTokenSource, type CancellationToken } from "vscode-jsonrpc/node";
import type { ServerCommand } from "./discovery.js";
import { ApprovalResponder } from "./approvals.js";
import { ErrorCodes, KodeConnectionError, KodeRpcError } from "./errors.js";
import { EventRouter } from "./eventRouter.js";
import type {
  AgentConfig,
  AgentInfo,
  AgentRef,
  AgentStatus,
  CheckpointsResult,
  ClientRequestName,
  CompactResult,
  ConsistencyParams,
  ConsistencyResult,
  DecideParams,
  DecideResult,
  DeleteResult,
  EventEnvelope,
  EventsParams,
  EventsResult,
  ForkParams,
  InitializeResult,
  InterruptParams,
  InterruptResult,
  ListParams,
  ListResult,
  MessagesParams,
  MessagesResult,
  ParamsOf,
  PoolStats,
  PrometheusResult,
  ResultOf,
  ResumeParams,
  ResumeResult,
  RewindParams,
  RewindResult,
  SendParams,
  SendResult,
  StoreHealth,
  StoreMetrics,
  TemplatesResult,
  TodosParams,
  TodosResult,
} from "./protocol.js";
import { rawRequest, type Generation } from "./serverProcess.js";
import { ServerSupervisor } from "./supervisor.js";
import type {
  ApprovalHandler,
  Channel,
  ClientState,
  CompleteOutcome,
  Disposable,
  EventListener,
  KodeClientOptions,
  Logger,
  RequestOptions,
  RestartInfo,
} from "./types.js";
import { silentLogger } from "./util.js";

export type {
  AgentEvent,
  ApprovalContext,
  ApprovalDecision,
  ApprovalHandler,
  Channel,
  ClientState,
  CompleteOutcome,
  Disposable,
  EventListener,
  KodeClientOptions,
  Logger,
  RequestOptions,
  RestartInfo,
} from "./types.js";

/**
 * A client of one `kode-rpc` server process that it spawns and owns.
 *
 * ```ts
 * const client = await KodeClient.start({ clientInfo: { name: "my-app" } });
 * const agent = await client.createAgent({ model: { provider: "echo" } });
 * client.onAgentEvent(agent.agentId, (e) => console.log(e.seq, e.event.type));
 * await client.complete({ agentId: agent.agentId, text: "hello" });
 * await client.dispose();
 * ```
 */
export class KodeClient {
  private readonly opts: KodeClientOptions;
  private readonly logger: Logger;
  private readonly supervisor: ServerSupervisor;
  private readonly router: EventRouter;
  private readonly approvals: ApprovalResponder;
  private readonly approvalsCapability: boolean;

  private constructor(options: KodeClientOptions) {
    this.opts = options;
    this.logger = options.logger ?? silentLogger;
    this.approvalsCapability = options.approvals ?? options.approvalHandler !== undefined;
    this.router = new EventRouter(this.logger);
    this.approvals = new ApprovalResponder(options.approvalHandler, this.logger, (p) => this.decide(p));
    this.supervisor = new ServerSupervisor(options, this.logger, this.approvalsCapability, {
      onEvent: (env) => this.deliver(env),
      onApprovalRequest: (req, token) => this.approvals.answer(req, token),
      resume: (gen) => this.resumeWatched(gen),
    });
  }

  /** Spawns the server, sends `initialize`, and resolves once it answered. */
  static async start(options: KodeClientOptions = {}): Promise<KodeClient> {
    const client = new KodeClient(options);
    await client.supervisor.start();
    return client;
  }

  // --- state -------------------------------------------------------------------------

  get state(): ClientState {
    return this.supervisor.state;
  }

  /** Pid of the current server process (changes after a restart). */
  get serverPid(): number | undefined {
    return this.supervisor.gen?.pid;
  }

  /** The command the server was started with and the discovery step that chose it. */
  get serverCommand(): ServerCommand | undefined {
    return this.supervisor.command;
  }

  /** The result of the last `initialize` (server version, capabilities, dataDir). */
  get initializeResult(): InitializeResult | undefined {
    return this.supervisor.initializeResult;
  }

  /** Agents re-subscribed after a restart. */
  get watchedAgents(): string[] {
    return this.router.watchedAgents;
  }

  /** Highest `seq` delivered to listeners for this agent. */
  lastSeq(agentId: string): number | undefined {
    return this.router.lastSeq(agentId);
  }

  /** Events dropped as duplicates (seq <= cursor), e.g. replays after a restart. */
  get duplicatesDropped(): number {
    return this.router.duplicatesDropped;
  }

  /** Resolves when the client is running (immediately, or after a restart). */
  whenReady(): Promise<void> {
    return this.supervisor.whenReady();
  }

  onStateChange(listener: (state: ClientState, previous: ClientState) => void): Disposable {
    return this.supervisor.onStateChange(listener);
  }

  onRestart(listener: (info: RestartInfo) => void): Disposable {
    return this.supervisor.onRestart(listener);
  }

  // --- events ------------------------------------------------------------------------

  /** Every `agent/event` (all agents), deduplicated and in seq order per agent. */
  onEvent(listener: EventListener): Disposable {
    return this.router.onEvent(listener);
  }

  /**
   * Events of one agent, optionally only some channels. This registers a local
   * listener; the server sends events of agents this client created, resumed, sent to,
   * decided on or set todos of (call `subscribe()` for any other agent).
   */
  onAgentEvent(agentId: string, listener: EventListener, options: { channels?: Channel[] } = {}): Disposable {
    return this.router.onAgentEvent(agentId, listener, options);
  }

  /**
   * Resolves with the first event of `agentId` delivered from now on that matches
   * `predicate` (e.g. `(e) => e.event.type === "done"`).
   */
  waitForEvent(
    agentId: string,
    predicate: (envelope: EventEnvelope) => boolean,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<EventEnvelope> {
    return this.router.waitForEvent(agentId, predicate, options);
  }

  private deliver(env: EventEnvelope): void {
    if (!this.router.deliver(env)) return;
    if (!this.approvalsCapability && env.event.type === "permission_required" && !env.replay && this.approvals.hasHandler) {
      void this.approvals.answerEvent(env);
    }
  }

  // --- approvals ---------------------------------------------------------------------

  /**
   * Sets (or clears) the approval handler. A handler that throws, returns something
   * that is not `{decision: "allow"|"deny"}`, or a missing handler means deny.
   */
  setApprovalHandler(handler: ApprovalHandler | undefined): void {
    this.approvals.setHandler(handler);
  }

  // --- restarts ----------------------------------------------------------------------

  /** After a restart: `agent/resume {since: cursor}` for every followed agent, 4 at a time. */
  private async resumeWatched(gen: Generation): Promise<{ resumed: RestartInfo["resumed"]; failed: RestartInfo["failed"] }> {
    const resumed: RestartInfo["resumed"] = [];
    const failed: RestartInfo["failed"] = [];
    const queue = this.router.watchedAgents;
    const strategy = this.opts.resumeStrategy ?? "crash";
    const worker = async () => {
      for (let agentId = queue.shift(); agentId !== undefined; agentId = queue.shift()) {
        const since = this.router.resumeFrom(agentId);
        const params: ResumeParams = { agentId, strategy };
        if (since !== undefined) params.since = since;
        try {
          const r = await rawRequest(gen, "agent/resume", params);
          resumed.push({ agentId, since, replayed: r.replayed });
          this.router.setBaseline(agentId, r.lastSeq);
        } catch (e) {
          if (e instanceof KodeConnectionError) throw e;
          if (e instanceof KodeRpcError && e.code === ErrorCodes.NotFound) this.router.unwatch(agentId);
          this.logger.warn(`kode-rpc: could not resume agent ${agentId}: ${String(e)}`);
          failed.push({ agentId, error: e as Error });
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    return { resumed, failed };
  }

  /**
   * `shutdown` + `exit`, waits up to `shutdownTimeoutMs` (3 s) for the process to end,
   * then kills it. Pending requests reject with `KodeConnectionError`. Idempotent.
   */
  dispose(): Promise<void> {
    return this.supervisor.dispose();
  }

  // --- requests ----------------------------------------------------------------------

  /**
   * Sends any client request of the protocol (typed by the generated `Methods` map).
   * Waits while the client restarts the server; rejects with `KodeRpcError` for an
   * error response and `KodeConnectionError` when the server went away first.
   */
  async request<M extends ClientRequestName>(
    method: M,
    params: ParamsOf<M>,
    options: RequestOptions = {},
  ): Promise<ResultOf<M>> {
    const state = this.supervisor.state;
    if (state === "stopping" || state === "stopped") {
      throw new KodeConnectionError(`kode-rpc: cannot send ${method}: the client is ${state}`, method);
    }
    let cts: CancellationTokenSource | undefined;
    let timer: NodeJS.Timeout | undefined;
    let token: CancellationToken | undefined = options.token;
    const onAbort = () => cts?.cancel();
    if (options.signal || options.timeoutMs !== undefined) {
      cts = new CancellationTokenSource();
      options.token?.onCancellationRequested(() => cts!.cancel());
      if (options.token?.isCancellationRequested) cts.cancel();
      if (options.signal) {
        if (options.signal.aborted) cts.cancel();
        else options.signal.addEventListener("abort", onAbort, { once: true });
      }
      if (options.timeoutMs !== undefined) timer = setTimeout(() => cts!.cancel(), options.timeoutMs);
      token = cts.token;
    }
    try {
      if (this.supervisor.state !== "running") await this.supervisor.whenReady();
      if (token?.isCancellationRequested) {
        throw new KodeRpcError(ErrorCodes.RequestCancelled, `${method} was cancelled before it was sent`, { reason: "cancelled" }, method);
      }
      return await rawRequest(this.supervisor.gen!, method, params, token);
    } finally {
      if (timer) clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      cts?.dispose();
    }
  }

  /** Runs an agent-scoped request, following the agent; a -32002 (or -32602) for an agent not followed before unfollows it. */
  private async agentRequest<M extends ClientRequestName>(
    method: M,
    params: ParamsOf<M> & { agentId: string },
    options: RequestOptions | undefined,
    watch: boolean,
  ): Promise<ResultOf<M>> {
    const wasWatched = this.router.isWatched(params.agentId);
    if (watch) this.router.watch(params.agentId);
    try {
      return await this.request(method, params, options);
    } catch (e) {
      if (!wasWatched && e instanceof KodeRpcError && (e.code === ErrorCodes.NotFound || e.code === ErrorCodes.InvalidParams)) {
        this.router.unwatch(params.agentId);
      }
      throw e;
    }
  }

  // --- typed API: agents -------------------------------------------------------------

  /** `agent/create`. The client is subscribed (sees `seq` 1) and watches the agent. */
  async createAgent(config: AgentConfig = {}, options?: RequestOptions): Promise<AgentInfo> {
    const info = await this.request("agent/create", config, options);
    this.router.watch(info.agentId);
    this.router.initCursor(info.agentId, 0);
    return info;
  }

  /**
   * `agent/resume`: subscribes to the agent, replaying stored events after `since`.
   * Replayed events this client already delivered are dropped (exactly-once per client);
   * read history with `events()` instead.
   */
  async resumeAgent(params: ResumeParams, options?: RequestOptions): Promise<ResumeResult> {
    const r = await this.agentRequest("agent/resume", params, options, true);
    if (params.since !== undefined && params.since !== null) this.router.initCursor(params.agentId, params.since);
    else this.router.setBaseline(params.agentId, r.lastSeq);
    return r;
  }

  /** Subscribes to an existing agent's events from now on (`agent/resume` without replay unless `since`). */
  subscribe(agentId: string, since?: number, options?: RequestOptions): Promise<ResumeResult> {
    const params: ResumeParams = { agentId };
    if (since !== undefined) params.since = since;
    return this.resumeAgent(params, options);
  }

  /** `agent/send`: returns at once; the turn streams as events and ends with one `done`. */
  send(params: SendParams, options?: RequestOptions): Promise<SendResult> {
    return this.agentRequest("agent/send", params, options, true);
  }

  /**
   * `agent/complete`: sends and waits for the turn's `done`. A turn that failed (a
   * provider error included) resolves with `status: "error"` and
   * `error: {type, message, retryable}`; check `status`. The promise rejects only when
   * the request itself failed: `KodeRpcError` for bad params (`-32602`), an unknown agent
   * (`-32002`), a server shutting down (`-32001`), or `-32800` when cancelled (token/signal
   * send `$/cancelRequest`; the turn goes on: stop it with `interrupt`), and
   * `KodeConnectionError` when the server went away first.
   */
  async complete(params: SendParams, options?: RequestOptions): Promise<CompleteOutcome> {
    return (await this.agentRequest("agent/complete", params, options, true)) as CompleteOutcome;
  }

  interrupt(params: InterruptParams, options?: RequestOptions): Promise<InterruptResult> {
    return this.request("agent/interrupt", params, options);
  }

  /** `agent/decide`: answers a pending approval (first answer wins; later ones get -32011). */
  decide(params: DecideParams, options?: RequestOptions): Promise<DecideResult> {
    return this.agentRequest("agent/decide", params, options, true);
  }

  status(params: AgentRef, options?: RequestOptions): Promise<AgentStatus> {
    return this.request("agent/status", params, options);
  }

  list(params: ListParams = {}, options?: RequestOptions): Promise<ListResult> {
    return this.request("agent/list", params, options);
  }

  messages(params: MessagesParams, options?: RequestOptions): Promise<MessagesResult> {
    return this.request("agent/messages", params, options);
  }

  /** `agent/events`: reads stored events (returned, not delivered to listeners). */
  events(params: EventsParams, options?: RequestOptions): Promise<EventsResult> {
    return this.request("agent/events", params, options);
  }

  fork(params: ForkParams, options?: RequestOptions): Promise<AgentInfo> {
    return this.request("agent/fork", params, options);
  }

  /** `agent/todos`: reads, or sets when `todos` is given (which subscribes, like the server does). */
  todos(params: TodosParams, options?: RequestOptions): Promise<TodosResult> {
    return this.agentRequest("agent/todos", params, options, params.todos !== undefined && params.todos !== null);
  }

  /**
   * `agent/compact`: compresses the agent's context now (after the running turn, if
   * any), optionally focused by `instructions`; `context_compression` events follow.
   */
  compact(agentId: string, instructions?: string, options?: RequestOptions): Promise<CompactResult> {
    const params: { agentId: string; instructions?: string } = { agentId };
    if (instructions !== undefined) params.instructions = instructions;
    return this.agentRequest("agent/compact", params, options, false);
  }

  /** `agent/checkpoints`: the agent's checkpoints, oldest first. */
  checkpoints(agentId: string, options?: RequestOptions): Promise<CheckpointsResult> {
    return this.request("agent/checkpoints", { agentId }, options);
  }

  /**
   * `agent/rewind`: restores the workDir and/or the conversation to a checkpoint
   * (`restore` defaults to `"both"`). With `dryRun` nothing changes and the result lists
   * `files` and `conflicts`; with conflicts and no `force` nothing is restored
   * (`restored: false`). A running or queued turn gets -32602 `agent_busy`.
   */
  rewind(
    agentId: string,
    checkpointId: string,
    opts: Omit<RewindParams, "agentId" | "checkpointId"> = {},
    options?: RequestOptions,
  ): Promise<RewindResult> {
    return this.request("agent/rewind", { ...opts, agentId, checkpointId }, options);
  }

  async deleteAgent(params: AgentRef, options?: RequestOptions): Promise<DeleteResult> {
    const r = await this.request("agent/delete", params, options);
    this.router.forget(params.agentId);
    return r;
  }

  // --- typed API: server -------------------------------------------------------------

  poolStats(options?: RequestOptions): Promise<PoolStats> {
    return this.request("pool/stats", {}, options);
  }

  templates(options?: RequestOptions): Promise<TemplatesResult> {
    return this.request("templates/list", {}, options);
  }

  storeHealth(options?: RequestOptions): Promise<StoreHealth> {
    return this.request("store/health", {}, options);
  }

  storeConsistency(params: ConsistencyParams, options?: RequestOptions): Promise<ConsistencyResult> {
    return this.request("store/consistency", params, options);
  }

  storeMetrics(options?: RequestOptions): Promise<StoreMetrics> {
    return this.request("store/metrics", {}, options);
  }

  prometheus(options?: RequestOptions): Promise<PrometheusResult> {
    return this.request("metrics/prometheus", {}, options);
  }

  /**
   * Sends `shutdown` only (the server then refuses everything but `exit`); the exit that
   * follows is not treated as a crash. Prefer `dispose()`, which also sends `exit`,
   * waits and kills.
   */
  async shutdown(options?: RequestOptions): Promise<null> {
    this.supervisor.expectShutdown();
    return this.request("shutdown", {}, options);
  }
}
