/** Reading a local file the SDK does not trust: whole, UTF-8, and never more than a limit. */
import { open } from "node:fs/promises";
import { InvalidArgumentError, NotFoundError } from "@mvm/protocol";

/**
 * The text of `path`, refused when it is larger than `maxBytes`.
 * @throws NotFoundError when it does not exist; InvalidArgumentError when it is too large or unreadable
 */
export async function readBoundedText(path: string, maxBytes: number, what: string): Promise<string> {
  let handle;
  try {
    handle = await open(path, "r");
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === "ENOENT") throw new NotFoundError(`${what} "${path}" does not exist`, { cause });
    throw new InvalidArgumentError(`Cannot read ${what.toLowerCase()} "${path}": ${(cause as Error).message}`, { cause });
  }
  try {
    const buffer = Buffer.alloc(maxBytes + 1);
    let length = 0;
    while (length <= maxBytes) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > maxBytes) throw new InvalidArgumentError(`${what} "${path}" is over the limit of ${maxBytes} bytes`);
    return buffer.subarray(0, length).toString("utf8");
  } finally {
    await handle.close();
  }
}
