/**
 * The chat view model of one agent: reduces `agent/event` envelopes (and the stored
 * `agent/messages` history) into a list of items the webview renders. No `vscode` here.
 */
import type { ApprovalRequest, DiffFile, EventEnvelope, McpServerState, Message, ToolCall, TurnDiff } from "@kode-rpc/client";
import { contextTokens } from "./models.js";

export type AgentState = "READY" | "WORKING" | "PAUSED";
export type ToolState = NonNullable<ToolCall["state"]>;
export type ApprovalChoice = "allow" | "deny" | "always";

export interface UserItem {
  kind: "user";
  id: string;
  text: string;
  turnId?: string;
}

export interface AssistantItem {
  kind: "assistant";
  id: string;
  turnId?: string;
  step?: number;
  text: string;
  streaming: boolean;
}

export interface ThinkingItem {
  kind: "thinking";
  id: string;
  turnId?: string;
  step?: number;
  text: string;
  streaming: boolean;
}

export interface ToolApproval {
  approvalId: string;
  status: "pending" | "allowed" | "denied";
  /** From the `approval/request`: what exactly is asked (diff of a file change, command line). */
  subject?: ApprovalRequest["subject"];
  decidedBy?: "client" | "policy" | "timeout" | "interrupt";
  note?: string;
}

export interface ToolItem {
  kind: "tool";
  /** The call id. */
  id: string;
  turnId?: string;
  name: string;
  inputPreview: string;
  input: Record<string, unknown>;
  state: ToolState;
  /** stdout/stderr as streamed by `tool:output` (bounded, see MAX_TOOL_OUTPUT). */
  output: string;
  outputTruncated: boolean;
  result?: Record<string, unknown>;
  error?: string;
  durationMs?: number;
  approval?: ToolApproval;
}

export interface NoticeItem {
  kind: "notice";
  id: string;
  turnId?: string;
  level: "info" | "warn" | "error";
  text: string;
}

/** What a turn changed in the workDir (`turn_diff`): a card with the files and "Rewind to here". */
export interface DiffItem {
  kind: "diff";
  id: string;
  turnId?: string;
  checkpointId: string;
  files: DiffFile[];
  diff: string;
  truncated: boolean;
  /** Set once the agent was rewound to this checkpoint. */
  rewound?: boolean;
}

export type ChatItem = UserItem | AssistantItem | ThinkingItem | ToolItem | NoticeItem | DiffItem;

/** One MCP server of the agent as the header shows it. */
export interface McpView {
  server: string;
  status: McpServerState["status"];
  tools: number;
  error?: string;
}

export interface Usage {
  inputTokens: number;
  outputTokens: number;
  cacheReadTokens: number;
  cacheWriteTokens: number;
  totalTokens: number;
  costUsd: number;
}

export function emptyUsage(): Usage {
  return { inputTokens: 0, outputTokens: 0, cacheReadTokens: 0, cacheWriteTokens: 0, totalTokens: 0, costUsd: 0 };
}

/** What one `apply` changed: items to (re)render and whether the header (state/usage) moved. */
export interface ChatChange {
  items: ChatItem[];
  header: boolean;
}

/** Tool output kept per card in the view (the server bounds it at 1 MiB a call). */
export const MAX_TOOL_OUTPUT = 64 * 1024;

const FINAL_TOOL_STATES = new Set<ToolState>(["COMPLETED", "FAILED", "DENIED", "SEALED"]);

export function isFinalToolState(s: ToolState): boolean {
  return FINAL_TOOL_STATES.has(s);
}

export class ChatModel {
  readonly agentId: string;
  private readonly list: ChatItem[] = [];
  private readonly byId = new Map<string, ChatItem>();
  private localCounter = 0;
  state: AgentState = "READY";
  usage: Usage = emptyUsage();
  /** Highest seq applied (events with seq <= this are ignored). */
  lastSeq = 0;
  /** Token usage already counted in `usage` up to this seq (from `agent/status`). */
  private usageSeq = 0;
  /** The agent's breakpoint (`AWAITING_APPROVAL` while it waits on an approval), from `breakpoint_changed`/`agent/status`. */
  breakpoint: string | undefined;
  /** Tokens in the model's context after the last model call (its `token_usage`); undefined before one. */
  contextTokens: number | undefined;
  /** The turn that is running, from the last `state_changed`/`done`. */
  currentTurnId: string | undefined;
  lastDoneReason: string | undefined;
  /** MCP servers by name, from `agent/status.mcp` and `mcp_status` events. */
  private readonly mcpServers = new Map<string, McpView>();

