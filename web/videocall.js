// Videocall browser client: one WebSocket to the signaling relay (reconnected when it drops), one
// RTCPeerConnection per call (kept across socket drops, rebuilt when the other page reloads).
// Used by agent.html and customer.html; no build step, no dependencies. docs/protocol.md, "What
// the web client does", describes the behaviour below.
"use strict";

const LIVE = ["queued", "initiated", "ringing", "active"];
const CLOSE_TOKEN_EXPIRED = 4001;
const RECONNECT_CAP_MS = 3000;
const SYNC_WINDOW_MS = 3000; // call_state frames this soon after hello are the relay's sync
const DISCONNECTED_RESTART_MS = 3000;

/** The JWT's `exp` in milliseconds, or null when the token carries none (or is not a JWT). */
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof payload.exp === "number" ? payload.exp * 1000 : null;
  } catch (_) {
    return null;
  }
}

/** The DTLS fingerprint of an SDP (one per peer connection): a new one means a new session. */
function fingerprint(sdp) {
  const m = sdp && sdp.match(/^a=fingerprint:(\S+ \S+)/im);
  return m ? m[1].toUpperCase() : null;
}

/** Whether the side that wrote `sdp` sends each kind: from the first audio and video m-lines. */
function sendingIn(sdp) {
  const result = { audio: null, video: null };
  if (!sdp) return result;
  const sections = sdp.split(/\r?\nm=/);
  const session = (sections[0].match(/^a=(sendrecv|sendonly|recvonly|inactive)\s*$/m) || [])[1] || "sendrecv";
  for (const section of sections.slice(1)) {
    const [kind, port] = section.split(/\s+/);
    if ((kind !== "audio" && kind !== "video") || result[kind] !== null) continue;
    const direction = (section.match(/^a=(sendrecv|sendonly|recvonly|inactive)\s*$/m) || [])[1] || session;
    result[kind] = port !== "0" && (direction === "sendrecv" || direction === "sendonly");
  }
  return result;
}

/** Clear words for a getUserMedia failure. */
function mediaErrorWords(error, what) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return `access to the ${what} was denied (allow it in the browser's site settings, then reload)`;
    case "NotFoundError":
    case "OverconstrainedError":
      return `no ${what} was found`;
    case "NotReadableError":
    case "AbortError":
      return `the ${what} is in use by another application or not working`;
    default:
      return `the ${what} could not be opened (${(error && error.message) || error})`;
  }
}

