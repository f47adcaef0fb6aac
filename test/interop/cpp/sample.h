// Sample data shared by the C++ test client and server; mirrors test/rpc/fake-worker.ts sampleVm().
#pragma once
#include <kj/string.h>
#include <cstdio>
#include <cstdint>
#include "worker.capnp.h"

inline void fillSampleVm(RunningVm::Builder vm, uint32_t i) {
  static const VmStatus statuses[] = {VmStatus::CREATING, VmStatus::RUNNING, VmStatus::PAUSED, VmStatus::STOPPING,
                                      VmStatus::STOPPED,  VmStatus::FAILED,  VmStatus::LOST};
  char id[32];
  snprintf(id, sizeof(id), "vm-%06u", i);
  vm.setId(id);
  vm.setHostname(kj::str("host-", i));
  vm.setStatus(statuses[i % 7]);
  vm.setFailure(i % 6 == 5 ? kj::str("boot failed #", i) : kj::str(""));
  vm.setIp(kj::str("10.213.", (i >> 8) & 255, ".", i & 255));
  vm.setMac("52:54:00:12:34:56");
  vm.setCpu(1 + i % 4);
  vm.setMemoryBytes(uint64_t(256 + i) * 1024 * 1024);
  vm.setSpecHash(kj::str(kj::repeat('a', 64)));
  vm.setCreatedAtMs(1700000000000ull + i);
  vm.setUptimeMs(uint64_t(i) * 1000);
  auto c = vm.initCounters();
  c.setBlockReadBytes(i);
  c.setBlockWriteBytes(uint64_t(i) * 2 + 1);
  c.setBlockReadOps(uint64_t(i) * 3 + 2);
  c.setBlockWriteOps(uint64_t(i) * 4 + 3);
  c.setNetRxBytes(uint64_t(i) * 5 + 4);
  c.setNetTxBytes(uint64_t(i) * 6 + 5);
  c.setNetRxPackets(uint64_t(i) * 7 + 6);
  c.setNetTxPackets((1ull << 40) + i);
  vm.setEgressDrops(i % 7);
  vm.setBackend("qemu");
  if (i % 3 == 0) {
    auto fault = vm.initFaults(1)[0];
    fault.setId(kj::str("f-", i));
    fault.setKind("loss");
    fault.setDescription(kj::str("loss ", i, "%"));
    fault.setInjectedAtMs(1700000000000ull + i);
    fault.setExpiresAtMs(i);
  }
  static const char* agentStates[] = {"none", "connecting", "ready", "broken"};
  vm.setAgentState(agentStates[i % 4]);
  vm.setAgentReadyMs(i % 4 == 2 ? 2000 + i : 0);
  if (i % 2 == 1) vm.setGroup(kj::str("grp-", i % 3));
  static const VmOrigin origins[] = {VmOrigin::BOOT, VmOrigin::POOL, VmOrigin::SNAPSHOT};
  vm.setOrigin(origins[i % 3]);
  if (i % 2 == 0) vm.setHost(kj::str("h", i % 5));
  if (i % 4 == 1) vm.setIdempotencyKey(kj::str("key ", i, " ~!"));
}

inline kj::String describeFaults(capnp::List<ActiveFault>::Reader faults) {
  kj::String out = kj::str("");
  for (auto f : faults) {
    out = kj::str(out, f.getId(), ",", f.getKind(), ",", f.getDescription(), ",", f.getInjectedAtMs(), ",", f.getExpiresAtMs(), ";");
  }
  return out;
}

// One line per VM, compared textually by the TypeScript side.
inline kj::String describeVm(RunningVm::Reader vm) {
  auto c = vm.getCounters();
  return kj::str(vm.getId(), "|", vm.getHostname(), "|", uint16_t(vm.getStatus()), "|", vm.getFailure(), "|",
                 vm.getIp(), "|", vm.getMac(), "|", vm.getCpu(), "|", vm.getMemoryBytes(), "|",
                 vm.getSpecHash(), "|", vm.getCreatedAtMs(), "|", vm.getUptimeMs(), "|",
                 c.getBlockReadBytes(), ",", c.getBlockWriteBytes(), ",", c.getBlockReadOps(), ",",
                 c.getBlockWriteOps(), ",", c.getNetRxBytes(), ",", c.getNetTxBytes(), ",",
                 c.getNetRxPackets(), ",", c.getNetTxPackets(), "|", vm.getEgressDrops(), "|", vm.getBackend(), "|",
                 describeFaults(vm.getFaults()), "|", vm.getAgentState(), "|", vm.getAgentReadyMs(), "|",
                 vm.getGroup(), "|", uint16_t(vm.getOrigin()), "|", vm.getHost(), "|", vm.getIdempotencyKey());
}
