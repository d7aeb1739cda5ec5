// Latency histogram in microseconds: 1 µs buckets below 1 ms, then buckets 1% wide
// (log scale) up to ~30 minutes. Histograms from several processes merge by adding counts.

const LINEAR = 1000; // 0..999 µs, exact
const STEP = Math.log(1.01);
const BASE = Math.log(LINEAR);
const SIZE = LINEAR + Math.ceil((Math.log(2e9) - BASE) / STEP) + 1;

export class Hist {
  constructor() {
    this.counts = new Float64Array(SIZE);
    this.n = 0;
    this.sum = 0;
    this.max = 0;
    this.min = Infinity;
  }

  record(us) {
    if (!(us >= 0)) us = 0; // a clock step backwards (cannot happen with hrtime) or NaN
    let i;
    if (us < LINEAR) i = Math.floor(us);
    else i = Math.min(SIZE - 1, LINEAR + Math.floor((Math.log(us) - BASE) / STEP));
    this.counts[i]++;
    this.n++;
    this.sum += us;
    if (us > this.max) this.max = us;
    if (us < this.min) this.min = us;
  }

  toJSON() {
    // Sparse: [[bucket, count], ...]
    const buckets = [];
    for (let i = 0; i < SIZE; i++) if (this.counts[i]) buckets.push([i, this.counts[i]]);
    return { n: this.n, sum: this.sum, max: this.max, min: this.n ? this.min : 0, buckets };
  }

  static fromJSON(o) {
    const h = new Hist();
    for (const [i, c] of o.buckets) h.counts[i] += c;
    h.n = o.n;
    h.sum = o.sum;
    h.max = o.max;
    h.min = o.n ? o.min : Infinity;
    return h;
  }

  merge(other) {
    for (let i = 0; i < SIZE; i++) this.counts[i] += other.counts[i];
    this.n += other.n;
    this.sum += other.sum;
    if (other.max > this.max) this.max = other.max;
    if (other.min < this.min) this.min = other.min;
  }

  /** The value at quantile q (0..1): the upper edge of its bucket, capped at max. */
  quantile(q) {
    if (this.n === 0) return null;
    const target = Math.max(1, Math.ceil(q * this.n));
    let seen = 0;
    for (let i = 0; i < SIZE; i++) {
      seen += this.counts[i];
      if (seen >= target) {
        const upper = i < LINEAR ? i + 1 : Math.exp(BASE + (i - LINEAR + 1) * STEP);
        return Math.min(upper, this.max);
      }
    }
    return this.max;
  }

  summary() {
    // Milliseconds, three decimals.
    const ms = (v) => (v === null ? null : Math.round(v) / 1000);
    return {
      count: this.n,
      mean_ms: this.n ? ms(this.sum / this.n) : null,
      p50_ms: ms(this.quantile(0.5)),
      p90_ms: ms(this.quantile(0.9)),
      p99_ms: ms(this.quantile(0.99)),
      p999_ms: ms(this.quantile(0.999)),
      max_ms: this.n ? ms(this.max) : null,
    };
  }
}

/** Microseconds on CLOCK_MONOTONIC: one clock for every process on this machine, so a
 *  timestamp written by the publisher's process is comparable in a subscriber's. */
export function nowUs() {
  const t = process.hrtime();
  return t[0] * 1e6 + t[1] / 1e3;
}
