// Renders the chat webview outside VS Code with a sample transcript (scripts/preview.mjs)
// and, when Chromium is installed, takes a screenshot into out/preview/chat.png (a quick
// look at the chat's CSS). The README's screenshot comes from the real host instead:
// KODE_E2E_README_SHOT=media/screenshot.png with the test-e2e run (see the README).
// Not part of CI. Usage: node scripts/build.mjs --tests && node scripts/screenshot.mjs
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { writePreview } from "./preview.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const htmlPath = writePreview();
console.log(`wrote ${htmlPath}`);

const chromium = ["chromium", "chromium-browser", "google-chrome"].find((c) => {
  try {
    execFileSync("which", [c], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
});
if (!chromium) {
  console.log("no chromium found: open the HTML file in a browser instead");
  process.exit(0);
}
const png = join(root, "out", "preview", "chat.png");
execFileSync(
  chromium,
  [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
    "--virtual-time-budget=3000",
    "--window-size=820,860",
    `--screenshot=${png}`,
    pathToFileURL(htmlPath).href,
  ],
  { stdio: VERBOSE() ? "inherit" : "ignore", timeout: 60_000 },
);
console.log(existsSync(png) ? `wrote ${png}` : "chromium made no screenshot");

function VERBOSE() {
  return process.env.KODE_TEST_VERBOSE === "1";
}
