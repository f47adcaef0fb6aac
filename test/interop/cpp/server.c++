// Reference C++ (capnp EzRpc) Worker server for the interop tests and the benchmark baseline.
// Usage: server <bind address> <listCount>; prints "ready" once listening.
#include <capnp/ez-rpc.h>
#include <kj/debug.h>
#include <cstdio>
#include <cstdlib>
#include "sample.h"

// An exception whose description is exactly `text` (KJ_EXCEPTION would append "expr = value" for extra args).
static kj::Exception failed(kj::String text) {
  return kj::Exception(kj::Exception::Type::FAILED, __FILE__, __LINE__, kj::mv(text));
}

class WorkerImpl final : public Worker::Server {
 public:
  explicit WorkerImpl(uint32_t listCount) : listCount(listCount) {}

 protected:
  kj::Promise<void> listVms(ListVmsContext context) override {
    auto vms = context.getResults().initVms(listCount);
    for (uint32_t i = 0; i < listCount; i++) fillSampleVm(vms[i], i);
    return kj::READY_NOW;
  }

  kj::Promise<void> getVm(GetVmContext context) override {
    auto id = context.getParams().getId();
    if (id == "missing") return failed(kj::str("NOT_FOUND: no vm ", id));
    auto vm = context.getResults().initVm();
    fillSampleVm(vm, 1);
    vm.setId(id);
    return kj::READY_NOW;
  }

  kj::Promise<void> createVm(CreateVmContext context) override {
    auto params = context.getParams();
    auto spec = params.getSpec();
    auto id = kj::str(spec.getHostname(), "|", spec.getKernel(), "|", spec.getInitrd(), "|", spec.getImage(), "|",
                      spec.getCmdline(), "|", spec.getCpu(), "|", spec.getMemoryBytes(), "|");
    for (auto d : spec.getAllowedDomains()) id = kj::str(id, d, ",");
    id = kj::str(id, "|", spec.getGroup(), "|");
    for (auto s : params.getSecrets()) {
      id = kj::str(id, s.getName(), "=");
      for (auto b : s.getValue()) id = kj::str(id, uint32_t(b), ".");
      id = kj::str(id, ";");
    }
    id = kj::str(id, "|", params.getTtlSeconds(), "|", params.getIdempotencyKey(), "|", params.getPlacement().getHost(), "|");
    for (auto l : params.getPlacement().getLabels()) id = kj::str(id, l.getKey(), "=", l.getValue(), ",");
    context.getResults().setId(kj::mv(id));
    return kj::READY_NOW;
  }

  kj::Promise<void> deleteVm(DeleteVmContext context) override {
    return failed(kj::str("NOT_FOUND: no vm ", context.getParams().getId()));
  }

  kj::Promise<void> read(ReadContext context) override {
    auto params = context.getParams();
    auto text = kj::str("console of ", params.getId());
    auto results = context.getResults();
    results.setData(text.asBytes());
    results.setNextOffset(params.getOffset() + text.size());
    return kj::READY_NOW;
  }

  kj::Promise<void> events(EventsContext context) override {
    auto params = context.getParams();
    auto results = context.getResults();
    auto events = results.initEvents(1);
    events[0].setSeq(params.getSinceSeq());
    events[0].setVmId("vm-1");
    events[0].setStatus(VmStatus::RUNNING);
    events[0].setAtMs(1700000000123ull);
    events[0].setReason("started");
    results.setNextSeq(params.getSinceSeq() + 1);
    return kj::READY_NOW;
  }

 private:
  uint32_t listCount;
};

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: server <bind address> <listCount>\n");
    return 2;
  }
  capnp::EzRpcServer server(kj::heap<WorkerImpl>(atoi(argv[2])), argv[1]);
  auto& ws = server.getWaitScope();
  uint port = server.getPort().wait(ws);
  printf("ready %u\n", port);
  fflush(stdout);
  kj::NEVER_DONE.wait(ws);
}
