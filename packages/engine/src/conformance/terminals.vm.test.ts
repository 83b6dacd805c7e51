/** The terminals and reattach suite on the vm backend: one booted VM for every case (TCG is slow). */
import { terminalsSuite } from "./terminals.js";

terminalsSuite("vm");
