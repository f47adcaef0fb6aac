// Reference C++ (capnp EzRpc) client used by the interop tests and the benchmark.
// Usage: client <address> <mode> [args...]; prints results on stdout, exits non-zero on surprise.
#include <capnp/ez-rpc.h>
#include <kj/debug.h>
#include <kj/async.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "sample.h"

using Clock = std::chrono::steady_clock;
static constexpr uint64_t WORKER_ID = 0xa6f558509d9fa23cull;

static double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

static kj::Promise<void> chain(Worker::Client& worker, int& remaining) {
  if (remaining <= 0) return kj::READY_NOW;
  --remaining;
  auto req = worker.getVmRequest();
  req.setId("vm-000001");
  return req.send().then([&worker, &remaining](capnp::Response<Worker::GetVmResults>&& r) {
    KJ_REQUIRE(r.getVm().getId() == "vm-000001");
    return chain(worker, remaining);
  });
}

static void runInFlight(Worker::Client& worker, kj::WaitScope& ws, int total, int depth) {
  int remaining = total;
  kj::Vector<kj::Promise<void>> chains;
  for (int i = 0; i < depth; i++) chains.add(chain(worker, remaining));
  kj::joinPromises(chains.releaseAsArray()).wait(ws);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: client <address> <mode> [args]\n");
    return 2;
  }
  capnp::EzRpcClient client(argv[1]);
  auto& ws = client.getWaitScope();
  Worker::Client worker = client.getMain<Worker>();
  kj::StringPtr mode = argv[2];

  if (mode == "create-all") {
    auto req = worker.createVmRequest();
    auto spec = req.initSpec();
    spec.setHostname("web-1");
    spec.setKernel("/nix/store/aaa-kernel/bzImage");
    spec.setInitrd("/nix/store/bbb-initrd/initrd");
    spec.setImage("/nix/store/ccc-image/root.img");
    spec.setCmdline("console=ttyS0 quiet");
    spec.setCpu(3);
    spec.setMemoryBytes(5ull << 30);
    spec.setGroup("web");
    auto domains = spec.initAllowedDomains(5);
    domains.set(0, "example.com");
    domains.set(1, "*.nixos.org");
    domains.set(2, "1.1.1.1");
    domains.set(3, "10.0.0.0/8");
    domains.set(4, "\xc3\xbcn\xc3\xaf""c\xc3\xb6""d\xc3\xa9.example");
    auto secrets = req.initSecrets(2);
    secrets[0].setName("token");
    const kj::byte token[] = {0, 1, 2, 255};
    secrets[0].setValue(kj::arrayPtr(token, 4));
    secrets[1].setName("empty");
    secrets[1].initValue(0);
    req.setTtlSeconds(3600);
    req.setIdempotencyKey("create-web-1");
    auto placement = req.initPlacement();
    placement.setHost("h1");
    auto labels = placement.initLabels(2);
    labels[0].setKey("zone");
    labels[0].setValue("eu-1");
    labels[1].setKey("example.com/gpu");
    labels[1].setValue("a100");
    auto resp = req.send().wait(ws);
    printf("id %s\n", resp.getId().cStr());
  } else if (mode == "list") {
    auto resp = worker.listVmsRequest().send().wait(ws);
    auto vms = resp.getVms();
    printf("count %u\n", vms.size());
    for (int i = 3; i < argc; i++) {
      uint32_t index = atoi(argv[i]);
      if (index < vms.size()) printf("%s\n", describeVm(vms[index]).cStr());
    }
  } else if (mode == "delete") {
    auto req = worker.deleteVmRequest();
    req.setId(argv[3]);
    try {
      req.send().wait(ws);
      printf("deleted\n");
    } catch (const kj::Exception& e) {
      printf("exception type=%d %s\n", int(e.getType()), e.getDescription().cStr());
    }
  } else if (mode == "unimplemented") {
    // Method 99 of the Worker interface id: our schema has no such method.
    auto req = worker.typelessRequest(WORKER_ID, 99, nullptr);
    req.initAs<Worker::GetVmParams>().setId("x");
    try {
      req.send().wait(ws);
      printf("unexpected success\n");
      return 1;
    } catch (const kj::Exception& e) {
      printf("exception type=%d unimplemented=%d %s\n", int(e.getType()),
             e.getType() == kj::Exception::Type::UNIMPLEMENTED, e.getDescription().cStr());
    }
    auto next = worker.listVmsRequest().send().wait(ws);
    printf("next call ok, %u vms\n", next.getVms().size());
  } else if (mode == "exec") {
    auto req = worker.execRequest();
    req.setId("vm-000001");
    auto command = req.initCommand();
    auto argv = command.initArgv(4);
    argv.set(0, "/bin/sh");
    argv.set(1, "-c");
    argv.set(2, "echo \xc3\xa9");
    argv.set(3, "--big");
    auto env = command.initEnv(2);
    env.set(0, "A=1");
    env.set(1, "B=two words");
    command.setCwd("/tmp");
    const kj::byte input[] = {0, 1, 2, 255, 10};
    command.setStdin(kj::arrayPtr(input, 5));
    command.setTimeoutMs(1);
    auto result = req.send().wait(ws).getResult();
    kj::String out = kj::str("");
    for (auto byte : result.getStdout()) out = kj::str(out, out.size() ? "," : "", byte);
    auto err = result.getStderr();
    printf("exit %d signal %u timedOut %d stdout %s stderr %.*s truncated %d,%d duration %llu\n", result.getExitCode(),
           result.getSignal(), int(result.getTimedOut()), out.cStr(), int(err.size()), err.begin(),
           int(result.getStdoutTruncated()), int(result.getStderrTruncated()), (unsigned long long)result.getDurationMs());
  } else if (mode == "files") {
    auto write = worker.writeFileRequest();
    write.setId("vm-000001");
    write.setPath("/a/\xc3\xa9");
    const kj::byte bytes[] = {0, 255, 1, 10};
    write.setData(kj::arrayPtr(bytes, 4));
    write.setOffset(1ull << 40);
    write.setMode(0750);
    write.setTruncate(true);
    printf("written %llu\n", (unsigned long long)write.send().wait(ws).getSize());
    auto read = worker.readFileRequest();
    read.setId("vm-000001");
    read.setPath("/etc/x");
    read.setOffset(12345);
    read.setMaxBytes(7);
    auto chunk = read.send().wait(ws);
    auto data = chunk.getData();
    printf("read %.*s size %llu eof %d\n", int(data.size()), data.begin(), (unsigned long long)chunk.getSize(), int(chunk.getEof()));
    auto stat = worker.statFileRequest();
    stat.setId("vm-000001");
    stat.setPath("/s");
    auto s = stat.send().wait(ws).getStat();
    printf("stat %s type %d size %llu mode %o mtime %lld\n", s.getName().cStr(), int(s.getType()), (unsigned long long)s.getSize(),
           s.getMode(), (long long)s.getMtimeMs());
    auto list = worker.listDirRequest();
    list.setId("vm-000001");
    list.setPath("/d");
    list.setOffset(3);
    auto listing = list.send().wait(ws);
    printf("list truncated %d", int(listing.getTruncated()));
    for (auto entry : listing.getEntries()) printf(" %s:%d:%llu", entry.getName().cStr(), int(entry.getType()), (unsigned long long)entry.getSize());
    printf("\n");
  } else if (mode == "processes") {
    auto start = worker.startProcessRequest();
    start.setId("vm-000001");
    auto command = start.initCommand();
    auto args = command.initArgv(2);
    args.set(0, "/bin/sh");
    args.set(1, "-i");
    command.initEnv(1).set(0, "TERM=xterm");
    command.setCwd("/root");
    command.setTty(true);
    command.setRows(40);
    command.setCols(132);
    printf("pid %u\n", start.send().wait(ws).getPid());
    auto read = worker.readProcessRequest();
    read.setId("vm-000001");
    read.setPid(77);
    read.setStream(OutputStream::STDERR);
    read.setOffset(1ull << 35);
    read.setMaxBytes(4096);
    read.setWaitMs(0);
    auto output = read.send().wait(ws);
    auto data = output.getData();
    printf("output %.*s %llu..%llu eof %d\n", int(data.size()), data.begin(), (unsigned long long)output.getOffset(),
           (unsigned long long)output.getNextOffset(), int(output.getEof()));
    auto write = worker.writeProcessRequest();
    write.setId("vm-000001");
    write.setPid(77);
    const kj::byte input[] = {4, 3, 2};
    write.setData(kj::arrayPtr(input, 3));
    write.setCloseStdin(true);
    write.send().wait(ws);
    auto signal = worker.signalProcessRequest();
    signal.setId("vm-000001");
    signal.setPid(77);
    signal.setSignal(15);
    signal.send().wait(ws);
    auto wait = worker.waitProcessRequest();
    wait.setId("vm-000001");
    wait.setPid(77);
    wait.setWaitMs(1009);
    auto status = wait.send().wait(ws).getStatus();
    printf("status pid %u running %d exit %d signal %u\n", status.getPid(), int(status.getRunning()), status.getExitCode(), status.getSignal());
    auto resize = worker.resizeProcessRequest();
    resize.setId("vm-000001");
    resize.setPid(77);
    resize.setRows(50);
    resize.setCols(200);
    resize.send().wait(ws);
    printf("done\n");
  } else if (mode == "guest-faults") {
    // In-guest faults (Fault union tags 11-15): injected, then one cleared, then an unknown one.
    kj::Vector<kj::String> ids;
    for (int i = 0; i < 5; i++) {
      auto req = worker.injectFaultRequest();
      req.setId("vm-000001");
      auto fault = req.initFault();
      fault.setDurationMs(1000 * i);
      switch (i) {
        case 0: {
          auto p = fault.initKillProcess();
          p.setName("sl\xc3\xa9""ep");
          p.setSignal(15);
          break;
        }
        case 1:
          fault.initFreezeProcess().setPid(4194304);
          break;
        case 2:
          fault.initClockShift().setDeltaMs(-3600000);
          break;
        case 3: {
          auto strobe = fault.initClockStrobe();
          strobe.setDeltaMs(1ll << 40);
          strobe.setPeriodMs(250);
          break;
        }
        case 4:
          fault.initFillDisk().setDir("/var/lib/data");
          break;
      }
      ids.add(kj::str(req.send().wait(ws).getFaultId()));
    }
    printf("injected %s %s %s %s %s\n", ids[0].cStr(), ids[1].cStr(), ids[2].cStr(), ids[3].cStr(), ids[4].cStr());
    auto clear = worker.clearFaultRequest();
    clear.setId("vm-000001");
    clear.setFaultId(ids[3]);
    clear.send().wait(ws);
    printf("cleared %s\n", ids[3].cStr());
    auto unknown = worker.clearFaultRequest();
    unknown.setId("vm-000001");
    unknown.setFaultId("fault-none");
    try {
      unknown.send().wait(ws);
      printf("unexpected success\n");
      return 1;
    } catch (const kj::Exception& e) {
      printf("exception %s\n", e.getDescription().cStr());
    }
  } else if (mode == "inflight") {
    int n = atoi(argv[3]);
    kj::Vector<kj::Promise<void>> calls;
    for (int i = 0; i < n; i++) {
      auto req = worker.getVmRequest();
      req.setId("vm-000001");
      calls.add(req.send().then([](capnp::Response<Worker::GetVmResults>&& r) {
        KJ_REQUIRE(r.getVm().getId() == "vm-000001");
      }));
    }
    kj::joinPromises(calls.releaseAsArray()).wait(ws);
    printf("inflight ok %d\n", n);
  } else if (mode == "bench") {
    // bench <sequentialCalls> <inFlightCalls> <depth>
    int sequential = atoi(argv[3]);
    int total = atoi(argv[4]);
    int depth = atoi(argv[5]);
    runInFlight(worker, ws, 2000, 50);  // warm-up
    auto start = Clock::now();
    for (int i = 0; i < sequential; i++) {
      auto req = worker.getVmRequest();
      req.setId("vm-000001");
      req.send().wait(ws);
    }
    double seq = sequential / secondsSince(start);
    start = Clock::now();
    runInFlight(worker, ws, total, depth);
    double inflight = total / secondsSince(start);
    printf("sequential %.0f\ninflight %.0f\n", seq, inflight);
  } else if (mode == "bench-list") {
    int iterations = atoi(argv[3]);
    std::vector<double> ms;
    uint32_t count = 0;
    for (int i = 0; i < iterations + 20; i++) {
      auto start = Clock::now();
      auto resp = worker.listVmsRequest().send().wait(ws);
      count = resp.getVms().size();
      if (i >= 20) ms.push_back(secondsSince(start) * 1000);
    }
    std::sort(ms.begin(), ms.end());
    printf("count %u\nmedian %.3f\np99 %.3f\n", count, ms[ms.size() / 2], ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]);
  } else {
    fprintf(stderr, "unknown mode %s\n", mode.cStr());
    return 2;
  }
  return 0;
}
