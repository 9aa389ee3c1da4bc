// What agent.html and customer.html share: token, connection, videos, controls, quality, history.
"use strict";

const Page = {
  connection: "not connected",
  noteText: "",

  /** A passing remark after the connection state in the status line ("media connected", errors). */
  status(text) {
    Page.noteText = text || "";
    Page.renderStatus();
  },

  renderStatus() {
    document.getElementById("status").textContent = Page.noteText ? `${Page.connection} · ${Page.noteText}` : Page.connection;
  },

  /** The token: from the link (then removed from the address bar) or from this tab's earlier load. */
  token() {
    const url = new URL(location.href);
    const fromLink = url.searchParams.get("token");
    if (fromLink) {
      sessionStorage.setItem("videocall-token", fromLink);
      url.searchParams.delete("token");
      history.replaceState(history.state, "", url.pathname + url.search + url.hash);
      return fromLink;
    }
    return sessionStorage.getItem("videocall-token");
  },

  banner(text) {
    const el = document.getElementById("banner");
    el.textContent = text || "";
    el.hidden = !text;
  },

  start(role) {
    const other = role === "agent" ? "customer" : "agent";
    const token = Page.token();
    const vc = new Videocall(token || "");
    vc.relayOnly = new URLSearchParams(location.search).get("relay") === "1";
    window.vc = vc; // for debugging and the end-to-end tests
    vc.addEventListener("status", (e) => Page.status(e.detail.text));
    vc.addEventListener("connection", (e) => {
      Page.connection = e.detail.text;
      if (e.detail.state !== "connected") Page.noteText = "";
      Page.renderStatus();
      document.body.dataset.connection = e.detail.state;
      if (e.detail.state === "expired") Page.banner("Your access link has expired. Ask for a fresh link and open it to continue.");
    });
    vc.addEventListener("local-stream", (e) => (document.getElementById("local").srcObject = e.detail));
    vc.addEventListener("remote-stream", (e) => {
      const video = document.getElementById("remote");
      if (video.srcObject !== e.detail) video.srcObject = e.detail;
    });
    vc.addEventListener("media-problem", (e) => {
      const el = document.getElementById("media-note");
      el.textContent = e.detail || "";
      el.hidden = !e.detail;
    });

    // Call state and its timer.
    let timer = null;
    const showTimer = () => {
      const call = vc.call;
      const el = document.getElementById("timer");
      if (!call || call.status !== "active" || !call.answered_at) {
        el.textContent = "";
        clearInterval(timer);
        timer = null;
        return;
      }
      const secs = Math.max(0, Math.floor((Date.now() - Date.parse(call.answered_at)) / 1000));
      el.textContent = `${String(Math.floor(secs / 60)).padStart(2, "0")}:${String(secs % 60).padStart(2, "0")}`;
      if (!timer) timer = setInterval(showTimer, 1000);
    };
    vc.addEventListener("call", (e) => {
      const call = e.detail;
      document.getElementById("callstate").textContent = `${call.status}${call.end_reason ? ` (${call.end_reason})` : ""}`;
      document.getElementById("end").disabled = !["queued", "initiated", "ringing", "active"].includes(call.status);
      showTimer();
    });

    // Microphone and camera.
    const mute = document.getElementById("mute");
    const camera = document.getElementById("camera");
    const showControls = (m) => {
      mute.textContent = m.micOn ? "Mute" : "Unmute";
      mute.setAttribute("aria-pressed", String(!m.micOn));
      camera.textContent = m.cameraOn ? "Camera off" : "Camera on";
      camera.setAttribute("aria-pressed", String(!m.cameraOn));
      mute.disabled = m.tried && !m.hasMic;
      camera.disabled = m.tried && !m.hasCamera;
      if (m.tried && !m.hasMic) mute.textContent = "No microphone";
      if (m.tried && !m.hasCamera) camera.textContent = "No camera";
    };
    vc.addEventListener("local-media", (e) => showControls(e.detail));
    showControls(vc.localMedia());
    mute.onclick = () => vc.setMic(!vc.micOn).catch((err) => Page.status(err.message));
    camera.onclick = () => vc.setCamera(!vc.cameraOn).catch((err) => Page.status(err.message));
    // What the other party sends, from the m-line directions of its description.
    vc.addEventListener("peer-media", (e) => {
      const p = e.detail;
      const words = [];
      if (p && p.audio === false) words.push(`${other} muted`);
      if (p && p.video === false) words.push(`${other}'s camera is off`);
      const el = document.getElementById("peer-media");
      el.textContent = words.join(" · ");
      el.dataset.audio = p && p.audio !== null ? String(p.audio) : "";
      el.dataset.video = p && p.video !== null ? String(p.video) : "";
    });

    vc.addEventListener("quality", (e) => {
      const q = e.detail;
      document.getElementById("q-rtt").textContent = `${q.rtt_ms.toFixed(0)} ms`;
      document.getElementById("q-jitter").textContent = `${q.jitter_ms.toFixed(1)} ms`;
      document.getElementById("q-loss").textContent = `${q.packet_loss_percent.toFixed(2)} %`;
      document.getElementById("q-bitrate").textContent = `${q.bitrate_kbps.toFixed(0)} kbit/s`;
      document.getElementById("q-res").textContent = q.width ? `${q.width}×${q.height} @ ${q.fps.toFixed(0)} fps` : "–";
    });
    // Live quality alerts: words for each side, and audio only for the side whose uplink is the cause.
    const alertBox = document.getElementById("quality-alert");
    const alertText = document.getElementById("quality-alert-text");
    const audioOnly = document.getElementById("audio-only");
    const open = new Map();
    const showAlerts = (audioOnlyOn) => {
      const alerts = [...open.values()];
      const mineOpen = alerts.some((a) => a.mine);
      alertBox.hidden = alerts.length === 0;
      alertBox.dataset.state = alerts.length ? "degraded" : "";
      // Both paths poor at once: the samples cannot tell whose network it is.
      const theirs = alerts.find((a) => !a.mine);
      if (mineOpen && theirs) {
        alertText.textContent = audioOnlyOn
          ? `The connection between you and ${theirs.sender_id} is poor: sending audio only until it recovers.`
          : `The connection between you and ${theirs.sender_id} is poor — switch to audio only?`;
      } else if (mineOpen) {
        alertText.textContent = audioOnlyOn
          ? "Your connection is poor: sending audio only until it recovers."
          : "Your connection is poor — switch to audio only?";
      } else {
        alertText.textContent = theirs ? `${theirs.sender_id}'s connection is poor: their picture or voice may break up.` : "";
      }
      audioOnly.hidden = !mineOpen || audioOnlyOn || !vc.cameraOn;
    };
    vc.addEventListener("quality-alert", (e) => {
      const a = e.detail;
      if (a.state === "degraded") open.set(a.alert_id, a);
      else {
        open.delete(a.alert_id);
        Page.status(a.mine ? "Your connection recovered." : `${a.sender_id}'s connection recovered.`);
      }
      showAlerts(a.audioOnly);
    });
    vc.addEventListener("call", (e) => {
      if (!["active", "ringing", "initiated"].includes(e.detail.status)) {
        open.clear();
        showAlerts(false);
      }
    });
    audioOnly.onclick = () =>
      vc
        .audioOnlyUntilRecovered()
        .then(() => showAlerts(true))
        .catch((err) => Page.status(err.message));
    document.getElementById("end").onclick = () => vc.hangUp().catch((err) => Page.status(err.message));

    // Recording needs both parties: each page shows who consented and lets its user give or take back consent.
    const rec = document.getElementById("record");
    const recState = document.getElementById("recording");
    const mine = () => {
      const r = vc.recording;
      if (!r || !vc.call) return false;
      return vc.call.caller_id === vc.userId ? r.caller_consent : r.callee_consent;
    };
    rec.onclick = () => vc.setRecordingConsent(!mine()).catch((err) => Page.status(err.message));
    vc.addEventListener("call", (e) => {
      const live = ["initiated", "ringing", "active"].includes(e.detail.status);
      rec.disabled = !live;
      if (!vc.recording) {
        recState.textContent = "not recorded";
        delete recState.dataset.status;
        rec.textContent = "Record";
      }
    });
    vc.addEventListener("recording", (e) => {
      const r = e.detail;
      const mineNow = mine();
      const theirs = vc.call && (vc.call.caller_id === vc.userId ? r.callee_consent : r.caller_consent);
      const consents = `you ${mineNow ? "consent" : "do not consent"}, the other party ${theirs ? "consents" : "does not"}`;
      recState.textContent = `recording ${r.status}: ${consents}${r.error ? ` (${r.error})` : ""}`;
      recState.dataset.status = r.status;
      rec.textContent = mineNow ? "Stop recording" : "Consent to record";
    });
    document.getElementById("refresh").onclick = () => Page.refreshHistory(vc);
    if (!token) {
      Page.connection = "no access token";
      Page.renderStatus();
      Page.banner("This page needs the link you were given (it ends in ?token=…). Open that link.");
      return vc;
    }
    let first = true;
    vc.addEventListener("connection", (e) => {
      // After every (re)connect the history may have changed.
      if (e.detail.state === "connected" && !first) Page.refreshHistory(vc);
    });
    vc.connect().then(() => {
      first = false;
      return Page.refreshHistory(vc);
    });
    return vc;
  },

  async refreshHistory(vc) {
    const rows = (await vc.history().catch(() => null));
    if (!rows) return;
    const trs = rows.map((c) => {
      const other = c.caller_id === vc.userId ? c.callee_id : c.caller_id;
      const duration = c.duration_ms ? `${Math.round(c.duration_ms / 1000)} s` : "–";
      const mos = c.quality && c.quality.mos ? c.quality.mos.toFixed(2) : "–";
      const tr = document.createElement("tr");
      for (const text of [other, c.call_type, c.status, duration, mos]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.dataset.callId = c.id;
      return tr;
    });
    document.getElementById("history").replaceChildren(...trs);
  },

  /** An incoming call: beeps (WebAudio), the tab's title, and a notification if already allowed. */
  ringer: {
    audio: null,
    beeps: null,
    notification: null,
    title: null,

    start(caller) {
      if (this.beeps) return;
      this.title = document.title;
      document.title = `Incoming call — ${caller}`;
      const beep = () => {
        try {
          if (!this.audio) this.audio = new (window.AudioContext || window.webkitAudioContext)();
          const ctx = this.audio;
          if (ctx.state === "suspended") ctx.resume().catch(() => {});
          for (const [offset, freq] of [[0, 440], [0.45, 480]]) {
            const osc = ctx.createOscillator();
            const gain = ctx.createGain();
            osc.frequency.value = freq;
            gain.gain.setValueAtTime(0.0001, ctx.currentTime + offset);
            gain.gain.exponentialRampToValueAtTime(0.2, ctx.currentTime + offset + 0.03);
            gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + offset + 0.4);
            osc.connect(gain).connect(ctx.destination);
            osc.start(ctx.currentTime + offset);
            osc.stop(ctx.currentTime + offset + 0.42);
          }
        } catch (_) {
          // No audio (autoplay policy, no device): the title and the banner still show it.
        }
      };
      beep();
      this.beeps = setInterval(beep, 2000);
      try {
        if (window.Notification && Notification.permission === "granted") {
          this.notification = new Notification("Incoming video call", { body: `${caller} is calling`, tag: "videocall-incoming" });
          this.notification.onclick = () => window.focus();
        }
      } catch (_) {}
    },

    stop() {
      if (!this.beeps) return;
      clearInterval(this.beeps);
      this.beeps = null;
      if (this.title !== null) document.title = this.title;
      this.title = null;
      if (this.notification) this.notification.close();
      this.notification = null;
      if (this.audio) this.audio.close().catch(() => {});
      this.audio = null;
    },
  },
};

window.Page = Page;
