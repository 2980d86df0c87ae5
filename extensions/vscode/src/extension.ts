/**
 * VS Code adapters: commands, the chat webview panels, the agents tree, the status bar,
 * notifications and the server log. All logic lives in ./core and ./webview (tested
 * with node --test against the real server); this file only wires it to `vscode`.
 */
import * as os from "node:os";
import * as path from "node:path";
import * as vscode from "vscode";
import type { AgentInfo, ApprovalRequest, Logger } from "@kode-rpc/client";
import {
  APPROVAL_CHOICES,
  CHOICE_LABELS,
  approvalMessage,
  choiceFromLabel,
} from "./core/approvals.js";
import type { ApprovalChoice } from "./core/chatModel.js";
import { agentEntry, selectionMessage } from "./core/agentsView.js";
import { ChatViewController } from "./core/chatView.js";
import {
  AGENT_ID_RE,
  bundledServerPath,
  clientStartOptions,
  ensureExecutable,
  readSettings,
  type NewAgentOptions,
} from "./core/config.js";
import { KodeSession, errorMessage } from "./core/session.js";
import { makeNonce, renderChatHtml } from "./webview/html.js";
import { handleWebviewMessage } from "./webview/protocol.js";

interface ChatPanel {
  panel: vscode.WebviewPanel;
  controller: ChatViewController;
}

