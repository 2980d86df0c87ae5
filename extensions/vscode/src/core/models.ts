/**
 * Context windows of known models, for "context used" (tokens and percent of the window).
 * The server does not expose a model table with context windows yet, so the extension
 * keeps this small one; a model it does not know gets DEFAULT_CONTEXT_WINDOW.
 * Matched against the model name without a vendor prefix (`anthropic/claude-...` works).
 */

export const DEFAULT_CONTEXT_WINDOW = 128_000;

export interface ContextWindow {
  tokens: number;
  /** False when the model is not in the table (the default was used). */
  known: boolean;
}

/** First match wins: put the more specific patterns first. */
export const CONTEXT_WINDOWS: readonly { pattern: RegExp; tokens: number; label: string }[] = [
  { pattern: /^claude-/, tokens: 200_000, label: "claude-*" },
  { pattern: /^gpt-4\.1(-|$)/, tokens: 1_047_576, label: "gpt-4.1*" },
  { pattern: /^gpt-4o(-|$)/, tokens: 128_000, label: "gpt-4o*" },
  { pattern: /^o1-mini(-|$)/, tokens: 128_000, label: "o1-mini" },
  { pattern: /^o[134](-|$)/, tokens: 200_000, label: "o1, o3, o4-mini" },
];

export function contextWindow(model: string | null | undefined): ContextWindow {
  const name = (model ?? "").trim().toLowerCase().replace(/^.*\//, "");
  for (const e of CONTEXT_WINDOWS) if (e.pattern.test(name)) return { tokens: e.tokens, known: true };
  return { tokens: DEFAULT_CONTEXT_WINDOW, known: false };
}

/** Tokens in the model's context after the last model call: its input (cached parts included) plus its output. */
export function contextTokens(u: {
  inputTokens: number;
  outputTokens: number;
  cacheReadTokens?: number | null;
  cacheWriteTokens?: number | null;
}): number {
  return u.inputTokens + (u.cacheReadTokens ?? 0) + (u.cacheWriteTokens ?? 0) + u.outputTokens;
}

/** 0.37 -> "0.4%", 12.6 -> "13%", 0 -> "0%". */
export function formatPercent(p: number): string {
  if (!(p > 0)) return "0%";
  if (p < 10) return `${Math.max(0.1, Math.round(p * 10) / 10)}%`;
  return `${Math.round(p)}%`;
}

/** 0 -> "$0.00", 0.0042 -> "$0.0042", 1.234 -> "$1.23". */
export function formatCost(usd: number): string {
  if (!(usd > 0)) return "$0.00";
  if (usd < 0.01) return `$${usd.toFixed(4)}`;
  return `$${usd.toFixed(2)}`;
}
