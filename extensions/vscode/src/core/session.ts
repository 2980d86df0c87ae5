/**
 * The extension's side of the server: owns the KodeClient, the open agents (each with
 * its ChatModel and event routing), approvals, and the status text. No `vscode` here:
 * the extension passes a logger, settings, the workspace folder and the approval host.
 */
import {
  KodeClient,
  KodeRpcError,
  ErrorCodes,
  type AgentInfo,
  type ClientState,
  type CompactResult,
  type RewindResult,
  type TurnDiff,
  type Checkpoint,
  type EventEnvelope,
  type KodeClientOptions,
  type Logger,
  type Disposable as LibDisposable,
} from "@kode-rpc/client";
import { ApprovalBroker, type ApprovalHost } from "./approvals.js";
import { ChatModel, type ApprovalChoice, type ChatItem } from "./chatModel.js";
import { fileSection, reverseApply } from "./diff.js";
import { agentConfig, newAgentId, type KodeSettings, type NewAgentOptions } from "./config.js";
import { Emitter } from "./events.js";
import { formatStatus, type StatusView } from "./status.js";
import { TitleBook, titleFromText, type TitleStorage } from "./titles.js";

export interface SessionOptions {
  /**
   * Library options (discovery, env, dataDir, logger...), or a function read at each
   * (re)start so settings changes apply. `approvalHandler` is set by the session.
   */
  client: ClientOptions | (() => ClientOptions);
  /** Current settings (read on every agent creation). */
  settings: () => KodeSettings;
  /** The sandbox workDir of new agents (the first workspace folder), if any. */
  workDir?: () => string | undefined;
  approvalHost: ApprovalHost;
  logger?: Logger;
  /** Where chat titles are kept (VS Code's globalState); in memory when absent. */
  titles?: TitleStorage;
}

export type ClientOptions = Omit<KodeClientOptions, "approvalHandler">;

export type SessionEvent =
  /** Items of an agent's chat changed (render them). */
  | { type: "items"; agentId: string; items: ChatItem[] }
  /** State/usage of an agent changed (header, status bar). */
  | { type: "header"; agentId: string }
  /** The whole transcript of an agent was (re)loaded. */
  | { type: "reset"; agentId: string }
  /** The agent list changed (created, deleted, forked, state). */
  | { type: "agents" }
  /** The current agent changed. */
  | { type: "current"; agentId: string | undefined }
  /** The agent was deleted. */
  | { type: "deleted"; agentId: string }
  /** The chat's title changed (first message, rename). */
  | { type: "title"; agentId: string }
  /** The library's client state changed (restarting, failed...). */
  | { type: "client"; state: ClientState };

export interface OpenAgent {
  agentId: string;
  model: ChatModel;
  info?: AgentInfo;
}

const noopLogger: Logger = { info() {}, warn() {}, error() {} };

/** Diff cards read back for an opened agent's history: its newest turns that changed files. */
const MAX_HISTORY_DIFFS = 50;

/** `work(item)` for every item, `n` at a time (requests to the server run side by side). */
async function inParallel<T>(items: T[], n: number, work: (item: T) => Promise<void>): Promise<void> {
  const todo = [...items];
  const worker = async () => {
    for (let item = todo.shift(); item !== undefined; item = todo.shift()) await work(item);
  };
  await Promise.all(Array.from({ length: Math.min(n, todo.length) }, worker));
}

export class KodeSession {
  private client: KodeClient | undefined;
  private starting: Promise<KodeClient> | undefined;
  private readonly agents = new Map<string, OpenAgent>();
  private readonly loading = new Map<string, Promise<OpenAgent>>();
  private readonly emitter = new Emitter<SessionEvent>();
  private readonly clientSubs: LibDisposable[] = [];
  private _current: string | undefined;
  private disposed = false;
  private _approvals: ApprovalBroker;
  readonly onDidChange = this.emitter.event;
  private readonly logger: Logger;
  /** Chat titles (first user message, or the user's). */
  readonly titles: TitleBook;
  /** Stored agents whose first message was already looked up for a title. */
  private readonly titleLookups = new Set<string>();

  constructor(private readonly options: SessionOptions) {
    this.logger = options.logger ?? noopLogger;
    this._approvals = this.newBroker();
    this.titles = new TitleBook(options.titles);
    this.titles.onDidChange((agentId) => {
      this.emitter.fire({ type: "title", agentId });
      this.emitter.fire({ type: "header", agentId });
    });
  }

  /** The chat's title: the user's, else from its first message, else the agent id. */
  title(agentId: string): string {
    return this.titles.display(agentId);
  }

