/** The snapshot suite on the vm backend (memory, devices and /work). */
import { snapshotSuite } from "./snapshots.js";

snapshotSuite("vm");
