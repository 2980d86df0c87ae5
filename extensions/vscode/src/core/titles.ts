/**
 * Chat titles: a chat is titled from its first user message (like every chat product),
 * and the user can rename it. Titles are the extension's (the server has no title
 * field): kept in a key-value storage the host gives (VS Code's globalState), one
 * record for all chats. No `vscode` here.
 */
import { Emitter } from "./events.js";

/** VS Code's Memento shape (globalState), or a Map-backed stand-in in tests. */
export interface TitleStorage {
  get(key: string): unknown;
  update(key: string, value: unknown): PromiseLike<void> | void;
}

export interface TitleRecord {
  title: string;
  /** Set by the user (Rename); an automatic title never replaces it. */
  custom?: boolean;
}

export const TITLE_STORAGE_KEY = "kode.chatTitles";
export const MAX_TITLE_CHARS = 60;
/** Kept at most (oldest dropped). */
export const MAX_TITLES = 2000;

/**
 * A title from a user message: its first line with text, without markdown markers,
 * whitespace collapsed, at most MAX_TITLE_CHARS (cut at a word when it can be).
 */
export function titleFromText(text: string, max = MAX_TITLE_CHARS): string | undefined {
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.trim();
    if (!line || /^(`{3,}|~{3,})/.test(line)) continue;
    line = line
      .replace(/^#{1,6}\s+/, "")
      .replace(/^>\s*/, "")
      .replace(/^[-*+]\s+/, "")
      .replace(/[*_`]+/g, "")
      .replace(/\s+/g, " ")
      .trim();
    if (!line) continue;
    if (line.length <= max) return line;
    const cut = line.slice(0, max - 1);
    const space = cut.lastIndexOf(" ");
    return `${(space > max / 2 ? cut.slice(0, space) : cut).trimEnd()}…`;
  }
  return undefined;
}

/** Validates a title typed by the user; undefined when acceptable. */
export function validateTitle(title: string): string | undefined {
  if (title.length > 200) return "At most 200 characters";
  if (/[\u0000-\u001f]/.test(title)) return "No control characters";
  return undefined;
}

export class TitleBook {
  private readonly records: Map<string, TitleRecord>;
  private readonly emitter = new Emitter<string>();
  /** A title changed (the agent id). */
  readonly onDidChange = this.emitter.event;

  constructor(private readonly storage?: TitleStorage) {
    const stored = storage?.get(TITLE_STORAGE_KEY);
    this.records = new Map();
    if (stored && typeof stored === "object") {
      for (const [id, r] of Object.entries(stored as Record<string, unknown>)) {
        const rec = r as Partial<TitleRecord> | undefined;
        if (rec && typeof rec.title === "string" && rec.title) {
          this.records.set(id, { title: rec.title, ...(rec.custom ? { custom: true } : {}) });
        }
      }
    }
  }

  get(agentId: string): string | undefined {
    return this.records.get(agentId)?.title;
  }

  has(agentId: string): boolean {
    return this.records.has(agentId);
  }

  isCustom(agentId: string): boolean {
    return this.records.get(agentId)?.custom === true;
  }

  /** The title shown: the stored one, else the id. */
  display(agentId: string): string {
    return this.get(agentId) ?? agentId;
  }

  /** Sets the automatic title (from the first user message) unless the chat has one. */
  setAuto(agentId: string, title: string | undefined): boolean {
    if (!title || this.records.has(agentId)) return false;
    this.set(agentId, { title });
    return true;
  }

  /** The user's title; empty or undefined goes back to the automatic one (recomputed later). */
  rename(agentId: string, title: string | undefined): void {
    const t = title?.replace(/\s+/g, " ").trim();
    if (t) this.set(agentId, { title: t, custom: true });
    else this.forget(agentId);
  }

  forget(agentId: string): void {
    if (!this.records.delete(agentId)) return;
    this.save();
    this.emitter.fire(agentId);
  }

  private set(agentId: string, rec: TitleRecord): void {
    this.records.delete(agentId); // re-insert: most recent last
    this.records.set(agentId, rec);
    while (this.records.size > MAX_TITLES) this.records.delete(this.records.keys().next().value as string);
    this.save();
    this.emitter.fire(agentId);
  }

  private save(): void {
    if (!this.storage) return;
    const out: Record<string, TitleRecord> = {};
    for (const [id, r] of this.records) out[id] = r;
    void Promise.resolve(this.storage.update(TITLE_STORAGE_KEY, out)).catch(() => {
      /* storage closed (window going away): the title is recomputed next time */
    });
  }

  dispose(): void {
    this.emitter.dispose();
  }
}
