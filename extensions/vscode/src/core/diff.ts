/**
 * Unified diffs of `turn_diff` events: the part of one file, and the file's content
 * before the turn, got by reverse-applying that part to its content after the turn.
 * No `vscode` here.
 */

/** The `diff --git` section of `path` in a unified diff (undefined when absent). */
export function fileSection(diff: string, path: string): string | undefined {
  const lines = diff.split("\n");
  let start = -1;
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.startsWith("diff --git ")) {
      if (start >= 0) return lines.slice(start, i).join("\n") + "\n";
      if (l === `diff --git a/${path} b/${path}` || l.endsWith(` b/${path}`)) start = i;
    }
  }
  return start >= 0 ? lines.slice(start).join("\n").replace(/\n*$/, "\n") : undefined;
}

interface Hunk {
  newStart: number;
  lines: string[];
}

function hunks(section: string): Hunk[] {
  const out: Hunk[] = [];
  let cur: Hunk | undefined;
  for (const l of section.split("\n")) {
    const m = /^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@/.exec(l);
    if (m) {
      cur = { newStart: Number(m[1]), lines: [] };
      out.push(cur);
    } else if (cur && (l.startsWith(" ") || l.startsWith("+") || l.startsWith("-") || l.startsWith("\\"))) {
      cur.lines.push(l);
    }
  }
  return out;
}

/**
 * The content before the diff, given the content after it: reverse-applies the file's
 * hunks. Undefined when the content after does not match the diff (the file changed
 * since, or the diff is binary/truncated).
 */
export function reverseApply(section: string, after: string): string | undefined {
  if (/^Binary files /m.test(section)) return undefined;
  const hs = hunks(section);
  const afterLines = after.length ? after.replace(/\n$/, "").split("\n") : [];
  const afterEndsNl = after.endsWith("\n");
  const before: string[] = [];
  let oldNoNl = false;
  let newNoNl = false;
  let pos = 0; // index into afterLines
  for (const h of hs) {
    const start = h.lines.some((l) => l.startsWith(" ") || l.startsWith("+")) ? h.newStart - 1 : h.newStart;
    if (start < pos || start > afterLines.length) return undefined;
    before.push(...afterLines.slice(pos, start));
    pos = start;
    let last = "";
    for (const l of h.lines) {
      const body = l.slice(1);
      if (l.startsWith("\\")) {
        if (last === "-" || last === " ") oldNoNl = true;
        if (last === "+" || last === " ") newNoNl = true;
        continue;
      }
      last = l[0]!;
      if (l[0] === " " || l[0] === "+") {
        if (afterLines[pos] !== body) return undefined;
        pos++;
      }
      if (l[0] === " " || l[0] === "-") before.push(body);
    }
  }
  before.push(...afterLines.slice(pos));
  const beforeEndsNl = oldNoNl ? false : newNoNl ? true : afterEndsNl;
  if (!before.length) return "";
  return before.join("\n") + (beforeEndsNl ? "\n" : "");
}

/** The modal of "Rewind to here" from a dry run: what it says and which button restores. */
export function rewindPrompt(
  title: string,
  r: { files: { path: string; change: string }[]; conflicts: string[] },
  maxLines = 20,
): { message: string; detail: string; button: string; force: boolean } {
  const lines = r.files.slice(0, maxLines).map((f) => `${f.change === "added" ? "+" : f.change === "deleted" ? "−" : "~"} ${f.path} (${f.change === "added" ? "recreated" : f.change === "deleted" ? "removed" : "restored"})`);
  if (r.files.length > maxLines) lines.push(`… and ${r.files.length - maxLines} more`);
  if (!r.files.length) lines.push("No files change; the conversation goes back to before this turn.");
  let detail = `Files:\n${lines.join("\n")}`;
  const force = r.conflicts.length > 0;
  if (force) {
    detail += `\n\nChanged outside the agent since its last turn (those changes would be lost):\n${r.conflicts.slice(0, maxLines).map((p) => `! ${p}`).join("\n")}`;
  }
  return {
    message: `Rewind "${title}" to before this turn? Files and conversation go back to that checkpoint.`,
    detail,
    button: force ? "Rewind Anyway" : "Rewind",
    force,
  };
}