  constructor(agentId: string) {
    this.agentId = agentId;
  }

  get items(): readonly ChatItem[] {
    return this.list;
  }

  get busy(): boolean {
    return this.state !== "READY";
  }

  item(id: string): ChatItem | undefined {
    return this.byId.get(id);
  }

  /** The agent's MCP servers (sorted by name). */
  mcp(): McpView[] {
    return [...this.mcpServers.values()].sort((a, b) => (a.server < b.server ? -1 : a.server > b.server ? 1 : 0));
  }

  private setMcp(s: { server: string; status: McpServerState["status"]; tools?: string[] | null; error?: string | null }): void {
    const v: McpView = { server: s.server, status: s.status, tools: s.tools?.length ?? 0 };
    if (s.error) v.error = s.error;
    this.mcpServers.set(s.server, v);
  }

  /** Turn diff cards (`turn_diff`). */
  diffs(): DiffItem[] {
    return this.list.filter((i): i is DiffItem => i.kind === "diff");
  }

  tools(): ToolItem[] {
    return this.list.filter((i): i is ToolItem => i.kind === "tool");
  }

  /** Tool cards with an approval still waiting for an answer. */
  pendingApprovals(): ToolItem[] {
    return this.tools().filter((t) => t.approval?.status === "pending");
  }

  /** Concatenated assistant text (all steps), e.g. for tests and copy. */
  assistantText(turnId?: string): string {
    return this.list
      .filter((i): i is AssistantItem => i.kind === "assistant" && (turnId === undefined || i.turnId === turnId))
      .map((i) => i.text)
      .join("");
  }

  private add<T extends ChatItem>(item: T): T {
    this.list.push(item);
    this.byId.set(item.id, item);
    return item;
  }

  private nextLocalId(prefix: string): string {
    return `${prefix}-${++this.localCounter}`;
  }

  /**
   * Diff cards of turns read back from the store (`turn_diff` events): each goes right
   * after the last item of its turn, where it would have arrived live. A turn not shown
   * (before the loaded window) gets none; a card already shown is kept.
   */
  insertTurnDiffs(diffs: TurnDiff[]): void {
    for (const ev of diffs) {
      const item = diffItem(ev);
      if (this.byId.has(item.id)) continue;
      let at = -1;
      for (let i = this.list.length - 1; i >= 0; i--) {
        if (this.list[i]!.turnId === ev.turnId) {
          at = i;
          break;
        }
      }
      if (at < 0) continue;
      this.list.splice(at + 1, 0, item);
      this.byId.set(item.id, item);
    }
  }

  /** The user's message, added when it is sent (the server emits no event for it). */
  addUserMessage(text: string, turnId?: string): UserItem {
    return this.add({ kind: "user", id: this.nextLocalId("user"), text, turnId });
  }

  /** Sets the turn id of a user message once `agent/send` answered. */
  setUserTurn(itemId: string, turnId: string): ChatItem | undefined {
    const it = this.byId.get(itemId);
    if (it && it.kind === "user") it.turnId = turnId;
    return it;
  }

  addNotice(level: NoticeItem["level"], text: string, turnId?: string): NoticeItem {
    return this.add({ kind: "notice", id: this.nextLocalId("notice"), level, text, turnId });
  }

  /**
   * Sets state and cumulative usage from `agent/status`; token_usage events up to
   * `status.lastSeq` are then not counted again.
   */
  setStatus(status: {
    state: AgentState;
    lastSeq: number;
    breakpoint?: string;
    usage?: { inputTokens?: number; outputTokens?: number; costUsd?: number };
    mcp?: McpServerState[];
  }): void {
    this.state = status.state;
    if (status.mcp) {
      this.mcpServers.clear();
      for (const m of status.mcp) this.setMcp(m);
    }
    if (status.breakpoint !== undefined) this.breakpoint = status.breakpoint;
    const inp = status.usage?.inputTokens ?? 0;
    const out = status.usage?.outputTokens ?? 0;
    this.usage = {
      ...emptyUsage(),
      inputTokens: inp,
      outputTokens: out,
      totalTokens: inp + out,
      costUsd: status.usage?.costUsd ?? 0,
    };
    // Not lastSeq: events up to status.lastSeq may still be in flight and must apply.
    this.usageSeq = Math.max(this.usageSeq, status.lastSeq);
  }

