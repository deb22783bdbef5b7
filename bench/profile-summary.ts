/**
 * Prints the functions with the most self time in a V8 CPU profile, as written by
 * `node --cpu-prof` (and by `npm run bench -- --profile`).
 *
 * Usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top N] [--by function|file]
 *          [--from SECONDS] [--to SECONDS] [--inclusive]
 *
 * --from and --to keep only the samples in that window, counted from the start of the profile,
 * so that start-up (module loading) can be left out. --inclusive ranks by total time instead:
 * the time a function was anywhere on the stack, callees included.
 * Self time is the time a function was on top of the stack. "(idle)" is time the event loop
 * waited; percentages are given both of all samples and of the non-idle ones.
 */
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  samples: number[];
  timeDeltas: number[];
}

const IDLE = '(idle)';

function shortUrl(url: string): string {
  if (url === '') return '';
  const path = url.replace(/^file:\/\//, '');
  const modules = path.lastIndexOf('/node_modules/');
  if (modules !== -1) return path.slice(modules + 1);
  return path.startsWith('/') ? relative(process.cwd(), path) : path;
}

function keyOf(frame: CallFrame, by: 'function' | 'file'): string {
  const file = shortUrl(frame.url);
  if (by === 'file') return file === '' ? frame.functionName || '(native)' : file;
  const name = frame.functionName === '' ? '(anonymous)' : frame.functionName;
  // Files compiled by tsx report line 1 for every function, so a line number is shown only past it.
  if (file === '') return name;
  return frame.lineNumber > 0 ? `${file}:${frame.lineNumber + 1} ${name}` : `${file} ${name}`;
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: {
    top: { type: 'string', default: '25' },
    by: { type: 'string', default: 'function' },
    from: { type: 'string', default: '0' },
    to: { type: 'string', default: 'Infinity' },
    inclusive: { type: 'boolean', default: false },
  },
});
if (positionals.length !== 1) {
  process.stderr.write('usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top N] [--by function|file] [--from SECONDS] [--to SECONDS] [--inclusive]\n');
  process.exit(2);
}
const by = values.by === 'file' ? 'file' : 'function';
const profile = JSON.parse(readFileSync(positionals[0], 'utf8')) as CpuProfile;
const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
const parents = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parents.set(child, node.id);

/** Keys of the sampled frame and, with --inclusive, of every caller on its stack, each once. */
function keysOnStack(node: ProfileNode): Set<string> {
  const keys = new Set([keyOf(node.callFrame, by)]);
  if (!values.inclusive) return keys;
  for (let id = parents.get(node.id); id !== undefined; id = parents.get(id)) {
    const frame = nodes.get(id)!.callFrame;
    if (frame.functionName !== '(root)') keys.add(keyOf(frame, by));
  }
  return keys;
}

const selfMicros = new Map<string, number>();
const fromMicros = Number(values.from) * 1e6;
const toMicros = Number(values.to) * 1e6;
let total = 0;
let idle = 0;
let elapsed = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const node = nodes.get(profile.samples[i]);
  const delta = profile.timeDeltas[i] ?? 0;
  elapsed += delta;
  if (node === undefined || elapsed < fromMicros || elapsed > toMicros) continue;
  total += delta;
  if (node.callFrame.functionName === IDLE) {
    idle += delta;
    continue;
  }
  for (const key of keysOnStack(node)) selfMicros.set(key, (selfMicros.get(key) ?? 0) + delta);
}

const busy = total - idle;
process.stdout.write(`profile: ${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s busy (${((100 * busy) / total).toFixed(1)} %)\n`);
process.stdout.write(`${(values.inclusive ? 'total ms' : 'self ms').padStart(9)} ${'% busy'.padStart(7)} ${'% all'.padStart(6)}  ${by}\n`);
const rows = [...selfMicros.entries()].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top));
for (const [key, micros] of rows) {
  process.stdout.write(`${(micros / 1000).toFixed(1).padStart(9)} ${((100 * micros) / busy).toFixed(1).padStart(7)} ${((100 * micros) / total).toFixed(1).padStart(6)}  ${key}\n`);
}
