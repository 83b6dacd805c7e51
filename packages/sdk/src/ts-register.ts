/**
 * `node --import @mvm/sdk/ts-register app.ts`: registers ts-hooks.ts so that Node runs a
 * TypeScript script and the TypeScript modules it imports (types erased, not checked).
 */
import { register } from "node:module";

register(new URL("./ts-hooks.js", import.meta.url));
