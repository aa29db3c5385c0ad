// The local stack's chat page: rooms are channels `room:<name>`, messages go out as `publish` frames
// and come back as channel envelopes with `from`, `offset` and `epoch` (docs/protocol.md, docs/chat.md).
// Reconnecting asks for what was missed with `?recover=room:<name>:<offset>:<epoch>`; the page keeps
// one position per room and drops any envelope it has already shown, by (channel, epoch, offset).
"use strict";

const CHANNEL_NAME = /^[A-Za-z0-9_:.-]{1,128}$/;
// API Gateway closes a connection idle for 10 minutes: a ping well inside that keeps it open.
const HEARTBEAT_MS = 4 * 60 * 1000;
const MAX_BACKOFF_MS = 30 * 1000;

function roomChannel(name) {
  const trimmed = String(name).trim();
  return trimmed.startsWith("room:") ? trimmed : `room:${trimmed}`;
}

function messageId() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function messageText(data) {
  if (data && typeof data === "object" && typeof data.text === "string") return data.text;
  return JSON.stringify(data);
}

// ---- the state of the chat: plain data and plain functions, no DOM and no socket ----

class ChatState {
  constructor() {
    // channel -> {joined, epoch, position, seen: Set of offsets in that epoch}
    this.rooms = new Map();
    // client message id -> {channel, text}
    this.pending = new Map();
    // envelopes without an offset (operator broadcasts where history is off, direct messages)
    this.seenIds = new Set();
    this.duplicates = 0;
  }

  room(channel) {
    let room = this.rooms.get(channel);
    if (!room) {
      room = { joined: false, epoch: null, position: null, seen: new Set() };
      this.rooms.set(channel, room);
    }
    return room;
  }

  // `room:a:12:E1,room:b:3:E7`: each room with a known position, read from the right by the server
  recoverParam() {
    const items = [];
    for (const [channel, room] of this.rooms) {
      if (room.position !== null && room.epoch !== null) items.push(`${channel}:${room.position}:${room.epoch}`);
    }
    return items.join(",");
  }

  forgetPosition(channel) {
    const room = this.room(channel);
    room.epoch = null;
    room.position = null;
    room.seen = new Set();
  }

  // What an envelope does to the state: null for a duplicate, else what to show.
  envelope(frame) {
    const channel = typeof frame.channel === "string" ? frame.channel : null;
    const offset = Number.isInteger(frame.offset) ? frame.offset : null;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    const shown = {
      channel,
      offset,
      epoch,
      from: typeof frame.from === "string" ? frame.from : null,
      data: frame.data,
      broadcastId: frame.broadcastId,
      epochChanged: false,
    };
    if (channel === null || offset === null) {
      const key = `${channel}\u0000${frame.broadcastId}`;
      if (frame.broadcastId !== undefined && this.seenIds.has(key)) {
        this.duplicates += 1;
        return null;
      }
      this.seenIds.add(key);
      return shown;
    }
    const room = this.room(channel);
    if (epoch !== null && room.epoch !== null && epoch !== room.epoch) {
      // the channel's history was reset: its offsets start again, so what was seen no longer counts
      this.forgetPosition(channel);
      shown.epochChanged = true;
    }
    if (epoch !== null) room.epoch = epoch;
    if (room.seen.has(offset)) {
      this.duplicates += 1;
      return null;
    }
    room.seen.add(offset);
    // the position is the end of the run of offsets seen without a gap since the first one seen,
    // so that a recovery asks again for anything that had not arrived yet (duplicates are dropped)
    if (room.position === null) room.position = offset;
    while (room.seen.has(room.position + 1)) room.position += 1;
    return shown;
  }
}

// ---- the page: DOM and socket ----

class ChatPage {
  constructor(doc) {
    this.doc = doc;
    this.state = new ChatState();
    this.config = null;
    this.ws = null;
    this.user = null;
    this.intentional = false;
    this.reconnectAfterClose = false;
    this.backoffMs = 1000;
    this.retryTimer = null;
    this.heartbeat = null;
    this.recovering = new Set();
    // connections opened so far: the status shows it, so that a reconnect can be seen to have happened
    this.opens = 0;
    this.$ = (id) => doc.getElementById(id);
  }

