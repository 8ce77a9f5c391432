/** True in Node (not in browsers or workers); Node-only modules load behind this check. */
export const isNode =
  typeof process !== "undefined" && typeof process.versions?.node === "string" && typeof window === "undefined";
