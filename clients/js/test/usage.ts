// Compiled (not run) by types.test.mjs with tsc --strict: the declarations
// must describe how the module is used.
import { Client, RpcError, ErrorCode, closeAction, defaultRecovery } from "../nbio-ws.js";
import type { Position, Publication, Room, State } from "../nbio-ws.js";

async function example(): Promise<void> {
  const client = new Client("ws://127.0.0.1:8080/ws", {
    getToken: async ({ attempt }) => (attempt > 0 ? "fresh" : "first"),
    timeout: 5000,
    maxDelay: 10000,
  });
  const r: { echo: string } = await client.call<{ echo: string }>("self.reply", { text: "hi" }, { timeout: 100, signal: AbortSignal.timeout(1000), retry: true });
  client.notify("broadcast", { text: r.echo });
  const out = await client.batch([{ method: "a" }, { method: "b", params: [1], notify: true }]);
  if (out[0].status === "fulfilled") console.log(out[0].value);
  const off = client.on("broadcast", (params: { text: string }, msg: Publication) => console.log(params.text, msg.position?.offset, msg.recovered));
  off();
  client.addEventListener("disconnected", (ev) => console.log(ev.detail.code, ev.detail.delay, ev.detail.attempt));
  client.addEventListener("unrecovered", (ev) => console.log(ev.detail.room, ev.detail.reason));
  client.addEventListener("statechange", (ev) => {
    const s: State = ev.detail.state;
    console.log(s);
  });
  const room: Room = client.room("lobby", {
    join: (since: Position | null) => ({ method: "chat.join", params: { room: "lobby", nick: "ada", ...(since ? { since } : {}) } }),
    leave: () => ({ method: "chat.leave", params: { room: "lobby" } }),
  });
  await room.join();
  const p: Position | null = room.position;
  console.log(p, room.state, client.state, client.pending);
  await room.leave();
  try {
    await client.call("x");
  } catch (e) {
    if (e instanceof RpcError && e.kind === "disconnected" && e.code === ErrorCode.DISCONNECTED) console.log(e.data);
  }
  const a: "reconnect" | "stop" = closeAction(4409);
  console.log(a, defaultRecovery({}).publications);
  client.connect();
  client.close(1000, "bye");
}
void example;
