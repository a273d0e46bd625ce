/**
 * Matching NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT queries against the contexts
 * an export offers. LIST: no query lists everything; a query ending in ':' (`base:`, `qemu:`,
 * `qemu:dirty-bitmap:`) is a prefix wildcard. SET: exact names only (qemu insists that the one
 * context it asked for comes back byte-identical, or nothing); wildcards select nothing.
 * Queries in unknown namespaces match nothing, and are not errors.
 */
import type { MetaContextSource } from './exports.ts';

export function listContexts(available: readonly MetaContextSource[], queries: readonly string[]) {
  if (queries.length === 0) return [...available];
  return available.filter((c) => queries.some((q) => matchesList(c.name, q)));
}

export function selectContexts(available: readonly MetaContextSource[], queries: readonly string[]) {
  const picked: MetaContextSource[] = [];
  for (const q of queries) {
    const c = available.find((a) => a.name === q);
    if (c !== undefined && !picked.includes(c)) picked.push(c);
  }
  return picked;
}

function matchesList(name: string, query: string): boolean {
  if (query.endsWith(':')) return name.startsWith(query);
  return name === query;
}

/** True when a query has the `namespace:leaf` shape at all. */
export const wellFormedQuery = (q: string): boolean => /^[^:\s]+:/.test(q);
