import { hash, randomBytes } from 'node:crypto';

/** Prefix of every token the gateway issues, so that leaked tokens are easy to recognise and scan for. */
export const TOKEN_PREFIX = 'llmp_';

/** Number of random bytes in a token. 32 bytes encode to 43 base64url characters without padding. */
const TOKEN_RANDOM_BYTES = 32;

/** Length of the hint that `tokenHint` returns: the prefix and the first 7 random characters. */
const TOKEN_HINT_LENGTH = 12;

const TOKEN_FORMAT = /^llmp_[A-Za-z0-9_-]{43}$/;

/** Generates a new secret token: `llmp_` followed by 32 random bytes in base64url. */
export function generateToken(): string {
  return TOKEN_PREFIX + randomBytes(TOKEN_RANDOM_BYTES).toString('base64url');
}

/** Returns the hex SHA-256 of the token, which is the only form in which tokens are stored. */
export function hashToken(token: string): string {
  // The one-shot crypto.hash (Node 20.12 and later) skips the Hash object; it runs on every request.
  return hash('sha256', token, 'hex');
}

/** Returns the first 12 characters of the token, safe to show in lists and logs. */
export function tokenHint(token: string): string {
  return token.slice(0, TOKEN_HINT_LENGTH);
}

/** Checks the format only: the prefix and 43 base64url characters. It does not check whether the token is stored, revoked or expired. */
export function looksLikeToken(value: string): boolean {
  return TOKEN_FORMAT.test(value);
}
