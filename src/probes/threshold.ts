// Readiness from a stream of probe results, with kubelet's threshold rules: a ready
// target goes not-ready after failureThreshold consecutive failures, a not-ready one
// comes back after successThreshold consecutive successes. Pure.

export interface TargetHealth {
  healthy: boolean;
  /** False until the first probe result (health then comes from what was published). */
  probed: boolean;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  lastProbeTime?: string;
  lastTransitionTime?: string;
  lastError?: string;
}

export interface Thresholds {
  successThreshold: number;
  failureThreshold: number;
}

export function initialHealth(publishedHealthy: boolean | undefined): TargetHealth {
  return { healthy: publishedHealthy ?? false, probed: false, consecutiveSuccesses: 0, consecutiveFailures: 0 };
}

/** The next state and whether readiness flipped (or the first result arrived). */
export function recordResult(state: TargetHealth, ok: boolean, error: string | undefined, t: Thresholds, now: string): { state: TargetHealth; changed: boolean } {
  const next: TargetHealth = {
    ...state,
    probed: true,
    lastProbeTime: now,
    consecutiveSuccesses: ok ? state.consecutiveSuccesses + 1 : 0,
    consecutiveFailures: ok ? 0 : state.consecutiveFailures + 1,
    ...(ok ? {} : { lastError: error }),
  };
  if (ok && !state.healthy && next.consecutiveSuccesses >= t.successThreshold) next.healthy = true;
  if (!ok && state.healthy && next.consecutiveFailures >= t.failureThreshold) next.healthy = false;
  const flipped = next.healthy !== state.healthy;
  if (flipped) next.lastTransitionTime = now;
  if (ok && flipped) delete next.lastError;
  return { state: next, changed: flipped || !state.probed };
}
