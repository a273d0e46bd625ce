/**
 * Option haggling, the fixed-newstyle handshake after the greeting. `Negotiator.handle()` takes
 * one option and returns the reply bytes plus what happens next: keep negotiating, close (after
 * ABORT, or when EXPORT_NAME cannot be served, which the protocol allows only as a hard
 * disconnect), or start transmission with a `Session`. No I/O here: connection.ts writes.
 *
 * Every unknown or unsupported option gets NBD_REP_ERR_UNSUP with its data consumed (the parser
 * already framed it); malformed data gets NBD_REP_ERR_INVALID; the client may then try again.
 *
 * TLS: under `--tls=require` every option before STARTTLS but ABORT is NBD_REP_ERR_TLS_REQD (and
 * EXPORT_NAME a close); an accepted STARTTLS is the outcome `starttls`, after which connection.ts
 * runs the TLS handshake and calls `tlsStarted()`. See README.md.
 */
import {
  ClientFlag,
  decodeOption,
  Info,
  NbdProtocolError,
  Option,
  type OptionMessage,
  type ParsedOption,
  Reply,
  serialize,
} from '../nbd-protocol/index.ts';
import type { ExportRegistry } from './exports.ts';
import { contextsOf, type ExportEntry, type MetaContextSource, transmissionFlags } from './exports.ts';
import { listContexts, selectContexts, wellFormedQuery } from './meta-contexts.ts';

/** Advertised in NBD_INFO_BLOCK_SIZE: any alignment, 4 KiB preferred, 32 MiB payloads. */
export const BLOCK_SIZES = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 } as const;

/** The server's TLS mode: off (STARTTLS refused), on (optional), require (nothing before it). */
export type TlsPolicy = 'off' | 'on' | 'require';

/** What transmission needs from the handshake. */
export interface Session {
  readonly entry: ExportEntry;
  readonly structured: boolean;
  readonly flags: number;
  /** Selected metadata contexts, by the id the client was given. */
  readonly contexts: ReadonlyMap<number, MetaContextSource>;
}

export type Outcome =
  | { next: 'continue' }
  /** STARTTLS accepted: write the ACK, then the TLS handshake; options continue over TLS. */
  | { next: 'starttls' }
  | { next: 'close'; reason: string }
  | { next: 'transmission'; session: Session };

export interface Step {
  replies: Buffer[];
  outcome: Outcome;
}

const CONTINUE: Outcome = { next: 'continue' };

export class Negotiator {
  private readonly registry: ExportRegistry;
  private readonly isShuttingDown: () => boolean;
  private readonly tls: TlsPolicy;
  private tlsActive = false;
  private noZeroes = false;
  private structured = false;
  /** The last SET_META_CONTEXT: for which export, and what it selected. */
  private selection: { exportName: string; contexts: MetaContextSource[] } | undefined;

  constructor(registry: ExportRegistry, isShuttingDown: () => boolean = () => false, tls: TlsPolicy = 'off') {
    this.registry = registry;
    this.isShuttingDown = isShuttingDown;
    this.tls = tls;
  }

  /**
   * The TLS handshake after a STARTTLS succeeded: what was negotiated in plaintext is forgotten
   * (the spec's MUST), and options continue over TLS.
   */
  tlsStarted(): void {
    this.tlsActive = true;
    this.structured = false;
    this.selection = undefined;
  }

  /** The client's flags; returns an error text if they must end the session. */
  clientFlags(flags: number): string | undefined {
    const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    if ((flags & ~known) !== 0) return `client flags 0x${flags.toString(16)} have unknown bits`;
    // Without fixed newstyle a client cannot STARTTLS (nor be told it must).
    if (this.tls === 'require' && (flags & ClientFlag.FIXED_NEWSTYLE) === 0) return 'TLS is required';
    this.noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;
    return undefined;
  }

