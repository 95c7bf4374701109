/**
 * Event-driven waiting for tests: code under test calls wake() after each event; until(pred) resolves as soon as
 * pred holds (at once if it already does), and rejects after timeoutMs, a failure bound, not a sleep.
 */
export class Wakers {
  private readonly waiting = new Set<() => void>();

  wake(): void {
    for (const w of [...this.waiting]) w();
  }

  until(pred: () => boolean, what: string, timeoutMs = 5000, detail: () => string = () => ''): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!pred()) return;
        this.waiting.delete(check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiting.delete(check);
        reject(new Error(`timed out waiting for ${what}${detail()}`));
      }, timeoutMs);
      this.waiting.add(check);
      check();
    });
  }
}
