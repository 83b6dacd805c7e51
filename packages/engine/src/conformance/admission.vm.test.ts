/**
 * The admission and audit suite on the vm backend: a guest boots only through an admitted plan and
 * its actions land in the same log. Policy-file, expiry and torn-log cases are engine logic, the
 * same for every backend, and run on the namespace backend.
 */
import { existsSync } from "node:fs";
import { admissionSuite } from "./admission.js";

admissionSuite("vm", { full: false, skip: existsSync("/usr/bin/qemu-system-x86_64") ? undefined : "needs qemu-system-x86_64 (scripts/setup.sh installs it)" });
