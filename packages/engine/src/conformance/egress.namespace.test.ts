/** The egress and secrets suite on the namespace backend (container tier): every case. */
import { egressSuite } from "./egress.js";

egressSuite("namespace", { full: true });
