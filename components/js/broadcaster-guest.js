// Write Broadcaster publisher backends in JavaScript: the JS face of `broadcaster-guest`.
//
// A backend is a WebAssembly component built with componentize-js from an ES module that
// subclasses `Publisher` and exports the glue as `backend` (the WIT interface's name):
//
//     import * as bg from './broadcaster-guest.js';
//
// It implements `broadcaster:backend@0.2.0`: the host hands `publishBatch` a whole batch (by
// default it calls `publish` for each event; override it to send the batch at once, e.g.
// with `bg.redis.xaddBatch`).
//
//     class Mirror extends bg.Publisher {
//       init(options) { this.stream = options.string('stream_name', { default: 'events' }); }
//       publish(event) { bg.redis.xadd(this.stream, bg.streamFields(event), 10000); }
//       healthCheck() { return bg.redis.pingOk(); }
//     }
//
//     export const backend = bg.exportBackend(Mirror);
//
// This one file is the whole helper: copy it next to your module (componentize-js loads
// relative imports at build time but does not resolve npm package names).
//
// Everything the module does at top level runs while the component is BUILT (it is
// snapshotted), so call capabilities (`redis`, `log`) only from the methods.
//
// The values the host passes follow componentize-js's mapping of the WIT types: records are
// objects with camelCase fields (`event.event.datacontenttype`, `event.publisherConfig`),
// an absent option is `undefined`, `data` is `{ tag: 'json' | 'text' | 'binary', val }`,
// tuples are two-element arrays, u64 is a BigInt.

import { log as witLog } from 'broadcaster:backend/log@0.2.0';
import { ping as witPing, xadd as witXadd, xaddBatch as witXaddBatch } from 'broadcaster:backend/redis-stream@0.2.0';

// ---------------------------------------------------------------------------------------
// Errors

/** Base of `Transient` and `Permanent`; `message` is shown to the operator. */
export class PublishError extends Error {
  get transient() {
    return true;
  }
}

/** Worth trying again later: the relay retries the event with backoff. */
export class Transient extends PublishError {
  constructor(message, cause) {
    super(message);
    this.name = 'Transient';
    this.cause = cause;
  }
}

/** Trying again cannot help: the relay marks the event failed at once. */
export class Permanent extends PublishError {
  constructor(message, cause) {
    super(message);
    this.name = 'Permanent';
    this.cause = cause;
  }

  get transient() {
    return false;
  }
}

/** A bad option; `message` is "option `<name>`: <what is wrong>". */
export class OptionError extends Error {
  constructor(option, message) {
    super(`option \`${option}\`: ${message}`);
    this.name = 'OptionError';
    this.option = option;
  }
}

// ---------------------------------------------------------------------------------------
// Python's json.dumps, by hand: JSON.stringify escapes neither non-ASCII nor DEL and uses no
// spaces, and the seed's entries are rendered by json.dumps (", " and ": " separators,
// ensure_ascii=True).

const HEX = '0123456789abcdef';
const SHORT_ESCAPES = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', '\b': '\\b', '\f': '\\f' };

/**
 * `s` as a JSON string literal, exactly as Python's `json.dumps(s)` writes it: printable
 * ASCII (space to `~`) as is, `\" \\ \n \r \t \b \f` short, everything else (controls, DEL,
 * non-ASCII) as lowercase `\uXXXX` per UTF-16 unit, so astral characters become surrogate
 * pairs. JS strings are UTF-16 already, so each unit maps straight to its escape.
 */
export function pyJsonString(s) {
  let out = '"';
  let run = 0; // start of the current run of characters copied as they are
  for (let i = 0; i < s.length; i++) {
    const unit = s.charCodeAt(i);
    if (unit >= 0x20 && unit <= 0x7e && unit !== 0x22 && unit !== 0x5c) continue;
    out += s.slice(run, i);
    const ch = s[i];
    out += SHORT_ESCAPES[ch] ??
      '\\u' + HEX[(unit >> 12) & 15] + HEX[(unit >> 8) & 15] + HEX[(unit >> 4) & 15] + HEX[unit & 15];
    run = i + 1;
  }
  return out + s.slice(run) + '"';
}

