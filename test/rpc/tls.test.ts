// TCP is served only with mutual TLS beyond loopback: a client must show a certificate from the
// configured CA before a single Cap'n Proto byte of it is read.
import assert from "node:assert/strict";
import { execa } from "execa";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import pino from "pino";
import { checkListeners } from "../../worker/config.js";
import { RpcServer } from "../../worker/rpc/server.js";
import { connectWorker } from "../../worker/rpc/worker-client.js";
import { workerDispatcher } from "../../worker/rpc/worker-service.js";
import { CLI_BIN, WORKER_BIN } from "../helpers/repo.js";
import { FakeWorker, sampleVm } from "./fake-worker.js";

/** A CA, and certificates it signs (server with SAN IP 127.0.0.1, or a client). */
async function pki(dir: string) {
  const run = (args: string[]) => execa("openssl", args, { cwd: dir });
  const ca = async (name: string) => {
    await run([
      "req",
      "-x509",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-days",
      "1",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.pem`,
    ]);
  };
  const leaf = async (name: string, caName: string, server: boolean) => {
    await run([
      "req",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
    ]);
    const ext = join(dir, `${name}.ext`);
    await execa("sh", ["-c", `printf '%s\\n' '${server ? "subjectAltName=IP:127.0.0.1" : "extendedKeyUsage=clientAuth"}' > ${ext}`]);
    await run([
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${caName}.pem`,
      "-CAkey",
      `${caName}.key`,
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      ext,
      "-out",
      `${name}.pem`,
    ]);
  };
  await ca("ca");
  await ca("other-ca");
  await leaf("server", "ca", true);
  await leaf("client", "ca", false);
  await leaf("stranger", "other-ca", false);
  const read = (name: string) => readFileSync(join(dir, name));
  return { read };
}

describe("mutual TLS on TCP", () => {
  let dir: string;
  let server: RpcServer;
  let address: string;
  let files: Awaited<ReturnType<typeof pki>>;
  const fake = new FakeWorker();
  fake.vms = [sampleVm(1)];
  let calls = 0;
  const counting = new Proxy(fake, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        calls++;
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "pcr-tls-"));
    files = await pki(dir);
    server = await RpcServer.listen({
      dispatcher: workerDispatcher(counting),
      logger: pino({ level: "silent" }),
      tcp: "127.0.0.1:0",
      tls: { cert: files.read("server.pem"), key: files.read("server.key"), clientCa: files.read("ca.pem") },
    });
    address = `tcp://127.0.0.1:${server.tcpAddress!.port}`;
  });

  after(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a client with a certificate from the CA is served", async () => {
    const client = await connectWorker(address, {
      tls: { cert: files.read("client.pem"), key: files.read("client.key"), ca: files.read("ca.pem") },
    });
    assert.equal((await client.listVms()).length, 1);
    client.close();
  });

  test("a client without a certificate, or with one from another CA, or speaking plain TCP, is refused before any call", async () => {
    const before = calls;
    await assert.rejects(async () => {
      const client = await connectWorker(address, {
        tls: { cert: "", key: "", ca: files.read("ca.pem") } as never,
        connectTimeoutMs: 3000,
      });
      await client.listVms();
    });
    await assert.rejects(async () => {
      const client = await connectWorker(address, {
        tls: { cert: files.read("stranger.pem"), key: files.read("stranger.key"), ca: files.read("ca.pem") },
        connectTimeoutMs: 3000,
      });
      await client.listVms();
    });
    await assert.rejects(async () => {
      const client = await connectWorker(address, { connectTimeoutMs: 3000 });
      await client.listVms();
    });
    assert.equal(calls, before, "the worker was never called");
    assert.equal(server.connectionCount, 0, "no RPC connection was made");
  });

  test("the CLI takes --tls-cert, --tls-key and --tls-ca", async () => {
    const tlsArgs = ["--tls-cert", join(dir, "client.pem"), "--tls-key", join(dir, "client.key"), "--tls-ca", join(dir, "ca.pem")];
    const ok = await execa(process.execPath, [CLI_BIN, "list-vms", "--json", "--worker", address, ...tlsArgs], { reject: false });
    assert.equal(ok.exitCode, 0, ok.stderr);
    assert.equal((JSON.parse(ok.stdout) as unknown[]).length, 1);
    const without = await execa(process.execPath, [CLI_BIN, "list-vms", "--worker", address], { reject: false, timeout: 20_000 });
    assert.equal(without.exitCode, 1);
    const half = await execa(process.execPath, [CLI_BIN, "list-vms", "--worker", address, "--tls-cert", join(dir, "client.pem")], {
      reject: false,
    });
    assert.equal(half.exitCode, 2);
    assert.match(half.stderr, /needs all of --tls-cert, --tls-key and --tls-ca/);
  });

  test("a client that does not trust the server's CA refuses the server", async () => {
    await assert.rejects(
      connectWorker(address, { tls: { cert: files.read("client.pem"), key: files.read("client.key"), ca: files.read("other-ca.pem") } }),
      /certificate|self.signed|unable/i,
    );
  });
});

test("start-up: TCP beyond loopback needs mutual TLS; TLS options go together and with --tcp", () => {
  assert.match(checkListeners({ tcp: "0.0.0.0:7000" }) ?? "", /refusing to serve unauthenticated TCP on 0.0.0.0:7000/);
  assert.match(checkListeners({ tcp: "10.0.0.5:7000" }) ?? "", /refusing/);
  assert.equal(checkListeners({ tcp: "127.0.0.1:7000" }), undefined);
  assert.equal(checkListeners({ tcp: "[::1]:7000" }), undefined);
  assert.equal(checkListeners({ tcp: "localhost:7000" }), undefined);
  assert.equal(checkListeners({ tcp: "0.0.0.0:7000", tlsCert: "c", tlsKey: "k", tlsClientCa: "ca" }), undefined);
  assert.match(checkListeners({ tcp: "0.0.0.0:7000", tlsCert: "c" }) ?? "", /needs all of/);
  assert.match(checkListeners({ tlsCert: "c", tlsKey: "k", tlsClientCa: "ca" }) ?? "", /without --tcp/);
});

test("pcr-worker refuses --tcp 0.0.0.0:7000 without TLS at start-up, before touching anything", async () => {
  const dir = mkdtempSync(join(tmpdir(), "pcr-tls-start-"));
  try {
    const result = await execa(
      process.execPath,
      [
        WORKER_BIN,
        "--tcp",
        "0.0.0.0:7000",
        "--socket",
        join(dir, "w.sock"),
        "--state-dir",
        join(dir, "state"),
        "--runtime-dir",
        join(dir, "run"),
      ],
      { reject: false, timeout: 20_000 },
    );
    assert.equal(result.exitCode, 2);
    assert.match(result.stderr, /refusing to serve unauthenticated TCP on 0\.0\.0\.0:7000/);
    assert.deepEqual(readdirSync(dir), [], "nothing was created");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
