/**
 * Event delivery: every `agent/event` reaches the listeners exactly once and in `seq`
 * order per agent, also across server restarts. Keeps the replay cursor of each agent
 * (the highest `seq` delivered), a baseline for agents subscribed without replay, and
 * the set of agents the client follows (re-subscribed after a restart).
 */
import type { EventEnvelope } from "./protocol.js";
import type { Channel, Disposable, EventListener, Logger } from "./types.js";
import { AGENT_ID_RE, notifyAll } from "./util.js";

interface AgentListener {
  fn: EventListener;
  channels?: Set<Channel>;
}

export class EventRouter {
  private readonly watched = new Set<string>();
  /** Highest seq delivered per agent (the replay cursor). */
  private readonly cursors = new Map<string, number>();
  /** Agent's lastSeq when subscribed without replay, until an event sets the cursor. */
  private readonly baselines = new Map<string, number>();
  private readonly listeners = new Set<EventListener>();
  private readonly agentListeners = new Map<string, Set<AgentListener>>();
  private duplicates = 0;

  constructor(private readonly logger: Logger) {}

  // --- following agents --------------------------------------------------------------

  /** Follow the agent (re-subscribed after a restart). Invalid ids are ignored. */
  watch(agentId: string | undefined): void {
    if (agentId && AGENT_ID_RE.test(agentId)) this.watched.add(agentId);
  }

  unwatch(agentId: string): void {
    this.watched.delete(agentId);
    this.baselines.delete(agentId);
  }

  isWatched(agentId: string): boolean {
    return this.watched.has(agentId);
  }

  get watchedAgents(): string[] {
    return [...this.watched];
  }

  /** The agent was deleted: forget everything about it. */
  forget(agentId: string): void {
    this.unwatch(agentId);
    this.cursors.delete(agentId);
  }

  // --- cursors -----------------------------------------------------------------------

  lastSeq(agentId: string): number | undefined {
    return this.cursors.get(agentId);
  }

  hasCursor(agentId: string): boolean {
    return this.cursors.has(agentId);
  }

  /** Sets the cursor when the client has none (a new agent: 0; a resume with `since`: since). */
  initCursor(agentId: string, seq: number): void {
    if (!this.cursors.has(agentId)) this.cursors.set(agentId, seq);
  }

  /** Subscribed without replay: events up to `lastSeq` are history, not to be replayed after a restart. */
  setBaseline(agentId: string, lastSeq: number): void {
    if (!this.cursors.has(agentId)) this.baselines.set(agentId, lastSeq);
  }

  /** Where to resume an agent after a restart: its cursor, else its baseline. */
  resumeFrom(agentId: string): number | undefined {
    return this.cursors.get(agentId) ?? this.baselines.get(agentId);
  }

  /** Events dropped as duplicates (seq <= cursor), e.g. replays after a restart. */
  get duplicatesDropped(): number {
    return this.duplicates;
  }

  // --- listeners ---------------------------------------------------------------------

  onEvent(listener: EventListener): Disposable {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  }

  onAgentEvent(agentId: string, listener: EventListener, options: { channels?: Channel[] } = {}): Disposable {
    let set = this.agentListeners.get(agentId);
    if (!set) {
      set = new Set();
      this.agentListeners.set(agentId, set);
    }
    const entry: AgentListener = { fn: listener, channels: options.channels ? new Set(options.channels) : undefined };
    set.add(entry);
    return {
      dispose: () => {
        const s = this.agentListeners.get(agentId);
        s?.delete(entry);
        if (s && s.size === 0) this.agentListeners.delete(agentId);
      },
    };
  }

  waitForEvent(
    agentId: string,
    predicate: (envelope: EventEnvelope) => boolean,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<EventEnvelope> {
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        sub.dispose();
        if (timer) clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
      };
      const onAbort = () => {
        cleanup();
        reject(new Error("waitForEvent aborted"));
      };
      const sub = this.onAgentEvent(agentId, (e) => {
        let ok = false;
        try {
          ok = predicate(e);
        } catch (err) {
          cleanup();
          reject(err);
          return;
        }
        if (ok) {
          cleanup();
          resolve(e);
        }
      });
      if (options.timeoutMs !== undefined) {
        timer = setTimeout(() => {
          cleanup();
          reject(new Error(`waitForEvent(${agentId}) timed out after ${options.timeoutMs} ms`));
        }, options.timeoutMs);
      }
      if (options.signal) {
        if (options.signal.aborted) onAbort();
        else options.signal.addEventListener("abort", onAbort, { once: true });
      }
    });
  }

  /** Delivers one envelope unless it is a duplicate; returns whether it was delivered. */
  deliver(env: EventEnvelope): boolean {
    const last = this.cursors.get(env.agentId);
    if (last !== undefined && env.seq <= last) {
      this.duplicates++;
      return false;
    }
    if (last !== undefined && env.seq !== last + 1 && this.watched.has(env.agentId)) {
      this.logger.warn(`kode-rpc: agent ${env.agentId}: seq jumped from ${last} to ${env.seq}`);
    }
    this.cursors.set(env.agentId, env.seq);
    this.baselines.delete(env.agentId);
    notifyAll(this.listeners, [env], this.logger, "event");
    const set = this.agentListeners.get(env.agentId);
    if (set) {
      notifyAll(
        [...set].filter((e) => !e.channels || e.channels.has(env.channel)).map((e) => e.fn),
        [env],
        this.logger,
        "event",
      );
    }
    return true;
  }
}
