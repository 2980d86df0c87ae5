/** The status bar item: the current chat's title, state, context used and cost. */
import * as vscode from "vscode";
import type { KodeSession } from "../core/session.js";

export class StatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem("kode.status", vscode.StatusBarAlignment.Left, 100);
  private readonly sub: { dispose(): void };

  constructor(
    private readonly session: KodeSession,
    output: vscode.OutputChannel,
  ) {
    this.item.name = "Kode Agent";
    this.sub = session.onDidChange((e) => {
      if (e.type === "header" || e.type === "current" || e.type === "deleted" || e.type === "title") this.update();
      else if (e.type === "client" && e.state === "restarting") {
        this.item.text = "$(warning) kode-rpc: restarting the server…";
        this.item.show();
      } else if (e.type === "client" && e.state === "running") this.update();
      else if (e.type === "client" && e.state === "failed") {
        void vscode.window
          .showErrorMessage("Kode: the kode-rpc server stopped and could not be restarted.", "Restart Server", "Show Server Log")
          .then((b) => {
            if (b === "Restart Server") void vscode.commands.executeCommand("kode.restartServer");
            else if (b) output.show();
          });
      }
    });
  }

  update(): void {
    const id = this.session.currentAgentId;
    const st = id ? this.session.status(id) : undefined;
    if (!id || !st) {
      this.item.hide();
      return;
    }
    this.item.text = `$(${st.icon}) ${st.text}`;
    this.item.tooltip = `${st.tooltip}\n\nClick to open the chat.`;
    this.item.command = { command: "kode.openAgent", title: "Open Agent", arguments: [id] };
    this.item.show();
  }

  dispose(): void {
    this.sub.dispose();
    this.item.dispose();
  }
}
