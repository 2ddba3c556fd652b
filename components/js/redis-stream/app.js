// django-broadcaster's `RedisStreamBackend` as a component, in JavaScript.
//
// Writes the same entry as Broadcaster's native `redis-stream` backend, field for field,
// through the publisher's `redis` grant. A batch is one guest call (`publish-batch`) with one
// `xadd` per event: `xaddBatch` leaks guest memory under componentize-js 0.23 (see its doc in
// broadcaster-guest.js), which would trap this backend on its memory limit every ~10,000 events.
//
// Options (`[publishers.<name>.options]`):
// - `stream_name` (default "events"): the stream to append to; must be in the grant.
// - `max_len` (default 10000): trim the stream to about this many entries (`MAXLEN ~`).

import * as bg from '../broadcaster-guest.js';

// Connection options of the native backend: a component does not connect by itself.
const CONNECTION_OPTIONS = ['host', 'port', 'db', 'password', 'connect_timeout', 'socket_timeout'];

class RedisStream extends bg.Publisher {
  init(options) {
    options.refuse(
      CONNECTION_OPTIONS,
      'a component does not connect by itself; set the Redis server in ' +
        '`[publishers.<name>.grants] redis = { host, port, db, password, streams }`',
    );
    this.streamName = options.string('stream_name', { default: 'events' });
    this.maxLen = options.integer('max_len', { default: 10000 });
  }

  publish(event) {
    bg.redis.xadd(this.streamName, bg.streamFields(event), this.maxLen);
  }

  publishBatch(events) {
    const results = [];
    for (const event of events) {
      try {
        bg.redis.xadd(this.streamName, bg.streamFields(event), this.maxLen);
        results.push(null);
      } catch (e) {
        if (!(e instanceof bg.PublishError)) throw e;
        results.push(e);
        // Redis unavailable: the events after this one are not attempted (they keep their order).
        if (e instanceof bg.Transient) break;
      }
    }
    return results;
  }

  healthCheck() {
    return bg.redis.pingOk();
  }
}

export const backend = bg.exportBackend(RedisStream);
