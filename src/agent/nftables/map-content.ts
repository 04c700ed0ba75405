// What one of our nftables maps holds, as we wrote it, kept up to date group by group.
// A map's elements come in groups (one per service port, the same array object while
// the port is unchanged), so a sync diffs groups by identity and touches only the
// elements of changed ports: at 10 000 Services a slot map holds some 100 000 elements,
// and comparing them all would cost more than the kernel's whole update.
import type { ElementGroup, NftElement } from './render.ts';

export interface ElementChanges {
  /** Keys to delete first (a key in both lists changes its value). */
  gone: string[];
  added: NftElement[];
}

export class MapContent {
  private readonly live = new Set<ElementGroup>();
  /** Key -> the group whose value the kernel holds. */
  private readonly owner = new Map<string, ElementGroup>();
  /** Keys that more live groups carry (the same external IP and port in two Services): who takes over. */
  private readonly shadowed = new Map<string, Set<ElementGroup>>();

  /** Elements the kernel should hold. */
  get size(): number {
    return this.owner.size;
  }

  /** True when `kernel` (key -> value, as the kernel lists them) is exactly this content. */
  matches(kernel: ReadonlyMap<string, string>): boolean {
    if (kernel.size !== this.owner.size) return false;
    for (const [key, group] of this.owner) {
      const value = kernel.get(key);
      if (value === undefined || group.find(([k]) => k === key)![1] !== value) return false;
    }
    return true;
  }

  /** Makes this content hold `groups`; returns the element changes that do the same in the kernel. */
  update(groups: readonly ElementGroup[]): ElementChanges {
    const current = new Set(groups);
    /** Key -> the value the kernel holds, for keys to delete. */
    const gone = new Map<string, string>();
    const added = new Map<string, string>();
    for (const g of this.live) {
      if (current.has(g)) continue;
      this.live.delete(g);
      for (const [k, v] of g) {
        const others = this.shadowed.get(k);
        others?.delete(g);
        if (this.owner.get(k) !== g) continue;
        if (!gone.has(k)) gone.set(k, v); // the first owner removed is the one the kernel holds
        added.delete(k);
        const heir = others?.values().next().value;
        if (heir) {
          others.delete(heir);
          this.owner.set(k, heir);
          added.set(k, heir.find(([key]) => key === k)![1]);
        } else {
          this.owner.delete(k);
        }
        if (others && !others.size) this.shadowed.delete(k);
      }
    }
    for (const g of groups) {
      if (this.live.has(g)) continue;
      this.live.add(g);
      for (const [k, v] of g) {
        if (!this.owner.has(k)) {
          this.owner.set(k, g);
          added.set(k, v);
          continue;
        }
        let others = this.shadowed.get(k);
        if (!others) this.shadowed.set(k, (others = new Set()));
        others.add(g);
      }
    }
    // A port rendered again often keeps most of its elements (its VIP's verdict): leave those be.
    for (const [k, v] of added) {
      if (gone.get(k) !== v) continue;
      gone.delete(k);
      added.delete(k);
    }
    return { gone: [...gone.keys()], added: [...added] };
  }
}
