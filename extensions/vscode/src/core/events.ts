/** A tiny event emitter (vscode.EventEmitter's shape, without vscode). */
export interface Disposable {
  dispose(): void;
}

export type Listener<T> = (value: T) => void;

export class Emitter<T> {
  private readonly listeners = new Set<Listener<T>>();

  /** Subscribe; returns a Disposable that unsubscribes. */
  readonly event = (listener: Listener<T>): Disposable => {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  };

  fire(value: T): void {
    for (const l of [...this.listeners]) {
      try {
        l(value);
      } catch (e) {
        // A broken listener must not break the others (or the event stream).
        console.error("kode: listener threw", e);
      }
    }
  }

  dispose(): void {
    this.listeners.clear();
  }
}
