/**
 * Messages between the extension and the chat webview, and the pure dispatcher of
 * the webview's messages. Shared by the extension (Node) and the webview script (browser):
 * type-only imports here, nothing that needs Node or `vscode`.
 */
import type { ApprovalChoice, ChatItem, McpView, Usage, AgentState } from "../core/chatModel.js";
import type { ContextView } from "../core/status.js";

/** What the chat header shows. */
export interface HeaderState {
  agentId: string;
  /** The chat's title (first user message, or the user's); the id when there is none yet. */
  title: string;
  state: AgentState;
  busy: boolean;
  /** `ready`, `working`, `awaiting approval`, `paused`. */
  stateLabel: string;
  /** State, context used and cost: `awaiting approval · 1.2k/200k (0.6%) · $0.0012`. */
  statusText: string;
  tooltip: string;
  usage: Usage;
  /** Context used after the last model call, and the model's window. */
  context: ContextView;
  costUsd: number;
  model?: string;
  /** The agent's MCP servers: ready with their tool count, failed with the error. */
  mcp: McpView[];
}

/** Extension -> webview. */
export type ToWebview =
  | { type: "reset"; agentId: string; items: ChatItem[]; header: HeaderState }
  | { type: "items"; items: ChatItem[] }
  | { type: "header"; header: HeaderState }
  | { type: "deleted" }
  | { type: "error"; message: string };

/** Webview -> extension. */
export type FromWebview =
  | { type: "ready" }
  | { type: "send"; text: string }
  | { type: "interrupt" }
  | { type: "approve"; approvalId: string; decision: ApprovalChoice }
  | { type: "rename" }
  | { type: "showLog" }
  | { type: "compact" }
  | { type: "openDiff"; checkpointId: string; path: string }
  | { type: "rewind"; checkpointId: string };

/** What a chat view's messages act on (one agent): `ChatViewController` implements it over a session. */
export interface WebviewTarget {
  ready(): void | Promise<void>;
  send(text: string): unknown;
  interrupt(): unknown;
  approve(approvalId: string, decision: ApprovalChoice): unknown;
  rename?(): unknown;
  showLog?(): unknown;
  compact?(): unknown;
  openDiff?(checkpointId: string, path: string): unknown;
  rewind?(checkpointId: string): unknown;
}

export type DispatchResult =
  | { ok: true; type: FromWebview["type"] }
  | { ok: false; error: string };

/** Max size of a message typed in the chat (the server takes far more; this guards the UI). */
export const MAX_SEND_CHARS = 1_000_000;

/** Validates a message from the webview (untrusted input) into a `FromWebview`. */
export function parseWebviewMessage(msg: unknown): FromWebview | { error: string } {
  if (!msg || typeof msg !== "object") return { error: "not an object" };
  const m = msg as Record<string, unknown>;
  switch (m.type) {
    case "ready":
    case "interrupt":
    case "rename":
    case "showLog":
    case "compact":
      return { type: m.type };
    case "openDiff":
      if (typeof m.checkpointId !== "string" || !m.checkpointId) return { error: "openDiff: checkpointId missing" };
      if (typeof m.path !== "string" || !m.path) return { error: "openDiff: path missing" };
      return { type: "openDiff", checkpointId: m.checkpointId, path: m.path };
    case "rewind":
      if (typeof m.checkpointId !== "string" || !m.checkpointId) return { error: "rewind: checkpointId missing" };
      return { type: "rewind", checkpointId: m.checkpointId };
    case "send": {
      if (typeof m.text !== "string") return { error: "send: text must be a string" };
      const text = m.text.trim();
      if (!text) return { error: "send: empty text" };
      if (text.length > MAX_SEND_CHARS) return { error: "send: text too long" };
      return { type: "send", text };
    }
    case "approve": {
      if (typeof m.approvalId !== "string" || !m.approvalId) return { error: "approve: approvalId missing" };
      if (m.decision !== "allow" && m.decision !== "deny" && m.decision !== "always") {
        return { error: "approve: decision must be allow, deny or always" };
      }
      return { type: "approve", approvalId: m.approvalId, decision: m.decision };
    }
    default:
      return { error: `unknown message type ${JSON.stringify(m.type)}` };
  }
}

/** Dispatches one webview message to the target; never throws (errors are returned). */
export async function handleWebviewMessage(msg: unknown, target: WebviewTarget): Promise<DispatchResult> {
  const parsed = parseWebviewMessage(msg);
  if ("error" in parsed) return { ok: false, error: parsed.error };
  try {
    switch (parsed.type) {
      case "ready":
        await target.ready();
        break;
      case "send":
        await target.send(parsed.text);
        break;
      case "interrupt":
        await target.interrupt();
        break;
      case "approve":
        await target.approve(parsed.approvalId, parsed.decision);
        break;
      case "rename":
        await target.rename?.();
        break;
      case "showLog":
        await target.showLog?.();
        break;
      case "compact":
        await target.compact?.();
        break;
      case "openDiff":
        await target.openDiff?.(parsed.checkpointId, parsed.path);
        break;
      case "rewind":
        await target.rewind?.(parsed.checkpointId);
        break;
    }
    return { ok: true, type: parsed.type };
  } catch (e) {
    return { ok: false, error: e instanceof Error ? e.message : String(e) };
  }
}
