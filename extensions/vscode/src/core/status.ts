/** Status bar text of the current agent: state and token usage. */
import type { AgentState, Usage } from "./chatModel.js";

export interface StatusInput {
  agentId: string;
  state: AgentState;
  usage: Usage;
  pendingApprovals?: number;
  model?: { provider: string; model?: string | null };
}

export interface StatusView {
  /** Plain text (the extension adds a codicon in front): `<agentId>: <detail>`. */
  text: string;
  /** State and tokens without the agent id, e.g. `ready · 1.2k tokens` (the chat header). */
  detail: string;
  tooltip: string;
  /** A codicon id for the state. */
  icon: string;
  busy: boolean;
}

/** 950 -> "950", 1234 -> "1.2k", 1234567 -> "1.2M". */
export function formatTokens(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0)}k`;
  return `${(n / 1_000_000).toFixed(1)}M`;
}

export function stateLabel(state: AgentState, pendingApprovals = 0): string {
  if (state === "WORKING") return "working";
  if (state === "PAUSED") return pendingApprovals > 0 ? "awaiting approval" : "paused";
  return "ready";
}

export function formatStatus(s: StatusInput): StatusView {
  const label = stateLabel(s.state, s.pendingApprovals);
  const total = s.usage.inputTokens + s.usage.outputTokens;
  const detail = `${label} · ${formatTokens(total)} tokens`;
  const text = `${s.agentId}: ${detail}`;
  const model = s.model ? `${s.model.provider}${s.model.model ? `/${s.model.model}` : ""}` : undefined;
  const lines = [
    `Kode agent ${s.agentId}${model ? ` (${model})` : ""}`,
    `State: ${s.state}${s.pendingApprovals ? ` (${s.pendingApprovals} approval(s) pending)` : ""}`,
    `Tokens: ${s.usage.inputTokens} in, ${s.usage.outputTokens} out` +
      (s.usage.cacheReadTokens || s.usage.cacheWriteTokens
        ? `, cache ${s.usage.cacheReadTokens} read / ${s.usage.cacheWriteTokens} written`
        : ""),
  ];
  if (s.usage.costUsd) lines.push(`Cost: $${s.usage.costUsd.toFixed(4)}`);
  const icon = s.state === "WORKING" ? "sync~spin" : s.state === "PAUSED" ? "question" : "hubot";
  return { text, detail, tooltip: lines.join("\n"), icon, busy: s.state !== "READY" };
}
