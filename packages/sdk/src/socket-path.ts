/** Where the daemon's socket lives by default; the daemon and the SDK compute it the same way. */
import { isAbsolute, join } from "node:path";

/** Environment variable naming the daemon socket explicitly. */
export const DAEMON_SOCKET_ENV = "MVM_DAEMON_SOCKET";

/**
 * The default daemon socket path for a user: `/run/mvm/mvmd.sock` for root, otherwise
 * `$XDG_RUNTIME_DIR/mvm/mvmd.sock`, or `/tmp/mvm-<uid>/mvmd.sock` when XDG_RUNTIME_DIR is unset
 * or not absolute. Pure: it reads only its arguments.
 *
 * @param env environment to read XDG_RUNTIME_DIR from. @default process.env
 * @param uid the user's uid. @default process.getuid()
 * @example
 * defaultSocketPath({ XDG_RUNTIME_DIR: "/run/user/1000" }, 1000); // "/run/user/1000/mvm/mvmd.sock"
 */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? -1): string {
  if (uid === 0) return "/run/mvm/mvmd.sock";
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg !== undefined && xdg !== "" && isAbsolute(xdg)) return join(xdg, "mvm", "mvmd.sock");
  return `/tmp/mvm-${uid}/mvmd.sock`;
}

/**
 * The socket the SDK should use, and whether someone asked for it explicitly: the given path,
 * else $MVM_DAEMON_SOCKET, else {@link defaultSocketPath}.
 */
export function resolveSocketPath(
  socketPath: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  uid?: number,
): { path: string; explicit: boolean } {
  if (socketPath !== undefined) return { path: socketPath, explicit: true };
  const fromEnv = env[DAEMON_SOCKET_ENV];
  if (fromEnv !== undefined && fromEnv !== "") return { path: fromEnv, explicit: true };
  return { path: defaultSocketPath(env, uid), explicit: false };
}
