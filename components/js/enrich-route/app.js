// Routes each event to a stream chosen by its CloudEvent `subject`, adds extension
// attributes to its CloudEvent, and writes the seed's entry.
//
// Options (`[publishers.<name>.options]`):
// - `routes` (default {}): subject prefix → stream (`{ "orders/" = "shop:orders" }`). The
//   longest prefix the subject starts with wins, so `"orders/eu/"` beats `"orders/"`.
//   A prefix cannot be empty (that is what `fallback` is for).
// - `fallback` (optional): the stream for events no route matches, and for events without a
//   subject. Without it such an event fails permanently. `routes` or `fallback` is required.
// - `extensions` (default {}): extension attributes (name → string value) added to every
//   event's CloudEvent. They are rendered in `cloud_event` after `dataschema` and the event's
//   own extensions, before `data`; one the event already has is given the configured value.
//   Names follow CloudEvents: lower-case ASCII letters and digits, not a context attribute
//   (`id`, `type`, `data`…).
// - `max_len` (default 10000): trim each stream to about this many entries (`MAXLEN ~`).
//
// Every stream must be inside the publisher's `grants.redis.streams`; one that is not fails
// the event permanently (nothing is written).

import * as bg from '../broadcaster-guest.js';

// CloudEvents context attributes (and the JSON format's `data_base64`): not extension names.
const RESERVED_ATTRIBUTES = [
  'specversion', 'type', 'source', 'id', 'time', 'subject',
  'datacontenttype', 'dataschema', 'data', 'data_base64',
];

/** The stream for `subject`: the route with the longest matching prefix, else `fallback`. */
export function route(routes, fallback, subject) {
  if (subject !== undefined && subject !== null) {
    // `routes` is sorted longest prefix first, so the first match is the longest.
    for (const [prefix, stream] of routes) if (subject.startsWith(prefix)) return stream;
  }
  return fallback ?? undefined;
}

class EnrichRoute extends bg.Publisher {
  init(options) {
    const routes = options.stringMap('routes', { default: {} });
    if ('' in routes) throw options.error('routes', 'a prefix cannot be empty (set `fallback` instead)');
    this.routes = Object.entries(routes).sort(([a], [b]) => b.length - a.length);
    this.fallback = options.string('fallback', { default: undefined });
    if (this.routes.length === 0 && this.fallback === undefined) {
      throw options.error('routes', 'needs at least one `"<subject prefix>" = "<stream>"` entry, or set `fallback`');
    }
    this.extensions = options.stringMap('extensions', { default: {}, allowEmptyValues: true });
    for (const name of Object.keys(this.extensions)) {
      if (!/^[a-z0-9]+$/.test(name)) {
        throw options.error(`extensions.${name}`, 'an extension attribute name is lower-case ASCII letters and digits only');
      }
      if (RESERVED_ATTRIBUTES.includes(name)) {
        throw options.error(`extensions.${name}`, 'is a CloudEvents context attribute, not an extension');
      }
    }
    this.maxLen = options.integer('max_len', { default: 10000 });
  }

  publish(event) {
    const subject = event.event.subject;
    const stream = route(this.routes, this.fallback, subject);
    if (stream === undefined) {
      throw new bg.Permanent(
        subject === undefined
          ? 'the event has no subject and there is no `fallback` stream'
          : `no route matches subject ${JSON.stringify(subject)} and there is no \`fallback\` stream`,
      );
    }
    const enriched = bg.setExtensions(event, this.extensions);
    const id = bg.redis.xadd(stream, bg.streamFields(enriched), this.maxLen);
    bg.log.debug(`event ${event.event.id} -> ${stream} (${id})`);
  }

  healthCheck() {
    return bg.redis.pingOk();
  }
}

export const backend = bg.exportBackend(EnrichRoute);
