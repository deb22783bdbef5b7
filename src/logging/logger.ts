import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Paths that may carry credentials. pino replaces them before a line is written, so logging a
 * request's headers or a config object does not leak a key. Other fields are not covered, which
 * is why free-text strings are scrubbed as well (see the hook below).
 */
const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers.cookie',
  'headers.authorization',
  'headers["x-api-key"]',
  'headers.cookie',
  'upstreamHeaders.authorization',
  'upstreamHeaders["x-api-key"]',
  'token',
  'apiKey',
  'adminToken',
  '*.apiKey',
  'providers.*.apiKey',
];

/** Matches provider keys and gateway tokens anywhere inside a logged string. */
const SECRET_PATTERN = /\b(sk-[A-Za-z0-9_*-]{2,}|llmp_[A-Za-z0-9_-]{4,})/g;

export function redactSecrets(text: string): string {
  return text.replace(SECRET_PATTERN, (match) => `${match.slice(0, match.startsWith('llmp_') ? 5 : 3)}[REDACTED]`);
}

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'llm-proxy' },
      redact: { paths: REDACT_PATHS, censor: '[REDACTED]' },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
      hooks: {
        // Free-text fields (upstream error bodies, exception messages) can echo a key, so string
        // arguments are scrubbed as well.
        logMethod(args, method) {
          for (let i = 0; i < args.length; i++) {
            if (typeof args[i] === 'string') args[i] = redactSecrets(args[i] as string);
          }
          method.apply(this, args);
        },
      },
    },
    destination,
  );
}
