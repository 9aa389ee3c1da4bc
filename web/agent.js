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
document.getElementById("accept").onclick = () => (vc.transferOffer ? acceptTransfer() : accept());
document.getElementById("decline").onclick = () => (vc.transferOffer ? declineTransfer() : decline());
// Accept is one keystroke away, and so is Decline.
document.addEventListener("keydown", (e) => {
  if (!incoming() || e.repeat || e.altKey || e.ctrlKey || e.metaKey) return;
  if (e.key === "Enter") {
    e.preventDefault();
    if (vc.transferOffer) acceptTransfer();
    else accept();
  } else if (e.key === "Escape") {
    e.preventDefault();
    if (vc.transferOffer) declineTransfer();
    else decline();
  }
});

// Transfers: this agent hands the call on (to an agent or a desk), or rings for one.
const transferState = document.getElementById("transfer-state");
const transferButton = document.getElementById("transfer");
const REASONS = {
  rejected: "declined",
  no_answer: "did not answer",
  target_offline: "went offline",
  call_ended: "the call ended first",
};
transferButton.onclick = async () => {
  const to = document.getElementById("transfer-to").value.trim();
  const target = ["support", "sales", "consult"].includes(to) ? { to_call_type: to } : { to_agent_id: to };
  try {
    const t = await vc.transfer(target);
    transferState.textContent = `Transferring to ${t.to_agent_id}…`;
  } catch (err) {
    transferState.textContent = `Not transferred: ${err.message}`;
  }
};
const acceptTransfer = () => {
  Page.ringer.stop();
  incomingBox.hidden = true;
  vc.acceptTransfer().catch((err) => Page.status(err.message));
};
const declineTransfer = () => {
  Page.ringer.stop();
  incomingBox.hidden = true;
  vc.declineTransfer().catch((err) => Page.status(err.message));
};
vc.addEventListener("transfer", (e) => {
  const t = e.detail;
  if (t.role === "from") {
    transferState.dataset.status = t.status;
    if (t.status === "transferred") transferState.textContent = `Transferred to ${t.to_agent_id}`;
    else if (t.status === "failed") transferState.textContent = `${t.to_agent_id} ${REASONS[t.reason] || t.reason}: the call stays with you`;
  } else if (t.role === "target") {
    const ringing = !!vc.transferOffer;
    incomingBox.hidden = !ringing;
    incomingBox.classList.toggle("ringing", ringing);
    document.getElementById("caller").textContent = `${t.call.caller_id} (transferred by ${t.from_agent_id})`;
    document.getElementById("calltype").textContent = t.call.call_type;
    if (ringing) Page.ringer.start(t.call.caller_id);
    else Page.ringer.stop();
  }
});
vc.addEventListener("call", (e) => {
  const live = e.detail.status === "active" && e.detail.callee_id === vc.userId;
  transferButton.disabled = !live;
  if (live && transferState.dataset.status !== "ringing") transferState.textContent = "";
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
