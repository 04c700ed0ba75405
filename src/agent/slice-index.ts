// EndpointSlices by the Service they belong to, kept up to date from informer events.
// The agent watches the slices labelled for it; a sync asks for each Service's slices
// instead of grouping them all again (a slice may also outlive its Service, or come first).
import { SERVICE_NAME_LABEL } from '../api/labels.ts';
import type { InformerEvent } from '../runtime/informer.ts';
import type { SliceInput } from './model.ts';

interface Entry {
  byName: Map<string, SliceInput>;
  /** The same slices as an array, until they change (the model cache compares them by identity). */
  list?: SliceInput[];
}

const serviceOf = (s: SliceInput): string | undefined => s.metadata.labels?.[SERVICE_NAME_LABEL];
const NONE: SliceInput[] = [];

export class SliceIndex {
  /** Namespace -> Service name -> its slices. */
  private readonly index = new Map<string, Map<string, Entry>>();

  /** An informer event: `old` is the slice this one replaces (its Service label may differ). */
  update(event: InformerEvent, slice: SliceInput, old?: SliceInput): void {
    if (old) this.remove(old);
    if (event === 'delete') this.remove(slice);
    else this.add(slice);
  }

  /** The slices of Service namespace/name, in a stable order; the same array while none changed. */
  slicesOf(namespace: string, name: string): SliceInput[] {
    const entry = this.index.get(namespace)?.get(name);
    if (!entry) return NONE;
    entry.list ??= [...entry.byName.values()];
    return entry.list;
  }

  private add(slice: SliceInput): void {
    const service = serviceOf(slice);
    if (!service) return;
    const namespace = slice.metadata.namespace ?? 'default';
    let services = this.index.get(namespace);
    if (!services) this.index.set(namespace, (services = new Map<string, Entry>()));
    let entry = services.get(service);
    if (!entry) services.set(service, (entry = { byName: new Map() }));
    entry.byName.set(slice.metadata.name, slice);
    entry.list = undefined;
  }

  private remove(slice: SliceInput): void {
    const service = serviceOf(slice);
    if (!service) return;
    const namespace = slice.metadata.namespace ?? 'default';
    const services = this.index.get(namespace);
    const entry = services?.get(service);
    if (!entry?.byName.delete(slice.metadata.name)) return;
    entry.list = undefined;
    if (entry.byName.size) return;
    services!.delete(service);
    if (!services!.size) this.index.delete(namespace);
  }
}
