/**
 * The NDJSON streams of the daemon API: an exec's events, and the progress lines of create and
 * build. Each line is validated; anything out of order is a TransportError.
 */
import type { z } from "zod";
import {
  ExecEvent,
  TransportError,
  fromWire,
  type ExecHandlers,
  type ExitInfo,
  type ProgressEvent,
  type WireError,
} from "@mvm/protocol";
import type { CallScope } from "./call-scope.js";
import { validate } from "./body.js";

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Follows an exec stream after its `started` line: output to `handlers`, until `exit` (the result)
 * or `error` (thrown). The body is read only as fast as the handlers take it: a handler's promise
 * is awaited before the next line is read, so a slow consumer holds the daemon (and the agent).
 * A handler that throws or rejects ends the stream, and what it threw is rethrown.
 */
export async function followExec(
  events: AsyncGenerator<unknown, void, undefined>,
  handlers: ExecHandlers,
  scope: CallScope,
): Promise<ExitInfo> {
  let exit: ExitInfo | undefined;
  let handlerFailure: { error: unknown } | undefined;
  try {
    for await (const raw of events) {
      if (exit !== undefined) throw new TransportError(`${scope.describe} sent events after "exit"`);
      const event = validate<ExecEvent>(ExecEvent, raw, scope);
      if (event.type === "exit") exit = event.exit;
      else if (event.type === "error") throw fromWire(event.error);
      else if (event.type === "started") throw new TransportError(`${scope.describe} sent "started" twice`);
      else {
        const bytes = decodeBase64(event.data, scope);
        try {
          if (event.type === "stdout") await handlers.onStdout?.(bytes);
          else await handlers.onStderr?.(bytes);
        } catch (err) {
          handlerFailure = { error: err };
          break;
        }
      }
    }
  } catch (err) {
    throw scope.fail(err);
  }
  if (handlerFailure !== undefined) throw handlerFailure.error;
  if (exit === undefined) throw new TransportError(`${scope.describe} ended its stream without "exit"`);
  return exit;
}

/** Reads `progress` lines (to `onProgress`) up to the single `result` line, whose value `pick` extracts. */
export async function readProgressStream<T>(
  lines: AsyncGenerator<unknown, void, undefined>,
  scope: CallScope,
  schema: z.core.$ZodType,
  onProgress: ((event: ProgressEvent) => void) | undefined,
  pick: (line: unknown) => T,
): Promise<T> {
  let result: { value: T } | undefined;
  let callbackFailure: { error: unknown } | undefined;
  try {
    for await (const raw of lines) {
      if (result !== undefined) throw new TransportError(`${scope.describe} sent lines after its result`);
      const line = validate<{ type: string; event?: ProgressEvent; error?: WireError }>(schema, raw, scope);
      if (line.type === "error") throw fromWire(line.error as WireError);
      if (line.type === "result") {
        result = { value: pick(line) };
        continue;
      }
      try {
        onProgress?.(line.event as ProgressEvent);
      } catch (err) {
        callbackFailure = { error: err };
        break;
      }
    }
  } catch (err) {
    throw scope.fail(err);
  }
  if (callbackFailure !== undefined) throw callbackFailure.error;
  if (result === undefined) throw new TransportError(`${scope.describe} ended its stream without a result`);
  return result.value;
}

export function decodeBase64(data: string, scope: CallScope): Uint8Array {
  if (data.length % 4 !== 0 || !BASE64.test(data)) throw new TransportError(`${scope.describe} sent output that is not base64`);
  return Buffer.from(data, "base64");
}
