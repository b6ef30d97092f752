// A SMART App Launch 2.0 public client (EHR launch and standalone launch with
// launch/patient), with PKCE S256. No libraries: what an integrator's app does.
"use strict";
(function () {
  const CLIENT_ID = "tessera-demo-app";
  const redirectUri = location.origin + "/apps/demo/";
  const params = new URLSearchParams(location.search);
  const status = (text) => { document.getElementById("status").innerHTML = ""; const p = document.createElement("p"); p.textContent = text; document.getElementById("status").appendChild(p); };
  const b64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const random = (n) => b64url(crypto.getRandomValues(new Uint8Array(n)));

  async function discover(iss) {
    const r = await fetch(iss.replace(/\/$/, "") + "/.well-known/smart-configuration");
    if (!r.ok) throw new Error("cannot read the server's SMART configuration (" + r.status + ")");
    return r.json();
  }

  async function authorize(iss, launch) {
    const config = await discover(iss);
    const verifier = random(48);
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = random(16);
    sessionStorage.setItem("smart", JSON.stringify({ iss, verifier, state, token: config.token_endpoint }));
    const scope = launch ? "launch patient/*.rs online_access" : "launch/patient patient/*.rs online_access";
    const q = new URLSearchParams({ response_type: "code", client_id: CLIENT_ID, redirect_uri: redirectUri, scope, state, aud: iss, code_challenge: challenge, code_challenge_method: "S256" });
    if (launch) q.set("launch", launch);
    location.assign(config.authorization_endpoint + "?" + q.toString());
  }

  async function redeem(code, state) {
    const saved = JSON.parse(sessionStorage.getItem("smart") || "null");
    if (!saved || saved.state !== state) throw new Error("the answer does not belong to this app's request (state)");
    const body = new URLSearchParams({ grant_type: "authorization_code", code, redirect_uri: redirectUri, client_id: CLIENT_ID, code_verifier: saved.verifier });
    const r = await fetch(saved.token, { method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" }, body });
    const token = await r.json();
    if (!r.ok) throw new Error(token.error_description || token.error || "token request refused");
    history.replaceState(null, "", redirectUri);
    return { iss: saved.iss, token };
  }

  async function show(iss, token) {
    const headers = { Authorization: "Bearer " + token.access_token, Accept: "application/fhir+json" };
    const base = iss.replace(/\/$/, "");
    const p = await fetch(base + "/Patient/" + encodeURIComponent(token.patient), { headers });
    if (!p.ok) throw new Error("cannot read the patient (" + p.status + ")");
    const patient = await p.json();
    const name = (patient.name || [])[0] || {};
    document.getElementById("patient-name").textContent = ((name.family || "").toUpperCase() + ", " + (name.given || []).join(" ")).trim();
    const nhs = (patient.identifier || []).find((i) => i.system === "https://fhir.nhs.uk/Id/nhs-number");
    document.getElementById("patient-nhs").textContent = nhs ? nhs.value.replace(/^(\d{3})(\d{3})(\d{4})$/, "$1 $2 $3") : "not recorded";
    document.getElementById("patient-born").textContent = patient.birthDate || "not recorded";
    const o = await fetch(base + "/Observation?patient=" + encodeURIComponent(token.patient) + "&_summary=count", { headers });
    const count = o.ok ? (await o.json()).total : undefined;
    document.getElementById("patient-counts").textContent = count === undefined ? "" : count + " observations you may see.";
    document.getElementById("scopes").textContent = token.scope;
    document.getElementById("patient").hidden = false;
    status("Launched for patient " + token.patient + ".");
    document.body.dataset.launched = token.patient;
  }

  async function main() {
    try {
      if (params.get("error")) throw new Error(params.get("error_description") || params.get("error"));
      if (params.get("code")) {
        const { iss, token } = await redeem(params.get("code"), params.get("state"));
        await show(iss, token);
      } else if (params.get("launch") && params.get("iss")) {
        status("Authorising…");
        await authorize(params.get("iss"), params.get("launch"));
      } else if (params.get("standalone")) {
        status("Authorising…");
        await authorize(location.origin + "/fhir", null);
      } else {
        status("Launch this app from a patient's record in Tessera, or start a standalone launch.");
      }
    } catch (e) {
      status("The launch failed: " + e.message);
      document.body.dataset.failed = "1";
    }
  }
  main();
})();