  /** Renames a chat; an empty title goes back to the first message. */
  rename(agentId: string, title: string | undefined): void {
    this.titles.rename(agentId, title);
    if (!this.titles.has(agentId)) {
      const first = this.agents.get(agentId)?.model.firstUserText();
      if (first) this.titles.setAuto(agentId, titleFromText(first));
      else this.titleLookups.delete(agentId);
    }
    this.emitter.fire({ type: "agents" });
  }

  private newBroker(): ApprovalBroker {
    const b = new ApprovalBroker(this.options.approvalHost);
    b.onDidRequest((p) => {
      const a = this.agents.get(p.request.agentId);
      if (!a) return;
      const card = a.model.attachApprovalRequest(p.request);
      this.emitter.fire({ type: "items", agentId: a.agentId, items: [card] });
      this.emitter.fire({ type: "header", agentId: a.agentId }); // "awaiting approval"
    });
    return b;
  }

  /** Pending approvals and their routing (inline vs notification). */
  get approvals(): ApprovalBroker {
    return this._approvals;
  }

  // --- client lifecycle --------------------------------------------------------------

  /** Starts the server on first use; later calls return the same client. */
  start(): Promise<KodeClient> {
    if (this.disposed) return Promise.reject(new Error("kode: the session is disposed"));
    if (this.client) return Promise.resolve(this.client);
    if (!this.starting) {
      const base = typeof this.options.client === "function" ? this.options.client() : this.options.client;
      this.starting = KodeClient.start({
        ...base,
        logger: base.logger ?? this.logger,
        approvalHandler: this._approvals.handler,
      }).then(
        (c) => {
          this.client = c;
          this.starting = undefined;
          this.clientSubs.push(
            c.onEvent((e) => this.onEvent(e)),
            c.onStateChange((s) => this.emitter.fire({ type: "client", state: s })),
          );
          const init = c.initializeResult;
          this.logger.info(
            `kode: connected to ${init?.serverInfo.name ?? "kode-rpc"} ${init?.serverInfo.version ?? ""} ` +
              `(pid ${c.serverPid}, ${c.serverCommand?.source}: ${c.serverCommand?.command}); data dir ${init?.dataDir}`,
          );
          return c;
        },
        (e: unknown) => {
          this.starting = undefined;
          throw e;
        },
      );
    }
    return this.starting;
  }

  get started(): boolean {
    return this.client !== undefined;
  }

  get kodeClient(): KodeClient | undefined {
    return this.client;
  }

  /** Disposes the client (shutdown + exit); open agents are forgotten. */
  async stop(): Promise<void> {
    const c = this.client ?? (await this.starting?.catch(() => undefined));
    this.client = undefined;
    this.starting = undefined;
    for (const s of this.clientSubs.splice(0)) s.dispose();
    this._approvals.dispose();
    this._approvals = this.newBroker();
    this.agents.clear();
    this.loading.clear();
    if (c) await c.dispose();
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.stop();
    this.emitter.dispose();
    this.titles.dispose();
  }

  // --- events ------------------------------------------------------------------------

  private onEvent(env: EventEnvelope): void {
    const a = this.agents.get(env.agentId);
    if (!a) return;
    const change = a.model.apply(env);
    if (change.items.length) this.emitter.fire({ type: "items", agentId: env.agentId, items: change.items });
    if (change.header) {
      this.emitter.fire({ type: "header", agentId: env.agentId });
      if (env.event.type === "state_changed") this.emitter.fire({ type: "agents" });
    }
  }

  private register(agentId: string): OpenAgent {
    let a = this.agents.get(agentId);
    if (!a) {
      a = { agentId, model: new ChatModel(agentId) };
      this.agents.set(agentId, a);
    }
    return a;
  }

  // --- current agent -----------------------------------------------------------------

  get currentAgentId(): string | undefined {
    return this._current;
  }

  setCurrent(agentId: string | undefined): void {
    if (this._current === agentId) return;
    this._current = agentId;
    this.emitter.fire({ type: "current", agentId });
  }

  // --- agents ------------------------------------------------------------------------

  getAgent(agentId: string): OpenAgent | undefined {
    return this.agents.get(agentId);
  }

  get openAgents(): string[] {
    return [...this.agents.keys()];
  }

