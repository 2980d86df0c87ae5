/** The chat tabs: one webview panel per agent, titled with the chat's title. */
import * as vscode from "vscode";
import type { Logger } from "@kode-rpc/client";
import { ChatViewController } from "../core/chatView.js";
import type { KodeSession } from "../core/session.js";
import { makeNonce, renderChatHtml } from "../webview/html.js";
import { handleWebviewMessage } from "../webview/protocol.js";

interface ChatPanel {
  panel: vscode.WebviewPanel;
  controller: ChatViewController;
}

export interface ChatPanelHooks {
  showLog(): unknown;
  /** The header's rename button. */
  rename(agentId: string): unknown;
  openDiff(agentId: string, checkpointId: string, path: string): unknown;
  rewind(agentId: string, checkpointId: string): unknown;
}

export class ChatPanels implements vscode.Disposable {
  private readonly panels = new Map<string, ChatPanel>();
  private readonly sub: { dispose(): void };

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly session: KodeSession,
    private readonly logger: Logger,
    private readonly hooks: ChatPanelHooks,
  ) {
    this.sub = session.onDidChange((e) => {
      if (e.type === "title") {
        const p = this.panels.get(e.agentId);
        if (p) p.panel.title = session.title(e.agentId);
      }
    });
  }

  isVisible(agentId: string): boolean {
    return this.panels.get(agentId)?.panel.visible ?? false;
  }

  /** Opens (or reveals) the chat of an agent; it becomes the current agent. */
  open(agentId: string, preserveFocus = false): ChatPanel {
    const s = this.session;
    const existing = this.panels.get(agentId);
    if (existing) {
      existing.panel.reveal(undefined, preserveFocus);
      s.setCurrent(agentId);
      return existing;
    }
    const dist = vscode.Uri.joinPath(this.context.extensionUri, "dist");
    const media = vscode.Uri.joinPath(this.context.extensionUri, "media");
    const title = s.title(agentId);
    const panel = vscode.window.createWebviewPanel(
      "kode.chat",
      title,
      { viewColumn: vscode.ViewColumn.Beside, preserveFocus },
      { enableScripts: true, localResourceRoots: [dist, media], enableFindWidget: true },
    );
    panel.iconPath = vscode.Uri.joinPath(media, "kode.svg");
    const w = panel.webview;
    w.html = renderChatHtml({
      cspSource: w.cspSource,
      nonce: makeNonce(),
      scriptUri: w.asWebviewUri(vscode.Uri.joinPath(dist, "webview.js")).toString(),
      styleUri: w.asWebviewUri(vscode.Uri.joinPath(media, "chat.css")).toString(),
      title,
    });
    const controller = new ChatViewController(s, agentId, (m) => w.postMessage(m), {
      showLog: () => this.hooks.showLog(),
      rename: () => this.hooks.rename(agentId),
      openDiff: (cp, p) => this.hooks.openDiff(agentId, cp, p),
      rewind: (cp) => this.hooks.rewind(agentId, cp),
      onError: (m) => this.logger.warn(`kode: ${agentId}: ${m}`),
    });
    const entry: ChatPanel = { panel, controller };
    this.panels.set(agentId, entry);
    const subs: vscode.Disposable[] = [
      w.onDidReceiveMessage(async (m) => {
        const r = await handleWebviewMessage(m, controller);
        if (!r.ok) this.logger.warn(`kode: webview message refused: ${r.error}`);
      }),
      panel.onDidChangeViewState((e) => {
        if (e.webviewPanel.active) s.setCurrent(agentId);
        // A hidden webview's content is discarded; it sends `ready` again when shown.
        if (!e.webviewPanel.visible) controller.pause();
      }),
    ];
    panel.onDidDispose(() => {
      controller.dispose();
      subs.forEach((d) => d.dispose());
      if (this.panels.get(agentId) === entry) this.panels.delete(agentId);
    });
    s.setCurrent(agentId);
    return entry;
  }

  close(agentId: string): void {
    this.panels.get(agentId)?.panel.dispose();
  }

  /** After a server restart: every open chat reloads its transcript. */
  async reloadAll(): Promise<void> {
    for (const p of this.panels.values()) await p.controller.ready();
  }

  dispose(): void {
    this.sub.dispose();
    for (const p of [...this.panels.values()]) p.panel.dispose();
  }
}
