/**
 * How a guest opens a verity-protected disk, in the two ways Linux offers:
 *
 * - `kernelCmdlineFor`: the kernel builds the device itself from `dm-mod.create=` (dm-init). Needs
 *   CONFIG_BLK_DEV_DM=y, CONFIG_DM_INIT=y and CONFIG_DM_VERITY=y plus a built-in disk driver.
 * - `veritysetupOpenArgs`: an initramfs runs `veritysetup open` after loading the modules. Works
 *   with modular kernels such as Debian's linux-image-cloud-amd64 (dm-mod, dm-verity are =m there
 *   and DM_INIT is absent).
 *
 * Both take every parameter from the host's VerityInfo; nothing is read from the disk.
 */
import { InvalidArgumentError } from "@mvm/protocol";
import { verityParameterArgs, type VerityInfo } from "./verity.js";

export interface VerityDeviceOptions {
  /** Guest block device of the data, e.g. "/dev/vda", or "major:minor" like "254:0". */
  dataDevice: string;
  /** Guest block device of the hash tree. @default dataDevice (tree appended to the data) */
  hashDevice?: string;
  /** Device-mapper name, e.g. "root"; the device appears as /dev/mapper/<name>. */
  name: string;
}

export interface VerityKernelCmdline {
  /** The dm-init table: `<name>,<uuid>,<minor>,<flags>,<table>`. */
  dmModCreate: string;
  /** Kernel command-line words: `dm-mod.create="…"`, `root=/dev/dm-0`, `ro`. */
  args: string[];
}

/** Modules Debian's cloud kernel (6.1, bookworm) needs for a verity disk on virtio-blk over PCI, in dependency order. */
export const DEBIAN_CLOUD_VERITY_MODULES: readonly string[] = [
  "virtio_ring",
  "virtio",
  "virtio_pci_modern_dev",
  "virtio_pci_legacy_dev",
  "virtio_pci",
  "virtio_blk",
  "dm-mod",
  "dm-bufio",
  "reed_solomon",
  "dm-verity",
];

const SECTOR_BYTES = 512;
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$/;
const DEVICE = /^(?:\/dev\/[A-Za-z0-9_-]{1,32}(?:\/[A-Za-z0-9_-]{1,32}){0,3}|[0-9]{1,4}:[0-9]{1,7})$/;

function checkDevices(options: VerityDeviceOptions): { data: string; hash: string } {
  if (!NAME.test(options.name)) throw new InvalidArgumentError(`Device-mapper name ${JSON.stringify(options.name)} must be 1 to 64 of A-Z a-z 0-9 _ - not starting with -`);
  const hash = options.hashDevice ?? options.dataDevice;
  for (const device of [options.dataDevice, hash]) {
    if (!DEVICE.test(device)) throw new InvalidArgumentError(`Device ${JSON.stringify(device)} is not a /dev path or major:minor`);
  }
  return { data: options.dataDevice, hash };
}

function checkInfo(info: VerityInfo): void {
  const whole = (what: string, n: number): void => {
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`Verity ${what} ${JSON.stringify(n)} is not a non-negative integer`);
  };
  whole("data blocks", info.dataBlocks);
  whole("hash offset", info.hashOffsetBytes);
  if (info.dataBlocks === 0) throw new InvalidArgumentError(`Verity data blocks "0" must be positive`);
  if (info.hashOffsetBytes % info.hashBlockSizeBytes !== 0) {
    throw new InvalidArgumentError(`Verity hash offset "${info.hashOffsetBytes}" is not a multiple of the hash block size "${info.hashBlockSizeBytes}"`);
  }
  if ((info.dataBlocks * info.dataBlockSizeBytes) % SECTOR_BYTES !== 0) throw new InvalidArgumentError(`Verity data size is not a whole number of sectors`);
  if (!/^[0-9a-f]{64}$/.test(info.rootHashHex)) throw new InvalidArgumentError(`Root hash ${JSON.stringify(info.rootHashHex)} is not 64 lower-case hex digits`);
  if (!/^(?:[0-9a-f]{2})+$/.test(info.saltHex)) throw new InvalidArgumentError(`Salt ${JSON.stringify(info.saltHex)} is not lower-case hex`);
}

