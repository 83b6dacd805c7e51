/** dm-verity for the VM tier's read-only disks: build the hash tree, check it, open it in the guest. */
export { formatVerity, verifyVerity, deriveSalt, verityParameterArgs, VERITY_BLOCK_SIZE_BYTES } from "./verity.js";
export type { VerityInfo, FormatVerityOptions } from "./verity.js";
export {
  kernelCmdlineFor,
  kernelCmdlineForDisks,
  dmInitDevice,
  dmsetupCreateArgs,
  veritysetupOpenArgs,
  verityTableLine,
  DEBIAN_CLOUD_VERITY_MODULES,
} from "./cmdline.js";
export type { VerityDeviceOptions, VerityDisk, VerityKernelCmdline } from "./cmdline.js";
export { parseVerityFormatReport } from "./format-output.js";
export type { VerityFormatReport } from "./format-output.js";
