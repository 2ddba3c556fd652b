// Module resolution hook: every `broadcaster:backend/...` import is the fake capabilities.
const FAKE = new URL('./fake-wit.js', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith('broadcaster:backend/')) return { url: FAKE, shortCircuit: true };
  return nextResolve(specifier, context);
}