  async init() {
    const resp = await fetch("config", { cache: "no-store" });
    this.config = await resp.json();
    this.$("connect-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.connect(this.$("user").value.trim());
    });
    this.$("reconnect").addEventListener("click", () => this.reconnect());
    this.$("disconnect").addEventListener("click", () => this.disconnect());
    this.$("join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.join(this.$("room").value);
    });
    this.$("send-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const to = this.$("to").value.trim();
      if (to) this.direct(to, this.$("text").value);
      else this.publish(this.$("target").value, this.$("text").value);
    });
    const params = new URLSearchParams(location.search);
    if (params.get("user")) this.$("user").value = params.get("user");
    for (const name of (params.get("rooms") || "").split(",").filter(Boolean)) this.join(name);
    this.setStatus("idle", "not connected");
    this.doc.body.dataset.ready = "true";
  }

  setStatus(state, text) {
    const el = this.$("status");
    el.dataset.state = state;
    el.textContent = text;
    const open = state === "open";
    this.$("send").disabled = !open;
    this.$("reconnect").disabled = this.user === null;
    this.$("disconnect").disabled = this.ws === null;
  }

  notice(level, text, code, action) {
    const li = this.doc.createElement("li");
    li.dataset.level = level;
    if (code) li.dataset.code = code;
    if (action) li.dataset.action = action;
    li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    this.$("notices").prepend(li);
  }

  async token(user) {
    const resp = await fetch("token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error || `token request failed (${resp.status})`);
    return body.token;
  }

  async connect(user) {
    if (!user) return;
    if (this.ws) {
      this.reconnectAfterClose = false;
      this.close();
    }
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    if (user !== this.user) {
      // another user: what this page saw belongs to the one before
      const rooms = this.currentRooms();
      this.state = new ChatState();
      for (const channel of rooms) this.state.room(channel);
      this.$("messages").replaceChildren();
    }
    this.user = user;
    this.setStatus("connecting", `connecting as ${user}…`);
    let token;
    try {
      token = await this.token(user);
    } catch (err) {
      this.setStatus("failed", String(err.message || err));
      return;
    }
    const url = new URL(this.config.websocketUrl);
    url.searchParams.set("token", token);
    const channels = [...this.state.rooms.keys()];
    if (channels.length) url.searchParams.set("channels", channels.join(","));
    const recover = this.state.recoverParam();
    if (recover) url.searchParams.set("recover", recover);
    this.recovering = new Set(recover ? channels.filter((c) => this.state.room(c).position !== null) : []);
    const ws = new WebSocket(url.toString());
    this.ws = ws;
    this.intentional = false;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.opens += 1;
      this.$("status").dataset.connection = String(this.opens);
      this.backoffMs = 1000;
      for (const channel of channels) this.state.room(channel).joined = true;
      this.renderRooms();
      const recovered = this.recovering.size ? `, recovering ${[...this.recovering].join(", ")}` : "";
      this.setStatus("open", `connected as ${user}${recovered}`);
      this.heartbeat = setInterval(() => this.send({ action: "ping" }), HEARTBEAT_MS);
    };
    ws.onmessage = (event) => this.onFrame(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      clearInterval(this.heartbeat);
      this.ws = null;
      for (const room of this.state.rooms.values()) room.joined = false;
      this.renderRooms();
      if (this.intentional) {
        this.setStatus("closed", "disconnected");
        if (this.reconnectAfterClose) {
          this.reconnectAfterClose = false;
          this.connect(this.user);
        }
        return;
      }
      // dropped by the server (idle, 2 h limit) or refused at the handshake: try again, backing off
      const why = opened ? `connection closed (${event.code})` : "the connection was refused";
      const wait = this.backoffMs;
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
      this.setStatus("closed", `${why}; reconnecting in ${Math.round(wait / 1000)} s`);
      this.retryTimer = setTimeout(() => this.connect(this.user), wait);
    };
  }

  currentRooms() {
    return [...this.state.rooms.keys()];
  }

  close() {
    if (!this.ws) return;
    this.intentional = true;
    this.ws.close(1000, "bye");
  }

  disconnect() {
    clearTimeout(this.retryTimer);
    this.reconnectAfterClose = false;
    this.close();
  }

  // Drop the connection and connect again, recovering each room from its last position.
  reconnect() {
    if (this.user === null) return;
    clearTimeout(this.retryTimer);
    if (this.ws) {
      this.reconnectAfterClose = true;
      this.close();
    } else {
      this.connect(this.user);
    }
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  join(name) {
    const channel = roomChannel(name);
    if (!CHANNEL_NAME.test(channel)) {
      this.notice("error", `not a room name: ${JSON.stringify(name)}`, "invalid_channel");
      return;
    }
    this.$("room").value = "";
    const known = this.state.rooms.has(channel);
    this.state.room(channel);
    if (!known) this.renderRooms();
    this.send({ action: "subscribe", channel });
  }

  leave(channel) {
    this.send({ action: "unsubscribe", channel });
    this.state.rooms.delete(channel);
    this.renderRooms();
  }

  publish(channel, text) {
    if (!channel || !text) return;
    const id = messageId();
    if (!this.send({ action: "publish", channel, message: { text }, id })) return;
    this.state.pending.set(id, { channel, text });
    this.$("text").value = "";
    const li = this.row({ channel, from: this.user, data: { text }, offset: null, epoch: null });
    li.dataset.key = `pending:${id}`;
    li.dataset.pending = "true";
    li.dataset.id = id;
    this.$("messages").append(li);
  }

  // A direct message to every connection of one user: acknowledged, with no offset (no history).
  direct(to, text) {
    if (!to || !text) return;
    const id = messageId();
    if (!this.send({ action: "sendmessage", to, message: { text }, id })) return;
    this.state.pending.set(id, { channel: null, to, text });
    this.$("text").value = "";
    const li = this.row({ channel: null, from: this.user, data: { text }, offset: null, epoch: null });
    li.querySelector(".meta").textContent = `to ${to}`;
    li.dataset.to = to;
    li.dataset.key = `pending:${id}`;
    li.dataset.pending = "true";
    li.dataset.id = id;
    li.dataset.mine = "true";
    this.$("messages").append(li);
  }

  onFrame(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      this.notice("error", `a frame that is not JSON: ${String(raw).slice(0, 80)}`);
      return;
    }
    switch (frame.type) {
      case "broadcast":
        this.onEnvelope(frame);
        break;
      case "history":
        this.onHistory(frame);
        break;
      case "ack":
        this.onAck(frame);
        break;
      case "subscribed":
        this.state.room(frame.channel).joined = true;
        this.renderRooms();
        break;
      case "unsubscribed":
        break;
      case "pong":
        break;
      case "error":
        this.onError(frame);
        break;
      default:
        this.notice("info", `frame of type ${JSON.stringify(frame.type)}`);
    }
  }

  onHistory(frame) {
    for (const message of frame.messages || []) {
      this.onEnvelope({ channel: frame.channel, epoch: frame.epoch, ...message });
    }
    const room = this.state.room(frame.channel);
    if (frame.more && room.position !== null) {
      this.send({ action: "history", channel: frame.channel, since: room.position, epoch: room.epoch });
    }
  }

  onEnvelope(frame) {
    const shown = this.state.envelope(frame);
    this.$("messages").dataset.duplicates = String(this.state.duplicates);
    if (shown === null) return;
    if (shown.epochChanged) {
      this.notice("info", `${shown.channel}: its history was reset (new epoch ${shown.epoch})`, "epoch_changed");
    }
    this.renderRooms();
    const key = this.rowKey(shown.channel, shown.epoch, shown.offset, shown.broadcastId);
    // our own message, already shown from its ack
    const acked =
      shown.offset !== null
        ? this.$("messages").querySelector(`li[data-ack-key="${CSS.escape(`${shown.channel}#${shown.offset}`)}"]`)
        : null;
    if (acked) {
      acked.dataset.key = key;
      acked.removeAttribute("data-ack-key");
      acked.dataset.epoch = shown.epoch ?? "";
      acked.querySelector(".from").textContent = shown.from ?? "?";
      acked.dataset.from = shown.from ?? "";
      return;
    }
    const li = this.row(shown);
    li.dataset.key = key;
    li.dataset.mine = String(shown.from !== null && shown.from === this.user);
    this.insertInOrder(li);
  }

  rowKey(channel, epoch, offset, broadcastId) {
    return offset !== null ? `${channel}#${epoch}#${offset}` : `${channel}#id#${broadcastId}`;
  }

  // rows of a room stay in offset order, whatever order the frames came in
  insertInOrder(li) {
    const list = this.$("messages");
    if (li.dataset.offset !== "") {
      const offset = Number(li.dataset.offset);
      for (const other of list.querySelectorAll(`li[data-channel="${CSS.escape(li.dataset.channel)}"]`)) {
        if (other.dataset.offset !== "" && other.dataset.epoch === li.dataset.epoch && Number(other.dataset.offset) > offset) {
          list.insertBefore(li, other);
          return;
        }
      }
    }
    list.append(li);
  }

  onAck(frame) {
    const sent = this.state.pending.get(frame.id);
    if (!sent) return;
    this.state.pending.delete(frame.id);
    const li = this.$("messages").querySelector(`li[data-key="${CSS.escape(`pending:${frame.id}`)}"]`);
    if (!li) return;
    li.dataset.pending = "false";
    li.dataset.mine = "true";
    li.dataset.broadcastId = frame.broadcastId ?? "";
    if (!Number.isInteger(frame.offset)) return;
    const room = this.state.room(sent.channel);
    if (room.seen.has(frame.offset)) {
      // the envelope came first: it is shown already
      li.remove();
      const shown = this.$("messages").querySelector(`li[data-key="${CSS.escape(`${sent.channel}#${room.epoch}#${frame.offset}`)}"]`);
      if (shown) shown.dataset.mine = "true";
      return;
    }
    li.dataset.offset = String(frame.offset);
    li.dataset.ackKey = `${sent.channel}#${frame.offset}`;
    li.dataset.key = `ack:${frame.id}`;
    li.querySelector(".meta").textContent = `${sent.channel} #${frame.offset}`;
  }

  onError(frame) {
    const text = `${frame.action ?? "frame"}: ${frame.code}: ${frame.message}`;
    if (frame.code === "recovery_impossible") {
      // the missed messages are gone (history lost or too old): start these rooms afresh
      const channels = typeof frame.channel === "string" ? [frame.channel] : [...this.recovering];
      for (const channel of channels) this.state.forgetPosition(channel);
      this.renderRooms();
      this.notice(
        "error",
        `${channels.join(", ") || "recovery"}: missed messages cannot be recovered; reload the page to see the room afresh`,
        "recovery_impossible",
      );
      return;
    }
    if (frame.id && this.state.pending.has(frame.id)) {
      this.state.pending.delete(frame.id);
      const li = this.$("messages").querySelector(`li[data-key="${CSS.escape(`pending:${frame.id}`)}"]`);
      if (li) {
        li.dataset.pending = "false";
        li.dataset.failed = frame.code;
        const retry = frame.retryAfterMs ? ` (retry after ${frame.retryAfterMs} ms)` : "";
        li.querySelector(".meta").textContent += ` not sent: ${frame.code}${retry}`;
      }
    }
    if (frame.action === "subscribe" && typeof frame.channel === "string") {
      this.state.rooms.delete(frame.channel);
      this.renderRooms();
    }
    this.notice("error", text, frame.code, frame.action);
  }

  row(message) {
    const li = this.doc.createElement("li");
    li.className = "message";
    li.dataset.channel = message.channel ?? "";
    li.dataset.offset = message.offset === null ? "" : String(message.offset);
    li.dataset.epoch = message.epoch ?? "";
    li.dataset.from = message.from ?? "";
    const meta = this.doc.createElement("span");
    meta.className = "meta";
    const where = message.channel ?? "direct";
    meta.textContent = message.offset === null ? where : `${where} #${message.offset}`;
    const from = this.doc.createElement("span");
    from.className = "from";
    from.textContent = message.from ?? "operator";
    const text = this.doc.createElement("span");
    text.className = "text";
    text.textContent = messageText(message.data);
    li.append(meta, from, text);
    return li;
  }

  renderRooms() {
    const list = this.$("rooms");
    const target = this.$("target");
    const selected = target.value;
    list.replaceChildren();
    target.replaceChildren();
    for (const [channel, room] of this.state.rooms) {
      const li = this.doc.createElement("li");
      li.dataset.channel = channel;
      li.dataset.joined = String(room.joined);
      li.dataset.position = room.position === null ? "" : String(room.position);
      li.dataset.epoch = room.epoch ?? "";
      const name = this.doc.createElement("span");
      name.textContent = channel;
      const at = this.doc.createElement("span");
      at.className = "meta";
      at.textContent = room.position === null ? "" : ` at #${room.position}`;
      const leave = this.doc.createElement("button");
      leave.type = "button";
      leave.textContent = "leave";
      leave.addEventListener("click", () => this.leave(channel));
      li.append(name, at, leave);
      list.append(li);
      const option = this.doc.createElement("option");
      option.value = channel;
      option.textContent = channel;
      target.append(option);
    }
    if (this.state.rooms.has(selected)) target.value = selected;
  }
}

if (typeof document !== "undefined") {
  const page = new ChatPage(document);
  globalThis.fanoutChat = page;
  document.addEventListener("DOMContentLoaded", () => {
    page.init().catch((err) => {
      document.getElementById("status").textContent = `the page failed to start: ${err}`;
    });
  });
}
