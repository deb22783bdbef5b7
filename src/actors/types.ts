/** Features a caller can be granted access to, each with its own quota. */
export const FEATURES = ['chat_completions', 'code_completions', 'embeddings'] as const;
export type Feature = (typeof FEATURES)[number];

export function isFeature(value: string): value is Feature {
  return (FEATURES as readonly string[]).includes(value);
}

/** Per-feature quota: at most `limit` units per `intervalSeconds`, on the listed models. */
export interface FeatureLimit {
  limit: number;
  intervalSeconds: number;
  /** Model names, with or without a `provider/` prefix; `*` grants every model the provider allows. */
  allowedModels: string[];
  /** Maximum requests in flight at once for this feature; unlimited when absent. */
  concurrency?: number;
  /** Completion features: tokens (input plus output) per interval; unlimited when absent. */
  tokenLimit?: number;
  /** Completion features: input tokens per interval. */
  inputTokenLimit?: number;
  /** Completion features: output tokens per interval. */
  outputTokenLimit?: number;
}

export type FeatureLimits = Partial<Record<Feature, FeatureLimit>>;

export interface Actor {
  id: string;
  name: string;
  enabled: boolean;
  limits: FeatureLimits;
  createdAt: string;
  updatedAt: string;
}

/** A stored token. The secret itself is never stored, only its SHA-256 hash. */
export interface TokenRecord {
  id: string;
  actorId: string;
  /** First characters of the token, enough to recognise it in a list without revealing it. */
  hint: string;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
}

export interface NewActor {
  name: string;
  enabled?: boolean;
  limits?: FeatureLimits;
}

export interface ActorPatch {
  name?: string;
  enabled?: boolean;
  limits?: FeatureLimits;
}
