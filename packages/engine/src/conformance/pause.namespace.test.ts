/** The pause and resume suite on the namespace backend (container tier: the cgroup freezer). */
import { pauseSuite } from "./pause.js";

pauseSuite("namespace");