  /** Creates an agent from settings (overridden by `opts`); it becomes current. */
  async createAgent(opts: NewAgentOptions = {}): Promise<OpenAgent> {
    const client = await this.start();
    const agentId = opts.agentId ?? newAgentId();
    const config = agentConfig(this.options.settings(), this.options.workDir?.(), { ...opts, agentId });
    // Registered before the request: the create's own events (seq 1...) are routed.
    const a = this.register(agentId);
    try {
      a.info = await client.createAgent(config);
    } catch (e) {
      this.agents.delete(agentId);
      throw e;
    }
    this.setCurrent(agentId);
    this.emitter.fire({ type: "agents" });
    this.emitter.fire({ type: "header", agentId });
    return a;
  }

  /**
   * Opens an existing agent: subscribes to its live events, loads its stored
   * messages and status. Idempotent; it becomes current.
   */
  async openAgent(agentId: string): Promise<OpenAgent> {
    const open = this.agents.get(agentId);
    if (open) {
      this.setCurrent(agentId);
      return open;
    }
    let p = this.loading.get(agentId);
    if (!p) {
      p = this.load(agentId).finally(() => this.loading.delete(agentId));
      this.loading.set(agentId, p);
    }
    const a = await p;
    this.setCurrent(agentId);
    return a;
  }

  private async load(agentId: string): Promise<OpenAgent> {
    const client = await this.start();
    const model = new ChatModel(agentId);
    // Buffer live events while the history loads; apply the ones after it.
    const buffered: EventEnvelope[] = [];
    const sub = client.onAgentEvent(agentId, (e) => buffered.push(e));
    try {
      const resumed = await client.subscribe(agentId);
      const [status, history] = await Promise.all([
        client.status({ agentId }),
        client.messages({ agentId, limit: 500 }),
      ]);
      model.loadMessages(history.messages);
      if (history.total > history.messages.length) {
        model.addNotice("info", `Showing the last ${history.messages.length} of ${history.total} messages.`);
      }
      model.setStatus({ state: status.state, lastSeq: status.lastSeq, breakpoint: status.breakpoint, usage: status.usage, mcp: status.mcp });
      await this.loadLastTokenUsage(client, agentId, model, status.lastSeq);
      await this.loadTurnDiffs(client, agentId, model);
      if (history.total === history.messages.length) {
        const first = model.firstUserText();
        if (first) this.titles.setAuto(agentId, titleFromText(first));
      }
      // Approvals still pending (e.g. after a restart) show on their cards.
      for (const p of status.pendingApprovals) model.markApprovalPending(p.approvalId, p.call, p.turnId);
      const a: OpenAgent = { agentId, model, info: resumed };
      this.agents.set(agentId, a);
      for (const e of buffered) model.apply(e);
      this.emitter.fire({ type: "reset", agentId });
      this.emitter.fire({ type: "header", agentId });
      return a;
    } finally {
      sub.dispose();
    }
  }

  /**
   * Diff cards for the turns shown from history: `agent/checkpoints` lists the turns that
   * changed files, each with the seq of its `turn_diff` (`diffSeq`), read back as one event.
   * Checkpoints recorded before `diffSeq` existed: the event is looked for after the
   * checkpoint's own (a few pages). The newest `MAX_HISTORY_DIFFS`; a card that cannot be
   * read is left out (logged), the others still show.
   */
  private async loadTurnDiffs(client: KodeClient, agentId: string, model: ChatModel): Promise<void> {
    let checkpoints: Checkpoint[];
    try {
      ({ checkpoints } = await client.checkpoints(agentId));
    } catch (e) {
      this.logger.warn(`kode: ${agentId}: could not list its checkpoints: ${errorMessage(e)}`);
      return;
    }
    const found: TurnDiff[] = [];
    await inParallel(checkpoints.filter((c) => c.files > 0).slice(-MAX_HISTORY_DIFFS), 4, async (c) => {
      try {
        const diff = await turnDiffOf(client, agentId, c);
        if (diff) found.push(diff);
      } catch (e) {
        this.logger.warn(`kode: ${agentId}: could not read the diff of ${c.checkpointId}: ${errorMessage(e)}`);
      }
    });
    model.insertTurnDiffs(found);
  }

  /** The context after the agent's last model call: its last `token_usage` (bounded look-back). */
  private async loadLastTokenUsage(client: KodeClient, agentId: string, model: ChatModel, lastSeq: number): Promise<void> {
    try {
      const since = Math.max(0, lastSeq - 400);
      const r = await client.events({ agentId, since, limit: 400, channels: ["monitor"] });
      for (let i = r.events.length - 1; i >= 0; i--) {
        const e = r.events[i]!;
        if (e.event.type === "token_usage") {
          model.setLastTokenUsage(e.seq, e.event);
          break;
        }
      }
    } catch (e) {
      this.logger.warn(`kode: ${agentId}: could not read its last token usage: ${errorMessage(e)}`);
    }
  }

