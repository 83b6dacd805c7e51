/**
 * `mvmctl image build|ls|rm`: the engine's image store.
 */
import { resolve as resolvePath } from "node:path";
import { ImageRefSchema, type ImageInfo } from "@mvm/protocol";
import { defineCommand } from "../command.js";
import { booleanFlag } from "../flags.js";
import { formatBytes, formatTable } from "../text.js";
import { UsageError } from "../usage-error.js";
import { withEngine } from "./_lifetime.js";

function imageRefArg(value: string): string {
  const r = ImageRefSchema.safeParse(value);
  if (!r.success) {
    throw new UsageError(`Invalid image reference "${value}": ${r.error.issues[0]?.message ?? "invalid"}`, {
      cause: r.error,
      hint: 'Use e.g. "debian:bookworm", "debian:bookworm+python3" or "sha256:<hex>"',
    });
  }
  return r.data;
}

export const imageBuildCommand = defineCommand<{ ref: string; force: boolean }>({
  name: "image build",
  summary: "Build (or fetch) an image and print its digest",
  usage: "[--force] REF",
  details: "With --json the image record is printed.",
  flags: { force: { type: "boolean", description: "Build again even when the image is present" } },
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => ({ ref: imageRefArg(raw.positionals[0] ?? ""), force: booleanFlag(raw, "force") }),
  async run(ctx, { ref, force }) {
    return withEngine(ctx, async (engine) => {
      const progress = ctx.out.progress();
      let image: ImageInfo;
      try {
        image = await engine.buildImage(ref, { force, signal: ctx.signal, onProgress: (e) => progress.update(e) });
      } finally {
        progress.done();
      }
      ctx.out.human(`${image.digest}\n`);
      ctx.out.jsonResult(image);
      return 0;
    });
  },
});

export const imageImportCommand = defineCommand<{ path: string; name: string }>({
  name: "image import",
  summary: "Import a directory, a tar archive (plain or gzip) or an OCI image as an image",
  usage: "PATH|oci-layout:DIR|docker-archive:FILE NAME",
  details:
    "Extraction is path-safe: absolute paths, '..' and links leaving the tree are refused, device nodes are dropped and setuid/setgid bits cleared. PATH is read by the engine (the daemon, or this process). With --json the image record is printed.",
  flags: {},
  positionals: { min: 2, max: 2 },
  connection: "auto",
  parse: (raw) => ({ path: importSourceArg(raw.positionals[0] ?? ""), name: imageRefArg(raw.positionals[1] ?? "") }),
  async run(ctx, { path, name }) {
    return withEngine(ctx, async (engine) => {
      const progress = ctx.out.progress();
      let image: ImageInfo;
      try {
        image = await engine.importImage(path, name, { signal: ctx.signal, onProgress: (e) => progress.update(e) });
      } finally {
        progress.done();
      }
      ctx.out.human(`${image.digest}\n`);
      ctx.out.jsonResult(image);
      return 0;
    });
  },
});

/** `oci-layout:DIR` and `docker-archive:FILE` keep their prefix; the path after it is made absolute. */
function importSourceArg(raw: string): string {
  const m = /^(oci-layout|docker-archive):(.+)$/s.exec(raw);
  return m ? `${m[1]}:${resolvePath(m[2]!)}` : resolvePath(raw);
}

export const imagePullCommand = defineCommand<{ reference: string }>({
  name: "image pull",
  summary: "Pull an image from an OCI registry (linux/amd64), verified by digest",
  usage: "REGISTRY/REPO:TAG|REGISTRY/REPO@sha256:DIGEST",
  details:
    "The registry host is required (no default registry). A tag is resolved to a digest once; the image is also stored as REGISTRY/REPO@sha256:DIGEST, the pinned form to use in create. Plain http only for loopback registries. With --json the image record is printed.",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => ({ reference: raw.positionals[0] ?? "" }),
  async run(ctx, { reference }) {
    return withEngine(ctx, async (engine) => {
      const progress = ctx.out.progress();
      let image: ImageInfo;
      try {
        image = await engine.pullImage(reference, { signal: ctx.signal, onProgress: (e) => progress.update(e) });
      } finally {
        progress.done();
      }
      ctx.out.human(`${image.digest}${image.oci?.reference !== undefined ? `  ${image.oci.reference}` : ""}\n`);
      ctx.out.jsonResult(image);
      return 0;
    });
  },
});

