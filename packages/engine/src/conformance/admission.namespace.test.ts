/** The admission and audit suite on the namespace backend (container tier): every case. */
import { admissionSuite } from "./admission.js";

admissionSuite("namespace", { full: true });