  /**
   * The context after the last model call of a stored agent (its last `token_usage`,
   * read with `agent/events` when the chat is opened); a live event later wins.
   */
  setLastTokenUsage(seq: number, u: { inputTokens: number; outputTokens: number; cacheReadTokens?: number | null; cacheWriteTokens?: number | null }): void {
    if (seq < this.contextSeq) return;
    this.contextSeq = seq;
    this.contextTokens = contextTokens(u);
  }

  private contextSeq = 0;

  /** The text of the first user message, if any (a chat's automatic title). */
  firstUserText(): string | undefined {
    const u = this.list.find((i): i is UserItem => i.kind === "user");
    return u?.text;
  }

  /** Adds what an `approval/request` asks (diff, command) to its card. */
  attachApprovalRequest(req: ApprovalRequest): ToolItem {
    const card = this.toolCard(req.call, req.turnId);
    if (!card.approval || card.approval.approvalId !== req.approvalId) {
      card.approval = { approvalId: req.approvalId, status: "pending" };
      if (!isFinalToolState(card.state)) card.state = "APPROVAL_REQUIRED";
    }
    card.approval.subject = req.subject;
    return card;
  }

  /** Shows an approval known from `agent/status.pendingApprovals` on its card. */
  markApprovalPending(approvalId: string, call: ToolCall, turnId?: string | null): ToolItem {
    const card = this.toolCard(call, turnId ?? undefined);
    this.mergeCall(card, call);
    card.state = "APPROVAL_REQUIRED";
    card.approval = { approvalId, status: "pending" };
    return card;
  }

  /** Rebuilds the transcript from stored messages (opening an existing agent). */
  loadMessages(messages: Message[]): void {
    for (const m of messages) {
      const turnId = m.turnId ?? undefined;
      if (m.kind === "summary") {
        this.addNotice("info", "Context compressed: earlier messages summarised.", turnId);
        continue;
      }
      if (m.role === "user" || m.role === "system") {
        const text = m.content
          .map((b) => (b.type === "text" ? b.text : ""))
          .filter(Boolean)
          .join("\n");
        if (text) {
          if (m.role === "user") this.add({ kind: "user", id: this.nextLocalId("user"), text, turnId });
          else this.addNotice("info", text, turnId);
        }
        // A user message may also carry tool results (Anthropic style).
      }
      for (const b of m.content) {
        if (m.role === "assistant" && b.type === "text" && b.text) {
          this.add({ kind: "assistant", id: this.nextLocalId("assistant"), turnId, text: b.text, streaming: false });
        } else if (m.role === "assistant" && b.type === "thinking" && b.thinking) {
          this.add({ kind: "thinking", id: this.nextLocalId("thinking"), turnId, text: b.thinking, streaming: false });
        } else if (b.type === "tool_use") {
          if (this.byId.has(b.id)) continue;
          const input = (b.input ?? {}) as Record<string, unknown>;
          this.add({
            kind: "tool",
            id: b.id,
            turnId,
            name: b.name,
            inputPreview: previewInput(input),
            input,
            state: "PENDING",
            output: "",
            outputTruncated: false,
          });
        } else if (b.type === "tool_result") {
          const card = this.byId.get(b.toolUseId);
          if (card && card.kind === "tool") {
            const content = b.content as unknown;
            if (content && typeof content === "object" && !Array.isArray(content)) {
              card.result = content as Record<string, unknown>;
              const r = content as { ok?: boolean; error?: string; errorType?: string };
              if (r.errorType === "denied") card.state = "DENIED";
              else if (r.errorType === "sealed") card.state = "SEALED";
              else card.state = b.isError || r.ok === false ? "FAILED" : "COMPLETED";
              if (typeof r.error === "string") card.error = r.error;
            } else {
              card.result = { content };
              card.state = b.isError ? "FAILED" : "COMPLETED";
            }
          }
        }
      }
    }
  }