  handle(msg: OptionMessage): Step {
    const code = msg.option;
    if (this.isShuttingDown() && code !== Option.ABORT) {
      if (code === Option.EXPORT_NAME) return close('server is shutting down');
      return one(serialize.optionError(code, Reply.ERR_SHUTDOWN, 'server is shutting down'));
    }
    if (this.tls === 'require' && !this.tlsActive && code !== Option.STARTTLS && code !== Option.ABORT) {
      // Nothing but the refusal in plaintext: no names, no list, not even a parse error.
      if (code === Option.EXPORT_NAME) return close('EXPORT_NAME before STARTTLS: TLS is required');
      return one(serialize.optionError(code, Reply.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS'));
    }
    let opt: ParsedOption;
    try {
      opt = decodeOption(code, msg.data);
    } catch (err) {
      if (!(err instanceof NbdProtocolError)) throw err;
      if (code === Option.EXPORT_NAME) return close(err.message);
      return one(serialize.optionError(code, Reply.ERR_INVALID, err.message));
    }
    switch (opt.option) {
      case 'EXPORT_NAME':
        return this.exportName(opt.name);
      case 'ABORT':
        return { replies: [serialize.ack(code)], outcome: { next: 'close', reason: 'client sent ABORT' } };
      case 'LIST':
        return {
          replies: [
            ...this.registry.list().map((e) => serialize.replyServer(code, e.name, e.description)),
            serialize.ack(code),
          ],
          outcome: CONTINUE,
        };
      case 'STARTTLS':
        if (this.tls === 'off') {
          return one(serialize.optionError(code, Reply.ERR_POLICY, 'TLS is not enabled on this server'));
        }
        if (this.tlsActive) return one(serialize.optionError(code, Reply.ERR_INVALID, 'TLS is already active'));
        return { replies: [serialize.ack(code)], outcome: { next: 'starttls' } };
      case 'STRUCTURED_REPLY':
        if (this.structured) {
          return one(serialize.optionError(code, Reply.ERR_INVALID, 'structured replies already negotiated'));
        }
        this.structured = true;
        return one(serialize.ack(code));
      case 'INFO':
      case 'GO':
        return this.infoGo(code, opt.name, opt.infos, opt.option === 'GO');
      case 'LIST_META_CONTEXT':
      case 'SET_META_CONTEXT':
        return this.metaContext(code, opt.name, opt.queries, opt.option === 'SET_META_CONTEXT');
      case 'EXTENDED_HEADERS':
      case 'UNKNOWN':
        return one(serialize.optionError(code, Reply.ERR_UNSUP, `option ${code} is not supported`));
    }
  }

  private exportName(name: string): Step {
    const entry = this.registry.get(name);
    if (entry === undefined) return close(`EXPORT_NAME: no export "${name}"`);
    const session = this.session(entry);
    return {
      replies: [serialize.exportNameReply(entry.device.size, session.flags, this.noZeroes)],
      outcome: { next: 'transmission', session },
    };
  }

  private infoGo(code: number, name: string, infos: number[], go: boolean): Step {
    const entry = this.registry.get(name);
    if (entry === undefined) return one(serialize.optionError(code, Reply.ERR_UNKNOWN, `no export "${name}"`));
    const flags = transmissionFlags(entry, this.structured);
    const replies = [serialize.infoExport(code, entry.device.size, flags)];
    if (infos.includes(Info.NAME)) replies.push(serialize.infoName(code, entry.name));
    if (infos.includes(Info.DESCRIPTION) && entry.description !== '') {
      replies.push(serialize.infoDescription(code, entry.description));
    }
    // Block sizes are sent whether asked or not: they are the defaults, so a client that did not
    // ask loses nothing, and one that did (libnbd, qemu) learns the 32 MiB payload limit.
    replies.push(serialize.infoBlockSize(code, BLOCK_SIZES));
    replies.push(serialize.ack(code));
    if (!go) return { replies, outcome: CONTINUE };
    return { replies, outcome: { next: 'transmission', session: this.session(entry) } };
  }

  private metaContext(code: number, name: string, queries: string[], set: boolean): Step {
    if (set) this.selection = undefined; // SET replaces the selection, even when it fails
    if (!this.structured) {
      return one(serialize.optionError(code, Reply.ERR_INVALID, 'negotiate structured replies first'));
    }
    const entry = this.registry.get(name);
    if (entry === undefined) return one(serialize.optionError(code, Reply.ERR_UNKNOWN, `no export "${name}"`));
    const bad = queries.find((q) => !wellFormedQuery(q));
    if (bad !== undefined) {
      return one(serialize.optionError(code, Reply.ERR_INVALID, `context query "${bad}" has no namespace`));
    }
    const available = contextsOf(entry);
    if (!set) {
      const found = listContexts(available, queries);
      return {
        replies: [...found.map((c) => serialize.metaContext(code, 0, c.name)), serialize.ack(code)],
        outcome: CONTINUE,
      };
    }
    const picked = selectContexts(available, queries);
    this.selection = { exportName: name, contexts: picked };
    const replies = picked.map((c, i) => serialize.metaContext(code, i + 1, c.name));
    return { replies: [...replies, serialize.ack(code)], outcome: CONTINUE };
  }

  private session(entry: ExportEntry): Session {
    const contexts = new Map<number, MetaContextSource>();
    const sel = this.selection;
    // Contexts count only if the last SET named this same export.
    if (this.structured && sel !== undefined && this.registry.get(sel.exportName) === entry) {
      for (const [i, c] of sel.contexts.entries()) contexts.set(i + 1, c);
    }
    return { entry, structured: this.structured, flags: transmissionFlags(entry, this.structured), contexts };
  }
}

const one = (reply: Buffer): Step => ({ replies: [reply], outcome: CONTINUE });
const close = (reason: string): Step => ({ replies: [], outcome: { next: 'close', reason } });
