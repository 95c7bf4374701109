/**
 * Process figures from /proc: CPU time (utime + stime, and the reaped children's) in clock ticks from
 * /proc/<pid>/stat, resident memory from /proc/<pid>/status. Parsers are pure (tested); readers are thin.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface CpuTicks {
  /** utime + stime of the process (all its threads), clock ticks. */
  self: number;
  /** cutime + cstime: children it has waited for (iptables-save runs and the like), clock ticks. */
  children: number;
}

/** Parses /proc/<pid>/stat. The command name (field 2) may hold spaces and parentheses: fields count from the last ')'. */
export function parseStat(text: string): CpuTicks {
  const close = text.lastIndexOf(')');
  if (close < 0) throw new Error('/proc stat: no ")" after the command name');
  const f = text.slice(close + 2).trim().split(/\s+/); // f[0] is field 3 (state)
  const n = (field: number) => {
    const v = Number(f[field - 3]);
    if (!Number.isFinite(v)) throw new Error(`/proc stat: field ${field} is not a number`);
    return v;
  };
  return { self: n(14) + n(15), children: n(16) + n(17) };
}

export interface Memory {
  /** VmRSS, bytes. */
  rss: number;
  /** VmHWM (peak RSS), bytes. */
  hwm: number;
}

/** Parses VmRSS and VmHWM (kB) from /proc/<pid>/status. */
export function parseStatus(text: string): Memory {
  const kb = (name: string) => {
    const m = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(text);
    if (!m) throw new Error(`/proc status: no ${name}`);
    return Number(m[1]) * 1024;
  };
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

let ticks: number | undefined;
/** Clock ticks per second (getconf CLK_TCK; 100 on Linux in practice). */
export function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

/** CPU seconds used so far by pid (self and reaped children). */
export function cpuSeconds(pid: number): { self: number; children: number } {
  const t = parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  const hz = clockTicks();
  return { self: t.self / hz, children: t.children / hz };
}

export function memory(pid: number): Memory {
  return parseStatus(readFileSync(`/proc/${pid}/status`, 'utf8'));
}
