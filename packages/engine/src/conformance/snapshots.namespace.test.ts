/** The snapshot suite on the namespace backend (container tier: /work and /tmp). */
import { snapshotSuite } from "./snapshots.js";

snapshotSuite("namespace");
