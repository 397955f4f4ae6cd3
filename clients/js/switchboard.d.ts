/*! switchboard client 0.1.0 */
// Type declarations for switchboard.js / switchboard.mjs (the Switchboard
// browser client). The wire protocol is docs/protocol.md.

export type UserId = number;
/** Message ids are decimal strings, ordered within a conversation. */
export type MessageId = string;
export type Presence = 'online' | 'away' | 'offline';

export interface Contact {
  id: UserId;
  name: string;
  presence: Presence;
}

export interface Message {
  id: MessageId;
  from: UserId;
  to: UserId;
  text: string;
  /** Unix milliseconds. */
  ts: number;
  /** The sender's client id, when it gave one. */
  cid?: string;
}

export interface MessageEvent extends Message {
  type: 'message';
  /** Absent for messages fetched again by history after a lost session. */
  seq?: number;
  /** True when the client fetched it by /history after a reset or a lost
   *  session instead of receiving it as an event. */
  replayed?: boolean;
}

export interface PresenceEvent {
  type: 'presence';
  seq: number;
  user: UserId;
  status: Presence;
}

export interface TypingEvent {
  type: 'typing';
  seq: number;
  user: UserId;
  state: 'typing' | 'stopped';
}

export interface ReadEvent {
  type: 'read';
  seq: number;
  /** The other user of the conversation, seen from this user. */
  with: UserId;
  /** Who read: this user (another tab marked it read) or the friend (a
   *  "seen" receipt). */
  by: UserId;
  upto: MessageId;
}

export interface RosterEvent {
  type: 'roster';
  seq: number;
  change: 'added' | 'removed';
  user: Contact;
}

export interface UiChange<S = Record<string, unknown>> {
  state: S;
  /** The tab that set it. */
  tab: string;
  /** True when set by this tab (setUi), false when it came from another. */
  local: boolean;
}

export interface Snapshot<S = Record<string, unknown>> {
  user: { id: UserId; name: string };
  sid: string;
  seq: number;
  roster: Contact[];
  ui: S | null;
  /** Friend id (as a string) → unread messages from that friend. */
  unread: Record<string, number>;
  /** False for the first connect; true when it replaces a lost or reset
   *  session (events may have been missed: refresh what is shown). */
  again: boolean;
}

export type Status = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';
export type Role = 'leader' | 'follower' | 'solo';

export interface StateChange {
  status: Status;
  role: Role;
}

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'unknown_session'
  | 'not_friends'
  | 'forbidden'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  | 'not_found'
  /** Transport failures. */
  | 'network'
  | 'timeout'
  | 'bad_response'
  | 'closed';

export class SwitchboardError extends Error {
  code: ErrorCode;
  /** HTTP status in JSON mode (JSONP answers are always 200). */
  status?: number;
  /** The call that failed: 'send', 'poll', 'connect', 'ui', ... */
  call?: string;
  /** For a failed send: its client id and recipient. */
  cid?: string;
  to?: UserId;
  readonly retryable: boolean;
}

export interface EventMap<S> {
  message: MessageEvent;
  presence: PresenceEvent;
  typing: TypingEvent;
  ui: UiChange<S>;
  read: ReadEvent;
  roster: RosterEvent;
  connected: Snapshot<S>;
  reset: Snapshot<S>;
  state: StateChange;
  error: SwitchboardError;
}

