/**
 * Where the egress relay and the trust bundle live inside every sandbox, and the environment that
 * points workloads at them. Shared by the engine (which sets the environment) and the agent (which
 * listens on the proxy port).
 */

/** The agent's relay listens here, inside the sandbox, for the workload's proxy connections. */
export const EGRESS_PROXY_HOST = "127.0.0.1";
export const EGRESS_PROXY_PORT = 3128;
/** The namespace backend binds the host end of the relay channel (a Unix socket) here. */
export const NAMESPACE_RELAY_PATH = "/dev/mvm-relay";
/** Inside a sandbox with mediated secrets: the image's CA bundle (if any) plus the sandbox's own CA. */
export const TRUST_BUNDLE_PATH = "/run/mvm/ca-certificates.crt";
/** The system bundle path that Debian-based images use; covered by the trust bundle when it exists. */
export const SYSTEM_TRUST_BUNDLE_PATH = "/etc/ssl/certs/ca-certificates.crt";

/**
 * The environment every exec gets: proxy variables in both cases (tools differ), and, when the
 * sandbox has a trust bundle, the variables common TLS stacks read for their CA file.
 */
export function egressEnvironment(options: { readonly trustBundle: boolean }): Record<string, string> {
  const http = `http://${EGRESS_PROXY_HOST}:${EGRESS_PROXY_PORT}`;
  const socks = `socks5h://${EGRESS_PROXY_HOST}:${EGRESS_PROXY_PORT}`;
  const env: Record<string, string> = {
    HTTP_PROXY: http,
    http_proxy: http,
    HTTPS_PROXY: http,
    https_proxy: http,
    ALL_PROXY: socks,
    all_proxy: socks,
    NO_PROXY: "",
    no_proxy: "",
  };
  if (options.trustBundle) {
    for (const name of ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "PIP_CERT"]) {
      env[name] = TRUST_BUNDLE_PATH;
    }
  }
  return env;
}
