import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { AdmissionError } from "@mvm/protocol";
import { MAX_FORMAT_REPORT_CHARS, parseVerityFormatReport } from "./format-output.js";

const ROOT = "a10adfd345717be0f4f19e85183f89ce9355a8beb5bf50581b325d82867a38cc";

/** veritysetup 2.6.1's report, tab after the padded label. */
function report(overrides: Record<string, string | null> = {}, header = "VERITY header information for /tmp/x.ext4"): string {
  const fields: Record<string, string | null> = {
    "UUID": "",
    "Hash type": "1",
    "Data blocks": "2048",
    "Data block size": "4096",
    "Hash blocks": "17",
    "Hash block size": "4096",
    "Hash algorithm": "sha256",
    "Salt": "00112233",
    "Root hash": ROOT,
    ...overrides,
  };
  const lines = [header];
  for (const [label, value] of Object.entries(fields)) if (value !== null) lines.push(`${`${label}:`.padEnd(17)}\t${value}`);
  return `${lines.join("\n")}\n`;
}

function rejects(text: string, pattern: RegExp): void {
  assert.throws(() => parseVerityFormatReport(text), (error: unknown) => {
    assert.ok(error instanceof AdmissionError, String(error));
    assert.match(error.message, pattern);
    return true;
  });
}

describe("parseVerityFormatReport", () => {
  it("parses veritysetup's report", () => {
    assert.deepEqual(parseVerityFormatReport(report()), {
      hashType: 1,
      dataBlocks: 2048,
      dataBlockSizeBytes: 4096,
      hashBlocks: 17,
      hashBlockSizeBytes: 4096,
      hashAlgorithm: "sha256",
      saltHex: "00112233",
      rootHashHex: ROOT,
    });
  });

  it("accepts a report without UUID and with a hash device size", () => {
    const parsed = parseVerityFormatReport(report({ "UUID": null, "Hash device size": "69632 [bytes]" }));
    assert.equal(parsed.hashDeviceSizeBytes, 69632);
  });

  it("rejects a missing, repeated or unknown field", () => {
    rejects(report({ "Root hash": null }), /field "Root hash" is missing/);
    rejects(report({ "Salt": null }), /field "Salt" is missing/);
    rejects(`${report()}Root hash:\t${"0".repeat(64)}\n`, /appears twice/);
    rejects(`${report()}Flags:\tnone\n`, /unknown field "Flags"/);
    rejects(`${report()}garbage line\n`, /is not "Field: value"/);
  });

  it("rejects a missing or wrong header", () => {
    rejects("", /is not the header/);
    rejects(report({}, "Root hash: 00"), /is not the header/);
  });

  it("rejects bad values", () => {
    rejects(report({ "Hash type": "0" }), /hash type "0"/);
    rejects(report({ "Hash algorithm": "sha1" }), /hash algorithm "sha1"/);
    rejects(report({ "Root hash": ROOT.toUpperCase() }), /root hash/);
    rejects(report({ "Root hash": ROOT.slice(2) }), /root hash/);
    rejects(report({ "Root hash": `${ROOT} ; rm -rf /` }), /root hash/);
    rejects(report({ "Salt": "0" }), /salt/);
    rejects(report({ "Salt": "-" }), /salt/);
    rejects(report({ "Salt": "zz" }), /salt/);
    rejects(report({ "Salt": "00".repeat(257) }), /salt/);
    rejects(report({ "Data blocks": "0" }), /data blocks "0"/);
    rejects(report({ "Data blocks": "-5" }), /data blocks/);
    rejects(report({ "Data blocks": "99999999999999999" }), /data blocks/);
    rejects(report({ "Data blocks": "12abc" }), /data blocks/);
    rejects(report({ "Data block size": "4095" }), /data block size/);
    rejects(report({ "Hash block size": "256" }), /hash block size/);
    rejects(report({ "Hash block size": "131072" }), /hash block size/);
    rejects(report({ "Hash device size": "69632" }), /hash device size/);
  });

  it("rejects an oversized report", () => {
    rejects(report() + " ".repeat(MAX_FORMAT_REPORT_CHARS), /characters is more than/);
  });

  it("throws only AdmissionError, whatever the input", () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 600 }), (text) => {
        try {
          parseVerityFormatReport(text);
          return false;
        } catch (error) {
          return error instanceof AdmissionError;
        }
      }),
      { numRuns: 500 },
    );
  });

  it("rejects any single-line corruption of a valid report or parses it to the same fields", () => {
    const valid = report();
    const lines = valid.split("\n");
    fc.assert(
      fc.property(fc.nat({ max: lines.length - 1 }), fc.string({ minLength: 1, maxLength: 80 }), (index, replacement) => {
        const mutated = lines.map((line, i) => (i === index ? replacement : line)).join("\n");
        try {
          const parsed = parseVerityFormatReport(mutated);
          // Accepted only if every reported field still checks out.
          assert.match(parsed.rootHashHex, /^[0-9a-f]{64}$/);
          assert.ok(Number.isSafeInteger(parsed.dataBlocks) && parsed.dataBlocks > 0);
          assert.ok([512, 1024, 2048, 4096, 8192, 16384, 32768, 65536].includes(parsed.dataBlockSizeBytes));
          return true;
        } catch (error) {
          return error instanceof AdmissionError;
        }
      }),
      { numRuns: 500 },
    );
  });
});
