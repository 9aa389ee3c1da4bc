// The agent page (web/agent.html): what only this page does; the rest is in page.js.
"use strict";

const vc = Page.start("agent");
const incomingBox = document.getElementById("incoming");
const incoming = () => !incomingBox.hidden;
vc.addEventListener("call", async (e) => {
  const call = e.detail;
  const ringing = call.callee_id === vc.userId && ["initiated", "ringing"].includes(call.status) && vc.negotiation !== call.id;
  incomingBox.hidden = !ringing;
  incomingBox.classList.toggle("ringing", ringing);
  document.getElementById("caller").textContent = call.caller_id;
  document.getElementById("calltype").textContent = call.call_type;
  if (ringing) Page.ringer.start(call.caller_id);
  else Page.ringer.stop();
  if (ringing && call.status === "initiated") await vc.ring().catch((err) => Page.status(err.message));
  if (["ended", "rejected", "missed"].includes(call.status)) Page.refreshHistory(vc);
});
const accept = () => {
  Page.ringer.stop();
  incomingBox.hidden = true;
  vc.accept().catch((err) => Page.status(err.message));
};
const decline = () => {
  Page.ringer.stop();
  vc.reject().catch((err) => Page.status(err.message));
};
document.getElementById("accept").onclick = accept;
document.getElementById("decline").onclick = decline;
// Accept is one keystroke away, and so is Decline.
document.addEventListener("keydown", (e) => {
  if (!incoming() || e.repeat || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.key === "Enter") {
    e.preventDefault();
    accept();
  } else if (e.key === "Escape") {
    e.preventDefault();
    decline();
  }
});

// Desk calls: the agent's availability and the desks they serve, and the queues of those desks.
const availableButton = document.getElementById("available");
const availabilityState = document.getElementById("availability-state");
const queueList = document.getElementById("queue-list");
let available = false;
const chosenDesks = () => [...document.querySelectorAll("input[name=desk]:checked")].map((el) => el.value);
const showAvailability = (agent) => {
  available = agent.available;
  availableButton.textContent = available ? "Go unavailable" : "Go available";
  availableButton.setAttribute("aria-pressed", String(available));
  availabilityState.textContent = available ? `available for ${agent.call_types.join(", ")}` : "unavailable";
};
availableButton.onclick = async () => {
  try {
    const ack = await vc.request({ type: "agent.availability", available: !available, call_types: chosenDesks() });
    showAvailability(ack.agent);
    await refreshQueue();
  } catch (err) {
    Page.status(err.message);
  }
};
async function refreshQueue() {
  const rows = [];
  for (const desk of chosenDesks()) {
    const ack = await vc.request({ type: "queue.get", call_type: desk });
    for (const w of ack.queue.waiting) rows.push(`${desk} #${w.position}: ${w.caller_id}, waiting ${Math.round(w.waited_ms / 1000)} s`);
  }
  queueList.replaceChildren(
    ...(rows.length ? rows : ["nobody waiting"]).map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }),
  );
}
setInterval(() => {
  if (vc.connected) refreshQueue().catch(() => {});
}, 3000);
