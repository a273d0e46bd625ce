/**
 * The layout-independent damage test after a crash (SIGKILL once the writes were acknowledged):
 * every changed metadata byte (and a sample of the copied data) flipped in turn; see
 * damage-run.ts. Prints a table of outcomes.
 */
import { describe } from 'vitest';
import { damageTest } from './damage-run.ts';

describe('damage to the store after a copy-on-write write and a crash', () => {
  damageTest('crash', 'SIGKILL');
});