class Videocall extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    // The socket.
    this.ws = null;
    this.connected = false;
    this.everConnected = false;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.reconnects = 0; // sockets opened after the first one
    this.leaving = false; // the page is being left: no reconnect
    this.expired = false; // the token expired: no reconnect
    this.lastHeard = 0;
    this.helloAt = 0;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject}
    this.work = Promise.resolve(); // frames and actions, one at a time
    this.userId = null;
    // The call.
    this.call = null; // the current call (JSON from the relay)
    this.negotiation = null; // id of the call this page negotiates media for (its pc is built or being built)
    this.pc = null;
    this.iceServers = Videocall.storedIceServers();
    this.relayOnly = false;
    this.remoteCandidates = []; // buffered until the remote description is set
    this.remoteStream = null;
    this.lastSeq = new Map(); // call id -> last signal seq applied
    this.floor = new Map(); // call id -> lowest seq that belongs to this page's session (after a rejoin)
    this.staleFingerprint = null; // the other side's fingerprint before this page reloaded
    this.ringOffer = null; // while ringing (callee): the caller's latest offer…
    this.ringCandidates = []; // …and its candidates that came after it
    this.pendingNegotiation = false;
    this.pendingRestart = false;
    this.offerUnsent = false;
    this.disconnectTimer = null;
    // Media.
    this.localStream = null;
    this.mediaTried = false;
    this.mediaProblem = null;
    this.micOn = true;
    this.cameraOn = true;
    this.peerMedia = null; // {audio, video}: whether the other party sends each
    this.qualityTimer = null;
    this.qualityAlerts = new Map(); // open quality.alert episodes of the current call, by alert_id
    this.transferOffer = null; // a `transfer` frame that rings this agent (the call is someone else's yet)
    this.transferredAway = null; // id of the call this agent handed to another agent
    this.audioOnlyFor = null; // the alert this side switched to audio only for
    this.stats = {};
    this.signalsLost = 0; // signals_lost notices received
    // Recording.
    this.recording = null; // the call's server-side recording, as the relay last told it
    this.recorderPc = null; // the recording leg: a send-only connection to the server's recorder
    this.recorderCandidates = [];

    addEventListener("pagehide", () => {
      // Leaving (or reloading): the relay's grace period ends the call unless the page comes back.
      this.leaving = true;
    });
    addEventListener("pageshow", (e) => {
      if (!e.persisted) return;
      this.leaving = false;
      if (!this.ws) this.open();
    });
    addEventListener("online", () => {
      if (this.reconnectTimer) this.open();
    });
    this.watchdog = setInterval(() => this.checkSocket(), 5000);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  note(text) {
    this.emit("status", { text });
  }

  setConnection(state, text) {
    this.connectionState = state;
    this.emit("connection", { state, text });
  }

  static storedIceServers() {
    try {
      return JSON.parse(sessionStorage.getItem("videocall-ice-servers") || "[]");
    } catch (_) {
      return [];
    }
  }

  setIceServers(servers) {
    if (!servers || !servers.length) return;
    this.iceServers = servers;
    try {
      sessionStorage.setItem("videocall-ice-servers", JSON.stringify(servers));
    } catch (_) {}
  }

  // ---- The socket -------------------------------------------------------------------------

  tokenExpired() {
    const exp = tokenExpiry(this.token);
    return exp !== null && exp <= Date.now();
  }

  /** Connects, and keeps reconnecting; resolves at the first `hello`. */
  connect() {
    if (!this.firstHello) this.firstHello = new Promise((resolve) => (this.resolveHello = resolve));
    this.setConnection("connecting", "connecting…");
    this.open();
    return this.firstHello;
  }

  open() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.leaving || this.expired || this.ws) return;
    if (this.tokenExpired()) return this.expire();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/ws`, ["videocall.v1", "bearer." + this.token]);
    } catch (_) {
      return this.scheduleReconnect();
    }
    this.ws = ws;
    this.lastHeard = Date.now();
    ws.onmessage = (e) => ws === this.ws && this.onMessage(e.data);
    ws.onclose = (e) => this.onClose(ws, e.code, e.reason);
    ws.onerror = () => {}; // a close follows
  }

  onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.connected = false;
    const error = new Error("the connection to the relay was lost");
    error.connectionLost = true;
    for (const { reject } of this.pending.values()) reject(error);
    this.pending.clear();
    if (code === CLOSE_TOKEN_EXPIRED) return this.expire();
    if (this.leaving) return;
    this.lastClose = `${code}${reason ? " " + reason : ""}`;
    this.scheduleReconnect();
  }

  /** Drops a socket that stopped answering (a sleeping laptop, a dead Wi-Fi): reconnects at once. */
  dropSocket() {
    const ws = this.ws;
    if (!ws) return;
    this.onClose(ws, 4000, "no answer");
    try {
      ws.close();
    } catch (_) {}
  }

  checkSocket() {
    if (!this.ws) return;
    const quiet = Date.now() - this.lastHeard;
    if (this.ws.readyState === WebSocket.CONNECTING && quiet > 8000) return this.dropSocket();
    if (!this.connected) return;
    if (quiet > 15000) return this.dropSocket();
    if (quiet > 4000) this.request({ type: "ping" }).catch(() => {});
  }

  scheduleReconnect() {
    if (this.reconnectTimer || this.leaving || this.expired) return;
    if (this.tokenExpired()) return this.expire();
    // Exponential backoff with jitter: 250–500 ms first, then up to 1.5–3 s.
    const base = Math.min(RECONNECT_CAP_MS, 500 * 2 ** this.attempt);
    const delay = base / 2 + (Math.random() * base) / 2;
    this.attempt += 1;
    this.setConnection("reconnecting", "reconnecting…");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.open();
    }, delay);
  }

  expire() {
    this.expired = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.setConnection("expired", "your access link has expired: ask for a fresh link and open it");
  }

  /** Sends a frame and waits for its reply (`ack`, `error` or `pong`). */
  request(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !this.connected) {
      const error = new Error("not connected to the relay");
      error.connectionLost = true;
      return Promise.reject(error);
    }
    const id = `m${this.nextId++}`;
    ws.send(JSON.stringify({ ...frame, id }));
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  onMessage(data) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (_) {
      return;
    }
    if (frame.id != null && this.pending.has(frame.id) && ["ack", "error", "pong"].includes(frame.type)) {
      const { resolve, reject } = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      if (frame.type === "error") {
        const error = new Error(`${frame.code}: ${frame.message}`);
        error.code = frame.code;
        reject(error);
      } else resolve(frame);
      return;
    }
    if (frame.type === "hello") {
      // Handled at once: the work queue may be busy (a camera permission prompt).
      this.onHello(frame);
      return;
    }
    const at = Date.now();
    this.enqueue(() => this.onFrame(frame, at)).catch((err) => this.note(err.message));
  }

  /** Runs `task` after every frame and action queued before it; returns its result. */
  enqueue(task) {
    const run = this.work.then(() => task());
    this.work = run.catch(() => {});
    return run;
  }

  async onFrame(frame, at) {
    switch (frame.type) {
      case "call_state":
        return this.onCallState(frame.call, at);
      case "offer":
      case "answer":
      case "ice-candidate":
      case "hangup":
        return this.onSignal(frame);
      case "signals_lost":
        return this.onSignalsLost(frame);
      case "recording":
        return this.onRecording(frame.call_id, frame.recording);
      case "quality.alert":
        return this.onQualityAlert(frame);
      case "transfer":
        return this.onTransfer(frame);
      case "error":
        return this.note(`${frame.code}: ${frame.message}`);
      default:
        this.emit("notice", frame);
    }
  }

  onHello(frame) {
    this.connected = true;
    this.userId = frame.user_id;
    this.helloAt = Date.now();
    const again = this.everConnected;
    this.everConnected = true;
    this.attempt = 0;
    if (again) this.reconnects += 1;
    this.setConnection("connected", `connected as ${frame.user_id}`);
    if (this.resolveHello) this.resolveHello();
    if (again) this.enqueue(() => this.afterReconnect()).catch((err) => this.note(err.message));
  }

  /** A new socket: what the old one may have missed. */
  async afterReconnect() {
    const call = this.call;
    if (!call || !LIVE.includes(call.status)) return;
    const id = call.id;
    this.request({ type: "resume", call_id: id, after_seq: this.lastSeq.get(id) || 0 }).catch(() => {});
    // The call may have ended while we were away (the relay only syncs live calls).
    this.history()
      .then((calls) => {
        const now = calls.find((c) => c.id === id);
        if (now && now.version > this.call.version) this.enqueue(() => this.onCallState(now));
      })
      .catch(() => {});
    const pc = this.pc;
    if (!pc || this.negotiation !== id) return;
    if (this.offerUnsent && pc.signalingState === "have-local-offer") {
      await this.sendOffer(pc.localDescription.sdp);
    } else if (this.pendingNegotiation || this.pendingRestart) {
      await this.negotiate();
    } else if (this.isCaller() && pc.connectionState === "failed") {
      await this.negotiate({ iceRestart: true });
    }
  }

  // ---- Call state -------------------------------------------------------------------------

  isCaller() {
    return !!this.call && this.call.caller_id === this.userId;
  }

  /** A call's state (`at`: when the frame arrived; right after hello it is the relay's sync). */
  async onCallState(call, at = Date.now()) {
    if (this.call && this.call.id === call.id && call.version < this.call.version) return;
    if (call.caller_id !== this.userId && call.callee_id !== this.userId) {
      // A desk call that rang this agent went back to the queue, or this agent transferred it:
      // it is not ours any more.
      if (this.call && this.call.id === call.id) {
        this.emit("call", { ...call, status: this.transferredAway === call.id ? "transferred" : "withdrawn" });
        this.teardown();
        this.call = null;
      }
      return;
    }
    if (this.call && this.call.id !== call.id && LIVE.includes(this.call.status)) return;
    const firstSight = !this.call || this.call.id !== call.id;
    if (firstSight) {
      this.recording = null;
      this.floor.clear();
      if (this.ringOffer && this.ringOffer.call_id !== call.id) this.ringOffer = null;
    }
    const was = this.call;
    this.call = call;
    this.emit("call", call);
    if (call.recording) this.onRecording(call.id, call.recording);
    if (!LIVE.includes(call.status)) {
      this.teardown();
      return;
    }
    if (call.queued_at && call.caller_id === this.userId && this.negotiation === call.id) {
      await this.onDeskCall(call);
      return;
    }
    if (
      call.caller_id === this.userId &&
      call.status === "active" &&
      was &&
      was.id === call.id &&
      was.status === "active" &&
      was.callee_id !== call.callee_id
    ) {
      // Transferred: a new connection (same camera), offered to the new agent.
      await this.offerAfresh(call);
      return;
    }
    if (this.negotiation === call.id) return;
    const caller = call.caller_id === this.userId;
    const sync = at - this.helloAt < SYNC_WINDOW_MS;
    if (firstSight && sync && caller && call.queued_at && ["queued", "initiated", "ringing"].includes(call.status)) {
      // This page was reloaded while its desk call waits or rings an agent: offer again.
      this.negotiation = call.id;
      this.offeredTo = null;
      await this.onDeskCall(call);
    } else if (firstSight && sync && (caller || call.status === "active")) {
      // This page was reloaded (or its tab crashed) during the call: it joins again.
      await this.rejoin(call);
    } else if (!caller && call.status === "active" && was && was.id === call.id && was.status !== "active") {
      this.note("the call was answered on another device");
    }
  }

  /** The caller's call has a new callee (a transfer): close the old connection, offer anew. */
  async offerAfresh(call) {
    this.negotiation = call.id;
    this.emit("remote-stream", null);
    await this.freshOffer(call);
  }

  /** A new peer connection (the same camera) and an offer on it to the call's callee. */
  async freshOffer(call) {
    this.closePc();
    await this.getMedia();
    if (!this.call || this.call.id !== call.id || !LIVE.includes(this.call.status)) return;
    this.buildPc();
    this.addLocalTransceivers();
    this.pendingNegotiation = false;
    this.pendingRestart = false;
    await this.negotiate();
  }

  // ---- Transfer ---------------------------------------------------------------------------

  /**
   * A `transfer` frame (docs/protocol.md): the customer and both agents get each step. It rings
   * the target (`transferOffer`) while `ringing`; the first agent learns the outcome.
   */
  onTransfer(frame) {
    const t = frame.transfer;
    const role = t.to_agent_id === this.userId ? "target" : t.from_agent_id === this.userId ? "from" : "customer";
    if (role === "target") {
      const busy = this.call && this.call.id !== t.call_id && LIVE.includes(this.call.status);
      this.transferOffer = t.status === "ringing" && !busy ? frame : null;
    }
    if (role === "from" && t.status === "transferred") this.transferredAway = t.call_id;
    this.emit("transfer", { ...t, role, call: frame.call });
  }

  /** The call's agent hands it to another agent (`to_agent_id`) or a desk (`to_call_type`). */
  async transfer(target) {
    if (!this.call) throw new Error("no call to transfer");
    const ack = await this.request({ type: "call.transfer", call_id: this.call.id, ...target });
    return ack.transfer;
  }

  /** The target accepts: the call becomes theirs; the customer offers to them. */
  acceptTransfer() {
    return this.enqueue(async () => {
      const offered = this.transferOffer;
      if (!offered) return;
      this.transferOffer = null;
      const id = offered.transfer.call_id;
      this.negotiation = id;
      let ack;
      try {
        ack = await this.request({ type: "call.answer", call_id: id });
      } catch (err) {
        this.negotiation = null;
        throw err;
      }
      this.setIceServers(ack.ice_servers);
      if (ack.call) await this.onCallState(ack.call);
      await this.getMedia();
      // The customer's offer comes next; onOffer answers it (the call is active, ours).
    });
  }

  /** The target declines: the call stays with the first agent. */
  async declineTransfer() {
    const offered = this.transferOffer;
    if (!offered) return;
    this.transferOffer = null;
    await this.request({ type: "call.reject", call_id: offered.transfer.call_id });
  }

  /** The customer's desk call: no peer connection while it waits in the queue; an offer to
   * each agent it is offered to (a new connection when another agent gets it). */
  async onDeskCall(call) {
    if (call.status === "queued") {
      if (this.offeredTo) this.closePc();
      this.offeredTo = null;
      return;
    }
    if (!["initiated", "ringing"].includes(call.status) || !call.callee_id || call.callee_id === this.offeredTo) return;
    this.offeredTo = call.callee_id;
    await this.freshOffer(call);
  }

  // ---- Signals ----------------------------------------------------------------------------

  async onSignal(frame) {
    const callId = frame.call_id;
    if (frame.seq <= (this.lastSeq.get(callId) || 0)) return; // never apply a seq twice
    this.lastSeq.set(callId, frame.seq);
    const floor = this.floor.get(callId);
    if (floor !== undefined && frame.seq < floor) return; // the session before this page's rejoin
    if (frame.from === "@recorder") return this.onRecorderSignal(frame);
    if (this.call && this.call.id !== callId && LIVE.includes(this.call.status)) return; // one call at a time
    switch (frame.type) {
      case "offer":
        return this.onOffer(frame);
      case "answer":
        return this.onAnswer(frame);
      case "ice-candidate":
        return this.onCandidate(frame);
      case "hangup":
        return this.note("the other party hung up");
    }
  }

  async onOffer(frame) {
    const pc = this.pc;
    if (!pc) {
      if (this.negotiation === frame.call_id && this.call && this.call.status === "active") {
        // Accepted before the caller's offer came: answered now.
        this.buildPc();
        return this.answerOffer(frame);
      }
      // Ringing: keep only the caller's latest offer, answered when the person accepts.
      const call = this.call;
      if (!call || call.id !== frame.call_id || (call.callee_id === this.userId && call.status !== "active")) {
        this.ringOffer = frame;
        this.ringCandidates = [];
      }
      return;
    }
    if (this.negotiation !== frame.call_id || this.call.id !== frame.call_id) return;
    const theirs = fingerprint(frame.sdp);
    let newSession;
    if (!pc.remoteDescription) {
      // We offered and nothing came back yet: an offer from the other side's earlier session
      // (before this page reloaded) is stale; any other is a new session that wins.
      if (theirs && theirs === this.staleFingerprint) return;
      newSession = true;
    } else {
      const known = fingerprint(pc.remoteDescription.sdp);
      newSession = !!theirs && !!known && theirs !== known;
    }
    if (newSession) {
      // The other page reloaded: a fresh connection (same camera), answering its offer.
      this.note("the other party rejoined");
      this.buildPc();
      return this.answerOffer(frame);
    }
    // Perfect negotiation: the callee is polite and yields on a collision.
    if (pc.signalingState !== "stable") {
      if (this.isCaller()) return; // impolite: our offer wins, theirs is ignored
      await pc.setLocalDescription({ type: "rollback" });
      this.pendingNegotiation = true;
    }
    return this.answerOffer(frame);
  }

  async answerOffer(frame) {
    const pc = this.pc;
    await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
    this.rememberRemote();
    await this.attachLocal();
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    await this.flushCandidates();
    this.emitPeerMedia();
    await this.request({ type: "answer", call_id: frame.call_id, sdp: answer.sdp });
    if (this.pendingNegotiation) await this.negotiate();
  }

  async onAnswer(frame) {
    const pc = this.pc;
    if (!pc || pc.signalingState !== "have-local-offer" || this.call.id !== frame.call_id) return; // only to our own offer
    await pc.setRemoteDescription({ type: "answer", sdp: frame.sdp });
    this.rememberRemote();
    await this.flushCandidates();
    this.emitPeerMedia();
    if (this.pendingNegotiation || this.pendingRestart) await this.negotiate();
  }

  async onCandidate(frame) {
    const candidate = frame.candidate;
    if (!this.pc || !this.call || this.call.id !== frame.call_id) {
      if (this.ringOffer && this.ringOffer.call_id === frame.call_id) this.ringCandidates.push(candidate);
      return;
    }
    if (!this.pc.remoteDescription) {
      this.remoteCandidates.push(candidate);
      return;
    }
    await this.pc.addIceCandidate(candidate).catch(() => {}); // stale candidates fail: harmless
  }

  async flushCandidates() {
    for (const c of this.remoteCandidates.splice(0)) await this.pc.addIceCandidate(c).catch(() => {});
  }

  /** Remembers the other side's fingerprint, so a reload of this page recognises its stale offers. */
  rememberRemote() {
    const fp = this.pc && this.pc.remoteDescription && fingerprint(this.pc.remoteDescription.sdp);
    if (!fp || !this.call) return;
    try {
      sessionStorage.setItem(`videocall-remote-fp:${this.call.id}`, fp);
    } catch (_) {}
  }

  emitPeerMedia() {
    const desc = this.pc && (this.pc.currentRemoteDescription || this.pc.remoteDescription);
    this.peerMedia = desc ? sendingIn(desc.sdp) : null;
    this.emit("peer-media", this.peerMedia);
  }

  /** A new offer from this side (renegotiation, ICE restart); deferred while one is in flight. */
  async negotiate({ iceRestart = false } = {}) {
    const pc = this.pc;
    const call = this.call;
    if (!pc || !call || !LIVE.includes(call.status) || this.negotiation !== call.id) return;
    if (!this.isCaller() && call.status !== "active") return; // the callee offers only after answering
    if (iceRestart) this.pendingRestart = true;
    if (pc.signalingState !== "stable") {
      this.pendingNegotiation = true;
      return;
    }
    const restart = this.pendingRestart;
    this.pendingNegotiation = false;
    this.pendingRestart = false;
    const offer = await pc.createOffer({ iceRestart: restart });
    await pc.setLocalDescription(offer);
    await this.sendOffer(offer.sdp);
  }

  async sendOffer(sdp) {
    const callId = this.call.id;
    try {
      const ack = await this.request({ type: "offer", call_id: callId, sdp });
      this.offerUnsent = false;
      if (this.floor.get(callId) === Infinity) this.floor.set(callId, ack.seq);
      return ack;
    } catch (err) {
      if (err.connectionLost) {
        this.offerUnsent = true; // sent again after the reconnect
        return null;
      }
      if (this.floor.get(callId) === Infinity) this.floor.delete(callId);
      const pc = this.pc;
      if (pc && pc.signalingState === "have-local-offer") await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      throw err;
    }
  }

  // The relay's signal bus restarted and may have lost signals of this call: the caller
  // renegotiates with an ICE restart; the callee answers that new offer as usual.
  async onSignalsLost(frame) {
    if (!this.call || this.call.id !== frame.call_id || !this.pc) return;
    this.signalsLost += 1;
    this.note("signaling was interrupted; renegotiating");
    if (this.isCaller()) await this.negotiate({ iceRestart: true });
  }

  // ---- Peer connection and media ----------------------------------------------------------

  /** A new peer connection for the current call (closing any earlier one); no transceivers yet. */
  buildPc() {
    this.closePc();
    // relayOnly: media only through TURN (hides the parties' addresses from each other).
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.relayOnly ? "relay" : "all" });
    this.pc = pc;
    this.remoteCandidates = [];
    this.pendingNegotiation = false;
    this.pendingRestart = false;
    this.offerUnsent = false;
    const remote = new MediaStream();
    this.remoteStream = remote;
    pc.ontrack = (e) => {
      if (pc !== this.pc) return;
      for (const t of remote.getTracks()) if (t.kind === e.track.kind && t !== e.track) remote.removeTrack(t);
      if (!remote.getTracks().includes(e.track)) remote.addTrack(e.track);
      this.emit("remote-stream", remote);
    };
    pc.onicecandidate = (e) => {
      if (pc !== this.pc || !e.candidate || !this.call) return;
      this.request({ type: "ice-candidate", call_id: this.call.id, candidate: e.candidate.toJSON() }).catch(() => {});
    };
    pc.onconnectionstatechange = () => this.onConnectionState(pc);
    if (!this.qualityTimer) this.qualityTimer = setInterval(() => this.reportQuality(), 2000);
    return pc;
  }

  closePc() {
    clearTimeout(this.disconnectTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    this.peerMedia = null;
  }

  onConnectionState(pc) {
    if (pc !== this.pc) return;
    const state = pc.connectionState;
    this.note(`media ${state}`);
    this.emit("media-state", state);
    clearTimeout(this.disconnectTimer);
    if (state === "failed") this.restartIce();
    else if (state === "disconnected") {
      this.disconnectTimer = setTimeout(() => {
        if (pc === this.pc && pc.connectionState === "disconnected") this.restartIce();
      }, DISCONNECTED_RESTART_MS);
    }
  }

  /** The caller restarts ICE (a new offer with fresh credentials); the callee answers it. */
  restartIce() {
    if (!this.isCaller()) return;
    this.enqueue(() => this.negotiate({ iceRestart: true })).catch((err) => this.note(err.message));
  }

  localTrack(kind) {
    if (!this.localStream) return null;
    return (kind === "audio" ? this.localStream.getAudioTracks() : this.localStream.getVideoTracks())[0] || null;
  }

  wants(kind) {
    return kind === "audio" ? this.micOn : this.cameraOn;
  }

  transceiver(kind) {
    if (!this.pc) return null;
    return this.pc.getTransceivers().find((t) => !t.stopped && t.currentDirection !== "stopped" && t.receiver.track.kind === kind) || null;
  }

  /** Offerer: one transceiver per kind, sending what we have and want, receiving always. */
  addLocalTransceivers() {
    for (const kind of ["audio", "video"]) {
      const track = this.localTrack(kind);
      if (track) this.pc.addTransceiver(track, { direction: this.wants(kind) ? "sendrecv" : "recvonly", streams: [this.localStream] });
      else this.pc.addTransceiver(kind, { direction: "recvonly" });
    }
  }

  /** Answerer: our tracks on the transceivers the offer made; recvonly for what we do not send. */
  async attachLocal() {
    for (const kind of ["audio", "video"]) {
      const t = this.transceiver(kind);
      if (!t) continue;
      const track = this.localTrack(kind);
      if (track && t.sender.track !== track) {
        await t.sender.replaceTrack(track);
        if (t.sender.setStreams) t.sender.setStreams(this.localStream);
      }
      const direction = track && this.wants(kind) ? "sendrecv" : "recvonly";
      if (t.direction !== direction) t.direction = direction;
    }
  }

  /** Camera and microphone, or the microphone alone, or nothing (the call still receives). */
  async getMedia() {
    if (this.localStream || this.mediaTried) return this.localStream;
    this.mediaTried = true;
    let stream = null;
    let problem = null;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      problem = "this page cannot use the camera or microphone here (it needs https): you can see and hear the other party, but they cannot see or hear you";
    } else {
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      } catch (both) {
        try {
          stream = await navigator.mediaDevices.getUserMedia({ audio: true });
          problem = `Camera: ${mediaErrorWords(both, "camera")}. This is an audio-only call for you; you still see the other party.`;
        } catch (audio) {
          problem =
            `Camera and microphone: ${mediaErrorWords(both, "camera")}; ${mediaErrorWords(audio, "microphone")}. ` +
            "You can see and hear the other party, but they cannot see or hear you.";
        }
      }
    }
    this.localStream = stream;
    this.mediaProblem = problem;
    if (stream) {
      for (const kind of ["audio", "video"]) {
        const track = this.localTrack(kind);
        if (track) track.enabled = this.wants(kind);
      }
    }
    this.emit("local-stream", stream);
    this.emit("media-problem", problem);
    this.emit("local-media", this.localMedia());
    return stream;
  }

  releaseMedia() {
    if (this.localStream) for (const t of this.localStream.getTracks()) t.stop();
    const had = this.localStream || this.mediaTried;
    this.localStream = null;
    this.mediaTried = false;
    this.mediaProblem = null;
    if (had) {
      this.emit("local-stream", null);
      this.emit("media-problem", null);
      this.emit("local-media", this.localMedia());
    }
  }

  localMedia() {
    return { micOn: this.micOn, cameraOn: this.cameraOn, hasMic: !!this.localTrack("audio"), hasCamera: !!this.localTrack("video"), tried: this.mediaTried };
  }

  /** Microphone on/off: the track is disabled and the transceiver stops sending (renegotiated). */
  setMic(on) {
    return this.enqueue(() => this.setSending("audio", on));
  }

  /** Camera on/off, the same way (the user's choice: it ends an audio-only switch for an alert). */
  setCamera(on) {
    this.audioOnlyFor = null;
    return this.enqueue(() => this.setSending("video", on));
  }

  async setSending(kind, on) {
    if (kind === "audio") this.micOn = on;
    else this.cameraOn = on;
    const track = this.localTrack(kind);
    if (track) track.enabled = on;
    this.emit("local-media", this.localMedia());
    const t = this.transceiver(kind);
    if (!t) return;
    const direction = on && track ? "sendrecv" : "recvonly";
    if (t.direction === direction) return;
    t.direction = direction;
    await this.negotiate();
  }

  // ---- Actions ----------------------------------------------------------------------------

  /** Customer side: start a call and send the offer. Without `calleeId` it calls the desk of
   * `callType`: the offer goes out once an agent is offered the call. */
  startCall(calleeId, callType) {
    return this.enqueue(async () => {
      const frame = { type: "call.initiate", call_type: callType, request_id: crypto.randomUUID() };
      if (calleeId) frame.callee_id = calleeId;
      const ack = await this.request(frame);
      this.setIceServers(ack.ice_servers);
      this.negotiation = ack.call.id;
      this.offeredTo = null;
      await this.onCallState(ack.call);
      if (ack.call.status === "queued") {
        await this.getMedia();
        return;
      }
      await this.getMedia();
      if (!this.call || this.call.id !== ack.call.id || !LIVE.includes(this.call.status)) return;
      this.buildPc();
      this.addLocalTransceivers();
      await this.negotiate();
    });
  }

  /** A reloaded page's way back into its live call: a new connection, offered to the other side. */
  async rejoin(call) {
    this.negotiation = call.id;
    this.floor.set(call.id, Infinity); // until our offer's ack says where our session starts
    this.staleFingerprint = sessionStorage.getItem(`videocall-remote-fp:${call.id}`);
    this.note("rejoining the call");
    try {
      const ack = await this.request({ type: "ice.servers" });
      this.setIceServers(ack.ice_servers);
    } catch (_) {
      // An older relay: the servers this tab was given last.
    }
    await this.getMedia();
    if (!this.call || this.call.id !== call.id || !LIVE.includes(this.call.status)) return;
    this.buildPc();
    this.addLocalTransceivers();
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await this.sendOffer(offer.sdp);
  }

  /** Agent side: the phone rings (the caller is told). */
  async ring() {
    const ack = await this.request({ type: "call.ring", call_id: this.call.id });
    this.setIceServers(ack.ice_servers);
  }

  /** The callee accepts: only now the camera opens and the buffered offer is answered. */
  accept() {
    return this.enqueue(async () => {
      const call = this.call;
      if (!call || call.callee_id !== this.userId || !["initiated", "ringing"].includes(call.status)) return;
      if (this.negotiation === call.id) return;
      this.negotiation = call.id;
      let ack;
      try {
        ack = await this.request({ type: "call.answer", call_id: call.id });
      } catch (err) {
        this.negotiation = null;
        throw err;
      }
      this.setIceServers(ack.ice_servers);
      if (ack.call) await this.onCallState(ack.call);
      await this.getMedia();
      if (!this.call || this.call.id !== call.id || this.call.status !== "active") return;
      const offer = this.ringOffer && this.ringOffer.call_id === call.id ? this.ringOffer : null;
      const candidates = this.ringCandidates;
      this.ringOffer = null;
      this.ringCandidates = [];
      // Without the caller's offer yet, the page waits for it (the caller always offers; two
      // first offers crossing would leave both sides answering a connection the other dropped).
      if (offer) {
        this.buildPc();
        this.remoteCandidates = candidates;
        await this.answerOffer(offer);
      }
    });
  }

  async reject() {
    await this.request({ type: "call.reject", call_id: this.call.id });
  }

  async hangUp() {
    if (!this.call) return;
    const id = this.call.id;
    await this.request({ type: "hangup", call_id: id }).catch(() => {});
    await this.request({ type: "call.end", call_id: id });
  }

  async history() {
    const ack = await this.request({ type: "call.history" });
    return ack.calls || [];
  }

  // ---- Recording --------------------------------------------------------------------------

  // Recording: both parties' consent is needed; each sees the other's (`recording` frames).
  async setRecordingConsent(consent) {
    if (!this.call) return;
    const ack = await this.request({ type: "recording.consent", call_id: this.call.id, consent });
    if (ack.call && ack.call.recording) this.onRecording(ack.call.id, ack.call.recording);
  }

  onRecording(callId, recording) {
    if (!this.call || this.call.id !== callId) return;
    if (this.recording && recording.version < this.recording.version) return;
    this.recording = recording;
    this.emit("recording", recording);
    if (!["starting", "active"].includes(recording.status)) this.closeRecorderLeg();
  }

  // The recorder offers receive-only audio and video; we answer sending our camera and microphone.
  async onRecorderSignal(frame) {
    if (frame.type === "offer") {
      this.closeRecorderLeg();
      const stream = await this.getMedia();
      const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.relayOnly ? "relay" : "all" });
      this.recorderPc = pc;
      pc.onicecandidate = (e) => {
        if (e.candidate) {
          this.request({ type: "ice-candidate", call_id: frame.call_id, to: "@recorder", candidate: e.candidate.toJSON() }).catch(() => {});
        }
      };
      await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
      for (const t of pc.getTransceivers()) {
        const track = stream && stream.getTracks().find((x) => x.kind === t.receiver.track.kind);
        if (!track) continue;
        t.direction = "sendonly";
        await t.sender.replaceTrack(track);
      }
      for (const c of this.recorderCandidates.splice(0)) await pc.addIceCandidate(c).catch(() => {});
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await this.request({ type: "answer", call_id: frame.call_id, to: "@recorder", sdp: answer.sdp });
    } else if (frame.type === "ice-candidate") {
      if (this.recorderPc && this.recorderPc.remoteDescription) await this.recorderPc.addIceCandidate(frame.candidate).catch(() => {});
      else this.recorderCandidates.push(frame.candidate);
    } else if (frame.type === "hangup") {
      this.closeRecorderLeg();
    }
  }

  closeRecorderLeg() {
    if (this.recorderPc) this.recorderPc.close();
    this.recorderPc = null;
    this.recorderCandidates = [];
  }

  // ---- Quality ----------------------------------------------------------------------------

  /**
   * A live quality alert of the current call (docs/protocol.md `quality.alert`). `mine` says the
   * likely cause is this side's uplink. When an alert this side switched to audio only for ends,
   * the camera comes back.
   */
  async onQualityAlert(frame) {
    if (!this.call || frame.call_id !== this.call.id) return;
    const mine = frame.likely_cause_id === this.userId;
    if (frame.state === "degraded") {
      this.qualityAlerts.set(frame.alert_id, { ...frame, mine });
    } else {
      this.qualityAlerts.delete(frame.alert_id);
      if (this.audioOnlyFor === frame.alert_id) {
        this.audioOnlyFor = null;
        await this.setSending("video", true);
      }
    }
    this.emit("quality-alert", { ...frame, mine, audioOnly: this.audioOnlyFor !== null });
  }

  /** Audio only while the open alert on this side's uplink lasts: outgoing video stops. */
  audioOnlyUntilRecovered() {
    const alert = [...this.qualityAlerts.values()].find((a) => a.mine);
    if (!alert || !this.cameraOn) return Promise.resolve();
    this.audioOnlyFor = alert.alert_id;
    return this.enqueue(() => this.setSending("video", false));
  }

  // getStats → numbers on screen and a call.quality report of what this side receives: round
  // trip, jitter and picture of the inbound video (jitter of the audio without video), and the
  // loss over the last interval of every inbound stream.
  async reportQuality() {
    if (!this.pc || !this.call || this.call.status !== "active") return;
    const report = await this.pc.getStats();
    let rtt = 0, jitter = 0, audioJitter = 0, lost = 0, received = 0, bytes = 0, width = 0, height = 0, fps = 0, ts = 0;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.currentRoundTripTime) rtt = s.currentRoundTripTime * 1000;
      // Loss counts every inbound stream, audio too: it goes on being measured when video stops.
      if (s.type === "inbound-rtp") {
        lost += s.packetsLost || 0;
        received += s.packetsReceived || 0;
        ts = Math.max(ts, s.timestamp);
      }
      if (s.type === "inbound-rtp" && s.kind === "audio") audioJitter = (s.jitter || 0) * 1000;
      if (s.type === "inbound-rtp" && s.kind === "video") {
        jitter = (s.jitter || 0) * 1000;
        bytes = s.bytesReceived || 0;
        width = s.frameWidth || 0;
        height = s.frameHeight || 0;
        fps = s.framesPerSecond || 0;
      }
    });
    if (!jitter) jitter = audioJitter;
    const prev = this.stats;
    const bitrate = prev.ts && ts > prev.ts && bytes >= prev.bytes ? ((bytes - prev.bytes) * 8) / (ts - prev.ts) : 0; // kbit/s
    // Loss over the last interval (the counters are totals since the start of the stream).
    const fresh = prev.ts && received >= prev.received;
    const dLost = fresh ? Math.max(0, lost - prev.lost) : lost;
    const dReceived = fresh ? received - prev.received : received;
    const loss = dReceived + dLost > 0 ? (100 * dLost) / (dReceived + dLost) : 0;
    this.stats = { ts, bytes, received, lost };
    const sample = {
      call_id: this.call.id,
      rtt_ms: rtt,
      jitter_ms: jitter,
      packet_loss_percent: Math.min(100, Math.max(0, loss)),
      bitrate_kbps: Math.max(0, bitrate),
      width: width && height ? width : 0,
      height: width && height ? height : 0,
      fps,
      direction: "inbound",
    };
    this.emit("quality", sample);
    if (!this.connected) return;
    this.request({ type: "call.quality", ...sample }).catch((e) => {
      if (!e.connectionLost) this.note(`quality: ${e.message}`);
    });
  }

  teardown() {
    clearInterval(this.qualityTimer);
    this.qualityTimer = null;
    this.closePc();
    this.negotiation = null;
    this.remoteCandidates = [];
    this.remoteStream = null;
    this.ringOffer = null;
    this.ringCandidates = [];
    this.pendingNegotiation = false;
    this.pendingRestart = false;
    this.offerUnsent = false;
    this.qualityAlerts.clear();
    if (this.audioOnlyFor !== null) {
      // The call is over: the camera setting goes back to what the user chose.
      this.audioOnlyFor = null;
      this.cameraOn = true;
      this.emit("local-media", this.localMedia());
    }
    this.stats = {};
    this.closeRecorderLeg();
    this.releaseMedia();
    this.emit("remote-stream", null);
    this.emit("peer-media", null);
  }
}

window.Videocall = Videocall;
