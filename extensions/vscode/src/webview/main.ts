/**
 * The chat webview's script (browser; bundled with markdown-it into dist/webview.js).
 * Renders the transcript the extension posts (`ToWebview`) and posts user actions
 * (`FromWebview`). Markdown is rendered with raw HTML disabled; everything else is
 * set as text.
 */
import { createMarkdown } from "./markdown.js";
import type { ApprovalChoice, ChatItem, DiffItem, ToolItem } from "../core/chatModel.js";
import type { FromWebview, HeaderState, ToWebview } from "./protocol.js";

interface VsCodeApi {
  postMessage(msg: FromWebview): void;
  getState(): unknown;
  setState(state: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

const vscode = acquireVsCodeApi();

const md = createMarkdown();

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const transcript = $<HTMLElement>("transcript");
const input = $<HTMLTextAreaElement>("input");
const sendBtn = $<HTMLButtonElement>("send");
const interruptBtn = $<HTMLButtonElement>("interrupt");
const errorBox = $<HTMLDivElement>("error");

interface SavedState {
  open: string[];
  draft?: string;
}
const saved = (vscode.getState() as SavedState | undefined) ?? { open: [] };
const openCards = new Set<string>(saved.open);
if (saved.draft) input.value = saved.draft;

const items = new Map<string, ChatItem>();
const elements = new Map<string, HTMLElement>();
const dirty = new Set<string>();
let frame = 0;
let busy = false;

function saveState(): void {
  vscode.setState({ open: [...openCards], draft: input.value } satisfies SavedState);
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function markdown(text: string, streaming: boolean): HTMLElement {
  const div = el("div", "md");
  div.innerHTML = md.render(text);
  if (streaming) div.appendChild(el("span", "cursor", "▍"));
  return div;
}

const STATE_ICONS: Record<string, string> = {
  PENDING: "○",
  APPROVAL_REQUIRED: "?",
  APPROVED: "○",
  EXECUTING: "◌",
  COMPLETED: "✓",
  FAILED: "✗",
  DENIED: "⊘",
  SEALED: "■",
};

function pretty(v: unknown): string {
  try {
    return JSON.stringify(v, null, 2);
  } catch {
    return String(v);
  }
}

function section(label: string, body: string, cls = ""): HTMLElement {
  const s = el("div", "section");
  s.appendChild(el("div", "label", label));
  s.appendChild(el("pre", cls, body));
  return s;
}

function renderTool(t: ToolItem): HTMLElement {
  const card = el("div", `tool-card state-${t.state}`);
  card.dataset.id = t.id;
  const details = el("details", "tool");
  const pendingApproval = t.approval?.status === "pending";
  details.open = openCards.has(t.id);
  details.addEventListener("toggle", () => {
    if (details.open) openCards.add(t.id);
    else openCards.delete(t.id);
    saveState();
  });
  const summary = el("summary");
  summary.appendChild(el("span", "icon", STATE_ICONS[t.state] ?? "•"));
  summary.appendChild(el("span", "tool-name", t.name));
  if (t.inputPreview) summary.appendChild(el("code", "preview", t.inputPreview));
  const meta = el("span", "meta");
  meta.appendChild(el("span", `state-label s-${t.state}`, t.state.toLowerCase().replace("_", " ")));
  if (typeof t.durationMs === "number") meta.appendChild(el("span", "dur", `${Math.round(t.durationMs)} ms`));
  summary.appendChild(meta);
  details.appendChild(summary);

  const body = el("div", "tool-body");
  body.appendChild(section("Input", pretty(t.input)));
  if (t.output) {
    body.appendChild(section(t.outputTruncated ? "Output (truncated)" : "Output", t.output, "output"));
  }
  if (t.result) body.appendChild(section("Result", pretty(t.result)));
  if (t.error) body.appendChild(section("Error", t.error, "error-text"));
  if (t.approval && t.approval.status !== "pending") {
    const who = t.approval.decidedBy && t.approval.decidedBy !== "client" ? ` (${t.approval.decidedBy})` : "";
    body.appendChild(el("div", "decision", `${t.approval.status === "allowed" ? "Allowed" : "Denied"}${who}${t.approval.note ? `: ${t.approval.note}` : ""}`));
  }
  details.appendChild(body);
  card.appendChild(details);

  if (pendingApproval && t.approval) {
    const subj = t.approval.subject;
    if (subj?.type === "file_change" && subj.diff) card.appendChild(renderDiff(subj.diff));
    else if (subj?.type === "command") {
      const cmd = el("pre", "command");
      cmd.textContent = `$ ${subj.command}`;
      cmd.title = `in ${subj.cwd}`;
      card.appendChild(cmd);
    }
    const bar = el("div", "approval");
    bar.appendChild(el("span", "question", `Allow ${t.name}?`));
    const approvalId = t.approval.approvalId;
    const choices: [ApprovalChoice, string, string][] = [
      ["allow", "Allow", ""],
      ["deny", "Deny", "secondary"],
      ["always", "Always allow", "secondary"],
    ];
    for (const [decision, label, cls] of choices) {
      const b = el("button", cls, label);
      b.dataset.decision = decision;
      b.addEventListener("click", () => {
        for (const x of bar.querySelectorAll("button")) (x as HTMLButtonElement).disabled = true;
        vscode.postMessage({ type: "approve", approvalId, decision });
      });
      bar.appendChild(b);
    }
    card.appendChild(bar);
  }
  return card;
}

/** A unified diff with added/removed lines coloured (text only). */
function renderDiff(diff: string): HTMLElement {
  const pre = el("pre", "diff");
  const lines = diff.replace(/\n$/, "").split("\n");
  const shown = lines.slice(0, 400);
  for (const line of shown) {
    const cls = line.startsWith("+++") || line.startsWith("---") ? "meta" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
    pre.appendChild(el("span", cls, `${line}\n`));
  }
  if (lines.length > shown.length) pre.appendChild(el("span", "meta", `… ${lines.length - shown.length} more lines\n`));
  return pre;
}

/** A turn's `turn_diff`: files with +/- counts (click: diff editor) and "Rewind to here". */
function renderTurnDiff(d: DiffItem): HTMLElement {
  const card = el("div", `diff-card${d.rewound ? " rewound" : ""}`);
  const head = el("div", "diff-head");
  const n = d.files.length;
  head.appendChild(el("span", "diff-title", `Changed ${n} file${n === 1 ? "" : "s"}${d.truncated ? " (diff truncated)" : ""}`));
  const rw = el("button", "secondary rewind", d.rewound ? "Rewound" : "Rewind to here");
  rw.title = "Restore the files and the conversation to before this turn (shows a preview first)";
  rw.disabled = !!d.rewound;
  rw.addEventListener("click", () => vscode.postMessage({ type: "rewind", checkpointId: d.checkpointId }));
  head.appendChild(rw);
  card.appendChild(head);
  const ul = el("ul", "diff-files");
  for (const f of d.files) {
    const li = el("li", `change-${f.change}`);
    const a = el("a", "file", f.path);
    a.href = "#";
    a.title = `Open the diff of ${f.path}`;
    a.addEventListener("click", (e) => {
      e.preventDefault();
      vscode.postMessage({ type: "openDiff", checkpointId: d.checkpointId, path: f.path });
    });
    li.appendChild(el("span", "change", f.change === "added" ? "A" : f.change === "deleted" ? "D" : "M"));
    li.appendChild(a);
    li.appendChild(el("span", "add", ` +${f.additions}`));
    li.appendChild(el("span", "del", ` −${f.deletions}`));
    ul.appendChild(li);
  }
  card.appendChild(ul);
  return card;
}

function renderItem(item: ChatItem): HTMLElement {
  switch (item.kind) {
    case "user": {
      const d = el("div", "msg user");
      d.appendChild(el("div", "who", "You"));
      d.appendChild(markdown(item.text, false));
      return d;
    }
    case "assistant": {
      const d = el("div", `msg assistant${item.streaming ? " streaming" : ""}`);
      d.appendChild(markdown(item.text, item.streaming));
      return d;
    }
    case "thinking": {
      const d = el("details", "thinking");
      d.open = openCards.has(item.id);
      d.addEventListener("toggle", () => {
        if (d.open) openCards.add(item.id);
        else openCards.delete(item.id);
        saveState();
      });
      d.appendChild(el("summary", "", item.streaming ? "Thinking…" : "Thought"));
      d.appendChild(el("pre", "thinking-text", item.text));
      return d;
    }
    case "tool":
      return renderTool(item);
    case "notice":
      return el("div", `notice ${item.level}`, item.text);
    case "diff":
      return renderTurnDiff(item);
  }
}

function nearBottom(): boolean {
  const root = document.scrollingElement ?? document.documentElement;
  return root.scrollHeight - root.scrollTop - root.clientHeight < 80;
}

function flush(): void {
  frame = 0;
  const stick = nearBottom();
  for (const id of dirty) {
    const item = items.get(id);
    if (!item) continue;
    const fresh = renderItem(item);
    fresh.dataset.id = id;
    const old = elements.get(id);
    if (old) old.replaceWith(fresh);
    else transcript.appendChild(fresh);
    elements.set(id, fresh);
  }
  dirty.clear();
  document.body.classList.toggle("empty", items.size === 0);
  if (stick) window.scrollTo(0, document.body.scrollHeight);
}

function schedule(ids: Iterable<string>): void {
  for (const id of ids) dirty.add(id);
  if (frame) return;
  // Batch streamed updates per frame; the timer covers frames that never come (background tab, headless).
  frame = requestAnimationFrame(flush);
  setTimeout(() => {
    if (frame) {
      cancelAnimationFrame(frame);
      flush();
    }
  }, 100);
}

function formatTokens(n: number): string {
  if (n < 1000) return String(n);
  if (n < 1_000_000) return `${(n / 1000).toFixed(n < 10_000 ? 1 : 0).replace(/\.0$/, "")}k`;
  return `${(n / 1_000_000).toFixed(1).replace(/\.0$/, "")}M`;
}

function setHeader(h: HeaderState): void {
  $("agent-title").textContent = h.title;
  $("agent-title").title = h.title === h.agentId ? h.agentId : `${h.title}\nAgent: ${h.agentId}`;
  $("model").textContent = h.model ?? "";
  $("status-text").title = h.tooltip;
  $("state-label").textContent = h.stateLabel;
  // The numbers come from the extension's status line (one formatter for header and status bar).
  const [, ctx = "", cost = ""] = h.statusText.split(" · ");
  $("context").textContent = ctx;
  $("context").title = `Context: ${h.context.used.toLocaleString("en-US")} of ${formatTokens(h.context.window)} tokens`;
  $("cost").textContent = cost;
  $("state-dot").className = `dot ${h.state.toLowerCase()}${h.stateLabel === "awaiting approval" ? " approval" : ""}`;
  const mcp = $("mcp");
  mcp.textContent = "";
  for (const m of h.mcp ?? []) {
    const li = el("li", `mcp-${m.status}`);
    const label = m.status === "ready" ? `ready · ${m.tools} tool${m.tools === 1 ? "" : "s"}` : m.status === "failed" ? `failed: ${m.error ?? "unknown error"}` : m.status;
    li.appendChild(el("span", "mcp-name", m.server));
    li.appendChild(el("span", "mcp-state", ` ${label}`));
    li.title = `MCP server ${m.server}: ${label}`;
    mcp.appendChild(li);
  }
  mcp.hidden = !(h.mcp ?? []).length;
  busy = h.busy;
  interruptBtn.disabled = !busy;
  document.title = h.title;
  document.body.dataset.agentId = h.agentId;
  document.body.dataset.state = h.state;
}

let errorTimer: ReturnType<typeof setTimeout> | undefined;
function showError(message: string): void {
  errorBox.textContent = message;
  errorBox.hidden = false;
  if (errorTimer) clearTimeout(errorTimer);
  errorTimer = setTimeout(() => {
    errorBox.hidden = true;
  }, 8000);
}

window.addEventListener("message", (ev: MessageEvent<ToWebview>) => {
  const msg = ev.data;
  if (!msg || typeof msg !== "object") return;
  switch (msg.type) {
    case "reset":
      items.clear();
      elements.clear();
      transcript.textContent = "";
      for (const it of msg.items) items.set(it.id, it);
      setHeader(msg.header);
      schedule(msg.items.map((i) => i.id));
      break;
    case "items":
      for (const it of msg.items) items.set(it.id, it);
      schedule(msg.items.map((i) => i.id));
      break;
    case "header":
      setHeader(msg.header);
      break;
    case "deleted":
      input.disabled = sendBtn.disabled = interruptBtn.disabled = true;
      showError("This agent was deleted.");
      break;
    case "error":
      showError(msg.message);
      // Re-enable approval buttons a failed answer disabled.
      for (const b of transcript.querySelectorAll(".approval button")) (b as HTMLButtonElement).disabled = false;
      break;
  }
});

function send(): void {
  const text = input.value.trim();
  if (!text) return;
  vscode.postMessage({ type: "send", text });
  input.value = "";
  saveState();
  window.scrollTo(0, document.body.scrollHeight);
}

sendBtn.addEventListener("click", send);
// Interrupting is a deliberate action (the button, or the "Kode: Interrupt Agent" command):
// Esc is not bound, so Esc pressed to close a toast or a suggestion never stops a turn.
interruptBtn.addEventListener("click", () => {
  if (busy) vscode.postMessage({ type: "interrupt" });
});
$("rename").addEventListener("click", () => vscode.postMessage({ type: "rename" }));
$("compact").addEventListener("click", () => vscode.postMessage({ type: "compact" }));
input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  }
});
input.addEventListener("input", () => saveState());

vscode.postMessage({ type: "ready" });
