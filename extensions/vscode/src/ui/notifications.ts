/** Notifications: approvals asked while the chat is hidden, and errors (with the way out). */
import * as vscode from "vscode";
import type { ApprovalRequest } from "@kode-rpc/client";
import { APPROVAL_CHOICES, CHOICE_LABELS, approvalMessage, choiceFromLabel } from "../core/approvals.js";
import type { ApprovalChoice } from "../core/chatModel.js";
import { startErrorHelp } from "../core/config.js";
import { errorMessage } from "../core/session.js";
import { windowKind } from "./host.js";

/** The approval notification: Allow / Deny / Always allow / Open Chat (answered on the card then). */
export async function notifyApproval(
  req: ApprovalRequest,
  signal: AbortSignal,
  openChat: (agentId: string) => Promise<unknown>,
): Promise<ApprovalChoice | undefined> {
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

/** Opens the settings at `kode.serverPath`: the Remote settings in a remote window. */
export async function openServerPathSetting(remote: boolean): Promise<void> {
  const query = "kode.serverPath";
  if (remote) {
    try {
      await vscode.commands.executeCommand("workbench.action.openRemoteSettings", { query });
      return;
    } catch {
      /* no remote settings in this window: the normal editor below */
    }
  }
  await vscode.commands.executeCommand("workbench.action.openSettings", query);
}

/**
 * Shows an error: a server that cannot be found names `kode.serverPath` and where to set
 * it, with **Open Settings**; every error offers **Show Server Log**.
 */
export async function showError(prefix: string, e: unknown, output: vscode.OutputChannel): Promise<void> {
  const help = startErrorHelp(e, windowKind());
  const settingsButton = "Open Settings";
  const logButton = "Show Server Log";
  const buttons = help?.openSettings ? [settingsButton, logButton] : [logButton];
  const b = await vscode.window.showErrorMessage(`Kode: ${prefix}${help ? help.message : errorMessage(e)}`, ...buttons);
  if (b === settingsButton) await openServerPathSetting(help!.remote);
  else if (b === logButton) output.show();
}