export interface Transport {
  readonly kind: string;
  /** Resolves with the answer object when `ok` is true; rejects with a
   *  SwitchboardError otherwise. */
  call(path: string, params: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<any>;
}

export class JsonpTransport implements Transport {
  constructor(baseUrl: string, options?: { namespace?: string });
  readonly kind: 'jsonp';
  readonly baseUrl: string;
  /** The global object holding the callbacks (default `__sb`). */
  readonly namespace: string;
  call(path: string, params: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<any>;
}

export class FetchTransport implements Transport {
  constructor(baseUrl: string);
  readonly kind: 'fetch';
  readonly baseUrl: string;
  call(path: string, params: Record<string, unknown>, opts?: { timeoutMs?: number }): Promise<any>;
}

export interface Options {
  /** The server's client listener, e.g. 'https://chat.example.com' ('' : this page's origin). */
  url?: string;
  /** A token minted by the web app, or a function giving a fresh one (called at every connect). */
  token: string | (() => string | Promise<string>);
  /** 'jsonp' (default), 'fetch', or your own transport. */
  transport?: 'jsonp' | 'fetch' | Transport;
  /** This tab's name (1–64 of [A-Za-z0-9_-]); random by default. */
  tab?: string;
  /** Share one long-poll among the tabs of this user in this browser (default true). */
  shareTabs?: boolean;
  /** How tabs elect their leader: navigator.locks when there is one ('auto'), or heartbeats. */
  coordination?: 'auto' | 'locks' | 'heartbeat';
  /** Long-poll wait, seconds (0–60; default 25). */
  pollWaitS?: number;
  /** Timeout of other calls (default 15000). */
  callTimeoutMs?: number;
  /** How often a follower polls its own sid with wait=0 (default 20000; must stay well under the server's tab timeout). */
  keepaliveMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** How long send() keeps retrying a retryable failure (default 120000). */
  sendRetryMs?: number;
  /** `stopped` after this long without a keystroke (default 2500). */
  typingIdleMs?: number;
  /** `typing` is said again at most this often while typing goes on (default 3000). */
  typingRefreshMs?: number;
  /** Away after this long without input, or when no tab is visible (default 120000). */
  idleMs?: number;
  /** Set presence from visibility and idle time (default true). */
  trackPresence?: boolean;
  /** /leave by sendBeacon on pagehide (default true). */
  leaveOnUnload?: boolean;
  /** Heartbeat election's beat (default 1500). */
  heartbeatMs?: number;
  /** Message ids remembered to drop repeats (default 5000). */
  seenIdsMax?: number;
  /** Leader events a follower holds while catching up; past it, it connects again (default 1000). */
  bufferedEventsMax?: number;
}

export class Emitter<M> {
  on<K extends keyof M>(type: K, fn: (value: M[K]) => void): () => void;
  once<K extends keyof M>(type: K, fn: (value: M[K]) => void): () => void;
  off<K extends keyof M>(type: K, fn: (value: M[K]) => void): void;
  emit<K extends keyof M>(type: K, value: M[K]): void;
}

export class Client<S = Record<string, unknown>> extends Emitter<EventMap<S>> {
  constructor(options: Options);
  readonly options: Required<Options>;
  readonly transport: Transport;
  /** This tab's name. */
  readonly tab: string;
  readonly status: Status;
  readonly role: Role;
  readonly sid: string | null;
  /** The last event seq applied. */
  readonly seq: number;
  readonly user: { id: UserId; name: string } | null;
  readonly roster: Map<UserId, Contact>;
  readonly unread: Record<string, number>;
  readonly ui: S | null;
  /** The presence this tab (as leader or solo) last decided. */
  readonly presence: 'online' | 'away';

  /** Connects (retrying with backoff), then starts the event flow. */
  start(): Promise<Snapshot<S>>;
  /** Leaves the session (this tab) and stops. */
  close(): void;
  /** Resolves once stored; retries with the same cid (never twice). Sends to one friend go one at a time, in call order. */
  send(to: UserId, text: string, opts?: { cid?: string }): Promise<{ id: MessageId; ts: number; cid: string }>;
  /** Call on every keystroke; debounced to typing/stopped. */
  typing(to: UserId): void;
  stopTyping(to: UserId): void;
  read(friend: UserId, upto: MessageId): Promise<void>;
  /** Oldest first. Without `before`, the conversation is tracked (fetched again after a reset).
   *  `seen`: how far the friend has read this conversation (their read mark), or null. */
  history(friend: UserId, opts?: { before?: MessageId; limit?: number }): Promise<{ messages: Message[]; more: boolean; seen: MessageId | null }>;
  untrack(friend: UserId): void;
  /** Replaces the UI state (a JSON object of at most 4096 bytes) in every tab. */
  setUi(state: S): Promise<void>;
  /** Overrides automatic presence. */
  setPresence(status: 'online' | 'away'): void;
  /** Any client call with this tab's sid. */
  call(path: string, params?: Record<string, unknown>): Promise<any>;
}

export function connect<S = Record<string, unknown>>(options: Options): Client<S>;
/** Compares message ids (decimal strings) as numbers: -1, 0 or 1. */
export function compareIds(a: MessageId, b: MessageId): number;
/** The jittered exponential backoff delay (ms) of attempt `attempt`. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number): number;
export const version: string;

declare const Switchboard: {
  version: typeof version;
  Client: typeof Client;
  connect: typeof connect;
  JsonpTransport: typeof JsonpTransport;
  FetchTransport: typeof FetchTransport;
  SwitchboardError: typeof SwitchboardError;
  Emitter: typeof Emitter;
  compareIds: typeof compareIds;
  backoffDelay: typeof backoffDelay;
};
export default Switchboard;

declare global {
  interface Window {
    Switchboard: typeof Switchboard;
  }
}
