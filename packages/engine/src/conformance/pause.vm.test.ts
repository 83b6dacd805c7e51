/** The pause and resume suite on the vm backend (QMP stop / cont). */
import { pauseSuite } from "./pause.js";

pauseSuite("vm");
