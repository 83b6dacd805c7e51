import { lifecycleSuite } from "./lifecycle.js";
import { securitySuite } from "./security.js";

lifecycleSuite("vm");
securitySuite("vm");
