import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { createRedisClient, DEFAULT_COMMAND_TIMEOUT_MS, reconnectDelay, ThrottledWarning } from '../limits/redis.ts';
import type { Logger } from '../logging/logger.ts';
import type { ActorChange, ActorChangeBus } from './changes.ts';

/** The subscriber connection sends PING this often, so a silently dead socket is noticed and replaced. */
const SUBSCRIBER_PING_MS = 10_000;
/** A subscriber connection that returns nothing for this long after a PING is reconnected. */
const SUBSCRIBER_SOCKET_TIMEOUT_MS = 5000;
const CLOSE_TIMEOUT_MS = 1000;

export interface RedisChangeBusOptions {
  url: string;
  keyPrefix: string;
  /** Deadline of a publish, in ms. Default 50. */
  commandTimeoutMs?: number;
  logger: Logger;
}

/** Message on the channel: the change, and the id of the bus instance that sent it. */
interface ChangeMessage {
  source: string;
  change: ActorChange;
}

/**
 * `ActorChangeBus` over Redis pub/sub on the channel `<prefix>actor-changes`. Messages are JSON
 * `{"source": <bus instance id>, "change": <ActorChange>}`; a bus skips its own messages, because
 * the replica that publishes a change has already applied it.
 *
 * Publishing uses a connection with a command timeout and no offline queue, so it waits on a
 * dead Redis for `commandTimeoutMs` at most. Receiving uses a dedicated subscriber connection that reconnects with backoff and
 * subscribes again after every reconnect. A failed publish is logged, never thrown.
 *
 * NOTE: pub/sub keeps no history. A replica whose subscriber is disconnected misses the changes
 * published meanwhile, and its cached entries stay until they expire or the store poll drops them.
 */
export class RedisChangeBus implements ActorChangeBus {
  private readonly publisher: Redis;
  private readonly subscriber: Redis;
  private readonly channel: string;
  private readonly source = randomUUID();
  private readonly handlers: ((change: ActorChange) => void)[] = [];
  private readonly logger: Logger;
  private readonly publishWarning: ThrottledWarning;
  private readonly connectionWarning: ThrottledWarning;
  private readonly messageWarning: ThrottledWarning;
  private readonly pinger: NodeJS.Timeout;

  constructor(options: RedisChangeBusOptions) {
    this.channel = `${options.keyPrefix}actor-changes`;
    this.logger = options.logger;
    this.publishWarning = new ThrottledWarning(this.logger);
    this.connectionWarning = new ThrottledWarning(this.logger);
    this.messageWarning = new ThrottledWarning(this.logger);

    const commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.publisher = createRedisClient(options.url, { commandTimeoutMs, connectionName: 'llm-proxy-changes-publisher' });
    this.publisher.on('error', (error: Error) => this.connectionWarning.warn({ err: error, connection: 'publisher' }, 'actor change bus connection to Redis failed, reconnecting'));

    // The subscriber is off the request path, so its SUBSCRIBE may wait in the offline queue
    // until Redis is reachable instead of failing.
    this.subscriber = new Redis(options.url, {
      enableOfflineQueue: true,
      maxRetriesPerRequest: null,
      autoResubscribe: true,
      socketTimeout: SUBSCRIBER_SOCKET_TIMEOUT_MS,
      retryStrategy: reconnectDelay,
      connectionName: 'llm-proxy-changes-subscriber',
      maintNotifications: 'disabled',
    });
    this.subscriber.on('error', (error: Error) => this.connectionWarning.warn({ err: error, connection: 'subscriber' }, 'actor change bus connection to Redis failed, reconnecting'));
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel === this.channel) this.deliver(message);
    });
    this.subscriber.subscribe(this.channel).catch((error: unknown) => this.logger.error({ err: error, channel: this.channel }, 'failed to subscribe to the actor change channel'));

    this.pinger = setInterval(() => {
      // Only a connected client sends, so PINGs never pile up in the offline queue.
      if (this.subscriber.status === 'ready') this.subscriber.ping().catch(() => undefined);
    }, SUBSCRIBER_PING_MS);
    this.pinger.unref();
  }

  /** Sends the change to every other replica. Resolves even when Redis fails, after logging it. */
  async publish(change: ActorChange): Promise<void> {
    const message: ChangeMessage = { source: this.source, change };
    try {
      await this.publisher.publish(this.channel, JSON.stringify(message));
    } catch (error) {
      this.publishWarning.warn({ err: error, channel: this.channel, change }, 'failed to publish an actor change to Redis; other replicas keep their cached copy');
    }
  }

  subscribe(handler: (change: ActorChange) => void): void {
    this.handlers.push(handler);
  }

  async close(): Promise<void> {
    clearInterval(this.pinger);
    await Promise.all([quitOrDisconnect(this.publisher), quitOrDisconnect(this.subscriber)]);
  }

  private deliver(text: string): void {
    const message = parseMessage(text);
    if (message === undefined) {
      this.messageWarning.warn({ channel: this.channel, message: text.slice(0, 200) }, 'ignored an invalid message on the actor change channel');
      return;
    }
    if (message.source === this.source) return;
    for (const handler of this.handlers) {
      try {
        handler(message.change);
      } catch (error) {
        this.logger.error({ err: error, change: message.change }, 'actor change handler failed');
      }
    }
  }
}

/** Returns the message, or undefined when it is not JSON of the expected shape. */
function parseMessage(text: string): ChangeMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(value) || typeof value.source !== 'string' || !isObject(value.change)) return undefined;
  const { actorId, tokenId, syncedTokenHashes } = value.change;
  if (actorId !== undefined && typeof actorId !== 'string') return undefined;
  if (tokenId !== undefined && typeof tokenId !== 'string') return undefined;
  if (syncedTokenHashes !== undefined && !(Array.isArray(syncedTokenHashes) && syncedTokenHashes.every((hash) => typeof hash === 'string'))) return undefined;
  return { source: value.source, change: value.change as ActorChange };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

async function quitOrDisconnect(client: Redis): Promise<void> {
  // QUIT waits for a reply, which a dead Redis never sends, so after a deadline the connection is dropped.
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('QUIT timed out')), CLOSE_TIMEOUT_MS);
  });
  try {
    await Promise.race([client.quit(), timeout]);
  } catch {
    client.disconnect();
  } finally {
    clearTimeout(timer);
  }
}