/**
 * A float as Python's `repr(float)` renders it: the shortest round-tripping digits,
 * positional for decimal exponents -4..15 (`0.0001`, `2.5`), scientific otherwise
 * (`1e-05`, `1e+16`).
 */
export function pyFloatRepr(n) {
  if (Number.isNaN(n)) return 'NaN';
  if (!Number.isFinite(n)) return n > 0 ? 'Infinity' : '-Infinity';
  if (n === 0) return Object.is(n, -0) ? '-0.0' : '0.0';
  // toExponential() without an argument gives the shortest round-tripping digits.
  const [mantissa, expText] = Math.abs(n).toExponential().split('e');
  const exp = Number(expText);
  const digits = mantissa.replace('.', '');
  const sign = n < 0 ? '-' : '';
  const point = exp + 1; // position of the decimal point in `digits`
  if (!(point > -4 && point <= 16)) {
    const rest = digits.length > 1 ? '.' + digits.slice(1) : '';
    const e = String(Math.abs(exp)).padStart(2, '0');
    return `${sign}${digits[0]}${rest}e${exp < 0 ? '-' : '+'}${e}`;
  }
  if (point <= 0) return `${sign}0.${'0'.repeat(-point)}${digits}`;
  if (point < digits.length) return `${sign}${digits.slice(0, point)}.${digits.slice(point)}`;
  return `${sign}${digits}${'0'.repeat(point - digits.length)}.0`;
}

/**
 * `value` rendered as Python's `json.dumps(value)` would render the same data.
 *
 * JavaScript cannot tell `1` from `1.0` and orders integer-like object keys first, so this is
 * exact only for values you build: integral numbers (and BigInts) render as integers, other
 * numbers as Python floats; a `Map` keeps its insertion order. To pass the event's data on
 * unchanged, splice its JSON text (`toCloudEvent` does) instead of re-rendering it.
 */
export function pyJsonDumps(value) {
  if (value === null || value === undefined) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return value.toString();
    case 'number':
      return Number.isInteger(value) ? BigInt(value).toString() : pyFloatRepr(value);
    case 'string':
      return pyJsonString(value);
    default:
      break;
  }
  if (Array.isArray(value)) return '[' + value.map(pyJsonDumps).join(', ') + ']';
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
  return '{' + entries.map(([k, v]) => `${pyJsonString(String(k))}: ${pyJsonDumps(v)}`).join(', ') + '}';
}

// ---------------------------------------------------------------------------------------
// The seed's rendering of an event

/** The five fields every entry starts with; a `publisherConfig` key may not reuse one. */
export const RESERVED_FIELDS = Object.freeze(['event_id', 'event_type', 'source', 'timestamp', 'cloud_event']);

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** Standard base64 with padding (RFC 4648 §4), as `data_base64` requires. */
export function base64(bytes) {
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const left = bytes.length - i;
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
    out += left > 1 ? B64[(n >> 6) & 63] : '=';
    out += left > 2 ? B64[n & 63] : '=';
  }
  return out;
}

const cloudEventOf = (event) => (event && event.event && 'publisherConfig' in event ? event.event : event);
const isSet = (value) => value !== undefined && value !== null;

/**
 * The seed's `json.dumps(event.to_cloud_event())`, byte for byte, from an outbox event (or
 * its `event`): `specversion`, `type`, `source`, `id`, `time`, then `subject`,
 * `datacontenttype`, `dataschema` when present, the extension attributes (strings), then
 * `data` (JSON text spliced as it is, text as a JSON string) or `data_base64` (binary).
 */
