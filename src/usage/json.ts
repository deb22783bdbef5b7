import type { UsageEvent } from './event.ts';

const SNAKE_CASE = new Map<string, string>();

function snake(key: string): string {
  let name = SNAKE_CASE.get(key);
  if (name === undefined) {
    name = key.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);
    SNAKE_CASE.set(key, name);
  }
  return name;
}

/** Renders a usage event with snake_case field names, as the admin API and `usage --json` show it. */
export function eventToJson(event: UsageEvent): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(event)) out[snake(key)] = value;
  return out;
}
