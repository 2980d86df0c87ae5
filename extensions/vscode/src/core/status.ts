/** Status text of an agent (status bar and chat header): state, context used, cost. */
import type { AgentState, Usage } from "./chatModel.js";
import { contextWindow, formatCost, formatPercent } from "./models.js";

export interface StatusInput {
  agentId: string;
  /** The chat's title (defaults to the id). */
  title?: string;
  state: AgentState;
  usage: Usage;
  pendingApprovals?: number;
  /** The agent's breakpoint (`AWAITING_APPROVAL` while an approval is pending). */
  breakpoint?: string;
  /** Tokens in the context after the last model call; undefined before the first. */
  contextTokens?: number;
  model?: { provider: string; model?: string | null };
}

export interface ContextView {
  used: number;
  window: number;
  /** 0..100 (may exceed 100 when the table's window is too small). */
  percent: number;
  /** Whether the window came from the table (else the default). */
  known: boolean;
}

export interface StatusView {
  /** Plain text (the extension adds a codicon in front): `<title>: <detail>`. */
  text: string;
  /** State, context and cost without the title, e.g. `ready · 1.2k/200k (0.6%) · $0.0012` (the chat header). */
  detail: string;
  /** The state alone: `ready`, `working`, `awaiting approval`, `paused`. */
  label: string;
  tooltip: string;
  /** A codicon id for the state. */
  icon: string;
  busy: boolean;
  context: ContextView;
  costUsd: number;
}

/** 950 -> "950", 1234 -> "1.2k", 1234567 -> "1.2M". */
export function formatTokens(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0).replace(/\.0$/, "")}k`;
  return `${(n / 1_000_000).toFixed(1).replace(/\.0$/, "")}M`;
}

export function stateLabel(state: AgentState, pendingApprovals = 0, breakpoint?: string): string {
  if (state === "WORKING") return "working";
  if (state === "PAUSED") return pendingApprovals > 0 || breakpoint === "AWAITING_APPROVAL" ? "awaiting approval" : "paused";
  return "ready";
}

/** A long title shortened for the status bar. */
export function shortTitle(title: string, max = 32): string {
  return title.length > max ? `${title.slice(0, max - 1)}…` : title;
}

export function formatStatus(s: StatusInput): StatusView {
  const label = stateLabel(s.state, s.pendingApprovals, s.breakpoint);
  const win = contextWindow(s.model?.model);
  const used = s.contextTokens ?? 0;
  const percent = (used / win.tokens) * 100;
  const context: ContextView = { used, window: win.tokens, percent, known: win.known };
  const ctxText = `${formatTokens(used)}/${formatTokens(win.tokens)} (${formatPercent(percent)})`;
  const cost = formatCost(s.usage.costUsd);
  const detail = `${label} · ${ctxText} · ${cost}`;
  const title = s.title || s.agentId;
  const text = `${shortTitle(title)}: ${detail}`;
  const model = s.model ? `${s.model.provider}${s.model.model ? `/${s.model.model}` : ""}` : undefined;
  const lines = [
    `Kode chat "${title}"${title !== s.agentId ? ` (${s.agentId})` : ""}${model ? ` · ${model}` : ""}`,
    `State: ${label}${s.pendingApprovals ? ` (${s.pendingApprovals} approval(s) pending)` : ""}`,
    `Context: ${used.toLocaleString("en-US")} of ${win.tokens.toLocaleString("en-US")} tokens (${formatPercent(percent)})` +
      (win.known ? "" : " — window unknown for this model, 128k assumed"),
    `Tokens so far: ${s.usage.inputTokens.toLocaleString("en-US")} in, ${s.usage.outputTokens.toLocaleString("en-US")} out` +
      (s.usage.cacheReadTokens || s.usage.cacheWriteTokens
        ? `, cache ${s.usage.cacheReadTokens} read / ${s.usage.cacheWriteTokens} written`
        : ""),
    `Cost so far: ${cost}`,
  ];
  const icon = s.state === "WORKING" ? "sync~spin" : s.state === "PAUSED" ? "question" : "hubot";
  return { text, detail, label, tooltip: lines.join("\n"), icon, busy: s.state !== "READY", context, costUsd: s.usage.costUsd };
}
