// Fake capabilities, recording what the backend did. componentize-js throws an import's
// `err` as an Error whose `payload` is the WIT value; `fake.redisError` makes them do that.
export const fake = { logged: [], added: [], batches: [], redisError: null, batchError: null };

export function reset() {
  fake.logged.length = 0;
  fake.added.length = 0;
  fake.batches.length = 0;
  fake.redisError = null;
  fake.batchError = null;
}

function fail() {
  const e = new Error('[object Object] (see error.payload)');
  e.payload = fake.redisError;
  throw e;
}

export function log(level, message) {
  fake.logged.push([level, message]);
}

export function xadd(stream, fields, maxLen) {
  if (fake.redisError) fail();
  fake.added.push([stream, fields, maxLen]);
  return '1-0';
}

export function ping() {
  if (fake.redisError) fail();
}

// Entries to the stream "denied" fail on their own, as outside the grant.
export function xaddBatch(entries) {
  if (fake.batchError) {
    const e = new Error('[object Object] (see error.payload)');
    e.payload = fake.batchError;
    throw e;
  }
  fake.batches.push(entries.length);
  return entries.map(({ stream, fields, maxLen }) => {
    if (stream === 'denied') return { tag: 'err', val: { tag: 'stream-denied', val: stream } };
    fake.added.push([stream, fields, maxLen]);
    return { tag: 'ok', val: `${fake.added.length}-0` };
  });
}
