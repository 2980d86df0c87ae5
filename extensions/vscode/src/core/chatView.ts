/**
 * Binds one agent's chat webview to the session: forwards session changes as
 * `ToWebview` messages and implements the `WebviewTarget` the dispatcher calls.
 * The extension gives it `post` (webview.postMessage); tests give a recorder.
 */
import type { HeaderState, ToWebview, WebviewTarget } from "../webview/protocol.js";
import type { ApprovalChoice } from "./chatModel.js";
import type { Disposable } from "./events.js";
import { errorMessage, type KodeSession } from "./session.js";

export class ChatViewController implements WebviewTarget, Disposable {
  private readonly sub: Disposable;
  /** The webview said `ready` (messages posted before would be lost). */
  private live = false;

  constructor(
    private readonly session: KodeSession,
    readonly agentId: string,
    private readonly post: (msg: ToWebview) => unknown,
    private readonly hooks: {
      showLog?: () => unknown;
      rename?: () => unknown;
      onError?: (message: string) => void;
      /** Opens a diff editor of what a turn did to a file. */
      openDiff?: (checkpointId: string, path: string) => unknown;
      /** "Rewind to here": preview (dry run), confirm, restore. */
      rewind?: (checkpointId: string) => unknown;
    } = {},
  ) {
    this.sub = session.onDidChange((e) => {
      if (!this.live) return;
      if (e.type === "items" && e.agentId === agentId) this.post({ type: "items", items: e.items });
      else if ((e.type === "header" || e.type === "title") && e.agentId === agentId) this.postHeader();
      else if (e.type === "reset" && e.agentId === agentId) this.postReset();
      else if (e.type === "deleted" && e.agentId === agentId) this.post({ type: "deleted" });
    });
  }

  header(): HeaderState | undefined {
    const a = this.session.getAgent(this.agentId);
    const st = this.session.status(this.agentId);
    if (!a || !st) return undefined;
    const m = a.info?.model;
    return {
      agentId: this.agentId,
      title: this.session.title(this.agentId),
      state: a.model.state,
      busy: a.model.busy,
      stateLabel: st.label,
      statusText: st.detail,
      tooltip: st.tooltip,
      usage: { ...a.model.usage },
      context: st.context,
      costUsd: st.costUsd,
      model: m ? `${m.provider}${m.model ? `/${m.model}` : ""}` : undefined,
      mcp: a.model.mcp(),
    };
  }

  private postHeader(): void {
    const header = this.header();
    if (header) this.post({ type: "header", header });
  }

  private postReset(): void {
    const a = this.session.getAgent(this.agentId);
    const header = this.header();
    if (a && header) this.post({ type: "reset", agentId: this.agentId, items: [...a.model.items], header });
  }

  /** The webview (re)loaded: send it the whole transcript. */
  async ready(): Promise<void> {
    this.live = true;
    try {
      await this.session.openAgent(this.agentId);
    } catch (e) {
      this.fail(e); // e.g. the agent was deleted elsewhere, or the server could not start
      return;
    }
    this.postReset();
  }

  /** The webview was hidden and its content discarded: wait for the next `ready`. */
  pause(): void {
    this.live = false;
  }

  async send(text: string): Promise<void> {
    try {
      await this.session.send(this.agentId, text);
    } catch (e) {
      this.fail(e);
    }
  }

  async interrupt(): Promise<void> {
    try {
      await this.session.interrupt(this.agentId);
    } catch (e) {
      this.fail(e);
    }
  }

  async approve(approvalId: string, decision: ApprovalChoice): Promise<void> {
    try {
      const ok = await this.session.decide(this.agentId, approvalId, decision, "inline");
      if (!ok) this.post({ type: "error", message: "That approval was already answered." });
    } catch (e) {
      this.fail(e);
    }
  }

  /** The toolbar's Compact button: `agent/compact`; the transcript gets the marker from the events. */
  async compact(): Promise<void> {
    try {
      const r = await this.session.compact(this.agentId);
      if (!r.compressed) this.post({ type: "error", message: "Nothing to compress yet." });
    } catch (e) {
      this.fail(e);
    }
  }

  async openDiff(checkpointId: string, path: string): Promise<void> {
    try {
      await this.hooks.openDiff?.(checkpointId, path);
    } catch (e) {
      this.fail(e);
    }
  }

  async rewind(checkpointId: string): Promise<void> {
    try {
      await this.hooks.rewind?.(checkpointId);
    } catch (e) {
      this.fail(e);
    }
  }

  showLog(): unknown {
    return this.hooks.showLog?.();
  }

  /** The header's rename button: the host asks for the new title. */
  rename(): unknown {
    return this.hooks.rename?.();
  }

  private fail(e: unknown): void {
    const message = errorMessage(e);
    this.post({ type: "error", message });
    this.hooks.onError?.(message);
  }

  dispose(): void {
    this.sub.dispose();
  }
}
