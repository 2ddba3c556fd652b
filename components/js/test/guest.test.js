// Unit tests of broadcaster-guest.js and the JS backends, run with Node outside a component
// (`npm test`): the WIT imports resolve to ./fake-wit.js (see register.js). Expected strings
// are what CPython's json.dumps / repr print for the same values.
import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';

import * as bg from '../broadcaster-guest.js';
import { backend as enrichRoute, route } from '../enrich-route/app.js';
import { backend as redisStream } from '../redis-stream/app.js';
import { fake, reset } from './fake-wit.js';

beforeEach(reset);

function event({ data, config = [], ...attrs } = {}) {
  return {
    event: {
      id: 'e-1',
      source: '/shop',
      specversion: '1.0',
      type: 'order.created',
      datacontenttype: 'application/json',
      time: '2026-11-29T10:00:00.500000+00:00',
      data,
      extensions: [],
      ...attrs,
    },
    retryCount: 0,
    maxRetries: 3,
    publisherConfig: config,
  };
}

// The WIT error componentize-js makes of a thrown `{ tag, val }`, as the host would see it.
function publishError(backend, ev) {
  try {
    backend.publish(ev);
  } catch (e) {
    return e;
  }
  return undefined;
}

function initError(backend, options) {
  try {
    backend.init(options);
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('Python json.dumps rendering', () => {
  test('strings escape everything outside printable ASCII, as UTF-16 units', () => {
    const cases = [
      ['', '""'],
      ['plain ascii ~', '"plain ascii ~"'],
      ['quote" back\\ slash/', '"quote\\" back\\\\ slash/"'],
      ['\n\r\t\b\f', '"\\n\\r\\t\\b\\f"'],
      ['\x00\x01\x1f\x7f\x80', '"\\u0000\\u0001\\u001f\\u007f\\u0080"'],
      ['é€😀𝄞', '"\\u00e9\\u20ac\\ud83d\\ude00\\ud834\\udd1e"'],
      ['\u2028\u2029\ufeff', '"\\u2028\\u2029\\ufeff"'],
      ['\ud7ff\ue000\uffff', '"\\ud7ff\\ue000\\uffff"'],
    ];
    for (const [input, python] of cases) assert.equal(bg.pyJsonString(input), python, JSON.stringify(input));
  });

  test('floats render as Python repr', () => {
    const cases = [
      [0.0, '0.0'], [-0.0, '-0.0'], [1.0, '1.0'], [2.5, '2.5'], [0.1, '0.1'], [1e-4, '0.0001'],
      [1e-5, '1e-05'], [1.5e-7, '1.5e-07'], [123456.789, '123456.789'], [1e15, '1000000000000000.0'],
      [1e16, '1e+16'], [1.2345e20, '1.2345e+20'], [1e100, '1e+100'], [-3.25e-10, '-3.25e-10'],
      [Number.MAX_VALUE, '1.7976931348623157e+308'], [5e-324, '5e-324'],
      [0.30000000000000004, '0.30000000000000004'], [1e21, '1e+21'], [123456789.125, '123456789.125'],
      [NaN, 'NaN'], [-Infinity, '-Infinity'],
    ];
    for (const [value, python] of cases) assert.equal(bg.pyFloatRepr(value), python, String(value));
  });

  test('values use Python separators; integral numbers render as integers', () => {
    const value = new Map([['z', [1, 2.5, null, true, 'é']], ['a', { k: {} }], ['big', 12345678901234567890n]]);
    assert.equal(bg.pyJsonDumps(value), '{"z": [1, 2.5, null, true, "\\u00e9"], "a": {"k": {}}, "big": 12345678901234567890}');
    assert.equal(bg.pyJsonDumps(1e21), '1000000000000000000000');
  });

  test('base64', () => {
    const b = (s) => bg.base64(new TextEncoder().encode(s));
    assert.deepEqual(['', 'f', 'fo', 'foo', 'foobar'].map(b), ['', 'Zg==', 'Zm8=', 'Zm9v', 'Zm9vYmFy']);
    assert.equal(bg.base64(new Uint8Array([0xff, 0])), '/wA=');
  });
});

describe('the seed format', () => {
  test('cloud_event is the seed dict through json.dumps', () => {
    const data = '{"name": "Zo\\u00eb \\ud83d\\ude00", "n": 1.0, "big": 1e+16}';
    const ev = event({
      data: { tag: 'json', val: data },
      subject: 'orders/1',
      dataschema: 'https://x/s.json',
      extensions: [['traceparent', '00-x'], ['zz', 'ü']],
    });
    assert.equal(
      bg.toCloudEvent(ev),
      '{"specversion": "1.0", "type": "order.created", "source": "/shop", "id": "e-1", ' +
        '"time": "2026-11-29T10:00:00.500000+00:00", "subject": "orders/1", "datacontenttype": "application/json", ' +
        '"dataschema": "https://x/s.json", "traceparent": "00-x", "zz": "\\u00fc", "data": ' + data + '}',
    );
  });

  test('absent attributes and data are left out; text and binary data', () => {
    assert.equal(
      bg.toCloudEvent(event({ datacontenttype: undefined, time: undefined })),
      '{"specversion": "1.0", "type": "order.created", "source": "/shop", "id": "e-1"}',
    );
    assert.ok(bg.toCloudEvent(event({ data: { tag: 'text', val: 'h\u00e9\n' } })).endsWith(', "data": "h\\u00e9\\n"}'));
    assert.ok(bg.toCloudEvent(event({ data: { tag: 'binary', val: new Uint8Array([255, 0]) } })).endsWith(', "data_base64": "/wA="}'));
  });

  test('stream fields: the five, then publisher_config (strings unquoted)', () => {
    const ev = event({ data: { tag: 'json', val: '[1]' }, config: [['tenant', '"acme"'], ['n', '5'], ['obj', '{"a": [1, null]}'], ['u', '"Zo\\u00eb"']] });
    const fields = bg.streamFields(ev);
    assert.deepEqual(fields.map(([k]) => k), ['event_id', 'event_type', 'source', 'timestamp', 'cloud_event', 'tenant', 'n', 'obj', 'u']);
    assert.deepEqual(fields.slice(5), [['tenant', 'acme'], ['n', '5'], ['obj', '{"a": [1, null]}'], ['u', 'Zoë']]);
    assert.equal(fields[3][1], '2026-11-29T10:00:00.500000+00:00');
  });

  test('a reserved publisher_config key is permanent', () => {
    assert.throws(() => bg.streamFields(event({ config: [['event_id', '"forged"']] })), (e) => {
      assert.ok(e instanceof bg.Permanent);
      assert.match(e.message, /publisher_config key "event_id" collides/);
      return true;
    });
  });

  test('stream fields: extension attributes after the extras, colliding names permanent', () => {
    const tp = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const fields = bg.streamFields(event({ config: [['tenant', '"acme"']], extensions: [['traceparent', tp]] }));
    assert.deepEqual(fields.slice(5), [['tenant', 'acme'], ['traceparent', tp]]);
    for (const [extensions, config] of [[[['timestamp', 'x']], []], [[['tenant', 'x']], [['tenant', '"a"']]]]) {
      assert.throws(() => bg.streamFields(event({ config, extensions })), (e) => {
        assert.ok(e instanceof bg.Permanent);
        assert.match(e.message, new RegExp(`extension attribute "${extensions[0][0]}" collides`));
        return true;
      });
    }
  });

  test('extraValue', () => {
    assert.equal(bg.extraValue('"plain \\u00e9"'), 'plain é');
    assert.equal(bg.extraValue('1.0'), '1.0');
    assert.equal(bg.extraValue('"\\ud800"'), '"\\ud800"');
    assert.equal(bg.extraValue('"broken'), '"broken');
  });

  test('setExtensions replaces in place and appends, on a copy', () => {
    const ev = event({ extensions: [['region', 'us'], ['x', '1']] });
    const out = bg.setExtensions(ev, { tenant: 'acme', region: 'eu' });
    assert.deepEqual(out.event.extensions, [['region', 'eu'], ['x', '1'], ['tenant', 'acme']]);
    assert.deepEqual(ev.event.extensions, [['region', 'us'], ['x', '1']]);
    assert.deepEqual(bg.dataJson(event({ data: { tag: 'json', val: '{"a": 1}' } })), { a: 1 });
  });
});

describe('Options', () => {
  test('defaults, required values and types', () => {
    const o = new bg.Options({ s: 'x', n: 5, l: ['a'], m: { k: 'v' }, b: true, c: 'drop' });
    assert.equal(o.string('s'), 'x');
    assert.equal(o.string('missing', { default: 'd' }), 'd');
    assert.equal(o.string('missing2', { default: undefined }), undefined);
    assert.equal(o.integer('n'), 5);
    assert.deepEqual(o.stringList('l'), ['a']);
    assert.deepEqual(o.stringMap('m'), { k: 'v' });
    assert.equal(o.boolean('b'), true);
    assert.equal(o.choice('c', ['mask', 'drop'], { default: 'mask' }), 'drop');
    o.checkUnknown();
  });

  test('errors name the option', () => {
    const cases = [
      [(o) => o.string('s'), {}, 'option `s`: required (a non-empty string)'],
      [(o) => o.string('s'), { s: '' }, 'option `s`: expected a non-empty string, got ""'],
      [(o) => o.integer('n'), { n: true }, 'option `n`: expected an integer >= 0'],
      [(o) => o.integer('n'), { n: 1.5 }, 'got 1.5'],
      [(o) => o.stringList('l'), { l: ['a', 2] }, 'option `l[1]`: expected a non-empty string, got 2'],
      [(o) => o.stringMap('m'), { m: { k: 1 } }, 'option `m.k`: expected a non-empty string, got 1'],
      [(o) => o.choice('c', ['a', 'b']), { c: 'z' }, 'option `c`: expected one of "a", "b", got "z"'],
      [(o) => o.refuse(['host'], 'use the grant'), { host: 'h' }, 'option `host`: use the grant'],
    ];
    for (const [read, raw, message] of cases) {
      assert.throws(() => read(new bg.Options(raw)), (e) => e instanceof bg.OptionError && e.message.includes(message), message);
    }
  });

  test('unknown options are refused unless allowed', () => {
    const o = new bg.Options({ stream_name: 's', stream: 'x' });
    o.string('stream_name');
    assert.throws(() => o.checkUnknown(), { message: 'option `stream`: unknown option (known options: stream_name)' });
    o.allowUnknown();
    o.checkUnknown();
  });
});

describe('the glue', () => {
  function backendThat(publish, init = () => {}) {
    return bg.exportBackend(class extends bg.Publisher {
      init(options) {
        init(options);
      }

      publish(ev) {
        return publish(ev);
      }
    });
  }

  test('init errors are strings naming the problem', () => {
    const b = backendThat(() => {});
    assert.match(initError(b, 'nope'), /^options: not valid JSON/);
    assert.equal(initError(b, '[]'), 'options: expected a JSON object, got []');
    assert.equal(initError(b, '{"x": 1}'), 'option `x`: unknown option (known options: none)');
    const throwing = backendThat(() => {}, () => {
      throw new RangeError('no way');
    });
    assert.equal(initError(throwing, '{}'), 'init failed: RangeError: no way');
  });

  test('publish errors map to the WIT cases', () => {
    const cases = [
      [new bg.Transient('later'), { tag: 'transient', val: 'later' }],
      [new bg.Permanent('never'), { tag: 'permanent', val: 'never' }],
    ];
    for (const [thrown, wit] of cases) {
      const b = backendThat(() => {
        throw thrown;
      });
      b.init('{}');
      assert.deepEqual(publishError(b, event()), wit);
    }
  });

  test('anything else thrown is logged and thrown on (a trap)', () => {
    for (const thrown of [new TypeError('x is undefined'), 'a string', { odd: 1 }]) {
      const b = backendThat(() => {
        throw thrown;
      });
      b.init('{}');
      const escaped = publishError(b, event());
      assert.ok(escaped instanceof Error, `${String(thrown)}: an Error escapes, not a WIT error`);
      assert.match(fake.logged.at(-1)[1], /^publish threw: /);
    }
  });

  test('an async publish is refused: the WIT functions are synchronous', () => {
    const b = backendThat(async () => {});
    b.init('{}');
    assert.match(publishError(b, event()).message, /publish returned a Promise/);
  });

  test('publish before init is transient; health is false', () => {
    const b = backendThat(() => {});
    assert.deepEqual(publishError(b, event()), { tag: 'transient', val: 'publish called before a successful init' });
    assert.equal(b.healthCheck(), false);
    b.init('{}');
    assert.equal(b.healthCheck(), true);
  });

  test('redis errors: unavailable is transient, everything else permanent', () => {
    assert.equal(bg.redis.xadd('s', [['a', 1]], 10), '1-0');
    assert.deepEqual(fake.added, [['s', [['a', '1']], 10n]]);
    bg.redis.xadd('s', [], undefined);
    assert.equal(fake.added[1][2], undefined);
    const cases = [
      [{ tag: 'unavailable', val: 'timed out' }, bg.Transient, 'Redis is unavailable: timed out'],
      [{ tag: 'stream-denied', val: 'x' }, bg.Permanent, 'stream "x" is outside the streams granted to this publisher'],
      [{ tag: 'not-granted' }, bg.Permanent, 'this publisher has no `redis` grant'],
      [{ tag: 'rejected', val: 'WRONGTYPE' }, bg.Permanent, 'Redis rejected the entry: WRONGTYPE'],
    ];
    for (const [err, Kind, message] of cases) {
      fake.redisError = err;
      assert.throws(() => bg.redis.xadd('s', [['a', 'b']]), (e) => e instanceof Kind && e.message === message && e.cause === err);
      assert.equal(bg.redis.pingOk(), false);
    }
  });
});

describe('batches', () => {
  function backendThat(publish) {
    const b = bg.exportBackend(class extends bg.Publisher {
      publish(ev) {
        return publish(ev);
      }
    });
    b.init('{}');
    return b;
  }

  test('the default batch publishes each event and stops after a transient error', () => {
    const seen = [];
    const b = backendThat((ev) => {
      seen.push(ev.event.id);
      if (ev.event.id === 't') throw new bg.Transient('later');
      if (ev.event.id === 'p') throw new bg.Permanent('never');
    });
    const results = b.publishBatch(['a', 'p', 't', 'z'].map((id) => event({ id })));
    assert.deepEqual(results, [
      { tag: 'ok' },
      { tag: 'err', val: { tag: 'permanent', val: 'never' } },
      { tag: 'err', val: { tag: 'transient', val: 'later' } },
    ]);
    assert.deepEqual(seen, ['a', 'p', 't']);
  });

  test('anything else thrown in a batch is logged and thrown on (a trap)', () => {
    const b = backendThat(() => {
      throw new TypeError('x is undefined');
    });
    assert.throws(() => b.publishBatch([event()]), TypeError);
    assert.match(fake.logged.at(-1)[1], /^publishBatch threw: /);
  });

  test('xaddBatch returns ids and errors in order, in one host call', () => {
    const results = bg.redis.xaddBatch([['s', [['a', 1]], 5], ['denied', [['a', 'b']]], ['s', [['c', 'd']], null]]);
    assert.equal(results[0], '1-0');
    assert.ok(results[1] instanceof bg.Permanent && /"denied" is outside/.test(results[1].message));
    assert.equal(results[2], '2-0');
    assert.deepEqual(fake.batches, [3]);
    assert.deepEqual(fake.added[0], ['s', [['a', '1']], 5n]);
  });

  test('xaddBatch splits at the entry cap and falls back to xadd when refused', () => {
    const entries = Array.from({ length: bg.BATCH_ENTRIES + 1 }, (_, i) => ['s', [['i', i]]]);
    assert.equal(bg.redis.xaddBatch(entries).length, entries.length);
    assert.deepEqual(fake.batches, [bg.BATCH_ENTRIES, 1]);
    fake.added.length = 0;
    fake.batchError = { tag: 'rejected', val: 'more than limits.xadd_batch_entries' };
    assert.deepEqual(bg.redis.xaddBatch(entries.slice(0, 3)), ['1-0', '1-0', '1-0']);
    assert.equal(fake.added.length, 3, 'one xadd per entry instead');
    fake.batchError = { tag: 'unavailable', val: 'down' };
    assert.ok(bg.redis.xaddBatch(entries.slice(0, 2)).every((r) => r instanceof bg.Transient));
  });

  test('untilTransient', () => {
    const t = new bg.Transient('t');
    const p = new bg.Permanent('p');
    assert.deepEqual(bg.untilTransient([null, p, t, null]), [null, p, t]);
    assert.deepEqual(bg.untilTransient([null, p]), [null, p]);
  });
});

describe('redis-stream backend', () => {
  test('a batch is one guest call with an xadd per event, and a bad event fails alone', () => {
    redisStream.init('{"stream_name": "poly:x"}');
    const good = event({ data: { tag: 'json', val: '1' } });
    const bad = event({ config: [['event_id', '"forged"']] });
    const results = redisStream.publishBatch([good, bad, good]);
    assert.deepEqual(results[0], { tag: 'ok' });
    assert.equal(results[1].val.tag, 'permanent');
    assert.deepEqual(results[2], { tag: 'ok' });
    assert.deepEqual(fake.batches, [], 'no xaddBatch: it leaks guest memory under componentize-js 0.23');
    assert.equal(fake.added.length, 2);
    assert.deepEqual(fake.added[0], ['poly:x', bg.streamFields(good), 10000n]);
  });

  test('writes the seed entry', () => {
    redisStream.init('{"stream_name": "poly:x"}');
    const ev = event({ data: { tag: 'json', val: '{"a": 1}' }, config: [['t', '"x"']] });
    redisStream.publish(ev);
    assert.deepEqual(fake.added, [['poly:x', bg.streamFields(ev), 10000n]]);
  });

  test('connection options point to the grant', () => {
    assert.match(initError(redisStream, '{"host": "redis"}'), /^option `host`: a component does not connect by itself; .*\[publishers\.<name>\.grants\] redis/);
  });
});

describe('enrich-route backend', () => {
  const options = JSON.stringify({
    routes: { 'orders/': 'o', 'orders/eu/': 'o-eu' },
    fallback: 'other',
    extensions: { tenant: 'acme', region: 'eu1' },
    max_len: 7,
  });

  test('the longest prefix wins, then the fallback', () => {
    const routes = [['orders/eu/', 'o-eu'], ['orders/', 'o']];
    assert.equal(route(routes, 'f', 'orders/eu/1'), 'o-eu');
    assert.equal(route(routes, 'f', 'orders/1'), 'o');
    assert.equal(route(routes, 'f', 'users/1'), 'f');
    assert.equal(route(routes, 'f', undefined), 'f');
    assert.equal(route(routes, undefined, 'users/1'), undefined);
  });

  test('routes and adds the extensions before data', () => {
    enrichRoute.init(options);
    enrichRoute.publish(event({ subject: 'orders/eu/7', data: { tag: 'json', val: '{}' }, extensions: [['region', 'us']] }));
    const [[stream, fields, maxLen]] = fake.added;
    assert.equal(stream, 'o-eu');
    assert.equal(maxLen, 7n);
    assert.ok(new Map(fields).get('cloud_event').endsWith('"subject": "orders/eu/7", "datacontenttype": "application/json", "region": "eu1", "tenant": "acme", "data": {}}'));
  });

  test('an unmatched subject without fallback is permanent', () => {
    enrichRoute.init('{"routes": {"orders/": "o"}}');
    assert.deepEqual(publishError(enrichRoute, event({ subject: 'users/1' })), {
      tag: 'permanent',
      val: 'no route matches subject "users/1" and there is no `fallback` stream',
    });
    assert.deepEqual(publishError(enrichRoute, event()), {
      tag: 'permanent',
      val: 'the event has no subject and there is no `fallback` stream',
    });
    assert.deepEqual(fake.added, []);
  });

  test('bad options', () => {
    const cases = [
      ['{}', 'option `routes`: needs at least one'],
      ['{"routes": {"": "x"}}', 'option `routes`: a prefix cannot be empty'],
      ['{"routes": {"a/": 3}}', 'option `routes.a/`: expected a non-empty string, got 3'],
      ['{"fallback": "f", "extensions": {"Tenant": "x"}}', 'option `extensions.Tenant`: '],
      ['{"fallback": "f", "extensions": {"data": "x"}}', 'option `extensions.data`: is a CloudEvents context attribute'],
      ['{"fallback": "f", "max_len": -1}', 'option `max_len`: expected an integer >= 0'],
      ['{"fallback": "f", "route": {}}', 'option `route`: unknown option'],
    ];
    for (const [opts, message] of cases) assert.ok(initError(enrichRoute, opts)?.startsWith(message), `${opts}: ${initError(enrichRoute, opts)}`);
  });
});
