import { lifecycleSuite } from "./lifecycle.js";
import { securitySuite } from "./security.js";

lifecycleSuite("namespace");
securitySuite("namespace");
