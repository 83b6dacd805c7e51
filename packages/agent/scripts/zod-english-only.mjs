// An esbuild plugin for bundles that speak English only (the agent's, mvmctl's): zod's locale
// index pulls in every translation of its messages (more than half of zod's code), so it is
// replaced by one exporting `en`.
export const zodEnglishOnly = {
  name: "zod-english-only",
  setup(b) {
    b.onLoad({ filter: /[\\/]zod[\\/]v4[\\/]locales[\\/]index\.js$/ }, () => ({
      contents: 'export { default as en } from "./en.js";\n',
      loader: "js",
    }));
  },
};
