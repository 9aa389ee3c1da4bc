// The customer page (web/customer.html): what only this page does; the rest is in page.js.
"use strict";

const vc = Page.start("customer");
document.getElementById("call").onclick = () => {
  const agent = document.getElementById("agent").value.trim();
  vc.startCall(agent, document.getElementById("type").value).catch((err) => Page.status(err.message));
};
vc.addEventListener("call", (e) => {
  const live = ["initiated", "ringing", "active"].includes(e.detail.status);
  document.getElementById("call").disabled = live;
  if (!live) Page.refreshHistory(vc);
});
