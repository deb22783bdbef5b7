import { mkdir, open, readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { Logger } from '../logging/logger.ts';
import type { UsageStore } from '../storage/store.ts';
import type { UsageEvent, UsageQuery } from './event.ts';

/** Folder of the spool inside the data directory. */
export const USAGE_SPOOL_DIR_NAME = 'usage-spool';
/** Folder inside the spool for events that the store rejected as invalid. They are never retried. */
export const REJECTED_DIR_NAME = 'rejected';

const DEFAULT_DRAIN_INTERVAL_MS = 2000;
/** Repeated drain failures and drops are logged at most this often. */
const REPEAT_LOG_INTERVAL_MS = 30_000;

/**
 * Spool file names: creation time in ms, a per-process sequence number, the process id and the
 * number of events, such as `1733344444444-000000001-4242-500.jsonl`. Sorting the names sorts the
 * files by creation time. The event count in the name lets start-up count spooled events
 * without reading the files.
 */
const SPOOL_FILE_NAME = /^\d{13}-\d{9}-\d+-(\d+)\.jsonl$/;

export function usageSpoolDir(dataDir: string): string {
  return join(dataDir, USAGE_SPOOL_DIR_NAME);
}

export interface UsageSpoolOptions {
  /** Directory of the spool files, created when missing. Use one directory per process. */
  dir: string;
  /** Maximum total size of the spool files in bytes. Batches that do not fit are dropped. */
  maxBytes: number;
  logger: Logger;
  /** Time between attempts to move spooled events into the store, in milliseconds. Default 2000. */
  drainIntervalMs?: number;
  /** Returns true for errors that retrying cannot fix. Default: isInvalidDataError. */
  isPermanentError?: (error: unknown) => boolean;
}

/**
 * Returns true for errors that reject the data itself: Postgres SQLSTATE classes 22 (data
 * exception) and 23 (integrity constraint violation), and SQLite constraint errors. Connection
 * failures, timeouts and every other error count as transient.
 */
export function isInvalidDataError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return false;
  return /^2[23][0-9A-Z]{3}$/.test(code) || code.startsWith('SQLITE_CONSTRAINT');
}

interface SpoolFile {
  name: string;
  events: number;
  bytes: number;
}

function errorCode(error: unknown): unknown {
  return (error as { code?: unknown } | null)?.code;
}

/** Writes `content` to `path` through a temporary file, so a crash leaves the whole file or none. */
async function writeFileDurably(dir: string, name: string, content: string): Promise<void> {
  const temporary = join(dir, `${name}.tmp`);
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(content, 'utf8');
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, join(dir, name));
  // The rename is durable only once the directory entry is on disk. Windows cannot open a directory.
  if (process.platform !== 'win32') {
    const directory = await open(dir, 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
  }
}

function parseSpoolFile(content: string): UsageEvent[] {
  return content
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as UsageEvent);
}

/**
 * A UsageStore that keeps usage events on local disk while the inner store fails, so that the
 * recorder's memory does not fill during a database outage.
 *
 * insertEvents writes to the inner store. When that fails, the batch is written to a new spool
 * file (JSON lines, one event per line, fsync'd) and the call succeeds. While spool files exist,
 * new batches go straight to the spool without trying the store, so that no batch waits for a
 * connection timeout. A drain runs at start and every `drainIntervalMs` while files exist: it
 * inserts the files oldest first and deletes each only after its insert succeeded. A file can
 * therefore be inserted twice after a crash, which is harmless because the store skips event ids
 * it already has.
 *
 * Limits: when a batch would take the spool past `maxBytes`, that newest batch is dropped and
 * counted, and the error log reports how many events were dropped. The oldest events are kept
 * because they are already on disk and form a gap-free record from the start of the outage. When
 * writing the spool file itself fails, insertEvents rejects and the recorder keeps the batch in
 * memory. Events that the store rejects as invalid go to `rejected/` and are never retried.
 */
export class SpoolingUsageStore implements UsageStore {
  private readonly files: SpoolFile[];
  private spooledBytesTotal: number;
  private readonly rejectedDir: string;
  private readonly isPermanentError: (error: unknown) => boolean;
  private readonly timer: NodeJS.Timeout;
  private draining: Promise<void> | undefined;
  private readonly writes = new Set<Promise<unknown>>();
  private sequence = 0;
  private closed = false;

  private droppedTotal = 0;
  private droppedSinceLog = 0;
  private lastDropLogAt = 0;
  private drainFailures = 0;
  private lastDrainFailureLogAt = 0;

