import { randomBytes } from 'node:crypto';

/** Distinguishes this process from others writing to the same store. */
const PROCESS_TAG = randomBytes(4).toString('hex');
let sequence = 0;

/**
 * Returns a unique event id that sorts by creation time: milliseconds, then a per-process
 * counter, then a random process tag. Ids that grow in time append to the end of the primary-key
 * index instead of landing at random pages, which keeps batch inserts cheap.
 */
export function newEventId(now = Date.now()): string {
  sequence = (sequence + 1) % 0x1000000;
  return `evt_${now.toString(16).padStart(12, '0')}${sequence.toString(16).padStart(6, '0')}${PROCESS_TAG}`;
}