  /**
   * Titles of stored agents that have none yet (created elsewhere, or before titles):
   * their first user message, looked up once each, a few at a time.
   */
  private async lookUpTitles(client: KodeClient, agents: AgentInfo[]): Promise<void> {
    const todo = agents.filter((a) => a.messageCount > 0 && !this.titles.has(a.agentId) && !this.titleLookups.has(a.agentId));
    if (!todo.length) return;
    for (const a of todo) this.titleLookups.add(a.agentId);
    let found = 0;
    await inParallel(todo, 3, async (a) => {
      try {
        const r = await client.messages({ agentId: a.agentId, limit: 4, before: 4 });
        const first = r.messages.find((m) => m.role === "user" && m.content.some((b) => b.type === "text" && b.text));
        const text = first?.content.map((b) => (b.type === "text" ? b.text : "")).join("\n");
        if (text && this.titles.setAuto(a.agentId, titleFromText(text))) found++;
      } catch {
        /* deleted meanwhile, or the server went away: the id stays the title */
      }
    });
    if (found) this.emitter.fire({ type: "agents" });
  }

  /** All stored agents (every page), most recently updated first. */
  async listAgents(): Promise<AgentInfo[]> {
    const client = await this.start();
    const out: AgentInfo[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 50; page++) {
      const r = await client.list({ limit: 100, ...(cursor ? { cursor } : {}) });
      out.push(...r.agents);
      if (!r.nextCursor) break;
      cursor = r.nextCursor;
    }
    out.sort((x, y) => (x.updatedAt < y.updatedAt ? 1 : x.updatedAt > y.updatedAt ? -1 : 0));
    void this.lookUpTitles(client, out);
    return out;
  }

  /** Sends the user's text (returns at once; the turn streams as events). */
  async send(agentId: string, text: string): Promise<{ turnId: string; queued: boolean }> {
    const a = await this.openAgent(agentId);
    const client = await this.start();
    const item = a.model.addUserMessage(text);
    this.emitter.fire({ type: "items", agentId, items: [item] });
    if (this.titles.setAuto(agentId, titleFromText(text))) this.emitter.fire({ type: "agents" });
    try {
      const r = await client.send({ agentId, text });
      const it = a.model.setUserTurn(item.id, r.turnId);
      if (it) this.emitter.fire({ type: "items", agentId, items: [it] });
      return { turnId: r.turnId, queued: r.queued };
    } catch (e) {
      const n = a.model.addNotice("error", `Could not send: ${errorMessage(e)}`);
      this.emitter.fire({ type: "items", agentId, items: [n] });
      throw e;
    }
  }

  async interrupt(agentId: string, note?: string): Promise<boolean> {
    const client = await this.start();
    const r = await client.interrupt(note ? { agentId, note } : { agentId });
    return r.interrupted;
  }

  /**
   * Answers an approval from the chat view or a notification. Through the pending
   * `approval/request` when there is one (`always` = allow + remember); else (the
   * approval came as a `permission_required` event only) through `agent/decide`, where
   * "always" cannot be remembered and is sent as allow.
   */
  async decide(
    agentId: string,
    approvalId: string,
    choice: ApprovalChoice,
    via: "inline" | "notification" = "inline",
  ): Promise<boolean> {
    if (this._approvals.decide(approvalId, choice, via)) return true;
    // The card shows the approval (permission_required event) a moment before its
    // approval/request arrives: wait for it, so "always" can still be remembered.
    const card = this.agents.get(agentId)?.model.tools().find((t) => t.approval?.approvalId === approvalId);
    if (card?.approval?.status === "pending" && (await this._approvals.waitFor(approvalId, 1500))) {
      if (this._approvals.decide(approvalId, choice, via)) return true;
    }
    const client = await this.start();
    try {
      const r = await client.decide({ agentId, approvalId, decision: choice === "deny" ? "deny" : "allow" });
      if (r.accepted) this._approvals.answeredWithDecide(approvalId, choice);
      return r.accepted;
    } catch (e) {
      if (e instanceof KodeRpcError && (e.code === ErrorCodes.ApprovalNotPending || e.code === ErrorCodes.NotFound)) {
        return false;
      }
      throw e;
    }
  }

  async deleteAgent(agentId: string): Promise<boolean> {
    const client = await this.start();
    const r = await client.deleteAgent({ agentId });
    this.agents.delete(agentId);
    this.titles.forget(agentId);
    if (this._current === agentId) this.setCurrent(undefined);
    this.emitter.fire({ type: "deleted", agentId });
    this.emitter.fire({ type: "agents" });
    return r.deleted;
  }