/**
 * The dm-verity target line (Documentation/admin-guide/device-mapper/verity.rst):
 * `0 <sectors> verity 1 <data_dev> <hash_dev> <data_block_size> <hash_block_size>
 *  <num_data_blocks> <hash_start_block> <algorithm> <root_hash> <salt>`.
 * hash_start_block counts hash-block-size blocks from the start of the hash device.
 */
export function verityTableLine(info: VerityInfo, options: VerityDeviceOptions): string {
  checkInfo(info);
  const { data, hash } = checkDevices(options);
  const sectors = (info.dataBlocks * info.dataBlockSizeBytes) / SECTOR_BYTES;
  const hashStartBlock = info.hashOffsetBytes / info.hashBlockSizeBytes;
  return [
    0,
    sectors,
    "verity",
    info.hashType,
    data,
    hash,
    info.dataBlockSizeBytes,
    info.hashBlockSizeBytes,
    info.dataBlocks,
    hashStartBlock,
    info.hashAlgorithm,
    info.rootHashHex,
    info.saltHex,
  ].join(" ");
}

/** One disk for kernelCmdlineForDisks. */
export interface VerityDisk {
  info: VerityInfo;
  device: VerityDeviceOptions;
}

/** One dm-init device: `<name>,,,ro,<verity table line>` (uuid and minor left to the kernel). */
export function dmInitDevice(info: VerityInfo, options: VerityDeviceOptions): string {
  return `${options.name},,,ro,${verityTableLine(info, options)}`;
}

/**
 * Kernel command-line words that make the kernel open several read-only verity disks at boot
 * (dm-init, Documentation/admin-guide/device-mapper/dm-init.rst) and mount the first as root.
 * dm-init numbers the devices in order, so disk i is /dev/dm-<i> (with devtmpfs; dm-init does not
 * create /dev/mapper/<name>).
 */
export function kernelCmdlineForDisks(disks: readonly VerityDisk[]): VerityKernelCmdline {
  if (disks.length === 0) throw new InvalidArgumentError(`Verity disks "[]" must name at least the root disk`);
  const names = new Set<string>();
  for (const { device } of disks) {
    if (names.has(device.name)) throw new InvalidArgumentError(`Device-mapper name ${JSON.stringify(device.name)} is used twice`);
    names.add(device.name);
  }
  const dmModCreate = disks.map(({ info, device }) => dmInitDevice(info, device)).join(";");
  return { dmModCreate, args: [`dm-mod.create="${dmModCreate}"`, "root=/dev/dm-0", "ro"] };
}

/**
 * Kernel command-line words that make the kernel open the disk as a read-only verity device
 * (dm-init) and mount it as root.
 *
 * @example
 *   kernelCmdlineFor(info, { dataDevice: "/dev/vda", name: "root" }).args.join(" ")
 *   // dm-mod.create="root,,,ro,0 409600 verity 1 /dev/vda /dev/vda 4096 4096 51200 51200 sha256 <root> <salt>" root=/dev/dm-0 ro
 */
export function kernelCmdlineFor(info: VerityInfo, options: VerityDeviceOptions): VerityKernelCmdline {
  return kernelCmdlineForDisks([{ info, device: options }]);
}

/**
 * argv (without the program name) for `dmsetup create` in an initramfs that has dmsetup but not
 * veritysetup; same table as the kernel command line. Run `dmsetup mknodes` after it when no udev
 * creates /dev/mapper/<name>.
 */
export function dmsetupCreateArgs(info: VerityInfo, options: VerityDeviceOptions): string[] {
  return ["create", options.name, "--readonly", "--table", verityTableLine(info, options)];
}

/**
 * argv (without the program name) for `veritysetup open` in an initramfs; the device then appears
 * as /dev/mapper/<name> and is mounted read-only.
 */
export function veritysetupOpenArgs(info: VerityInfo, options: VerityDeviceOptions): string[] {
  checkInfo(info);
  const { data, hash } = checkDevices(options);
  return ["open", ...verityParameterArgs(info), data, options.name, hash, info.rootHashHex];
}
