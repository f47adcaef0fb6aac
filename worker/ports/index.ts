// The interfaces the core needs from the outside world, one file per port. The core imports only
// these; each adapter folder (vmm/, net/, faults/, store/, secrets/, state/, agent/) implements one.
export type * from "./agent.js";
export type * from "./faults.js";
export type * from "./network.js";
export type * from "./records.js";
export type * from "./secrets.js";
export type * from "./store.js";
export type * from "./vmm.js";
export type * from "./snapshots.js";
export type * from "./cage.js";
