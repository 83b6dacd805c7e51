import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AdmissionError } from "@mvm/protocol";
import {
  mirrorLinesFor,
  mmdebstrapArgv,
  parseDeb822Sources,
  parseOneLineSources,
  parseProgressLine,
  readHostAptSources,
} from "./debian.js";

const BOOKWORM_SOURCES = `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
`;

describe("apt sources", () => {
  test("deb822 stanzas, comments, disabled stanzas, continuation lines", () => {
    const withBlock = `${BOOKWORM_SOURCES}\nTypes: deb deb-src\nURIs: https://mirror.example/debian\nSuites: trixie\nComponents: main contrib\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n`;
    assert.deepEqual(parseDeb822Sources(withBlock), [
      { types: ["deb"], uris: ["http://deb.debian.org/debian"], suites: ["bookworm", "bookworm-updates"], components: ["main"] },
      { types: ["deb"], uris: ["http://deb.debian.org/debian-security"], suites: ["bookworm-security"], components: ["main"] },
      { types: ["deb", "deb-src"], uris: ["https://mirror.example/debian"], suites: ["trixie"], components: ["main", "contrib"] },
    ]);
  });

  test("one-line format with options and comments", () => {
    assert.deepEqual(
      parseOneLineSources("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib # tail\ndeb-src http://m.example/debian bookworm main\n\n"),
      [
        { types: ["deb"], uris: ["http://m.example/debian"], suites: ["bookworm"], components: ["main", "contrib"] },
        { types: ["deb-src"], uris: ["http://m.example/debian"], suites: ["bookworm"], components: ["main"] },
      ],
    );
  });

  test("readHostAptSources reads sources.list and sources.list.d", async () => {
    const dir = await mkdtemp(join(tmpdir(), "mvm-apt-"));
    try {
      await mkdir(join(dir, "sources.list.d"));
      await writeFile(join(dir, "sources.list"), "deb http://one.example/debian bookworm main\n");
      await writeFile(join(dir, "sources.list.d/debian.sources"), BOOKWORM_SOURCES);
      await writeFile(join(dir, "sources.list.d/ignored.txt"), "deb http://no.example/debian bookworm main\n");
      const uris = (await readHostAptSources(dir)).flatMap((s) => s.uris);
      assert.deepEqual(uris, ["http://one.example/debian", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("mirror lines: the host's suite with updates and security; another suite from the main archive", () => {
    const sources = parseDeb822Sources(BOOKWORM_SOURCES);
    assert.deepEqual(mirrorLinesFor("bookworm", sources), [
      "deb http://deb.debian.org/debian bookworm main",
      "deb http://deb.debian.org/debian bookworm-updates main",
      "deb http://deb.debian.org/debian-security bookworm-security main",
    ]);
    assert.deepEqual(mirrorLinesFor("trixie", sources), ["deb http://deb.debian.org/debian trixie main"]);
  });

  test("mirror lines: only plain http(s) URIs and components reach the command line", () => {
    const sources = parseOneLineSources(
      [
        "deb file:/srv/debian bookworm main",
        "deb http://evil.example/$(id) bookworm main",
        "deb cdrom:[Debian]/ bookworm main",
        "deb http://ok.example/debian bookworm main;rm non-free",
      ].join("\n"),
    );
    assert.deepEqual(mirrorLinesFor("bookworm", sources), ["deb http://ok.example/debian bookworm non-free"]);
    assert.throws(() => mirrorLinesFor("bookworm", parseOneLineSources("deb file:/srv/debian bookworm main")), AdmissionError);
    assert.throws(() => mirrorLinesFor("bookworm", []), AdmissionError);
  });
});

describe("mmdebstrap command line", () => {
  const mirrors = ["deb http://deb.debian.org/debian bookworm main"];
  test("always mode unshare, never mode root; proxy and kept archives when asked", () => {
    const argv = mmdebstrapArgv({ suite: "bookworm", packages: ["busybox", "python3"], outputTar: "/s/out.tar", mirrors, proxyUrl: "http://127.0.0.1:3142", keepDebsDir: "/b/debs" });
    assert.equal(argv[0], "mmdebstrap");
    assert.ok(argv.includes("--mode=unshare"));
    assert.ok(!argv.some((a) => a.includes("--mode=root")));
    assert.ok(argv.includes('--aptopt=Acquire::http::Proxy "http://127.0.0.1:3142"'));
    assert.ok(argv.includes("--customize-hook=sync-out /var/cache/apt/archives /b/debs"));
    assert.ok(argv.includes("--variant=minbase"));
    assert.ok(argv.includes("--format=tar"));
    assert.ok(argv.includes("--include=busybox,python3"));
    assert.deepEqual(argv.slice(-3), ["bookworm", "/s/out.tar", mirrors[0]]);
  });
  test("no proxy, no kept archives, no --include without packages", () => {
    const argv = mmdebstrapArgv({ suite: "bookworm", packages: [], outputTar: "/s/out.tar", mirrors });
    assert.equal(argv[0], "mmdebstrap");
    assert.ok(argv.includes("--mode=unshare"));
    assert.ok(!argv.some((a) => a.startsWith("--include")));
  });
  test("progress lines", () => {
    assert.deepEqual(parseProgressLine("I: downloading packages with apt..."), { phase: "download", message: "downloading packages with apt", fraction: 0.15 });
    assert.deepEqual(parseProgressLine("I: success in 38.6198 seconds"), { phase: "built", message: "success in 38.6198 seconds", fraction: 1 });
    assert.deepEqual(parseProgressLine("W: something odd"), { phase: "build", message: "something odd" });
    assert.equal(parseProgressLine("Get:1 http://deb.debian.org/debian bookworm InRelease"), undefined);
  });
});
