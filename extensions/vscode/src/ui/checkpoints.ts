/** Turn diffs in VS Code's diff editor, and "Rewind to here" with a modal preview. */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import * as vscode from "vscode";
import { rewindPrompt } from "../core/diff.js";
import type { KodeSession } from "../core/session.js";

export const DIFF_SCHEME = "kode-diff";

/** Read-only documents: `kode-diff:/<agentId>/<checkpointId>/<path>?before|unified`. */
export class TurnDiffDocuments implements vscode.TextDocumentContentProvider {
  private readonly docs = new Map<string, string>();

  set(uri: vscode.Uri, text: string): void {
    this.docs.set(uri.toString(), text);
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.docs.get(uri.toString()) ?? "";
  }
}

export async function openTurnDiff(
  session: KodeSession,
  docs: TurnDiffDocuments,
  agentId: string,
  checkpointId: string,
  rel: string,
): Promise<"diff" | "unified"> {
  const workDir = session.getAgent(agentId)?.info?.workDir;
  if (!workDir) throw new Error(`the workDir of ${agentId} is unknown`);
  const file = path.join(workDir, ...rel.split("/"));
  let current: string | undefined;
  try {
    current = await fs.readFile(file, "utf8");
  } catch {
    current = undefined;
  }
  const d = session.turnFileDiff(agentId, checkpointId, rel, current);
  if (!d) throw new Error(`no diff of ${rel} in checkpoint ${checkpointId}`);
  const base = `/${agentId}/${checkpointId}/${rel}`;
  if (d.before !== undefined) {
    const left = vscode.Uri.from({ scheme: DIFF_SCHEME, path: base, query: "before" });
    docs.set(left, d.before);
    let right: vscode.Uri;
    if (current !== undefined) right = vscode.Uri.file(file);
    else {
      right = vscode.Uri.from({ scheme: DIFF_SCHEME, path: base, query: "after" });
      docs.set(right, "");
    }
    await vscode.commands.executeCommand("vscode.diff", left, right, `${rel} (before ↔ after turn)`, { preview: true });
    return "diff";
  }
  // The file changed since the turn (or the diff is binary/truncated): show the unified diff.
  const uri = vscode.Uri.from({ scheme: DIFF_SCHEME, path: `${base}.diff`, query: "unified" });
  docs.set(uri, d.unified || "(no diff of this file was recorded: it was truncated or binary)\n");
  const doc = await vscode.workspace.openTextDocument(uri);
  await vscode.window.showTextDocument(doc, { preview: true });
  return "unified";
}

/** Dry run, modal preview of files and conflicts, then restore (forced past conflicts the user accepted). */
export async function rewindToCheckpoint(session: KodeSession, agentId: string, checkpointId: string): Promise<boolean> {
  const dry = await session.rewind(agentId, checkpointId, { dryRun: true });
  const p = rewindPrompt(session.title(agentId), dry);
  const answer = await vscode.window.showWarningMessage(p.message, { modal: true, detail: p.detail }, p.button);
  if (answer !== p.button) return false;
  const r = await session.rewind(agentId, checkpointId, { force: p.force });
  if (!r.restored) {
    void vscode.window.showWarningMessage(`Kode: nothing was restored; files changed meanwhile: ${r.conflicts.join(", ")}`);
    return false;
  }
  return true;
}
