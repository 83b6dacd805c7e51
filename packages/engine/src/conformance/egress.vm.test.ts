/**
 * The egress and secrets suite on the vm backend. Under TCG a guest is slow, so it runs the cases
 * that exercise the VM's own plumbing (relay port, trust bundle, floor, substitution, SNI) and
 * published ports (the relay used the other way); the rest is gateway logic, the same for every
 * backend, covered on the namespace backend.
 */
import { existsSync } from "node:fs";
import { egressSuite } from "./egress.js";

egressSuite("vm", { full: false, skip: existsSync("/usr/bin/qemu-system-x86_64") ? undefined : "needs qemu-system-x86_64 (scripts/setup.sh installs it)" });
