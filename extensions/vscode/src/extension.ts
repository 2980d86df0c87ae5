/**
 * The extension's wiring: the session (./core, no `vscode`, tested with node --test
 * against the real server) and the VS Code parts (./ui: chat tabs, Agents view, status
 * bar, notifications, commands), connected here and nothing else.
 */
import * as vscode from "vscode";
import { KodeSession } from "./core/session.js";
import { AgentsTree } from "./ui/agentsTree.js";
import { ChatPanels } from "./ui/chatPanels.js";
import { DIFF_SCHEME, TurnDiffDocuments, openTurnDiff, rewindToCheckpoint } from "./ui/checkpoints.js";
import { registerCommands } from "./ui/commands.js";
import { clientOptions, createServerLog, settings, workspaceFolder } from "./ui/host.js";
import { notifyApproval } from "./ui/notifications.js";
import { StatusBar } from "./ui/statusBar.js";

let session: KodeSession | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const { output, logger } = createServerLog();
  let panels: ChatPanels | undefined;
  const s = new KodeSession({
    client: () => clientOptions(context, logger),
    settings,
    workDir: workspaceFolder,
    logger,
    titles: context.globalState,
    approvalHost: {
      isVisible: (agentId) => panels?.isVisible(agentId) ?? false,
      notify: (req, signal) => notifyApproval(req, signal, async (id) => panels?.open(id)),
    },
  });
  session = s;
  const diffDocs = new TurnDiffDocuments();
  panels = new ChatPanels(context, s, logger, {
    showLog: () => output.show(true),
    rename: (agentId) => vscode.commands.executeCommand("kode.renameAgent", agentId),
    openDiff: (agentId, checkpointId, path) => openTurnDiff(s, diffDocs, agentId, checkpointId, path),
    rewind: (agentId, checkpointId) => rewindToCheckpoint(s, agentId, checkpointId),
  });
  const tree = new AgentsTree(s, output);
  const status = new StatusBar(s, output);

  context.subscriptions.push(
    vscode.workspace.registerTextDocumentContentProvider(DIFF_SCHEME, diffDocs),
    output,
    panels,
    tree,
    status,
    ...registerCommands({ session: s, panels, tree, status, output, logger }),
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
