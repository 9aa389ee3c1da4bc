// What agent.html and customer.html share: token, connection, videos, quality, history.
"use strict";

const Page = {
  status(text) {
    document.getElementById("status").textContent = text;
  },

  start(role) {
    const params = new URLSearchParams(location.search);
    const token = params.get("token") || sessionStorage.getItem("videocall-token") || prompt(`Bearer token of the ${role}`);
    sessionStorage.setItem("videocall-token", token);
    const vc = new Videocall(token);
    vc.relayOnly = params.get("relay") === "1";
    window.vc = vc; // for debugging and the end-to-end test
    vc.addEventListener("status", (e) => Page.status(e.detail.text));
    vc.addEventListener("local-stream", (e) => (document.getElementById("local").srcObject = e.detail));
    vc.addEventListener("remote-stream", (e) => (document.getElementById("remote").srcObject = e.detail));
    vc.addEventListener("call", (e) => {
      const call = e.detail;
      document.getElementById("callstate").textContent = `${call.status}${call.end_reason ? ` (${call.end_reason})` : ""}`;
      document.getElementById("end").disabled = !["initiated", "ringing", "active"].includes(call.status);
    });
    vc.addEventListener("quality", (e) => {
      const q = e.detail;
      document.getElementById("q-rtt").textContent = `${q.rtt_ms.toFixed(0)} ms`;
      document.getElementById("q-jitter").textContent = `${q.jitter_ms.toFixed(1)} ms`;
      document.getElementById("q-loss").textContent = `${q.packet_loss_percent.toFixed(2)} %`;
      document.getElementById("q-bitrate").textContent = `${q.bitrate_kbps.toFixed(0)} kbit/s`;
      document.getElementById("q-res").textContent = q.width ? `${q.width}×${q.height} @ ${q.fps.toFixed(0)} fps` : "–";
    });
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
    vc.connect()
      .then(() => Page.refreshHistory(vc))
      .catch((err) => Page.status(err.message));
    return vc;
  },

  async refreshHistory(vc) {
    const rows = (await vc.history().catch(() => [])).map((c) => {
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
    document.getElementById("history").replaceChildren(...rows);
  },
};

window.Page = Page;
