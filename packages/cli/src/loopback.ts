/**
 * Whether `host` (a listen address a user gave) names a loopback address: `localhost`, `::1` or
 * 127.0.0.0/8. The HTTP servers mvmctl runs (`mcp --http`, `serve --e2b`) listen only there unless
 * told otherwise.
 */
export function isLoopbackHost(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
}
