/**
 * The chat's markdown renderer (markdown-it). Raw HTML is off: `<script>`, `<img onerror>`
 * and friends come out as text. Links go through markdown-it's validateLink (no
 * `javascript:`, `vbscript:`, `file:`, non-image `data:`), and open in the browser via VS Code.
 */
import markdownit, { type MarkdownIt } from "markdown-it";

export function createMarkdown(): MarkdownIt {
  const md = markdownit({ html: false, linkify: true, breaks: false, typographer: false });
  const defaultLinkOpen =
    md.renderer.rules.link_open ?? ((tokens, idx, options, _env, self) => self.renderToken(tokens, idx, options));
  md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    tokens[idx]!.attrSet("rel", "noopener noreferrer");
    return defaultLinkOpen(tokens, idx, options, env, self);
  };
  return md;
}

/** Renders markdown to sanitized HTML. */
export function renderMarkdown(text: string, md: MarkdownIt = shared()): string {
  return md.render(text);
}

let instance: MarkdownIt | undefined;
function shared(): MarkdownIt {
  return (instance ??= createMarkdown());
}