  /** Applies one event envelope; returns what changed (nothing for a duplicate). */
  apply(env: EventEnvelope): ChatChange {
    const change: ChatChange = { items: [], header: false };
    if (env.agentId !== this.agentId) return change;
    if (env.seq <= this.lastSeq) return change;
    this.lastSeq = env.seq;
    const turnId = env.turnId ?? undefined;
    const ev = env.event;
    const touch = (it: ChatItem | undefined) => {
      if (it && !change.items.includes(it)) change.items.push(it);
    };
    switch (ev.type) {
      case "text_chunk_start":
        touch(this.streamItem("assistant", turnId, ev.step));
        break;
      case "text_chunk": {
        const it = this.streamItem("assistant", turnId, ev.step);
        it.text += ev.delta;
        touch(it);
        break;
      }
      case "text_chunk_end": {
        const it = this.streamItem("assistant", turnId, ev.step);
        it.text = ev.text;
        it.streaming = false;
        touch(it);
        break;
      }
      case "think_chunk_start":
        touch(this.streamItem("thinking", turnId, ev.step));
        break;
      case "think_chunk": {
        const it = this.streamItem("thinking", turnId, ev.step);
        it.text += ev.delta;
        touch(it);
        break;
      }
      case "think_chunk_end": {
        const it = this.streamItem("thinking", turnId, ev.step);
        it.text = ev.text;
        it.streaming = false;
        touch(it);
        break;
      }
      case "tool:start":
      case "tool:end":
      case "tool_executed": {
        const card = this.toolCard(ev.call, turnId);
        // tool_executed repeats tool:end (monitor channel); it never moves a card backwards.
        if (ev.type !== "tool_executed" || !isFinalToolState(card.state)) this.mergeCall(card, ev.call);
        touch(card);
        break;
      }
      case "tool:error": {
        const card = this.toolCard(ev.call, turnId);
        this.mergeCall(card, ev.call);
        card.error = ev.error;
        touch(card);
        break;
      }
      case "tool:output": {
        const card = this.byId.get(ev.callId);
        if (card && card.kind === "tool") {
          card.output += ev.delta;
          if (card.output.length > MAX_TOOL_OUTPUT) {
            card.output = card.output.slice(card.output.length - MAX_TOOL_OUTPUT);
            card.outputTruncated = true;
          }
          if (ev.truncated) card.outputTruncated = true;
          if (!isFinalToolState(card.state)) card.state = "EXECUTING";
          touch(card);
        }
        break;
      }
      case "permission_required": {
        const card = this.toolCard(ev.call, turnId);
        this.mergeCall(card, ev.call);
        card.state = "APPROVAL_REQUIRED";
        card.approval = { approvalId: ev.approvalId, status: "pending" };
        touch(card);
        change.header = true; // "awaiting approval"
        break;
      }
      case "permission_decided": {
        const card = this.byId.get(ev.callId);
        if (card && card.kind === "tool") {
          card.approval = {
            ...(card.approval?.subject ? { subject: card.approval.subject } : {}),
            approvalId: ev.approvalId ?? card.approval?.approvalId ?? "",
            status: ev.decision === "allow" ? "allowed" : "denied",
            decidedBy: ev.decidedBy,
            note: ev.note ?? undefined,
          };
          if (!isFinalToolState(card.state)) card.state = ev.decision === "allow" ? "APPROVED" : "DENIED";
          touch(card);
          change.header = true;
        }
        break;
      }
      case "state_changed":
        this.state = ev.state;
        if (ev.state !== "READY" && turnId) this.currentTurnId = turnId;
        change.header = true;
        break;
      case "breakpoint_changed":
        this.breakpoint = ev.current;
        change.header = true;
        break;
      case "token_usage":
        this.setLastTokenUsage(env.seq, ev);
        change.header = true;
        if (env.seq > this.usageSeq) {
          const u = this.usage;
          u.inputTokens += ev.inputTokens;
          u.outputTokens += ev.outputTokens;
          u.cacheReadTokens += ev.cacheReadTokens ?? 0;
          u.cacheWriteTokens += ev.cacheWriteTokens ?? 0;
          u.totalTokens += ev.totalTokens;
          u.costUsd += ev.costUsd ?? 0;
          change.header = true;
        }
        break;
      case "done": {
        this.lastDoneReason = ev.reason;
        if (this.currentTurnId === turnId) this.currentTurnId = undefined;
        // Close anything still streaming in this turn.
        for (const it of this.list) {
          if ((it.kind === "assistant" || it.kind === "thinking") && it.streaming && it.turnId === turnId) {
            it.streaming = false;
            touch(it);
          }
        }
        if (ev.reason !== "completed") {
          const text =
            ev.reason === "interrupted"
              ? "Turn interrupted."
              : ev.reason === "budget_exceeded"
                ? "Turn stopped: budget exceeded."
                : ev.reason === "max_steps"
                  ? "Turn stopped: too many model calls (max_steps)."
                  : "Turn ended with an error.";
          touch(this.addNotice(ev.reason === "interrupted" ? "info" : "error", text, turnId));
        }
        change.header = true;
        break;
      }
      case "error":
        if (ev.severity !== "info") touch(this.addNotice(ev.severity, `${ev.phase} error: ${ev.message}`, turnId));
        break;
      case "retry":
        touch(
          this.addNotice(
            "warn",
            `Retrying the model call (attempt ${ev.attempt}, in ${Math.round(ev.delayMs)} ms): ${ev.error.message}`,
            turnId,
          ),
        );
        break;
      case "agent_resumed":
        if (ev.sealed.length) {
          touch(this.addNotice("warn", `Recovered after a restart; sealed ${ev.sealed.length} unfinished tool call(s).`, turnId));
        }
        break;
      case "context_compression":
        if (ev.phase === "end") {
          const n = ev.compactedMessages ?? 0;
          const pct = typeof ev.ratio === "number" ? ` (context now ${Math.round(ev.ratio * 100)}% of before)` : "";
          touch(this.addNotice("info", `Context compressed: ${n} message${n === 1 ? "" : "s"} summarised${pct}.`, turnId));
        }
        break;
      case "mcp_status":
        this.setMcp(ev);
        change.header = true;
        break;
      case "turn_diff": {
        const item = diffItem(ev);
        const existing = this.byId.get(item.id);
        if (existing && existing.kind === "diff") {
          Object.assign(existing, item);
          touch(existing);
        } else touch(this.add(item));
        break;
      }
      case "rewound": {
        const card = this.byId.get(`diff:${ev.checkpointId}`);
        if (card && card.kind === "diff") {
          card.rewound = true;
          touch(card);
        }
        const what = ev.restore === "both" ? "code and conversation" : ev.restore;
        touch(this.addNotice("info", `Rewound ${what} to checkpoint ${ev.checkpointId}.`, turnId));
        break;
      }
      default:
        // step_complete, todo_changed, file_changed, checkpoint: not rendered.
        break;
    }
    return change;
  }

