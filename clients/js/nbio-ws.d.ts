// Types for nbio-ws.js (written by hand; test/types.test.mjs checks that
// they agree with the module).

/** Codes of the errors the client raises itself. */
export declare const ErrorCode: {
  /** kind "timeout": no answer within the call's timeout. */
  readonly TIMEOUT: -32801;
  /** kind "disconnected": the connection was lost before the answer came. */
  readonly DISCONNECTED: -32802;
  /** kind "closed": the client is closed and will not reconnect. */
  readonly CLOSED: -32803;
  /** kind "aborted": the call's AbortSignal fired (or its room was left). */
  readonly ABORTED: -32804;
  /** kind "overloaded": too many calls pending, or the send queue is full. */
  readonly OVERLOADED: -32805;
};

/** Where an error came from: the server ("remote") or the client. */
export type ErrorKind = "remote" | "timeout" | "disconnected" | "closed" | "aborted" | "overloaded";

/** An error answer from the server, or an error the client raised. */
export declare class RpcError extends Error {
  constructor(code: number, message: string, data?: unknown, kind?: ErrorKind);
  /** The JSON-RPC error code (or one of ErrorCode). */
  readonly code: number;
  /** The error's `data` member, if any. */
  readonly data: unknown;
  /** "remote" for the server's answers. */
  readonly kind: ErrorKind;
}

/** What the client does after a close code. */
export declare function closeAction(code: number): "reconnect" | "stop";

/** A position in a room's stream. */
export interface Position {
  epoch: string;
  offset: number;
}

/** A live publication's top-level `position`. */
export interface RoomPosition extends Position {
  room: string;
}

/** A publication, live or recovered. */
export interface Publication {
  jsonrpc?: "2.0";
  method: string;
  params?: unknown;
  position?: RoomPosition;
  /** true for publications delivered from a join result. */
  recovered?: true;
}

/** A join result as the recovery protocol shapes it. */
export interface Recovery {
  recovered?: boolean;
  position?: Position;
  publications?: Publication[];
}

/** Reads `{recovered, position, publications}` (or `history`) from a join result. */
export declare function defaultRecovery(result: unknown): Recovery;

/** The first argument of a WebSocket constructor, and what the client uses of an instance. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: unknown }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
}

/** A WebSocket constructor: the browser's, Node's, or the `ws` package's. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** Default: globalThis.WebSocket. */
  WebSocket?: WebSocketConstructor | unknown;
  /** Sent as `Sec-WebSocket-Protocol: bearer, <token>`. */
  token?: string;
  /** Called before every connection attempt; its token replaces `token`. */
  getToken?: (info: { attempt: number; code: number | undefined }) => string | undefined | null | Promise<string | undefined | null>;
  /** More subprotocols to offer. Default []. */
  protocols?: string[];
  /** Default call timeout in ms (0: none). Default 30000. */
  timeout?: number;
  /** Re-send calls lost with a connection after reconnecting. Default false. */
  retry?: boolean;
  /** Most calls waiting for an answer. Default 1024. */
  maxPending?: number;
  /** Most messages queued while not connected. Default 256. */
  maxQueued?: number;
  /** Most live publications held per room while its join is pending. Default 10000. */
  maxBuffered?: number;
  /** Reconnect after a lost connection. Default true. */
  reconnect?: boolean;
  /** First backoff cap in ms. Default 500. */
  initialDelay?: number;
  /** Largest backoff cap in ms. Default 15000. */
  maxDelay?: number;
  /** Backoff growth per attempt. Default 2. */
  factor?: number;
  /** Attempts before giving up (state "closed"). Default Infinity. */
  maxAttempts?: number;
  /** A connection open this long (ms) resets the backoff. Default 5000. */
  resetAfter?: number;
  /** Connect from the constructor. Default true. */
  autoConnect?: boolean;
}

export interface CallOptions {
  /** ms; 0: none. Default: the client's `timeout`. */
  timeout?: number;
  signal?: AbortSignal;
  /** Re-send after reconnecting if the connection is lost. Default: the client's `retry`. */
  retry?: boolean;
}

export interface BatchItem {
  method: string;
  params?: unknown;
  /** A notification: no answer; its settled result is `undefined`. */
  notify?: boolean;
}

export type State = "connecting" | "connected" | "disconnected" | "closed";

export interface ClientEventMap {
  connecting: CustomEvent<{ attempt: number }>;
  connected: CustomEvent<{ attempt: number; reconnected: boolean }>;
  disconnected: CustomEvent<{ code: number; reason: string; attempt: number; delay: number; cap: number }>;
  closed: CustomEvent<{ code: number; reason: string }>;
  statechange: CustomEvent<{ state: State; previous: State; [k: string]: unknown }>;
  joined: CustomEvent<{ room: string; result: unknown; since: Position | null; recovered: boolean | undefined }>;
  unrecovered: CustomEvent<{ room: string; since: Position | null; position: Position | null | undefined; result?: unknown; reason: "server" | "epoch" | "overflow" }>;
  roomerror: CustomEvent<{ room: string; error: RpcError }>;
  error: CustomEvent<{ error: unknown }>;
}

export type NotificationHandler = (params: any, message: Publication) => void;

export interface RoomOptions {
  /** The join call, given the last position (null the first time). */
  join: (since: Position | null, room: Room) => { method: string; params?: unknown };
  /** The leave call, if any. */
  leave?: (room: Room) => { method: string; params?: unknown };
  /** Reads the recovery from a join result. Default: defaultRecovery. */
  recovery?: (result: any) => Recovery;
  /** A position to start from (e.g. kept across page loads). */
  position?: Position;
  /** Options of the join and leave calls. */
  callOptions?: CallOptions;
}

export interface Room {
  readonly name: string;
  readonly options: RoomOptions;
  /** The last position delivered, or null. */
  readonly position: Position | null;
  readonly state: "idle" | "joining" | "joined";
  /** The last join result. */
  readonly result: unknown;
  /** Joins (and rejoins after every reconnect); resolves with the join result. */
  join(): Promise<any>;
  /** Stops rejoining; calls the leave method when connected. */
  leave(): Promise<any>;
}

export declare class Client extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly options: Required<Omit<ClientOptions, "token" | "getToken">> & ClientOptions;
  readonly state: State;
  /** Calls waiting for an answer (sent or queued). */
  readonly pending: number;
  connect(): void;
  close(code?: number, reason?: string): void;
  call<T = any>(method: string, params?: unknown, options?: CallOptions): Promise<T>;
  notify(method: string, params?: unknown): void;
  batch(items: BatchItem[], options?: CallOptions): Promise<PromiseSettledResult<any>[]>;
  on(method: string, handler: NotificationHandler): () => void;
  off(method: string, handler: NotificationHandler): void;
  room(name: string, options?: RoomOptions): Room;
  addEventListener<K extends keyof ClientEventMap>(type: K, listener: (ev: ClientEventMap[K]) => any, options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof ClientEventMap>(type: K, listener: (ev: ClientEventMap[K]) => any, options?: boolean | EventListenerOptions): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