export const imageLsCommand = defineCommand<Record<string, never>>({
  name: "image ls",
  summary: "List images",
  usage: "",
  details: "With --json an array of image records is printed.",
  flags: {},
  positionals: { min: 0, max: 0 },
  connection: "auto",
  parse: () => ({}),
  async run(ctx) {
    return withEngine(ctx, async (engine) => {
      const images = await engine.listImages({ signal: ctx.signal });
      ctx.out.jsonResult(images);
      const rows = images.map((i) => [i.digest.slice(0, "sha256:".length + 12), i.refs.join(","), formatBytes(i.sizeBytes), i.createdAt]);
      ctx.out.human(formatTable(["DIGEST", "REFS", "SIZE", "CREATED"], rows));
      return 0;
    });
  },
});

export const imageRmCommand = defineCommand<{ ref: string }>({
  name: "image rm",
  summary: "Remove an image",
  usage: "REF",
  details: 'With --json {"removed": REF} is printed.',
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => ({ ref: imageRefArg(raw.positionals[0] ?? "") }),
  async run(ctx, { ref }) {
    return withEngine(ctx, async (engine) => {
      await engine.removeImage(ref, { signal: ctx.signal });
      ctx.out.human(`${ref}\n`);
      ctx.out.jsonResult({ removed: ref });
      return 0;
    });
  },
});

export const imageInspectCommand = defineCommand<{ ref: string }>({
  name: "image inspect",
  summary: "Show an image, where it came from and its build provenance (signature checked)",
  usage: "REF",
  details:
    "Built images carry a provenance record signed with the host key: suite, requested and installed packages with their versions, mirror, SOURCE_DATE_EPOCH, mmdebstrap version, who built it, and the image digest. Its signature and digest are checked on every call. With --json the whole inspection is printed. Exit status 1 when the record does not check out.",
  flags: {},
  positionals: { min: 1, max: 1 },
  connection: "auto",
  parse: (raw) => ({ ref: imageRefArg(raw.positionals[0] ?? "") }),
  async run(ctx, { ref }) {
    return withEngine(ctx, async (engine) => {
      const image = await engine.inspectImage(ref, { signal: ctx.signal });
      ctx.out.jsonResult(image);
      const lines = [
        `digest:     ${image.digest}`,
        `refs:       ${image.refs.join(", ") || "-"}`,
        `size:       ${formatBytes(image.sizeBytes)}`,
        `created:    ${image.createdAt}`,
        `source:     ${image.source.kind}: ${image.source.detail}`,
      ];
      const p = image.provenance;
      if (p.status === "none") lines.push("provenance: none (not built on this host)");
      else if (p.status === "invalid") lines.push(`provenance: INVALID: ${p.reason}`);
      else {
        const r = p.record;
        lines.push(
          `provenance: ${p.digest} (signature verified, key ${p.keyId.slice(0, "sha256:".length + 16)}…)`,
          `  built:    ${r.ref} from suite ${r.suite}, SOURCE_DATE_EPOCH=${r.sourceDateEpoch}, mmdebstrap ${r.mmdebstrap.version} (--mode=${r.mmdebstrap.mode})`,
          `  builder:  ${r.builder.user} (uid ${r.builder.uid}), boundary ${r.builder.boundary}`,
          ...r.mirrors.map((m) => `  mirror:   ${m}`),
          `  packages: ${r.installed.length} installed`,
          ...r.installed.map((i) => `    ${i.package} ${i.version} ${i.architecture}`),
        );
      }
      ctx.out.human(`${lines.join("\n")}\n`);
      return p.status === "invalid" ? 1 : 0;
    });
  },
});