let session: KodeSession | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel("Kode Server", { log: true });
  const logger: Logger = {
    info: (m) => output.info(m),
    warn: (m) => output.warn(m),
    error: (m) => output.error(m),
    debug: (m) => output.debug(m),
  };
  const version = String((context.extension.packageJSON as { version?: string }).version ?? "0.0.0");
  const settings = () => readSettings((k) => vscode.workspace.getConfiguration("kode").get(k));
  const workspaceFolder = () => {
    const f = vscode.workspace.workspaceFolders?.[0];
    return f && f.uri.scheme === "file" ? f.uri.fsPath : undefined;
  };
  const panels = new Map<string, ChatPanel>();

  const s = new KodeSession({
    client: () => {
      const bundled = bundledServerPath(context.extensionPath);
      const mode = ensureExecutable(bundled);
      if (mode === "fixed") logger.info(`kode: made ${bundled} executable`);
      if (mode === "failed") logger.warn(`kode: ${bundled} is not executable and chmod failed; it will be skipped`);
      return {
        ...clientStartOptions(settings(), {
          extensionPath: context.extensionPath,
          workspaceFolder: workspaceFolder(),
          home: os.homedir(),
        }),
        clientInfo: { name: "vscode-kode-rpc", version },
        logger,
      };
    },
    settings,
    workDir: workspaceFolder,
    logger,
    approvalHost: {
      isVisible: (agentId) => panels.get(agentId)?.panel.visible ?? false,
      notify: (req, signal) => notifyApproval(req, signal),
    },
  });
  session = s;

  async function notifyApproval(req: ApprovalRequest, signal: AbortSignal): Promise<ApprovalChoice | undefined> {
    const labels = APPROVAL_CHOICES.map((c) => CHOICE_LABELS[c]);
    const open = "Open Chat";
    const picked = await vscode.window.showInformationMessage(approvalMessage(req), ...labels, open);
    if (signal.aborted) return undefined; // answered inline meanwhile, or withdrawn
    if (picked === open) {
      await openChat(req.agentId);
      return undefined; // answered on the card
    }
    return choiceFromLabel(picked);
  }

  // --- chat panels -------------------------------------------------------------------

  async function openChat(agentId: string, preserveFocus = false): Promise<ChatPanel> {
    const existing = panels.get(agentId);
    if (existing) {
      existing.panel.reveal(undefined, preserveFocus);
      s.setCurrent(agentId);
      return existing;
    }
    const dist = vscode.Uri.joinPath(context.extensionUri, "dist");
    const media = vscode.Uri.joinPath(context.extensionUri, "media");
    const panel = vscode.window.createWebviewPanel(
      "kode.chat",
      agentId,
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
      title: agentId,
    });
    const controller = new ChatViewController(s, agentId, (m) => w.postMessage(m), {
      showLog: () => output.show(true),
      onError: (m) => logger.warn(`kode: ${agentId}: ${m}`),
    });
    const entry: ChatPanel = { panel, controller };
    panels.set(agentId, entry);
    const subs: vscode.Disposable[] = [
      w.onDidReceiveMessage(async (m) => {
        const r = await handleWebviewMessage(m, controller);
        if (!r.ok) logger.warn(`kode: webview message refused: ${r.error}`);
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
      if (panels.get(agentId) === entry) panels.delete(agentId);
    });
    s.setCurrent(agentId);
    return entry;
  }

  // --- agents tree -------------------------------------------------------------------

  const treeChanged = new vscode.EventEmitter<void>();
  let treeError: string | undefined;
  const tree: vscode.TreeDataProvider<AgentInfo> = {
    onDidChangeTreeData: treeChanged.event,
    async getChildren(element) {
      if (element) return [];
      try {
        const agents = await s.listAgents();
        treeError = undefined;
        return agents;
      } catch (e) {
        const msg = errorMessage(e);
        if (msg !== treeError) {
          treeError = msg;
          void vscode.window.showErrorMessage(`Kode: cannot list agents: ${msg}`, "Show Server Log").then((b) => {
            if (b) output.show();
          });
        }
        return [];
      }
    },
    getTreeItem(info) {
      const e = agentEntry(info);
      const item = new vscode.TreeItem(e.label, vscode.TreeItemCollapsibleState.None);
      item.id = e.agentId;
      item.description = e.description;
      item.tooltip = e.tooltip;
      item.iconPath = new vscode.ThemeIcon(e.icon);
      item.contextValue = "kodeAgent";
      item.command = { command: "kode.openAgent", title: "Open Agent", arguments: [e.agentId] };
      return item;
    },
  };
  const treeView = vscode.window.createTreeView("kode.agents", { treeDataProvider: tree, showCollapseAll: false });
  let treeTimer: NodeJS.Timeout | undefined;
  const refreshTree = () => {
    if (treeTimer) clearTimeout(treeTimer);
    treeTimer = setTimeout(() => treeChanged.fire(), 150);
  };

  // --- status bar --------------------------------------------------------------------

  const status = vscode.window.createStatusBarItem("kode.status", vscode.StatusBarAlignment.Left, 100);
  status.name = "Kode Agent";
  const updateStatus = () => {
    const id = s.currentAgentId;
    const st = id ? s.status(id) : undefined;
    if (!id || !st) {
      status.hide();
      return;
    }
    status.text = `$(${st.icon}) ${st.text}`;
    status.tooltip = `${st.tooltip}\n\nClick to open the chat.`;
    status.command = { command: "kode.openAgent", title: "Open Agent", arguments: [id] };
    status.show();
  };

  context.subscriptions.push(
    output,
    treeView,
    treeChanged,
    status,
    s.onDidChange((e) => {
      if (e.type === "agents") refreshTree();
      if (e.type === "header" || e.type === "current" || e.type === "deleted") updateStatus();
      if (e.type === "client" && e.state === "restarting") {
        status.text = "$(warning) kode-rpc: restarting the server…";
        status.show();
      }
      if (e.type === "client" && e.state === "running") updateStatus();
      if (e.type === "client" && e.state === "failed") {
        void vscode.window
          .showErrorMessage("Kode: the kode-rpc server stopped and could not be restarted.", "Restart Server", "Show Server Log")
          .then((b) => {
            if (b === "Restart Server") void vscode.commands.executeCommand("kode.restartServer");
            else if (b) output.show();
          });
      }
    }),
  );

  // --- commands ----------------------------------------------------------------------

  /** Agent id from a command argument: a string, an AgentInfo (tree item), or undefined. */
  const idOf = (arg: unknown): string | undefined => {
    if (typeof arg === "string") return arg;
    if (arg && typeof arg === "object" && typeof (arg as { agentId?: unknown }).agentId === "string") {
      return (arg as { agentId: string }).agentId;
    }
    return undefined;
  };

  const pickAgent = async (placeHolder: string): Promise<string | undefined> => {
    const agents = await s.listAgents();
    if (!agents.length) {
      void vscode.window.showInformationMessage("Kode: no agents yet.", "New Agent").then((b) => {
        if (b) void vscode.commands.executeCommand("kode.newAgent");
      });
      return undefined;
    }
    const picked = await vscode.window.showQuickPick(
      agents.map((a) => {
        const e = agentEntry(a);
        return { label: e.label, description: e.description, agentId: e.agentId };
      }),
      { placeHolder },
    );
    return picked?.agentId;
  };

  const run =
    <A extends unknown[]>(name: string, fn: (...args: A) => Promise<unknown>) =>
    async (...args: A) => {
      try {
        return await fn(...args);
      } catch (e) {
        const msg = errorMessage(e);
        logger.error(`kode: ${name} failed: ${msg}`);
        const b = await vscode.window.showErrorMessage(`Kode: ${msg}`, "Show Server Log");
        if (b) output.show();
        return undefined;
      }
    };

  const newAgent = async (opts?: NewAgentOptions) => {
    const a = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "Kode: starting agent" },
      () => s.createAgent(opts && typeof opts === "object" ? opts : {}),
    );
    await openChat(a.agentId);
    return a.agentId;
  };

  const reg = (id: string, fn: (...args: never[]) => Promise<unknown>) =>
    context.subscriptions.push(vscode.commands.registerCommand(id, run(id, fn as (...a: unknown[]) => Promise<unknown>)));

  reg("kode.newAgent", newAgent);

  reg("kode.openAgent", async (arg?: unknown) => {
    const id = idOf(arg) ?? (await pickAgent("Open which agent?"));
    if (!id) return;
    await openChat(id);
    return id;
  });

  reg("kode.sendSelection", async () => {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      void vscode.window.showWarningMessage("Kode: open an editor and select some text first.");
      return;
    }
    const sel = editor.selection;
    const doc = editor.document;
    const range = sel.isEmpty ? doc.lineAt(sel.active.line).range : sel;
    const text = doc.getText(range);
    if (!text.trim()) {
      void vscode.window.showWarningMessage("Kode: the selection is empty.");
      return;
    }
    const folder = vscode.workspace.getWorkspaceFolder(doc.uri);
    const rel = doc.isUntitled
      ? doc.fileName
      : folder
        ? path.relative(folder.uri.fsPath, doc.uri.fsPath)
        : doc.uri.fsPath;
    const message = selectionMessage({
      text,
      path: rel,
      languageId: doc.languageId,
      startLine: range.start.line + 1,
      endLine: range.end.character === 0 && range.end.line > range.start.line ? range.end.line : range.end.line + 1,
    });
    let id = s.currentAgentId;
    if (!id) id = await newAgent();
    if (!id) return;
    await openChat(id, true);
    await s.send(id, message);
  });

  reg("kode.interrupt", async (arg?: unknown) => {
    const id = idOf(arg) ?? s.currentAgentId;
    if (!id) {
      void vscode.window.showInformationMessage("Kode: no current agent.");
      return;
    }
    const stopped = await s.interrupt(id);
    if (!stopped) void vscode.window.showInformationMessage(`Kode: ${id} had no running turn.`);
  });

  reg("kode.showServerLog", async () => output.show());

  reg("kode.deleteAgent", async (arg?: unknown) => {
    const id = idOf(arg) ?? (await pickAgent("Delete which agent?"));
    if (!id) return;
    const ok = await vscode.window.showWarningMessage(
      `Delete agent "${id}" and its whole history?`,
      { modal: true },
      "Delete",
    );
    if (ok !== "Delete") return;
    panels.get(id)?.panel.dispose();
    await s.deleteAgent(id);
  });

  reg("kode.forkAgent", async (arg?: unknown) => {
    const id = idOf(arg) ?? (await pickAgent("Fork which agent?"));
    if (!id) return;
    const newId = await vscode.window.showInputBox({
      title: `Fork ${id}`,
      prompt: "Id of the copy (empty: chosen by the server)",
      validateInput: (v) => (!v || AGENT_ID_RE.test(v) ? undefined : "Letters, digits, '.', '_' and '-' (max 128)"),
    });
    if (newId === undefined) return;
    const info = await s.forkAgent(id, newId || undefined);
    await openChat(info.agentId);
    return info.agentId;
  });

  reg("kode.refreshAgents", async () => treeChanged.fire());

  reg("kode.restartServer", async () => {
    await s.stop();
    await s.start();
    for (const p of panels.values()) await p.controller.ready();
    treeChanged.fire();
    updateStatus();
    void vscode.window.showInformationMessage("Kode: server restarted.");
  });

  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((e) => {
      if ((e.affectsConfiguration("kode.serverPath") || e.affectsConfiguration("kode.dataDir")) && s.started) {
        void vscode.window
          .showInformationMessage("Kode: restart the server to use the new server path / data dir.", "Restart Server")
          .then((b) => {
            if (b) void vscode.commands.executeCommand("kode.restartServer");
          });
      }
    }),
    { dispose: () => void s.dispose() },
  );
}

export async function deactivate(): Promise<void> {
  const s = session;
  session = undefined;
  await s?.dispose();
}
