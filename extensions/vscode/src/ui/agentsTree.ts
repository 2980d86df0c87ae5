/** The Agents view: every stored agent, titled, most recent first. */
import * as vscode from "vscode";
import type { AgentInfo } from "@kode-rpc/client";
import { agentEntry } from "../core/agentsView.js";
import { errorMessage, type KodeSession } from "../core/session.js";
import { showError } from "./notifications.js";

export class AgentsTree implements vscode.TreeDataProvider<AgentInfo>, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;
  private readonly view: vscode.TreeView<AgentInfo>;
  private lastError: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly sub: { dispose(): void };

  constructor(
    private readonly session: KodeSession,
    private readonly output: vscode.OutputChannel,
  ) {
    this.view = vscode.window.createTreeView("kode.agents", { treeDataProvider: this, showCollapseAll: false });
    this.sub = session.onDidChange((e) => {
      if (e.type === "agents" || e.type === "title") this.refreshSoon();
    });
  }

  /** Refresh now. */
  refresh(): void {
    this.changed.fire();
  }

  /** Refresh once after a burst of changes. */
  refreshSoon(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.changed.fire(), 150);
  }

  async getChildren(element?: AgentInfo): Promise<AgentInfo[]> {
    if (element) return [];
    try {
      const agents = await this.session.listAgents();
      this.lastError = undefined;
      return agents;
    } catch (e) {
      const msg = errorMessage(e);
      if (msg !== this.lastError) {
        this.lastError = msg;
        void showError("cannot list agents: ", e, this.output);
      }
      return [];
    }
  }

  getTreeItem(info: AgentInfo): vscode.TreeItem {
    const e = agentEntry(info, new Date(), this.session.title(info.agentId));
    const item = new vscode.TreeItem(e.label, vscode.TreeItemCollapsibleState.None);
    item.id = e.agentId;
    item.description = e.description;
    item.tooltip = e.tooltip;
    item.iconPath = new vscode.ThemeIcon(e.icon);
    item.contextValue = "kodeAgent";
    item.command = { command: "kode.openAgent", title: "Open Agent", arguments: [e.agentId] };
    return item;
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    this.sub.dispose();
    this.view.dispose();
    this.changed.dispose();
  }
}
