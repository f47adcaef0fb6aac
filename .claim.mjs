import { connectWorker } from "/work/main/dist/worker/rpc/worker-client.js";
import { testGuest } from "/work/main/dist/test/helpers/repo.js";
const c = await connectWorker(process.argv[2]);
const { input } = testGuest();
for (let i = 0; i < 4; i++) {
  const t = performance.now();
  const id = await c.createVm({ ...input, hostname: `x${i}` }, { waitReadyMs: 60000 });
  console.log("claim", Math.round(performance.now() - t), (await c.getVm(id)).origin);
  await c.deleteVm(id);
  await new Promise((r) => setTimeout(r, 4000));
}
c.close();
