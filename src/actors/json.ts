import { formatDuration } from '../config/duration.ts';
import type { Actor, FeatureLimit } from './types.ts';

/** Renders an actor with intervals as Go durations, the form the admin API accepts back. */
export function actorToJson(actor: Actor) {
  const limits: Record<string, unknown> = {};
  for (const [feature, limit] of Object.entries(actor.limits)) {
    if (limit === undefined) continue;
    limits[feature] = limitToJson(limit);
  }
  return { id: actor.id, name: actor.name, enabled: actor.enabled, limits, createdAt: actor.createdAt, updatedAt: actor.updatedAt };
}

/** Renders one feature limit with every field it has, so that a GET can be sent back as a PATCH. */
export function limitToJson(limit: FeatureLimit): Record<string, unknown> {
  const { intervalSeconds, ...rest } = limit;
  return { ...rest, interval: formatDuration(intervalSeconds), intervalSeconds };
}
