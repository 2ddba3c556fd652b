// A JavaScript backend with a bug: `data.explode` makes `publish` throw a TypeError.
// Otherwise it writes the seed's entry to `stream_name`.

import * as bg from '../../../../components/js/broadcaster-guest.js';

class Raiser extends bg.Publisher {
  init(options) {
    this.streamName = options.string('stream_name', { default: 'events' });
  }

  publish(event) {
    const data = bg.dataJson(event) ?? {};
    if (data.explode) {
      const missing = undefined;
      missing.property = 1;
    }
    bg.redis.xadd(this.streamName, bg.streamFields(event), 10000);
  }
}

export const backend = bg.exportBackend(Raiser);
