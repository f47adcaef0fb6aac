// The guest agent end to end on QEMU: create-vm --wait-ready answers once the agent said hello,
// pcr-worker-test exec runs a command in the guest with the command's exit code, cp moves files
// in and out, exec -t gives a terminal (driven through tmux), the audit log names the command and
// its exit (never its environment or input), and a delete closes it all.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { execa } from "execa";
import { CLI_BIN, testGuest } from "../helpers/repo.js";
import { assertNothingLeft, createFromSpec, waitFor } from "../helpers/vm.js";
import { destroyWorker, startWorker, type WorkerProcess } from "../helpers/worker-process.js";

const guest = testGuest();
const skip = "skip" in guest ? guest.skip : false;

describe("exec through the worker (QEMU, virtio-serial)", { skip }, () => {
  let worker: WorkerProcess;
  let id: string;

  before(async () => {
    if ("skip" in guest) return;
    worker = await startWorker();
    id = await createFromSpec(worker, guest.spec, ["--wait-ready", "--wait-ready-ms", "90000"]);
  });
  after(async () => {
    if (worker) await destroyWorker(worker);
    rmSync(scratch, { recursive: true, force: true });
  });
  const scratch = mkdtempSync(join(tmpdir(), "pcr-e2e-agent-"));
  const sha = (data: Uint8Array) => createHash("sha256").update(data).digest("hex");

  test("create-vm --wait-ready answered with the agent ready; getVm says how long after the create", async () => {
    const vm = JSON.parse((await worker.cli(["get-vm", id])).stdout) as { agentState: string; agentReadyMs: number };
    assert.equal(vm.agentState, "ready");
    assert.ok(vm.agentReadyMs > 0 && vm.agentReadyMs < 90_000, `ready after ${vm.agentReadyMs} ms`);
  });

  test("exec prints the command's output and exits with its code", async () => {
    const ok = await worker.cli([
      "exec",
      id,
      "--env",
      "WHO=guest",
      "--cwd",
      "/tmp",
      "--",
      "/bin/sh",
      "-c",
      'echo "hi $WHO from $(pwd)"; exit 3',
    ]);
    assert.equal(ok.stdout.trim(), "hi guest from /tmp");
    assert.equal(ok.exitCode, 3);
    const killed = await worker.cli(["exec", id, "--", "/bin/sh", "-c", "kill -KILL $$"]);
    assert.equal(killed.exitCode, 128 + 9);
    const slow = await worker.cli(["exec", id, "--timeout-ms", "300", "--", "/bin/sleep", "30"]);
    assert.equal(slow.exitCode, 128 + 9);
    assert.match(slow.stderr, /killed after --timeout-ms/);
  });

  test("bad input is INVALID_ARGUMENT; an unknown VM is NOT_FOUND", async () => {
    const relative = await worker.cli(["exec", id, "--cwd", "tmp", "--", "true"]);
    assert.equal(relative.exitCode, 1);
    assert.match(relative.stderr, /INVALID_ARGUMENT: cwd "tmp" is not an absolute path/);
    const unknown = await worker.cli(["exec", "vm-0000000000", "--", "true"]);
    assert.match(unknown.stderr, /NOT_FOUND/);
    const usage = await worker.cli(["exec", id]);
    assert.equal(usage.exitCode, 2);
  });

  test("the audit log names the command and its exit, never its environment", async () => {
    await worker.cli(["exec", id, "--env", "TOKEN=audit-secret-value", "--", "/bin/true"]);
    const audit = readFileSync(join(worker.stateDir, "audit.log"), "utf8");
    const entries = audit
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>)
      .filter((entry) => entry.method === "exec");
    assert.ok(entries.some((entry) => entry.command === "/bin/true" && entry.exitCode === 0 && entry.vmId === id));
    assert.ok(!audit.includes("audit-secret-value"));
  });

  test("cp: a file into the guest and back, byte for byte, with its mode; into a directory by its name", async () => {
    const data = randomBytes(3 * 1024 * 1024 + 12_345);
    const local = join(scratch, "in.bin");
    writeFileSync(local, data);
    chmodSync(local, 0o640);
    const sent = await worker.cli(["cp", local, `${id}:/root/deep/new/in.bin`]);
    assert.equal(sent.exitCode, 0, sent.stderr);
    const inGuest = await worker.cli([
      "exec",
      id,
      "--",
      "/bin/sh",
      "-c",
      "sha256sum /root/deep/new/in.bin; stat -c %a /root/deep/new/in.bin",
    ]);
    assert.equal(inGuest.stdout, `${sha(data)}  /root/deep/new/in.bin\n640`); // execa drops the last newline
    const back = await worker.cli(["cp", `${id}:/root/deep/new/in.bin`, `${scratch}/`]);
    assert.equal(back.exitCode, 0, back.stderr);
    assert.equal(sha(readFileSync(join(scratch, "in.bin"))), sha(data));
    const missing = await worker.cli(["cp", `${id}:/no/such/file`, join(scratch, "x")]);
    assert.equal(missing.exitCode, 1);
    assert.match(missing.stderr, /NOT_FOUND/);
    const bothLocal = await worker.cli(["cp", local, join(scratch, "y")]);
    assert.equal(bothLocal.exitCode, 2);
    const audit = readFileSync(join(worker.stateDir, "audit.log"), "utf8");
    assert.match(audit, /"method":"writeFile"[^\n]*"path":"\/root\/deep\/new\/in.bin"/, "file operations are audited by path");
  });

  test("exec -t: an interactive shell on a terminal (tmux): keys in, output out, the window size follows", async () => {
    const tmux = (...args: string[]) => execa("tmux", ["-L", `pcr-${process.pid}`, ...args], { env: { TERM: "xterm" } });
    const pane = () => tmux("capture-pane", "-p", "-t", "shell").then((r) => r.stdout);
    const cli = `${process.execPath} ${CLI_BIN} --worker ${worker.socket} exec -t ${id} -- /bin/sh`;
    await tmux("new-session", "-d", "-s", "shell", "-x", "100", "-y", "30", `${cli}; echo "EXIT=$?"; sleep 600`);
    try {
      const typeLine = (line: string) => tmux("send-keys", "-t", "shell", line, "Enter");
      await typeLine("echo $((6 * 7))x");
      await waitFor("the shell's answer", 30_000, async () => ((await pane()).includes("42x") ? true : undefined));
      const size = async () => (await tmux("display", "-p", "-t", "shell", "#{pane_height} #{pane_width}")).stdout.trim();
      await typeLine("stty size");
      const first = await size();
      await waitFor(`stty size ${first}`, 30_000, async () => ((await pane()).includes(first) ? true : undefined));
      await tmux("resize-window", "-t", "shell", "-x", "120", "-y", "40");
      const second = await size();
      assert.notEqual(second, first);
      await waitFor("the resize to reach the pty", 30_000, async () => {
        await typeLine("stty size");
        await new Promise((resolve) => setTimeout(resolve, 300));
        return (await pane()).includes(second) ? true : undefined;
      });
      await typeLine("exit 5");
      await waitFor("the CLI to exit with the shell's code", 30_000, async () => ((await pane()).includes("EXIT=5") ? true : undefined));
    } finally {
      await tmux("kill-server").catch(() => undefined);
    }
  });

  test("delete: the channel closes with the VM; nothing is left", async () => {
    assert.equal((await worker.cli(["delete-vm", id])).exitCode, 0);
    assert.match((await worker.cli(["exec", id, "--", "true"])).stderr, /NOT_FOUND/);
    await assertNothingLeft(worker);
  });
});
