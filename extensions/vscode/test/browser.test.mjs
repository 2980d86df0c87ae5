// Optional: the real webview bundle rendered by headless Chromium (if installed) with the
// sample transcript. Skipped when no Chromium is found: CI does not depend on it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { pathToFileURL } from "node:url";
import { writePreview } from "../scripts/preview.mjs";

function findChromium() {
  if (process.env.KODE_SKIP_BROWSER === "1") return undefined;
  for (const c of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      execFileSync("which", [c], { stdio: "ignore" });
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}

const chromium = findChromium();

test("webview renders the transcript in a browser (CSP on, markdown, cards, approval bar)", { skip: !chromium && "no chromium" }, (t) => {
  const html = writePreview();
  let r;
  for (let attempt = 0; attempt < 3; attempt++) {
    r = spawnSync(
      chromium,
      ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--virtual-time-budget=3000", "--dump-dom", pathToFileURL(html).href],
      { encoding: "utf8", timeout: 60_000 },
    );
    if (r.stdout?.includes('data-id="u1"')) break; // rendered (a slow start can dump before the first message)
  }
  if (r.error || !r.stdout.includes("</html>")) {
    t.skip(`chromium did not run: ${r.error?.message ?? r.stderr.slice(0, 300)}`);
    return;
  }
  const dom = r.stdout;
  // The script ran under the CSP (nonce) and rendered what the stub posted.
  assert.match(dom, /<span id="state-label">awaiting approval<\/span>/);
  assert.match(dom, /<span id="context"[^>]*>2\.2k\/200k \(1\.1%\)<\/span>/);
  assert.match(dom, /<span id="cost"[^>]*>\$0\.0109<\/span>/);
  assert.match(dom, /<span id="agent-title"[^>]*>Make parse_config accept an empty file<\/span>/);
  assert.match(dom, /<div class="msg user" data-id="u1">/);
  assert.match(dom, /<em>no settings<\/em>/, "markdown rendered");
  assert.match(dom, /<code class="language-python">/);
  assert.equal((dom.match(/class="tool-card /g) ?? []).length, 3, "three tool cards");
  assert.match(dom, /<span class="tool-name">bash_run<\/span>/);
  assert.match(dom, /4 passed in 0\.12s/, "tool output");
  assert.match(dom, /<span class="add">\+    if not text\.strip\(\):/, "approval diff");
  assert.match(dom, /<span class="question">Allow fs_edit\?<\/span><button data-decision="allow">Allow<\/button><button class="secondary" data-decision="deny">Deny<\/button><button class="secondary" data-decision="always">Always allow<\/button>/);
  assert.match(dom, /<button id="interrupt" class="secondary" title="Interrupt the running turn \(also: Kode: Interrupt Agent\)">/, "interrupt enabled while busy");
});
