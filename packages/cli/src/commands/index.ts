/**
 * The command table, in the order `mvmctl --help` lists it.
 */
import type { Command } from "../command.js";
import { auditPubkeyCommand, auditShowCommand, auditTailCommand, auditVerifyCommand } from "./audit.js";
import { cpCommand } from "./cp.js";
import { createCommand } from "./create.js";
import { daemonCommand } from "./daemon.js";
import { doctorCommand } from "./doctor.js";
import { execCommand } from "./exec.js";
import { imageBuildCommand, imageImportCommand, imageInspectCommand, imageLsCommand, imagePullCommand, imageRmCommand } from "./image.js";
import { killCommand } from "./kill.js";
import { pauseCommand, resumeCommand } from "./pause.js";
import { forkCommand, snapshotCreateCommand, snapshotInspectCommand, snapshotLsCommand, snapshotRmCommand } from "./snapshot.js";
import { lsCommand } from "./ls.js";
import { logsCommand, networkSetCommand, networkShowCommand } from "./network.js";
import { secretLsCommand, secretRmCommand, secretSetCommand } from "./secret.js";
import { runCommand } from "./run.js";
import { poolLsCommand, poolSetCommand } from "./pool.js";
import { bundlePullCommand, bundlePushCommand } from "./bundle.js";
import { planCommand } from "./plan.js";
import { fnRunCommand } from "./fn.js";
import { attachCommand, pkillCommand, psCommand } from "./processes.js";
import { ttlCommand } from "./ttl.js";
import { portCommand } from "./port.js";
import { mcpCommand } from "./mcp.js";
import { serveCommand } from "./serve.js";
import { apikeyCreateCommand, apikeyLsCommand, apikeyRmCommand } from "./apikey.js";

export const COMMANDS: readonly Command[] = [
  doctorCommand,
  runCommand,
  planCommand,
  createCommand,
  lsCommand,
  execCommand,
  psCommand,
  attachCommand,
  pkillCommand,
  cpCommand,
  killCommand,
  pauseCommand,
  resumeCommand,
  ttlCommand,
  portCommand,
  snapshotCreateCommand,
  snapshotLsCommand,
  snapshotInspectCommand,
  snapshotRmCommand,
  forkCommand,
  poolSetCommand,
  poolLsCommand,
  bundlePushCommand,
  bundlePullCommand,
  fnRunCommand,
  logsCommand,
  networkSetCommand,
  networkShowCommand,
  secretSetCommand,
  secretLsCommand,
  secretRmCommand,
  imageBuildCommand,
  imageImportCommand,
  imagePullCommand,
  imageLsCommand,
  imageRmCommand,
  imageInspectCommand,
  auditVerifyCommand,
  auditTailCommand,
  auditShowCommand,
  auditPubkeyCommand,
  daemonCommand,
  mcpCommand,
  serveCommand,
  apikeyCreateCommand,
  apikeyLsCommand,
  apikeyRmCommand,
];
