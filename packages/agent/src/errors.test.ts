import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { InternalError, NotFoundError } from "@mvm/protocol";
import { MAX_ERROR_MESSAGE, boundMessage, codeForErrno, fsError, toErrorBody } from "./errors.js";

const sysError = (code: string) => Object.assign(new Error(`${code}: boom`), { code });

describe("errors", () => {
  it("maps errno names to protocol codes", () => {
    const cases: Array<[string, string]> = [
      ["ENOENT", "NOT_FOUND"],
      ["EEXIST", "ALREADY_EXISTS"],
      ["EACCES", "PERMISSION_DENIED"],
      ["EPERM", "PERMISSION_DENIED"],
      ["EROFS", "PERMISSION_DENIED"],
      ["EISDIR", "INVALID_ARGUMENT"],
      ["ENOTDIR", "INVALID_ARGUMENT"],
      ["ENOTEMPTY", "INVALID_ARGUMENT"],
      ["EINVAL", "INVALID_ARGUMENT"],
      ["ELOOP", "INVALID_ARGUMENT"],
      ["ENOSPC", "INTERNAL"],
      ["EIO", "INTERNAL"],
    ];
    for (const [errno, code] of cases) assert.equal(codeForErrno(errno), code, errno);
    assert.equal(codeForErrno(undefined), "INTERNAL");
  });

  it("builds sentence-case messages with the path quoted and the cause kept", () => {
    const cause = sysError("ENOENT");
    const err = fsError(cause, "Cannot open", "/work/a b");
    assert.ok(err instanceof NotFoundError);
    assert.equal(err.message, 'Cannot open "/work/a b": no such file or directory (ENOENT)');
    assert.equal(err.cause, cause);
    assert.ok(fsError(sysError("ENOSPC"), "Cannot write", "/x") instanceof InternalError);
  });

  it("bounds messages and never sends a stack", () => {
    const long = fsError(sysError("ENOENT"), "Cannot open", `/${"a".repeat(10_000)}`);
    assert.ok(long.message.length <= MAX_ERROR_MESSAGE);
    assert.equal(boundMessage("x".repeat(MAX_ERROR_MESSAGE + 10)).length, MAX_ERROR_MESSAGE);
    const original = process.stderr.write;
    process.stderr.write = () => true;
    try {
      const body = toErrorBody(new TypeError("x".repeat(9000)));
      assert.equal(body.code, "INTERNAL");
      assert.ok(body.message.length <= MAX_ERROR_MESSAGE);
      assert.doesNotMatch(body.message, /\n\s+at /);
    } finally {
      process.stderr.write = original;
    }
    assert.deepEqual(toErrorBody(sysError("EEXIST")), { code: "ALREADY_EXISTS", message: "already exists (EEXIST)" });
  });
});
