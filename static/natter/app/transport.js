// The connection to the inbox (docs/protocol.md §4, §7, §7b): WebSocket first;
// after failed attempts while plain HTTP still works (a proxy that drops
// WebSockets), or with ?transport=longpoll, the long-poll. Reconnects with
// jittered backoff. Events are handed to `onEvent` one at a time, in cursor
// order, and acknowledged only after it resolved (the message is stored).

import { ApiError, NetworkError, api, get, post } from "./api.js";
import { backoffDelay, sleep } from "./util.js";

// WebSocket attempts that never reached `hello` before we ask whether HTTP works.
const WS_FAILURES_BEFORE_FALLBACK = 2;
const HELLO_TIMEOUT_MS = 10000;
const SEND_TIMEOUT_MS = 15000;
const POLL_TIMEOUT_S = 25;
// A send frame must fit FRAME_MAX_BYTES (256 KiB); bigger ones go over REST.
const WS_FRAME_BUDGET = 200 * 1024;
const LONGPOLL_HEADERS = { "X-Natter-Session": "1" };

export class Transport {
  /**
   * handlers: onEvent(event, cursor) → Promise, onEphemeral(frame), onStatus({status, kind, fellBack}),
   * onConnected(), onDrained(), onUnauthorized(), onHello(hello)
   * status: "connecting" | "online" | "offline" | "conflict" | "stopped"
   */
  constructor({ mode = "auto", ...handlers }) {
    this.h = handlers;
    this.kind = mode === "longpoll" ? "longpoll" : "ws";
    this.fellBack = false;
    this.forced = mode === "longpoll";
    this.status = "stopped";
    this.stopped = true;
    this.ws = null;
    this.attempt = 0;
    this.wsFailures = 0;
    this.pending = new Map(); // frame id -> {resolve, reject, timer}
    this.frameSeq = 0;
    this.queue = [];
    this.pumping = false;
    this.presenceIds = [];
    this.presenceDirty = true;
    this.pollAbort = null;
    this.wake = null; // resolves a backoff wait early (the browser came back online)
    this.runId = 0; // a loop from before a stop()/start() must not carry on beside the new one
    this.retryAfter = 0; // seconds the server asked us to wait (rate_limited)
    this._onOnline = () => this._wakeUp();
    this._onOffline = () => this._wentOffline();
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this._onOnline);
    window.addEventListener("offline", this._onOffline);
    this._run(++this.runId);
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this._onOnline);
    window.removeEventListener("offline", this._onOffline);
    this._dropSocket();
    if (this.pollAbort) this.pollAbort.abort();
    this._wakeUp();
    this._setStatus("stopped");
  }

  /** Reconnect now (the user asked, after "connected elsewhere"). */
  retry() {
    this.stop();
    this.attempt = 0;
    this.start();
  }

  get online() {
    return this.status === "online";
  }

  _setStatus(status) {
    this.status = status;
    this.h.onStatus?.({ status, kind: this.kind, fellBack: this.fellBack });
  }

  async _run(id) {
    const current = () => !this.stopped && id === this.runId;
    while (current()) {
      if (!navigator.onLine) {
        this._setStatus("offline");
        await this._waitForWake();
        continue;
      }
      if (this.kind === "ws") {
        const reason = await this._wsSession();
        if (!current() || reason === "stop") return;
        if (reason === "hello") this.attempt = 0;
        if (reason === "failed") this.wsFailures += 1; // "limited" (4429) is not a blocked socket
        if (!this.forced && this.wsFailures >= WS_FAILURES_BEFORE_FALLBACK && (await this._httpWorks())) {
          // HTTP answers but the socket never comes up: something between us drops WebSockets.
          this.kind = "longpoll";
          this.fellBack = true;
          continue;
        }
      } else {
        await this._pollSession();
        if (!current()) return;
      }
      this._setStatus(navigator.onLine ? "connecting" : "offline");
      // The server's retry_after (rate limits) is a floor under the jittered backoff.
      const floor = (Number(this.retryAfter) || 0) * 1000;
      this.retryAfter = 0;
      await this._waitForWake(Math.max(floor, backoffDelay(this.attempt++)));
    }
  }

  _waitForWake(ms = null) {
    return new Promise((resolve) => {
      const timer = ms === null ? null : setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        if (self.wake === done) self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  _wakeUp() {
    this.attempt = 0;
    if (this.wake) this.wake();
  }

  _wentOffline() {
    // Do not trust a socket across a network change: let it go and wait for "online".
    this._dropSocket();
    if (this.pollAbort) this.pollAbort.abort();
    this._setStatus("offline");
  }

  async _httpWorks() {
    try {
      await get("/api/v1/me");
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        this.h.onUnauthorized?.();
        this.stop();
      }
      return false;
    }
  }

  // -- WebSocket -------------------------------------------------------------------------------

  /** One socket from connect to close. Resolves "hello" (it worked a while), "failed", "limited", "stop". */
  _wsSession() {
    this._setStatus("connecting");
    return new Promise((resolve) => {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      let ws;
      try {
        ws = new WebSocket(`${scheme}//${location.host}/ws/v1/`);
      } catch (e) {
        resolve("failed");
        return;
      }
      this.ws = ws;
      let gotHello = false;
      let pingTimer = null;
      let lastFrame = Date.now();
      const helloTimer = setTimeout(() => finish("failed", true), HELLO_TIMEOUT_MS);

      const finish = (reason, close = false) => {
        clearTimeout(helloTimer);
        clearInterval(pingTimer);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        if (close) {
          try {
            ws.close();
          } catch (e) {
            // already closing
          }
        }
        if (this.ws === ws) this.ws = null;
        this.queue = this.queue.filter((item) => item.ws !== ws); // redelivered on the next socket
        for (const [id, p] of this.pending) {
          if (p.ws !== ws) continue;
          clearTimeout(p.timer);
          p.reject(new NetworkError("connection closed"));
          this.pending.delete(id);
        }
        resolve(reason);
      };
      ws._finish = finish;

      ws.onmessage = (msg) => {
        lastFrame = Date.now();
        let frame;
        try {
          frame = JSON.parse(msg.data);
        } catch (e) {
          return;
        }
        if (frame.type === "error" && frame.code === "rate_limited" && !gotHello) {
          this.retryAfter = frame.retry_after; // too many new connections: 4429 follows
          return;
        }
        if (frame.type === "hello") {
          gotHello = true;
          clearTimeout(helloTimer);
          this.wsFailures = 0;
          const beat = Math.max(1, Number(frame.heartbeat_s) || 30) * 1000;
          pingTimer = setInterval(() => {
            // No pong (nor anything else) for two beats: the network is gone, say so now.
            if (Date.now() - lastFrame > 2 * beat + 5000) finish("hello", true);
            else this._frame({ type: "ping" });
          }, beat);
          this.h.onHello?.(frame);
          this._setStatus("online");
          this.presenceDirty = true;
          this._syncPresence();
          this.h.onConnected?.();
          return;
        }
        this._onFrame(ws, frame);
      };
      ws.onclose = (e) => {
        if (e.code === 4401) {
          finish("stop");
          this.stop();
          this.h.onUnauthorized?.();
        } else if (e.code === 4429) {
          finish(gotHello ? "hello" : "limited");
        } else if (e.code === 4409) {
          // Another tab or window of this device took over; fighting back would loop.
          finish("stop");
          this.stopped = true;
          this._setStatus("conflict");
        } else {
          finish(gotHello ? "hello" : "failed");
        }
      };
      ws.onerror = () => {}; // onclose follows and says what happened
    });
  }

  _dropSocket() {
    if (this.ws && this.ws._finish) this.ws._finish("hello", true);
  }

  _frame(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** A frame with an id whose answer (ack / ok / error with that ref) resolves the promise. */
  _request(frame, timeout = SEND_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN || this.kind !== "ws") {
        reject(new NetworkError("not connected"));
        return;
      }
      const id = `f${++this.frameSeq}`;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new NetworkError("no answer in time"));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer, ws });
      ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  _onFrame(ws, frame) {
    if (frame.ref !== undefined && frame.ref !== null && this.pending.has(frame.ref)) {
      const p = this.pending.get(frame.ref);
      this.pending.delete(frame.ref);
      clearTimeout(p.timer);
      if (frame.type === "error") {
        p.reject(new ApiError(0, frame.code, frame.message, frame));
      } else {
        p.resolve(frame);
      }
      if (frame.type !== "presence") return;
    }
    switch (frame.type) {
      case "event":
        this.queue.push({ ws, cursor: frame.cursor, event: frame.event });
        this._pump();
        break;
      case "drained":
        this.queue.push({ ws, drained: true });
        this._pump();
        break;
      case "presence":
      case "typing":
        this.h.onEphemeral?.(frame);
        break;
      case "error":
        console.warn("natter: socket error", frame);
        break;
      default:
        break; // pong, ok, and types a newer server may add
    }
  }

  /** Hand socket events over one at a time; ack after each batch is stored. */
  async _pump() {
    if (this.pumping) return;
    this.pumping = true;
    let acked = null;
    let last = null;
    try {
      while (this.queue.length) {
        const item = this.queue.shift();
        if (item.ws !== this.ws) continue;
        if (item.drained) {
          this.h.onDrained?.();
          continue;
        }
        try {
          await this.h.onEvent(item.event, item.cursor);
        } catch (err) {
          // Not stored: do not ack it; a new socket delivers it again.
          console.error("natter: event not handled", item.event, err);
          this._dropSocket();
          break;
        }
        last = item.cursor;
        if (!this.queue.length || last - (acked ?? 0) >= 50) {
          if (item.ws === this.ws) this._frame({ type: "ack", cursor: last });
          acked = last;
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  // -- long-poll -------------------------------------------------------------------------------

  async _pollSession() {
    this._setStatus("connecting");
    let cursor = 0; // acks nothing: the server starts after what was acknowledged before
    let first = true;
    while (!this.stopped && navigator.onLine) {
      const abort = new AbortController();
      this.pollAbort = abort;
      let page;
      try {
        if (!first && this.presenceDirty) await this._syncPresence();
        page = await get(`/api/v1/events?cursor=${cursor}&timeout=${first ? 0 : POLL_TIMEOUT_S}`, {
          signal: abort.signal,
          headers: LONGPOLL_HEADERS,
        });
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          this.stop();
          this.h.onUnauthorized?.();
        }
        if (err instanceof ApiError && err.status === 400) cursor = 0;
        if (err instanceof ApiError && err.status === 429) this.retryAfter = err.data.retry_after;
        this.presenceDirty = true; // an answer may be lost: ask for a fresh snapshot
        return;
      } finally {
        this.pollAbort = null;
      }
      if (this.stopped) return;
      for (const item of page.events) {
        try {
          await this.h.onEvent(item.event, item.cursor);
        } catch (err) {
          console.error("natter: event not handled", item.event, err);
          return; // not acknowledged: the next poll from `cursor` brings it again
        }
        cursor = item.cursor;
      }
      cursor = Math.max(cursor, page.next_cursor);
      for (const frame of page.ephemeral || []) this.h.onEphemeral?.(frame);
      this.attempt = 0;
      if (first) {
        first = false;
        this._setStatus("online");
        this.presenceDirty = true;
        await this._syncPresence();
        this.h.onConnected?.();
      }
      if (!page.has_more && page.events.length === 0) this.h.onDrained?.();
    }
  }

  // -- what the app sends ----------------------------------------------------------------------

  /** A send (§5): over the socket when it is up, else REST. Resolves to the ack. */
  async send(payload) {
    if (this.kind === "ws" && this.ws && this.ws.readyState === WebSocket.OPEN) {
      const frame = { type: "send", ...payload };
      if (JSON.stringify(frame).length < WS_FRAME_BUDGET) return this._request(frame);
    }
    return post("/api/v1/messages", payload);
  }

  /** Move the read pointer. Resolves to {read_seq}. */
  async read(conversation, upToSeq) {
    if (this.kind === "ws" && this.online) {
      return this._request({ type: "read", conversation, up_to_seq: upToSeq });
    }
    return post("/api/v1/read", { conversation, up_to_seq: upToSeq });
  }

  typing(conversation, state) {
    if (!this.online) return;
    if (this.kind === "ws") {
      this._frame({ type: "typing", conversation, state });
    } else {
      post("/api/v1/typing", { conversation, state }).catch(() => {});
    }
  }

  /** Watch these users' presence (replaces the set; at most 100). */
  setPresence(userIds) {
    const ids = [...new Set(userIds)].slice(0, 100);
    if (ids.join() === this.presenceIds.join() && !this.presenceDirty) return;
    this.presenceIds = ids;
    this.presenceDirty = true;
    if (this.online) this._syncPresence();
  }

  async _syncPresence() {
    if (!this.presenceDirty) return;
    this.presenceDirty = false;
    const ids = this.presenceIds;
    if (this.kind === "ws") {
      if (!this._frame({ type: "presence.subscribe", user_ids: ids })) this.presenceDirty = true;
      return;
    }
    try {
      const answer = await api("PUT", "/api/v1/presence/subscriptions", { user_ids: ids });
      for (const frame of answer.presence || []) this.h.onEphemeral?.(frame);
    } catch (err) {
      this.presenceDirty = true;
    }
  }
}

export { sleep };
