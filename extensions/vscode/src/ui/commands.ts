/** The commands of the Command Palette, the Agents view and the editor menu. */
import * as path from "node:path";
import * as vscode from "vscode";
import type { Logger } from "@kode-rpc/client";
import { agentEntry, selectionMessage } from "../core/agentsView.js";
import { AGENT_ID_RE, type NewAgentOptions } from "../core/config.js";
import { errorMessage, type KodeSession } from "../core/session.js";
import { validateTitle } from "../core/titles.js";
import type { AgentsTree } from "./agentsTree.js";
import type { ChatPanels } from "./chatPanels.js";
import { showError } from "./notifications.js";
import type { StatusBar } from "./statusBar.js";

export interface CommandDeps {
  session: KodeSession;
  panels: ChatPanels;
  tree: AgentsTree;
  status: StatusBar;
  output: vscode.OutputChannel;
  logger: Logger;
}

/** Agent id from a command argument: a string, an AgentInfo (tree item), or undefined. */
export function idOf(arg: unknown): string | undefined {
  if (typeof arg === "string") return arg;
  if (arg && typeof arg === "object" && typeof (arg as { agentId?: unknown }).agentId === "string") {
    return (arg as { agentId: string }).agentId;
  }
  return undefined;
}

export function registerCommands(d: CommandDeps): vscode.Disposable[] {
  const { session: s, panels, tree, status, output, logger } = d;

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
        const e = agentEntry(a, new Date(), s.title(a.agentId));
        return { label: e.label, description: e.description, detail: e.label !== e.agentId ? e.agentId : undefined, agentId: e.agentId };
      }),
      { placeHolder, matchOnDescription: true, matchOnDetail: true },
    );
    return picked?.agentId;
  };

  const newAgent = async (opts?: NewAgentOptions) => {
    const a = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "Kode: starting agent" },
      () => s.createAgent(opts && typeof opts === "object" ? opts : {}),
    );
    panels.open(a.agentId);
    return a.agentId;
  };

  const rename = async (arg?: unknown) => {
    const id = idOf(arg) ?? s.currentAgentId ?? (await pickAgent("Rename which chat?"));
    if (!id) return;
    const title = await vscode.window.showInputBox({
      title: "Rename chat",
      prompt: `Title of ${id} (empty: from its first message)`,
      value: s.titles.get(id) ?? "",
      validateInput: validateTitle,
    });
    if (title === undefined) return;
    s.rename(id, title);
    return s.title(id);
  };

  const handlers: Record<string, (...args: never[]) => Promise<unknown>> = {
    "kode.newAgent": newAgent,

    "kode.openAgent": async (arg?: unknown) => {
      const id = idOf(arg) ?? (await pickAgent("Open which chat?"));
      if (!id) return;
      panels.open(id);
      return id;
    },

    "kode.renameAgent": rename,

    "kode.sendSelection": async () => {
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
      const rel = doc.isUntitled ? doc.fileName : folder ? path.relative(folder.uri.fsPath, doc.uri.fsPath) : doc.uri.fsPath;
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
      panels.open(id, true);
      await s.send(id, message);
    },

    "kode.interrupt": async (arg?: unknown) => {
      const id = idOf(arg) ?? s.currentAgentId;
      if (!id) {
        void vscode.window.showInformationMessage("Kode: no current agent.");
        return;
      }
      const stopped = await s.interrupt(id);
      if (!stopped) void vscode.window.showInformationMessage(`Kode: "${s.title(id)}" had no running turn.`);
    },

    "kode.compact": async (arg?: unknown) => {
      const id = idOf(arg) ?? s.currentAgentId;
      if (!id) {
        void vscode.window.showInformationMessage("Kode: no current agent.");
        return;
      }
      const r = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Window, title: "Kode: compressing context" },
        () => s.compact(id),
      );
      if (!r.compressed) void vscode.window.showInformationMessage(`Kode: "${s.title(id)}" has nothing to compress yet.`);
      return r;
    },

    "kode.showServerLog": async () => output.show(),

    "kode.deleteAgent": async (arg?: unknown) => {
      const id = idOf(arg) ?? (await pickAgent("Delete which chat?"));
      if (!id) return;
      const title = s.title(id);
      const ok = await vscode.window.showWarningMessage(
        `Delete the chat "${title}"${title !== id ? ` (${id})` : ""} and its whole history?`,
        { modal: true },
        "Delete",
      );
      if (ok !== "Delete") return;
      panels.close(id);
      await s.deleteAgent(id);
    },

    "kode.forkAgent": async (arg?: unknown) => {
      const id = idOf(arg) ?? (await pickAgent("Fork which chat?"));
      if (!id) return;
      const newId = await vscode.window.showInputBox({
        title: `Fork "${s.title(id)}"`,
        prompt: "Agent id of the copy (empty: chosen by the server)",
        validateInput: (v) => (!v || AGENT_ID_RE.test(v) ? undefined : "Letters, digits, '.', '_' and '-' (max 128)"),
      });
      if (newId === undefined) return;
      const info = await s.forkAgent(id, newId || undefined);
      panels.open(info.agentId);
      return info.agentId;
    },

    "kode.refreshAgents": async () => tree.refresh(),

    "kode.restartServer": async () => {
      await s.stop();
      await s.start();
      await panels.reloadAll();
      tree.refresh();
      status.update();
      void vscode.window.showInformationMessage("Kode: server restarted.");
    },
  };

  return Object.entries(handlers).map(([id, fn]) =>
    vscode.commands.registerCommand(id, async (...args: unknown[]) => {
      try {
        return await (fn as (...a: unknown[]) => Promise<unknown>)(...args);
      } catch (e) {
        logger.error(`kode: ${id} failed: ${errorMessage(e)}`);
        void showError("", e, output);
        return undefined;
      }
    }),
  );
}
