/** Connection-level error codes of Node sockets and Postgres (SQLSTATE class 08, and 57P0x shutdowns). */
const UNAVAILABLE_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENOTFOUND',
  '08000',
  '08001',
  '08003',
  '08004',
  '08006',
  '57P01',
  '57P02',
  '57P03',
]);

/**
 * Tells a store that cannot be reached (respond 503, retry later) from a bug (respond 500). The pg
 * driver reports lost connections and its own timeouts only by message.
 */
export function isStoreUnavailable(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && UNAVAILABLE_CODES.has(code)) return true;
  const message = (error as { message?: unknown }).message;
  return typeof message === 'string' && /connection terminated|connection timeout|timeout exceeded|Connection refused|the database system is/i.test(message);
}