export function toCloudEvent(event) {
  const ce = cloudEventOf(event);
  const members = [];
  const member = (name, jsonText) => members.push(`${pyJsonString(name)}: ${jsonText}`);
  for (const name of ['specversion', 'type', 'source', 'id', 'time', 'subject', 'datacontenttype', 'dataschema']) {
    if (isSet(ce[name])) member(name, pyJsonString(ce[name]));
  }
  for (const [name, value] of ce.extensions ?? []) member(name, pyJsonString(value));
  const data = ce.data;
  if (isSet(data)) {
    if (data.tag === 'json') member('data', data.val); // already rendered as json.dumps renders it
    else if (data.tag === 'text') member('data', pyJsonString(data.val));
    else if (data.tag === 'binary') member('data_base64', pyJsonString(base64(data.val)));
    else throw new TypeError(`unknown event-data case ${JSON.stringify(data.tag)}`);
  }
  return '{' + members.join(', ') + '}';
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/**
 * The stream field value for one `publisherConfig` value given as JSON text: a JSON string
 * is unquoted, anything else is kept as its JSON text.
 */
export function extraValue(jsonText) {
  if (jsonText.startsWith('"')) {
    try {
      const value = JSON.parse(jsonText);
      // A lone surrogate (`"\ud800"`) has no UTF-8 form: keep the text, as the Rust SDK does.
      if (typeof value === 'string' && !LONE_SURROGATE.test(value)) return value;
    } catch {
      // not a JSON string after all: kept as it is
    }
  }
  return jsonText;
}

/**
 * The seed's stream entry fields, as `[name, value]` pairs: `event_id`, `event_type`,
 * `source`, `timestamp`, `cloud_event`, then one per `publisherConfig` key (strings as they
 * are, other values as JSON text), then one per extension attribute (`traceparent`, …), as
 * the native backend writes them. Throws `Permanent` when a `publisherConfig` key collides
 * with one of the five, or an extension attribute with one of the five or a `publisherConfig`
 * key (the seed let it overwrite the field; Broadcaster refuses the event).
 */
export function streamFields(event) {
  const config = event.publisherConfig ?? [];
  for (const [key] of config) {
    if (RESERVED_FIELDS.includes(key)) {
      throw new Permanent(
        `publisher_config key ${JSON.stringify(key)} collides with the stream field of the same name ` +
          `(reserved: ${RESERVED_FIELDS.join(', ')})`,
      );
    }
  }
  const ce = event.event;
  const extensions = ce.extensions ?? [];
  for (const [name] of extensions) {
    if (RESERVED_FIELDS.includes(name) || config.some(([key]) => key === name)) {
      throw new Permanent(
        `extension attribute ${JSON.stringify(name)} collides with the stream field of the same name ` +
          `(reserved: ${RESERVED_FIELDS.join(', ')}, and the event's publisher_config keys)`,
      );
    }
  }
  return [
    ['event_id', ce.id],
    ['event_type', ce.type],
    ['source', ce.source],
    ['timestamp', ce.time ?? ''],
    ['cloud_event', toCloudEvent(ce)],
    ...config.map(([key, text]) => [key, extraValue(text)]),
    ...extensions.map(([name, value]) => [name, value]),
  ];
}

/** The event's data parsed with `JSON.parse`; `undefined` when it has none or is not JSON. */
export function dataJson(event) {
  const data = cloudEventOf(event).data;
  return data && data.tag === 'json' ? JSON.parse(data.val) : undefined;
}

/**
 * A copy of the outbox event with these extension attributes set (an object or `[name,
 * value]` pairs): one the event already has gets the new value in its place, a new one is
 * appended (rendered after the event's own, before `data`).
 */
export function setExtensions(event, extensions) {
  const merged = (event.event.extensions ?? []).map(([k, v]) => [k, v]);
  const pairs = Array.isArray(extensions) ? extensions : Object.entries(extensions);
  for (const [name, value] of pairs) {
    const existing = merged.find(([k]) => k === String(name));
    if (existing) existing[1] = String(value);
    else merged.push([String(name), String(value)]);
  }
  return { ...event, event: { ...event.event, extensions: merged } };
}

// ---------------------------------------------------------------------------------------
// Capabilities

/** A sentence for people from a WIT `redis-stream` error (`{ tag, val }`). */
function describeRedisError(err) {
  switch (err.tag) {
    case 'not-granted':
      return 'this publisher has no `redis` grant';
    case 'stream-denied':
      return `stream ${JSON.stringify(err.val)} is outside the streams granted to this publisher`;
    case 'unavailable':
      return `Redis is unavailable: ${err.val}`;
    case 'rejected':
      return `Redis rejected the entry: ${err.val}`;
    default:
      return `Redis error: ${JSON.stringify(err)}`;
  }
}

/** Transient (Redis unavailable) or Permanent (anything else) for a WIT error. */
function redisFailure(err) {
  const Kind = err.tag === 'unavailable' ? Transient : Permanent;
  return new Kind(describeRedisError(err), err);
}

// componentize-js throws an import's `err` as an Error-like object whose `payload` is the
// WIT error value; map it to Transient (Redis unavailable) or Permanent (anything else).
function redisCall(fn) {
  try {
    return fn();
  } catch (e) {
    const err = e && e.payload;
    if (err && typeof err.tag === 'string') throw redisFailure(err);
    throw e;
  }
}

/** The most entries `redis.xaddBatch` passes in one host call (the host's default `limits.xadd_batch_entries`). */
export const BATCH_ENTRIES = 1000;
/** The most bytes `redis.xaddBatch` passes in one host call (the host's default `limits.xadd_batch_bytes`). */
export const BATCH_BYTES = 16 * 1024 * 1024;

const utf8Length = (s) => new TextEncoder().encode(s).length;

/**
 * Redis Streams through the publisher's `redis` grant. Failures throw `Transient` when Redis
 * is unavailable and `Permanent` otherwise (no grant, stream outside the grant, a command
 * Redis rejected); `error.cause` is the WIT error (`{ tag, val }`).
 */
export const redis = Object.freeze({
  /** `XADD <stream> [MAXLEN ~ <maxLen>] * <fields…>`; returns the new entry's id. */
  xadd(stream, fields, maxLen) {
    const pairs = fields.map(([k, v]) => [String(k), String(v)]);
    const limit = maxLen === undefined || maxLen === null ? undefined : BigInt(maxLen);
    return redisCall(() => witXadd(String(stream), pairs, limit));
  },
  /**
   * Appends `[stream, fields, maxLen]` entries in as few round trips as the host allows: one
   * `xadd-batch` (a pipeline of `XADD`s) per `BATCH_ENTRIES` entries or `BATCH_BYTES` bytes.
   * Returns one item per entry, in order: its id, or the `Transient`/`Permanent` error
   * (returned, not thrown) that kept it out (a stream outside the grant fails only its entry;
   * Redis unavailable fails every entry of the round trip). When the host refuses a round
   * trip as too large (its limits set lower than these), its entries are appended one `xadd`
   * at a time instead.
   *
   * Known problem: built with componentize-js 0.23, every call leaks guest memory (measured: the
   * shipped redis-stream backend calling it once per batch of 100 met its 64 MiB limit after
   * about 10,000 events, then trapped on every few batches). Until that is understood, call
   * `xadd` per entry in a long-running backend; the shipped one does.
   */
  xaddBatch(entries) {
    const pending = entries.map(([stream, fields, maxLen]) => ({
      stream: String(stream),
      fields: fields.map(([k, v]) => [String(k), String(v)]),
      maxLen: maxLen === undefined || maxLen === null ? undefined : BigInt(maxLen),
    }));
    const results = [];
    let start = 0;
    while (start < pending.length) {
      let end = start;
      let size = 0;
      while (end < pending.length && end - start < BATCH_ENTRIES) {
        const e = pending[end];
        const entrySize = utf8Length(e.stream) + e.fields.reduce((n, [k, v]) => n + utf8Length(k) + utf8Length(v), 0);
        if (end > start && size + entrySize > BATCH_BYTES) break;
        end += 1;
        size += entrySize;
      }
      const chunk = pending.slice(start, end);
      try {
        for (const reply of witXaddBatch(chunk)) results.push(reply.tag === 'ok' ? reply.val : redisFailure(reply.val));
      } catch (e) {
        const err = e && e.payload;
        if (!err || typeof err.tag !== 'string') throw e;
        if (err.tag === 'rejected' && chunk.length > 1) {
          for (const one of chunk) {
            try {
              results.push(witXadd(one.stream, one.fields, one.maxLen));
            } catch (e1) {
              if (!(e1 && e1.payload && typeof e1.payload.tag === 'string')) throw e1;
              results.push(redisFailure(e1.payload));
            }
          }
        } else {
          for (let i = 0; i < chunk.length; i += 1) results.push(redisFailure(err));
        }
      }
      start = end;
    }
    return results;
  },
  /** `PING` the granted Redis; throws like `xadd`. */
  ping() {
    redisCall(() => witPing());
  },
  /** Whether the granted Redis answers `PING`: a ready-made `healthCheck`. */
  pingOk() {
    try {
      witPing();
      return true;
    } catch {
      return false;
    }
  },
  describe: describeRedisError,
});

const logAt = (level) => (message) => witLog(level, String(message));

/**
 * Broadcaster's log, tagged with the publisher's name by the host. (`console.log` works too:
 * stdout goes to the log at `info`, stderr at `warn`.)
 */
export const log = Object.freeze({
  trace: logAt('trace'),
  debug: logAt('debug'),
  info: logAt('info'),
  warn: logAt('warn'),
  error: logAt('error'),
});

// ---------------------------------------------------------------------------------------
// Options

// A value for an error message, as JSON where it has a JSON form.
function show(value) {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}
const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

/**
 * Typed, validated access to `[publishers.<name>.options]` (the JSON object the host
 * passes to `init`). Each reader takes `{ default }`; without one the option is required.
 * The names read are remembered so that, after `init`, any other option is refused (a
 * misspelt `stream_nmae` is an error); call `allowUnknown()` to accept them.
 */
export class Options {
  #known = [];
  #allowUnknown = false;

  constructor(raw) {
    /** The parsed JSON object. */
    this.raw = raw;
  }

  /** The raw JSON value (`fallback` when absent or `null`), unchecked. */
  get(name, fallback = undefined) {
    if (!this.#known.includes(name)) this.#known.push(name);
    const value = Object.hasOwn(this.raw, name) ? this.raw[name] : null;
    return value === null ? fallback : value;
  }

  // [present, value]: throws when absent and required.
  #value(name, opts, expected) {
    const value = this.get(name, null);
    if (value === null) {
      if (!('default' in opts)) throw new OptionError(name, `required (${expected})`);
      return [false, opts.default];
    }
    return [true, value];
  }

  /** A string; empty strings are refused unless `allowEmpty`. */
  string(name, opts = {}) {
    const expected = opts.allowEmpty ? 'a string' : 'a non-empty string';
    const [present, value] = this.#value(name, opts, expected);
    if (present && (typeof value !== 'string' || (!value && !opts.allowEmpty))) {
      throw new OptionError(name, `expected ${expected}, got ${show(value)}`);
    }
    return value;
  }

  /** An integer (a JSON number without a fraction), by default 0 ≤ n ≤ 2⁵³ − 1. */
  integer(name, opts = {}) {
    const { min = 0, max = Number.MAX_SAFE_INTEGER } = opts;
    const expected = `an integer >= ${min} and <= ${max}`;
    const [present, value] = this.#value(name, opts, expected);
    if (present && !(Number.isInteger(value) && value >= min && value <= max)) {
      throw new OptionError(name, `expected ${expected}, got ${show(value)}`);
    }
    return value;
  }

  /** A boolean. */
  boolean(name, opts = {}) {
    const [present, value] = this.#value(name, opts, 'true or false');
    if (present && typeof value !== 'boolean') throw new OptionError(name, `expected true or false, got ${show(value)}`);
    return value;
  }

  /** A string that must be one of `choices`. */
  choice(name, choices, opts = {}) {
    const expected = 'one of ' + choices.map(show).join(', ');
    const [present, value] = this.#value(name, opts, expected);
    if (present && !choices.includes(value)) throw new OptionError(name, `expected ${expected}, got ${show(value)}`);
    return value;
  }

  /** An array of strings; a bad item is reported as option `name[i]`. */
  stringList(name, opts = {}) {
    const [present, value] = this.#value(name, opts, 'a list of strings');
    if (!present) return value;
    if (!Array.isArray(value)) throw new OptionError(name, `expected a list of strings, got ${show(value)}`);
    value.forEach((item, i) => {
      if (typeof item !== 'string' || (!item && !opts.allowEmptyItems)) {
        throw new OptionError(`${name}[${i}]`, `expected a ${opts.allowEmptyItems ? '' : 'non-empty '}string, got ${show(item)}`);
      }
    });
    return [...value];
  }

  /** A table of string → string (a JSON object); a bad value is reported as `name.key`. */
  stringMap(name, opts = {}) {
    const [present, value] = this.#value(name, opts, 'a table of strings');
    if (!present) return value;
    if (!isObject(value)) throw new OptionError(name, `expected a table of strings, got ${show(value)}`);
    for (const [key, item] of Object.entries(value)) {
      if (typeof item !== 'string' || (!item && !opts.allowEmptyValues)) {
        throw new OptionError(`${name}.${key}`, `expected a ${opts.allowEmptyValues ? '' : 'non-empty '}string, got ${show(item)}`);
      }
    }
    return { ...value };
  }

  /** Fails when any of `names` is set: "option `<name>`: <reason>". */
  refuse(names, reason) {
    for (const name of names) if (Object.hasOwn(this.raw, name)) throw new OptionError(name, reason);
  }

  /** An `OptionError` for a check of your own: `throw options.error(name, message)`. */
  error(name, message) {
    return new OptionError(name, message);
  }

  /** Accept options that were not read (call it when you read `raw` yourself). */
  allowUnknown() {
    this.#allowUnknown = true;
  }

  /** Fails on the first option that was never read; the glue calls it after `init`. */
  checkUnknown() {
    if (this.#allowUnknown) return;
    for (const name of Object.keys(this.raw)) {
      if (!this.#known.includes(name)) {
        throw new OptionError(name, `unknown option (known options: ${this.#known.join(', ') || 'none'})`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// The base class and the glue to the WIT exports

/**
 * Extend this and override `init(options)`, `publish(event)` and (optionally)
 * `publishBatch(events)` and `healthCheck()`. Keep no state you cannot rebuild from the options: after a trap the host
 * throws the instance away and calls `init` again on a fresh one.
 */
export class Publisher {
  /** Reads and validates the options (`throw options.error(...)`). */
  init(_options) {}

  /** Publishes one event; throw `Transient` or `Permanent` to fail it. */
  publish(_event) {
    throw new Error('publish is not implemented');
  }

  /**
   * Publishes a batch (never empty), in order: returns one item per event, `null` when it was
   * published or the `Transient`/`Permanent` error (returned, not thrown) that failed it. A
   * shorter array means the events past its end were not attempted (they wait, with no retry
   * spent); stop at the first transient error, as the host treats every event after it as
   * not attempted anyway. The default calls `publish` for each event and stops after the
   * first transient error.
   */
  publishBatch(events) {
    const results = [];
    for (const event of events) {
      try {
        if (isThenable(this.publish(event))) throw new Error(`publish ${ASYNC}`);
        results.push(null);
      } catch (e) {
        if (!(e instanceof PublishError)) throw e;
        results.push(e);
        if (e.transient) break;
      }
    }
    return results;
  }

  /** Whether the backend can publish now; called on an interval. Defaults to `true`. */
  healthCheck() {
    return true;
  }
}

/** `results` cut after the first transient error: what a batch that attempted every event at once should return. */
export function untilTransient(results) {
  const first = results.findIndex((r) => r instanceof PublishError && r.transient);
  return first < 0 ? results : results.slice(0, first + 1);
}

/** The WIT `publish-error` of a `Transient`/`Permanent`. */
const witError = (e) => ({ tag: e.transient ? 'transient' : 'permanent', val: e.message });

/**
 * What to throw on for a bug in `what` (anything thrown but a `PublishError`): its stack is
 * logged and, thrown on, it traps (componentize-js prints it to stderr, and the host quotes
 * those last lines in the event's error).
 */
function trap(what, e) {
  log.error(`${what} threw: ${e && e.stack ? `${describeThrown(e)}\n${e.stack}` : describeThrown(e)}`);
  return e instanceof Error ? e : new Error(describeThrown(e));
}

/** What was thrown, for a message: `TypeError: x is undefined`. */
function describeThrown(e) {
  if (e && typeof e === 'object' && e.payload && typeof e.payload.tag === 'string') return describeRedisError(e.payload);
  if (e instanceof Error) return e.message ? `${e.name}: ${e.message}` : e.name;
  return typeof e === 'string' ? e : show(e);
}

const isThenable = (value) => value !== null && typeof value === 'object' && typeof value.then === 'function';
const ASYNC = 'returned a Promise: the WIT functions are synchronous, so write it without `async`';

/**
 * The object componentize-js exports as the WIT interface `backend`:
 * `export const backend = exportBackend(MyPublisher);`
 *
 * - `init`: parses the options, builds the publisher and calls its `init`; an `OptionError`
 *   (or anything thrown) becomes the init error shown to the operator.
 * - `publish`: `Transient`/`Permanent` become the WIT `publish-error`; anything else thrown
 *   is a bug: the stack is logged and it is thrown on, which traps the instance (componentize-js
 *   prints the error to stderr). The host fails the event with a transient error quoting
 *   those last lines (the relay retries it), throws the instance away (the engine may hold
 *   half-done state) and starts a fresh one.
 * - `publishBatch`: the array `Publisher.publishBatch` returns, `null` → `ok`,
 *   `Transient`/`Permanent` → `publish-error`; anything else thrown traps, as in `publish`.
 * - `healthCheck`: `false` when it throws or before a successful `init`.
 */
export function exportBackend(PublisherClass) {
  let instance = null; // the publisher of this component instance, set by a successful init

  return {
    init(options) {
      instance = null;
      let raw;
      try {
        raw = JSON.parse(options);
      } catch (e) {
        throw `options: not valid JSON: ${e.message}`;
      }
      if (!isObject(raw)) throw `options: expected a JSON object, got ${options}`;
      const opts = new Options(raw);
      try {
        const candidate = new PublisherClass();
        if (isThenable(candidate.init(opts))) throw new Error(`init ${ASYNC}`);
        opts.checkUnknown();
        instance = candidate;
      } catch (e) {
        throw e instanceof OptionError ? e.message : `init failed: ${describeThrown(e)}`;
      }
    },

    publish(event) {
      if (!instance) throw { tag: 'transient', val: 'publish called before a successful init' };
      try {
        if (isThenable(instance.publish(event))) throw new Error(`publish ${ASYNC}`);
      } catch (e) {
        if (e instanceof PublishError) throw witError(e);
        throw trap('publish', e);
      }
    },

    publishBatch(events) {
      if (!instance) return [{ tag: 'err', val: { tag: 'transient', val: 'publish-batch called before a successful init' } }];
      let results;
      try {
        results = instance.publishBatch(events);
        if (isThenable(results)) throw new Error(`publishBatch ${ASYNC}`);
      } catch (e) {
        throw trap('publishBatch', e);
      }
      return Array.from(results, (r) => (r instanceof PublishError ? { tag: 'err', val: witError(r) } : { tag: 'ok' }));
    },

    healthCheck() {
      if (!instance) return false;
      try {
        return Boolean(instance.healthCheck());
      } catch (e) {
        log.error(`healthCheck threw: ${describeThrown(e)}`);
        return false;
      }
    },
  };
}