  /** Use openSpoolingUsageStore, which lists the files left by an earlier run. */
  constructor(
    private readonly inner: UsageStore,
    private readonly options: UsageSpoolOptions,
    existingFiles: SpoolFile[],
  ) {
    this.files = existingFiles;
    this.spooledBytesTotal = existingFiles.reduce((sum, file) => sum + file.bytes, 0);
    this.rejectedDir = join(options.dir, REJECTED_DIR_NAME);
    this.isPermanentError = options.isPermanentError ?? isInvalidDataError;
    this.timer = setInterval(() => void this.drain(), options.drainIntervalMs ?? DEFAULT_DRAIN_INTERVAL_MS);
    this.timer.unref();
  }

  /** Number of events in spool files, waiting to be inserted into the store. */
  spooledCount(): number {
    return this.files.reduce((sum, file) => sum + file.events, 0);
  }

  spooledBytes(): number {
    return this.spooledBytesTotal;
  }

  /** Number of events dropped because the spool was full, since this instance was opened. */
  droppedCount(): number {
    return this.droppedTotal;
  }

  /**
   * Stores the batch in the inner store or, when that fails, in a spool file. Rejects only when
   * the spool file cannot be written, or after close.
   */
  async insertEvents(events: UsageEvent[]): Promise<void> {
    if (this.closed) throw new Error('the usage spool is closed');
    if (events.length === 0) return;

    if (this.files.length === 0 && this.writes.size === 0) {
      try {
        await this.inner.insertEvents(events);
        return;
      } catch (error) {
        if (this.isPermanentError(error) && (await this.insertValidEvents(events, error))) return;
        this.options.logger.warn(
          { err: error, events: events.length, spoolDir: this.options.dir },
          'failed to write usage events to the store, spooling them to disk until it recovers',
        );
      }
    }
    await this.track(this.spool(events));
  }

  queryEvents(query: UsageQuery): Promise<UsageEvent[]> {
    return this.inner.queryEvents(query);
  }

  private async track<T>(work: Promise<T>): Promise<T> {
    this.writes.add(work);
    try {
      return await work;
    } finally {
      this.writes.delete(work);
    }
  }

  private async spool(events: UsageEvent[]): Promise<void> {
    const content = events.map((event) => JSON.stringify(event)).join('\n') + '\n';
    const bytes = Buffer.byteLength(content, 'utf8');
    if (this.spooledBytesTotal + bytes > this.options.maxBytes) {
      this.recordDrop(events.length);
      return;
    }

    // Reserved before the write, so that concurrent batches cannot overshoot maxBytes together.
    this.spooledBytesTotal += bytes;
    this.sequence += 1;
    const name = `${String(Date.now()).padStart(13, '0')}-${String(this.sequence).padStart(9, '0')}-${process.pid}-${events.length}.jsonl`;
    try {
      await writeFileDurably(this.options.dir, name, content);
    } catch (error) {
      this.spooledBytesTotal -= bytes;
      this.options.logger.error(
        { err: error, events: events.length, spoolDir: this.options.dir },
        'failed to write the usage spool file, the events stay in memory',
      );
      throw error;
    }
    this.files.push({ name, events: events.length, bytes });
  }

  private recordDrop(count: number): void {
    this.droppedTotal += count;
    this.droppedSinceLog += count;
    const now = Date.now();
    if (this.droppedSinceLog === count || now - this.lastDropLogAt >= REPEAT_LOG_INTERVAL_MS) {
      this.options.logger.error(
        {
          dropped: this.droppedSinceLog,
          droppedTotal: this.droppedTotal,
          spooledBytes: this.spooledBytesTotal,
          maxBytes: this.options.maxBytes,
          spoolDir: this.options.dir,
        },
        'usage spool is full, dropping the newest usage events. Raise usageSpoolMaxBytes or restore the database',
      );
      this.droppedSinceLog = 0;
      this.lastDropLogAt = now;
    }
  }

  /**
   * Inserts the events one at a time after the store rejected the batch as invalid, and writes
   * those it rejects again to `rejected/`. Returns false, having written nothing to `rejected/`,
   * when the store fails with a transient error on the way, so that the caller retries the
   * whole batch later.
   */
  private async insertValidEvents(events: UsageEvent[], batchError: unknown): Promise<boolean> {
    const rejected: UsageEvent[] = [];
    let firstError = batchError;
    for (const event of events) {
      try {
        await this.inner.insertEvents([event]);
      } catch (error) {
        if (!this.isPermanentError(error)) return false;
        if (rejected.length === 0) firstError = error;
        rejected.push(event);
      }
    }
    if (rejected.length === 0) return true;

    await mkdir(this.rejectedDir, { recursive: true });
    this.sequence += 1;
    const name = `${String(Date.now()).padStart(13, '0')}-${String(this.sequence).padStart(9, '0')}-${process.pid}-${rejected.length}.jsonl`;
    const content = rejected.map((event) => JSON.stringify(event)).join('\n') + '\n';
    // NOTE: rejected files do not count against maxBytes. They only fill up if the store rejects
    // a large share of events as invalid, which the error log below reports for every file.
    await writeFileDurably(this.rejectedDir, name, content);
    this.options.logger.error(
      { err: firstError, rejected: rejected.length, inserted: events.length - rejected.length, file: join(this.rejectedDir, name) },
      'the store rejected usage events as invalid. They were saved to the rejected folder and will not be retried',
    );
    return true;
  }

