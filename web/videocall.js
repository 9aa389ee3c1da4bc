// Videocall browser client: one WebSocket to the signaling relay, one RTCPeerConnection per call.
// Used by agent.html and customer.html; no build step, no dependencies.
"use strict";

class Videocall extends EventTarget {
  constructor(token) {
    super();
    this.token = token;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject}
    this.call = null; // the current call (JSON from the relay)
    this.pc = null;
    this.iceServers = [];
    this.remoteCandidates = []; // buffered until the remote description is set
    this.lastSeq = new Map(); // call id -> last signal seq seen
    this.localStream = null;
    this.qualityTimer = null;
    this.stats = {};
    this.relayOnly = false;
    this.signalsLost = 0; // signals_lost notices received (shown in the status line)
    this.recording = null; // the call's server-side recording, as the relay last told it
    this.recorderPc = null; // the recording leg: a send-only connection to the server's recorder
    this.recorderCandidates = [];
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/ws`;
    this.ws = new WebSocket(url, ["videocall.v1", "bearer." + this.token]);
    this.ws.onmessage = (e) => this.onFrame(JSON.parse(e.data));
    this.ws.onclose = (e) => this.emit("status", { text: `disconnected (${e.code} ${e.reason || ""})` });
    return new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("cannot connect to the relay"));
    });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  request(frame) {
    const id = `m${this.nextId++}`;
    this.ws.send(JSON.stringify({ ...frame, id }));
    return new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
  }

  async onFrame(frame) {
    if (frame.id && this.pending.has(frame.id) && (frame.type === "ack" || frame.type === "error")) {
      const { resolve, reject } = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      frame.type === "ack" ? resolve(frame) : reject(new Error(`${frame.code}: ${frame.message}`));
      return;
    }
    switch (frame.type) {
      case "hello":
        this.userId = frame.user_id;
        this.emit("status", { text: `connected as ${frame.user_id}` });
        break;
      case "call_state":
        this.onCallState(frame.call);
        break;
      case "offer":
      case "answer":
      case "ice-candidate":
      case "hangup":
        await this.onSignal(frame);
        break;
      case "signals_lost":
        await this.onSignalsLost(frame);
        break;
      case "recording":
        this.onRecording(frame.call_id, frame.recording);
        break;
      default:
        this.emit("notice", frame);
    }
  }

  onCallState(call) {
    if (this.call && this.call.id === call.id && call.version < this.call.version) return;
    if (this.call && this.call.id !== call.id && ["initiated", "ringing", "active"].includes(this.call.status)) return;
    if (!this.call || this.call.id !== call.id) this.recording = null;
    this.call = call;
    this.emit("call", call);
    if (call.recording) this.onRecording(call.id, call.recording);
    if (["ended", "rejected", "missed"].includes(call.status)) this.teardown();
  }

  async onSignal(frame) {
    const last = this.lastSeq.get(frame.call_id) || 0;
    if (frame.seq <= last) return;
    this.lastSeq.set(frame.call_id, frame.seq);
    if (frame.from === "@recorder") return this.onRecorderSignal(frame);
    if (frame.type === "offer") {
      await this.ensurePeer();
      await this.pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
      await this.flushCandidates();
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      await this.request({ type: "answer", call_id: frame.call_id, sdp: answer.sdp });
    } else if (frame.type === "answer") {
      await this.pc.setRemoteDescription({ type: "answer", sdp: frame.sdp });
      await this.flushCandidates();
    } else if (frame.type === "ice-candidate") {
      if (this.pc && this.pc.remoteDescription) await this.pc.addIceCandidate(frame.candidate);
      else this.remoteCandidates.push(frame.candidate);
    } else if (frame.type === "hangup") {
      this.emit("status", { text: "the other party hung up" });
    }
  }

  // The relay's signal bus restarted and may have lost signals of this call: the caller
  // renegotiates with an ICE restart; the callee answers that new offer as usual.
  async onSignalsLost(frame) {
    if (!this.call || this.call.id !== frame.call_id || !this.pc) return;
    this.signalsLost += 1;
    this.emit("status", { text: "signaling was interrupted; renegotiating" });
    if (this.call.caller_id !== this.userId) return;
    const offer = await this.pc.createOffer({ iceRestart: true });
    await this.pc.setLocalDescription(offer);
    await this.request({ type: "offer", call_id: frame.call_id, sdp: offer.sdp });
  }

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
      const stream = await this.media();
      const pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.relayOnly ? "relay" : "all" });
      this.recorderPc = pc;
      pc.onicecandidate = (e) => {
        if (e.candidate) {
          this.request({ type: "ice-candidate", call_id: frame.call_id, to: "@recorder", candidate: e.candidate.toJSON() }).catch(() => {});
        }
      };
      await pc.setRemoteDescription({ type: "offer", sdp: frame.sdp });
      for (const t of pc.getTransceivers()) {
        const track = stream.getTracks().find((x) => x.kind === t.receiver.track.kind);
        if (!track) continue;
        t.direction = "sendonly";
        await t.sender.replaceTrack(track);
      }
      for (const c of this.recorderCandidates.splice(0)) await pc.addIceCandidate(c);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await this.request({ type: "answer", call_id: frame.call_id, to: "@recorder", sdp: answer.sdp });
    } else if (frame.type === "ice-candidate") {
      if (this.recorderPc && this.recorderPc.remoteDescription) await this.recorderPc.addIceCandidate(frame.candidate);
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

  async flushCandidates() {
    for (const c of this.remoteCandidates.splice(0)) await this.pc.addIceCandidate(c);
  }

  async media() {
    if (!this.localStream) {
      this.localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      this.emit("local-stream", this.localStream);
    }
    return this.localStream;
  }

  async ensurePeer() {
    if (this.pc) return this.pc;
    const stream = await this.media();
    // relayOnly: media only through TURN (hides the parties' addresses from each other).
    this.pc = new RTCPeerConnection({ iceServers: this.iceServers, iceTransportPolicy: this.relayOnly ? "relay" : "all" });
    for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    this.pc.ontrack = (e) => this.emit("remote-stream", e.streams[0]);
    this.pc.onicecandidate = (e) => {
      if (e.candidate && this.call) {
        this.request({ type: "ice-candidate", call_id: this.call.id, candidate: e.candidate.toJSON() }).catch(() => {});
      }
    };
    this.pc.onconnectionstatechange = () => this.emit("status", { text: `media ${this.pc.connectionState}` });
    this.qualityTimer = setInterval(() => this.reportQuality(), 2000);
    return this.pc;
  }

  // Customer side: start a call and send the offer.
  async startCall(calleeId, callType) {
    const ack = await this.request({ type: "call.initiate", callee_id: calleeId, call_type: callType, request_id: crypto.randomUUID() });
    this.iceServers = ack.ice_servers || [];
    this.onCallState(ack.call);
    await this.ensurePeer();
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    await this.request({ type: "offer", call_id: ack.call.id, sdp: offer.sdp });
  }

  // Agent side: the phone rings, then the agent accepts or declines.
  async ring() {
    const ack = await this.request({ type: "call.ring", call_id: this.call.id });
    this.iceServers = ack.ice_servers || this.iceServers;
  }

  async accept() {
    const ack = await this.request({ type: "call.answer", call_id: this.call.id });
    this.iceServers = ack.ice_servers || this.iceServers;
    await this.ensurePeer();
    // The offer may have arrived before the answer: the relay replays it; ask for it again.
    await this.request({ type: "resume", call_id: this.call.id, after_seq: this.lastSeq.get(this.call.id) || 0 });
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

  // getStats → numbers on screen and a call.quality report for the inbound video.
  async reportQuality() {
    if (!this.pc || !this.call || this.call.status !== "active") return;
    const report = await this.pc.getStats();
    let rtt = 0, jitter = 0, lost = 0, received = 0, bytes = 0, width = 0, height = 0, fps = 0, ts = 0;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.currentRoundTripTime) rtt = s.currentRoundTripTime * 1000;
      if (s.type === "inbound-rtp" && s.kind === "video") {
        jitter = (s.jitter || 0) * 1000;
        lost = s.packetsLost || 0;
        received = s.packetsReceived || 0;
        bytes = s.bytesReceived || 0;
        width = s.frameWidth || 0;
        height = s.frameHeight || 0;
        fps = s.framesPerSecond || 0;
        ts = s.timestamp;
      }
    });
    const prev = this.stats;
    const bitrate = prev.ts && ts > prev.ts ? ((bytes - prev.bytes) * 8) / (ts - prev.ts) : 0; // kbit/s
    const loss = received + lost > 0 ? (100 * lost) / (received + lost) : 0;
    this.stats = { ts, bytes };
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
    this.request({ type: "call.quality", ...sample }).catch((e) => this.emit("status", { text: `quality: ${e.message}` }));
  }

  teardown() {
    clearInterval(this.qualityTimer);
    this.qualityTimer = null;
    if (this.pc) this.pc.close();
    this.pc = null;
    this.remoteCandidates = [];
    this.stats = {};
    this.closeRecorderLeg();
    this.emit("remote-stream", null);
  }
}

window.Videocall = Videocall;
