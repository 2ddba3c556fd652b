// Lets Node load the backends outside a component: the WIT imports
// (`broadcaster:backend/log@0.2.0`, `…/redis-stream@0.2.0`) resolve to ./fake-wit.js.
// Used as `node --import ./test/register.js --test test/*.test.js` (`npm test`).
import { register } from 'node:module';

register('./wit-hooks.js', import.meta.url);
