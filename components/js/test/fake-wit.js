// Fake capabilities, recording what the backend did. componentize-js throws an import's
// `err` as an Error whose `payload` is the WIT value; `fake.redisError` makes them do that.
export const fake = { logged: [], added: [], redisError: null };

export function reset() {
  fake.logged.length = 0;
  fake.added.length = 0;
  fake.redisError = null;
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
