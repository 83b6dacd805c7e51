/** The terminals and reattach suite on the namespace backend. */
import { terminalsSuite } from "./terminals.js";

terminalsSuite("namespace");
