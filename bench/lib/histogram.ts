/**
 * A fixed-bucket latency histogram in the manner of HdrHistogram: exact below 256, then 128 sub-buckets per power
 * of two (relative error < 1/128 ≈ 0.8 %), values 0 … 2^32 − 1 (microseconds here: up to ~71 minutes). Recording
 * is one Math.clz32 and an array increment, so a load generator can record every request; two generators'
 * histograms merge exactly (add the counts), which raw percentiles never could.
 */
const SUB_BITS = 7;
const SUB = 1 << SUB_BITS; // 128
const LINEAR = SUB * 2; // 256 exact buckets
const MAX_VALUE = 0xffff_ffff;
export const BUCKETS = LINEAR + (32 - (SUB_BITS + 1)) * SUB; // 3328

/** Bucket index of a non-negative integer value (clamped to 0 … 2^32 − 1). */
export function bucketOf(value: number): number {
  const v = value <= 0 ? 0 : value >= MAX_VALUE ? MAX_VALUE : Math.floor(value);
  if (v < LINEAR) return v;
  const e = 31 - Math.clz32(v); // 8 … 31
  const shift = e - SUB_BITS;
  return LINEAR + (e - SUB_BITS - 1) * SUB + (Math.floor(v / 2 ** shift) - SUB);
}

/** Lowest and highest value a bucket holds. */
export function bucketRange(index: number): [number, number] {
  if (!Number.isInteger(index) || index < 0 || index >= BUCKETS) throw new RangeError(`bucket ${index} out of range`);
  if (index < LINEAR) return [index, index];
  const i = index - LINEAR;
  const shift = Math.floor(i / SUB) + 1;
  const low = (SUB + (i % SUB)) * 2 ** shift;
  return [low, low + 2 ** shift - 1];
}

export interface HistogramJson {
  /** [bucket index, count] for every non-empty bucket. */
  buckets: [number, number][];
  count: number;
  sum: number;
  min: number;
  max: number;
}

export class Histogram {
  readonly counts = new Float64Array(BUCKETS);
  count = 0;
  sum = 0;
  min = Infinity;
  max = -Infinity;

  record(value: number): void {
    this.counts[bucketOf(value)]!++;
    this.count++;
    this.sum += value;
    if (value < this.min) this.min = value;
    if (value > this.max) this.max = value;
  }

  /** Adds another histogram's counts (exact). */
  merge(other: Histogram): this {
    for (let i = 0; i < BUCKETS; i++) this.counts[i]! += other.counts[i]!;
    this.count += other.count;
    this.sum += other.sum;
    this.min = Math.min(this.min, other.min);
    this.max = Math.max(this.max, other.max);
    return this;
  }

  /**
   * The value at percentile p (0 < p ≤ 100): the highest value of the bucket holding the ceil(p % · count)-th
   * smallest sample (HdrHistogram's "highest equivalent value"), never above the largest value recorded.
   * NaN when empty.
   */
  percentile(p: number): number {
    if (!(p > 0 && p <= 100)) throw new RangeError(`percentile ${p} not in (0, 100]`);
    if (this.count === 0) return NaN;
    // toPrecision: 0.999 × 1000 must be rank 999, not 999.0000000000001 → 1000.
    const rank = Math.max(1, Math.ceil(Number(((p / 100) * this.count).toPrecision(12))));
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]!;
      if (seen >= rank) return Math.min(bucketRange(i)[1], this.max);
    }
    return this.max;
  }

  get mean(): number {
    return this.count === 0 ? NaN : this.sum / this.count;
  }

  toJSON(): HistogramJson {
    const buckets: [number, number][] = [];
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i]! > 0) buckets.push([i, this.counts[i]!]);
    return { buckets, count: this.count, sum: this.sum, min: this.count ? this.min : 0, max: this.count ? this.max : 0 };
  }

  static fromJSON(json: HistogramJson): Histogram {
    const h = new Histogram();
    let count = 0;
    for (const [i, c] of json.buckets) {
      if (!Number.isInteger(i) || i < 0 || i >= BUCKETS || !(c >= 0)) throw new Error(`histogram: bad bucket [${i}, ${c}]`);
      h.counts[i]! += c;
      count += c;
    }
    if (count !== json.count) throw new Error(`histogram: buckets hold ${count} samples, count says ${json.count}`);
    h.count = count;
    h.sum = json.sum;
    if (count > 0) {
      h.min = json.min;
      h.max = json.max;
    }
    return h;
  }
}