  /** Copies the agent's conversation into a new agent (`<id>-fork-N` unless given). */
  async forkAgent(agentId: string, newAgentId?: string): Promise<AgentInfo> {
    const client = await this.start();
    const info = await client.fork(newAgentId ? { agentId, newAgentId } : { agentId });
    const title = this.titles.get(agentId);
    if (title) this.titles.setAuto(info.agentId, `${title} (fork)`);
    this.emitter.fire({ type: "agents" });
    return info;
  }

  /** Status bar text of an open agent. */
  status(agentId: string): StatusView | undefined {
    const a = this.agents.get(agentId);
    if (!a) return undefined;
    return formatStatus({
      agentId,
      title: this.title(agentId),
      state: a.model.state,
      usage: a.model.usage,
      pendingApprovals: a.model.pendingApprovals().length,
      breakpoint: a.model.breakpoint,
      contextTokens: a.model.contextTokens,
      model: a.info?.model,
    });
  }

  /** Refreshes state and usage from `agent/status` (e.g. after opening). */
  async refreshStatus(agentId: string): Promise<StatusView | undefined> {
    const a = this.agents.get(agentId);
    if (!a) return undefined;
    const client = await this.start();
    const st = await client.status({ agentId });
    a.model.setStatus({ state: st.state, lastSeq: st.lastSeq, breakpoint: st.breakpoint, usage: st.usage, mcp: st.mcp });
    this.emitter.fire({ type: "header", agentId });
    return this.status(agentId);
  }

  // --- context, checkpoints ----------------------------------------------------------

  /** `agent/compact` (after the running turn, if any); the marker comes with `context_compression`. */
  async compact(agentId: string, instructions?: string): Promise<CompactResult> {
    await this.openAgent(agentId);
    const client = await this.start();
    return client.compact(agentId, instructions);
  }

  /** `agent/rewind` of an open agent's checkpoint (`dryRun` to preview files and conflicts). */
  async rewind(
    agentId: string,
    checkpointId: string,
    opts: { restore?: "code" | "conversation" | "both"; dryRun?: boolean; force?: boolean } = {},
  ): Promise<RewindResult> {
    const client = await this.start();
    return client.rewind(agentId, checkpointId, opts);
  }

  /**
   * What a turn did to one file, for a diff editor: the unified diff of the file and,
   * when it could be reverse-applied to `current` (the file's content now; undefined
   * when the file is gone), the content before the turn.
   */
  turnFileDiff(
    agentId: string,
    checkpointId: string,
    path: string,
    current: string | undefined,
  ): { unified: string; before?: string; change?: string } | undefined {
    const card = this.agents.get(agentId)?.model.item(`diff:${checkpointId}`);
    if (!card || card.kind !== "diff") return undefined;
    const f = card.files.find((x) => x.path === path);
    const unified = fileSection(card.diff, path) ?? "";
    const out: { unified: string; before?: string; change?: string } = { unified, change: f?.change };
    if (!unified) return out;
    if (f?.change === "added") {
      if (current !== undefined) out.before = "";
    } else {
      const b = reverseApply(unified, f?.change === "deleted" ? "" : current ?? "");
      if (b !== undefined && (current !== undefined || f?.change === "deleted")) out.before = b;
    }
    return out;
  }
}

export function errorMessage(e: unknown): string {
  if (e instanceof KodeRpcError) {
    const fields = e.data?.errors?.map((x) => `${x.field}: ${x.message}`).join("; ");
    return `${e.message}${fields ? ` (${fields})` : ""}`;
  }
  return e instanceof Error ? e.message : String(e);
}

/** A checkpoint's `turn_diff` event: at `diffSeq`, or (older records) after the checkpoint. */
async function turnDiffOf(client: KodeClient, agentId: string, c: Checkpoint): Promise<TurnDiff | undefined> {
  const pick = (events: EventEnvelope[]): TurnDiff | undefined => {
    for (const e of events) if (e.event.type === "turn_diff" && e.event.checkpointId === c.checkpointId) return e.event;
    return undefined;
  };
  if (c.diffSeq) return pick((await client.events({ agentId, since: c.diffSeq - 1, limit: 1 })).events);
  let since = c.seq;
  for (let page = 0; page < 5; page++) {
    const r = await client.events({ agentId, since, limit: 200, channels: ["monitor"] });
    const hit = pick(r.events);
    if (hit || r.events.length < 200) return hit;
    since = r.events[r.events.length - 1]!.seq;
  }
  return undefined;
}
