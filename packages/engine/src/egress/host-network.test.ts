import { test } from "node:test";
import assert from "node:assert/strict";
import { ownAddresses, readHostNetwork, type HostNetworkSources } from "./host-network.js";

/** Sources whose kernel text the test changes between reads, counting every read. */
function changingHost(): { sources: HostNetworkSources; reads: () => number; set(address: string, arp: string): void } {
  let address = "100.1.2.3";
  let arp = "IP address       HW type     Flags       HW address            Mask     Device\n";
  let reads = 0;
  return {
    sources: {
      interfaces: () => {
        reads++;
        return { eth0: [{ address, netmask: "255.255.255.0", family: "IPv4", mac: "02:00:00:00:00:01", internal: false, cidr: `${address}/24` }] };
      },
      readFile: (path) => (path === "/proc/net/arp" ? arp : undefined),
    },
    reads: () => reads,
    set(a, t) {
      address = a;
      arp = t;
    },
  };
}

test("readHostNetwork reads the kernel every call and reparses only when what it read changed", () => {
  const host = changingHost();
  const first = readHostNetwork(host.sources);
  assert.equal(readHostNetwork(host.sources), first, "the same text gives the same (frozen) snapshot");
  assert.equal(host.reads(), 2, "every call reads the kernel");
  assert.ok(Object.isFrozen(first) && Object.isFrozen(first.own) && Object.isFrozen(first.nearby));
  host.set("100.1.2.4", "IP address       HW type     Flags       HW address            Mask     Device\n100.1.2.9        0x1         0x2         02:00:00:00:00:09     *        eth0\n");
  const second = readHostNetwork(host.sources);
  assert.notEqual(second, first);
  assert.deepEqual(ownAddresses(second), ["100.1.2.4"]);
  assert.ok(second.nearby.some((e) => e.what === "a neighbour of this host (on eth0)"), "a changed procfs file is parsed again");
  assert.deepEqual(ownAddresses(first), ["100.1.2.3"], "an earlier snapshot is not changed");
});
