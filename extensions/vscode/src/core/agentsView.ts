/** What the agents tree shows for each stored agent, and the message "Send Selection" builds. */
import type { AgentInfo } from "@kode-rpc/client";

export interface AgentEntry {
  agentId: string;
  label: string;
  description: string;
  tooltip: string;
  /** A codicon id. */
  icon: string;
}

/** A tree entry: the chat's title (the id when it has none) with state, model and age; the id in the tooltip. */
export function agentEntry(info: AgentInfo, now: Date = new Date(), title?: string): AgentEntry {
  const model = `${info.model.provider}${info.model.model && info.model.model !== info.model.provider ? `/${info.model.model}` : ""}`;
  const state = info.state === "READY" ? "" : info.state === "WORKING" ? "working · " : "paused · ";
  return {
    agentId: info.agentId,
    label: title || info.agentId,
    description: `${state}${model} · ${relativeTime(info.updatedAt, now)}`,
    tooltip: [
      title && title !== info.agentId ? `${title}\nAgent: ${info.agentId}` : info.agentId,
      `Model: ${model}`,
      `State: ${info.state}`,
      `Messages: ${info.messageCount}`,
      info.workDir ? `Work dir: ${info.workDir}` : undefined,
      `Created: ${info.createdAt}`,
      `Updated: ${info.updatedAt}`,
    ]
      .filter(Boolean)
      .join("\n"),
    icon: info.state === "WORKING" ? "sync~spin" : info.state === "PAUSED" ? "question" : "comment-discussion",
  };
}

export function relativeTime(iso: string, now: Date = new Date()): string {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const s = Math.max(0, Math.round((now.getTime() - t) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export interface Selection {
  text: string;
  /** Path relative to the workspace folder (or absolute / untitled name). */
  path: string;
  languageId: string;
  /** 1-based, inclusive. */
  startLine: number;
  endLine: number;
}

/** The message sent for "Send Selection to Agent": where it is from, then the code fenced. */
export function selectionMessage(sel: Selection, question = ""): string {
  const lines = sel.startLine === sel.endLine ? `line ${sel.startLine}` : `lines ${sel.startLine}-${sel.endLine}`;
  const longestRun = Math.max(2, ...[...sel.text.matchAll(/`+/g)].map((m) => m[0].length));
  const fence = "`".repeat(longestRun + 1);
  const lang = /^[A-Za-z0-9_+-]+$/.test(sel.languageId) ? sel.languageId : "";
  const head = question.trim() ? `${question.trim()}\n\n` : "";
  return `${head}From \`${sel.path}\` (${lines}):\n\n${fence}${lang}\n${sel.text.replace(/\n$/, "")}\n${fence}\n`;
}