  private streamItem(kind: "assistant" | "thinking", turnId: string | undefined, step: number): AssistantItem | ThinkingItem {
    const id = `${kind}:${turnId ?? "-"}:${step}`;
    const existing = this.byId.get(id);
    if (existing && (existing.kind === "assistant" || existing.kind === "thinking")) return existing;
    return this.add({ kind, id, turnId, step, text: "", streaming: true });
  }

  private toolCard(call: ToolCall, turnId: string | undefined): ToolItem {
    const existing = this.byId.get(call.id);
    if (existing && existing.kind === "tool") return existing;
    const input = (call.input ?? {}) as Record<string, unknown>;
    return this.add({
      kind: "tool",
      id: call.id,
      turnId,
      name: call.name,
      inputPreview: call.inputPreview || previewInput(input),
      input,
      state: call.state ?? "PENDING",
      output: "",
      outputTruncated: false,
    });
  }

  private mergeCall(card: ToolItem, call: ToolCall): void {
    if (call.state) card.state = call.state;
    if (call.inputPreview) card.inputPreview = call.inputPreview;
    if (call.input) card.input = call.input as Record<string, unknown>;
    if (call.result) card.result = call.result as Record<string, unknown>;
    if (call.error) card.error = call.error;
    if (typeof call.durationMs === "number") card.durationMs = call.durationMs;
  }
}

/** A one-line preview of a tool input when the server gave none. */
export function previewInput(input: Record<string, unknown>, max = 120): string {
  const pick = input.cmd ?? input.path ?? input.pattern;
  let s = typeof pick === "string" ? pick : JSON.stringify(input);
  s = s.replace(/\s+/g, " ").trim();
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** A turn's diff card (`turn_diff`), keyed by its checkpoint. */
function diffItem(ev: TurnDiff): DiffItem {
  return {
    kind: "diff",
    id: `diff:${ev.checkpointId}`,
    turnId: ev.turnId,
    checkpointId: ev.checkpointId,
    files: ev.files,
    diff: ev.diff,
    truncated: ev.truncated ?? false,
  };
}