  /** Moves spooled files into the store, oldest first. Concurrent calls share one pass. */
  drain(): Promise<void> {
    if (this.draining !== undefined) return this.draining;
    if (this.files.length === 0 || this.closed) return Promise.resolve();
    // A failure to read, move or delete a file ends this pass like a store failure does.
    this.draining = this.drainFiles()
      .catch((error: unknown) => this.recordDrainFailure(error))
      .finally(() => {
        this.draining = undefined;
      });
    return this.draining;
  }

  private async drainFiles(): Promise<void> {
    let drained = 0;
    while (this.files.length > 0 && !this.closed) {
      const file = this.files[0];
      const path = join(this.options.dir, file.name);
      const events = await this.readFileOrQuarantine(path);
      if (events !== undefined) {
        try {
          await this.inner.insertEvents(events);
        } catch (error) {
          if (!this.isPermanentError(error) || !(await this.insertValidEvents(events, error))) {
            this.recordDrainFailure(error);
            break;
          }
        }
        await unlink(path).catch((error: unknown) => {
          // Another process sharing the directory may have drained the same file.
          if (errorCode(error) !== 'ENOENT') throw error;
        });
      }
      // Only this loop removes files, and spool() only appends, so files[0] is still `file`.
      this.files.shift();
      this.spooledBytesTotal -= file.bytes;
      drained += file.events;
    }

    if (this.files.length === 0) this.drainFailures = 0;
    if (drained > 0) {
      this.options.logger.info({ drained, remaining: this.spooledCount() }, 'moved spooled usage events into the store');
    }
  }

  /**
   * Returns the events of a spool file, or undefined when the file is gone or cannot be parsed.
   * An unparsable file is moved to `rejected/`, because retrying cannot repair it.
   */
  private async readFileOrQuarantine(path: string): Promise<UsageEvent[] | undefined> {
    let content: string;
    try {
      content = await readFile(path, 'utf8');
    } catch (error) {
      if (errorCode(error) === 'ENOENT') return undefined;
      throw error;
    }
    try {
      return parseSpoolFile(content);
    } catch (error) {
      await mkdir(this.rejectedDir, { recursive: true });
      const target = join(this.rejectedDir, `${basename(path)}.unparsable`);
      await rename(path, target);
      this.options.logger.error({ err: error, file: target }, 'a usage spool file is not valid JSON lines, moved it to the rejected folder');
      return undefined;
    }
  }

  private recordDrainFailure(error: unknown): void {
    this.drainFailures += 1;
    const now = Date.now();
    if (this.drainFailures === 1 || now - this.lastDrainFailureLogAt >= REPEAT_LOG_INTERVAL_MS) {
      this.options.logger.warn(
        { err: error, attempts: this.drainFailures, spooled: this.spooledCount(), spooledBytes: this.spooledBytesTotal },
        'failed to move spooled usage events into the store, will retry',
      );
      this.lastDrainFailureLogAt = now;
    }
  }

  /**
   * Stops the drain and waits for the running pass and spool writes to finish. Spool files stay
   * on disk for the next start. Calling it again does nothing.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await Promise.allSettled([this.draining, ...this.writes]);
    if (this.files.length > 0) {
      this.options.logger.warn(
        { spooled: this.spooledCount(), spoolDir: this.options.dir },
        'usage events remain in the spool and will be written after the next start',
      );
    }
  }
}

/**
 * Opens the spool in `options.dir`, creating the directory when missing, and starts draining
 * files left by an earlier run without waiting for them. Deletes `.tmp` files, which are writes
 * that a crash interrupted before insertEvents returned, so the recorder never gave them up.
 */
export async function openSpoolingUsageStore(inner: UsageStore, options: UsageSpoolOptions): Promise<SpoolingUsageStore> {
  await mkdir(options.dir, { recursive: true });
  const files: SpoolFile[] = [];
  for (const name of (await readdir(options.dir)).sort()) {
    const path = join(options.dir, name);
    if (name.endsWith('.tmp')) {
      await unlink(path);
      continue;
    }
    const match = SPOOL_FILE_NAME.exec(name);
    if (match === null) continue;
    files.push({ name, events: Number(match[1]), bytes: (await stat(path)).size });
  }

  const store = new SpoolingUsageStore(inner, options, files);
  if (files.length > 0) {
    options.logger.info(
      { spooled: store.spooledCount(), files: files.length, spoolDir: options.dir },
      'found usage events spooled by an earlier run, moving them into the store',
    );
    void store.drain();
  }
  return store;
}
