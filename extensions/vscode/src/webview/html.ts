/**
 * The chat webview's HTML, with a strict CSP: no inline script except the nonce'd
 * bundle, no remote content. The extension and the tests call the same function.
 */

export interface ChatHtmlOptions {
  /** `webview.cspSource` (e.g. `https://*.vscode-cdn.net`); tests pass any origin or `'self'`. */
  cspSource: string;
  nonce: string;
  /** URI of dist/webview.js as the webview can load it (`asWebviewUri`). */
  scriptUri: string;
  /** URI of media/chat.css. */
  styleUri: string;
  title: string;
  /** Extra script URIs loaded before the bundle, with the same nonce (e.g. a stub `acquireVsCodeApi` for screenshots). */
  preludeScripts?: string[];
}

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** 32 random alphanumerics (the CSP nonce). */
export function makeNonce(random: (n: number) => Uint8Array = defaultRandom): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  return Array.from(random(32), (b) => alphabet[b % alphabet.length]).join("");
}

function defaultRandom(n: number): Uint8Array {
  const a = new Uint8Array(n);
  globalThis.crypto.getRandomValues(a);
  return a;
}

export function contentSecurityPolicy(cspSource: string, nonce: string): string {
  return [
    "default-src 'none'",
    `style-src ${cspSource}`,
    `img-src ${cspSource} data:`,
    `font-src ${cspSource}`,
    `script-src 'nonce-${nonce}'`,
  ].join("; ");
}

export function renderChatHtml(o: ChatHtmlOptions): string {
  if (!/^[A-Za-z0-9+/=_-]{16,}$/.test(o.nonce)) throw new Error("renderChatHtml: weak or malformed nonce");
  const a = (s: string) => escapeHtml(s);
  const prelude = (o.preludeScripts ?? [])
    .map((src) => `  <script nonce="${a(o.nonce)}" src="${a(src)}"></script>\n`)
    .join("");
  return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <meta http-equiv="Content-Security-Policy" content="${a(contentSecurityPolicy(o.cspSource, o.nonce))}">
  <meta name="viewport" content="width=device-width, initial-scale=1.0">
  <link rel="stylesheet" href="${a(o.styleUri)}">
  <title>${a(o.title)}</title>
</head>
<body>
  <header id="header">
    <div class="title"><span id="agent-title">${a(o.title)}</span><button id="rename" class="icon-button" title="Rename this chat" aria-label="Rename this chat">✎</button> <span id="model" class="muted"></span></div>
    <div class="status"><span id="state-dot" class="dot"></span><span id="status-text" class="muted"><span id="state-label">connecting…</span><span id="numbers"> · <span id="context" title="Context used after the last model call, of the model's context window"></span> · <span id="cost" title="Cost so far"></span></span></span></div>
    <ul id="mcp" class="mcp-list" hidden aria-label="MCP servers"></ul>
  </header>
  <main id="transcript" aria-live="polite"></main>
  <div id="error" class="error-banner" hidden></div>
  <footer id="composer">
    <textarea id="input" rows="3" placeholder="Ask the agent… (Enter to send, Shift+Enter for a new line)" aria-label="Message"></textarea>
    <div class="buttons">
      <button id="send" title="Send (Enter)">Send</button>
      <button id="interrupt" class="secondary" title="Interrupt the running turn (also: Kode: Interrupt Agent)" disabled>Interrupt</button>
      <button id="compact" class="secondary" title="Summarise older messages to free context (also: Kode: Compact Context)">Compact</button>
    </div>
  </footer>
${prelude}  <script nonce="${a(o.nonce)}" src="${a(o.scriptUri)}"></script>
</body>
</html>
`;
}
