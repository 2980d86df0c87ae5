/** What the extension reads from VS Code: settings, the workspace folder, the window kind, the server log. */
import * as os from "node:os";
import * as vscode from "vscode";
import type { Logger } from "@kode-rpc/client";
import {
  bundledServerPath,
  clientStartOptions,
  ensureExecutable,
  readSettings,
  type KodeSettings,
  type WindowKind,
} from "../core/config.js";
import type { ClientOptions } from "../core/session.js";

export function settings(): KodeSettings {
  return readSettings((k) => vscode.workspace.getConfiguration("kode").get(k));
}

/** The first workspace folder on disk (the agents' sandbox workDir), if any. */
export function workspaceFolder(): string | undefined {
  const f = vscode.workspace.workspaceFolders?.[0];
  return f && f.uri.scheme === "file" ? f.uri.fsPath : undefined;
}

export function windowKind(): WindowKind {
  return { remoteName: vscode.env.remoteName, web: vscode.env.uiKind === vscode.UIKind.Web };
}

/** The *Kode Server* output channel and a library logger writing to it. */
export function createServerLog(): { output: vscode.LogOutputChannel; logger: Logger } {
  const output = vscode.window.createOutputChannel("Kode Server", { log: true });
  const logger: Logger = {
    info: (m) => output.info(m),
    warn: (m) => output.warn(m),
    error: (m) => output.error(m),
    debug: (m) => output.debug(m),
  };
  return { output, logger };
}

/** Library options at each (re)start: discovery from settings, the bundled binary, client info. */
export function clientOptions(context: vscode.ExtensionContext, logger: Logger): ClientOptions {
  const bundled = bundledServerPath(context.extensionPath);
  const mode = ensureExecutable(bundled);
  if (mode === "fixed") logger.info(`kode: made ${bundled} executable`);
  if (mode === "failed") logger.warn(`kode: ${bundled} is not executable and chmod failed; it will be skipped`);
  const version = String((context.extension.packageJSON as { version?: string }).version ?? "0.0.0");
  return {
    ...clientStartOptions(settings(), { extensionPath: context.extensionPath, workspaceFolder: workspaceFolder(), home: os.homedir() }),
    clientInfo: { name: "vscode-kode-rpc", version },
    logger,
  };
}
