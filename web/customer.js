// The customer page (web/customer.html): what only this page does; the rest is in page.js.
"use strict";

const vc = Page.start("customer");
const queueLine = document.getElementById("queue");
const desks = [...document.querySelectorAll("button.desk")];
document.getElementById("call").onclick = () => {
  const agent = document.getElementById("agent").value.trim();
  vc.startCall(agent, document.getElementById("type").value).catch((err) => Page.status(err.message));
};
// A desk: the call waits for the desk's next free agent.
for (const button of desks) {
  button.onclick = () => {
    queueLine.textContent = `Waiting for ${button.dataset.desk}…`;
    queueLine.hidden = false;
    vc.startCall("", button.dataset.desk).catch((err) => Page.status(err.message));
  };
}
/** "You are number 2 in line · about 1 min" from a queue.position frame. */
function placeInLine(frame) {
  const wait = frame.estimated_wait_secs;
  const about = wait === null || wait === undefined ? "" : wait < 60 ? ` · about ${wait} s` : ` · about ${Math.round(wait / 60)} min`;
  return `You are number ${frame.position} in line for ${frame.call_type}${about}`;
}
vc.addEventListener("notice", (e) => {
  const frame = e.detail;
  if (frame.type !== "queue.position" || !vc.call || vc.call.id !== frame.call_id || vc.call.status !== "queued") return;
  queueLine.textContent = placeInLine(frame);
  queueLine.dataset.position = String(frame.position);
  queueLine.hidden = false;
});
// A transfer: "transferring…" while the next agent rings, then who the customer talks to.
const transferLine = document.getElementById("transfer-state");
vc.addEventListener("transfer", (e) => {
  const t = e.detail;
  transferLine.dataset.status = t.status;
  transferLine.hidden = false;
  if (t.status === "ringing") transferLine.textContent = `Transferring you to ${t.to_call_type || t.to_agent_id}…`;
  else if (t.status === "transferred") transferLine.textContent = `You are now talking to ${t.to_agent_id}`;
  else transferLine.textContent = `You stay with ${t.from_agent_id}`;
});
vc.addEventListener("call", (e) => {
  const call = e.detail;
  if (!["active"].includes(call.status)) transferLine.hidden = true;
  const live = ["queued", "initiated", "ringing", "active"].includes(call.status);
  document.getElementById("call").disabled = live;
  for (const button of desks) button.disabled = live;
  if (call.status === "queued") {
    if (!queueLine.dataset.position) queueLine.textContent = `Waiting for ${call.call_type}…`;
    queueLine.hidden = false;
  } else {
    delete queueLine.dataset.position;
    queueLine.hidden = !(call.queued_at && ["initiated", "ringing"].includes(call.status));
    if (!queueLine.hidden) queueLine.textContent = `${call.callee_id} is being called…`;
  }
  if (!live) Page.refreshHistory(vc);
});
