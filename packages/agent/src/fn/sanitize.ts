/**
 * What a production-mode caller may see of an error: paths stripped, one line, at most 200
 * characters. The full stack goes to the operator log instead.
 */
import { MAX_FN_ERROR_MESSAGE, MAX_FN_STACK_CHARS } from "@mvm/protocol";

// A path-shaped token: file URLs, and two or more `/`-separated segments (absolute or relative).
const FILE_URL = /\bfile:\/\/\S+/g;
const PATH = /(?:~|\.{1,2})?(?:\/[^\s/:'"`()<>[\]{},;]+){2,}\/?|(?:~|\.{1,2})?\/[^\s/:'"`()<>[\]{},;]+\/?(?=[\s:'"`)\]]|$)/g;

/** The message with paths replaced by `<path>`, control characters removed, cut to 200 characters. */
export function sanitizeMessage(message: string): string {
  const oneLine = message
    .slice(0, 8192)
    .replace(FILE_URL, "<path>")
    .replace(PATH, "<path>")
    // eslint-disable-next-line no-control-regex
    .replace(/[\u0000-\u001f\u007f]+/g, " ")
    .trim();
  return oneLine.length > MAX_FN_ERROR_MESSAGE ? `${oneLine.slice(0, MAX_FN_ERROR_MESSAGE - 1)}…` : oneLine;
}

/** A stack cut to the operator log's limit. */
export function boundStack(stack: string): string {
  return stack.length > MAX_FN_STACK_CHARS ? `${stack.slice(0, MAX_FN_STACK_CHARS - 1)}…` : stack;
}
