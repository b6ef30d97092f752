"""A SMART App Launch completed by an unmodified client library: Python's `fhirclient`.

A confidential app of the demo domain (`northgate-test-client`) asks for `launch/patient`
(standalone launch, patient picker); the person at the browser is played with `requests`
(sign in, choose role, choose the patient, allow); fhirclient redeems the code with PKCE,
reads the patient, and refreshes its token. Its token reaches that patient's record only.

    TESSERA_WEB=http://127.0.0.1:8080 python -m unittest -v test_smart_fhirclient
"""

import html.parser
import os
import unittest
import urllib.parse

import requests
from fhirclient import client
from fhirclient.models.patient import Patient

WEB = os.environ.get("TESSERA_WEB", "http://127.0.0.1:8080").rstrip("/")


class Forms(html.parser.HTMLParser):
    """The forms of a page: action, method and their fields (inputs by name; checked radios)."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.radios = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action"), "method": (a.get("method") or "get").lower(), "fields": {}, "radios": {}})
        elif tag == "input" and self.forms and a.get("name"):
            f = self.forms[-1]
            if a.get("type") == "radio":
                f["radios"].setdefault(a["name"], []).append(a.get("value"))
                if "checked" in a:
                    f["fields"][a["name"]] = a.get("value")
            else:
                f["fields"][a["name"]] = a.get("value") or ""


def forms_of(page):
    p = Forms()
    p.feed(page)
    return p.forms


class SmartLaunch(unittest.TestCase):
    def test_fhirclient_completes_a_standalone_launch(self):
        redirect = "http://127.0.0.1:53682/callback"
        settings = {
            "app_id": "northgate-test-client",
            "app_secret": "northgate-test-client-secret",
            "api_base": WEB + "/fhir",
            "redirect_uri": redirect,
            "scope": "patient/*.rs offline_access",
        }
        smart = client.FHIRClient(settings=settings)
        url = smart.authorize_url
        self.assertTrue(url.startswith(WEB + "/oauth/authorize?"), url)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        self.assertEqual(query["code_challenge_method"], "S256")

        browser = requests.Session()
        page = browser.get(url)
        self.assertIn("/signin", page.url, "not signed in: the browser is sent to sign in")
        form = forms_of(page.text)[0]
        page = browser.post(WEB + "/signin", data={**form["fields"], "username": "dr.patel", "password": "demo-doctor-1"})
        if "/context" in page.url:
            form = next(f for f in forms_of(page.text) if f["action"] == "/context")
            page = browser.post(WEB + "/context", data=form["fields"])
        self.assertIn("/oauth/authorize", page.url)
        self.assertIn("Choose the patient", page.text)
        consent = next(f for f in forms_of(page.text) if f["method"] == "post" and "patient" in f["radios"])
        self.assertIn("jane-smith", consent["radios"]["patient"])
        answer = browser.post(WEB + "/oauth/authorize", data={**consent["fields"], "patient": "jane-smith", "decision": "allow"}, allow_redirects=False)
        self.assertEqual(answer.status_code, 303)
        callback = answer.headers["Location"]
        self.assertTrue(callback.startswith(redirect + "?"), callback)

        smart.handle_callback(callback)
        self.assertTrue(smart.ready)
        self.assertEqual(smart.patient_id, "jane-smith")
        patient = smart.patient
        self.assertEqual(patient.name[0].family, "Smith")

        # A code is used once.
        again = requests.post(WEB + "/auth/token", data={"grant_type": "authorization_code", "code": dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))["code"], "redirect_uri": redirect, "client_id": "northgate-test-client", "code_verifier": "x" * 43}, auth=("northgate-test-client", "northgate-test-client-secret"))
        self.assertEqual(again.status_code, 400)
        self.assertEqual(again.json()["error"], "invalid_grant")

        # The token reaches this patient's record only, whatever the user may see.
        headers = {"Authorization": "Bearer " + smart.server.auth.access_token, "Accept": "application/fhir+json"}
        other = requests.get(WEB + "/fhir/Patient/daniel-okafor", headers=headers)
        self.assertIn(other.status_code, (403, 404))
        own = requests.get(WEB + "/fhir/Observation?patient=jane-smith&_summary=count", headers=headers).json()
        self.assertGreater(own["total"], 0)
        write = requests.post(WEB + "/fhir/Observation", headers={**headers, "Content-Type": "application/fhir+json"}, json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/jane-smith"}})
        self.assertEqual(write.status_code, 403, "read-only scopes cannot write")

        # Refresh (offline_access): a new token, the same patient; the old refresh token is spent.
        old_refresh = smart.server.auth.refresh_token
        self.assertTrue(old_refresh)
        smart.server.reauthorize()
        self.assertNotEqual(smart.server.auth.refresh_token, old_refresh)
        self.assertEqual(Patient.read("jane-smith", smart.server).name[0].family, "Smith")

    def test_an_unregistered_redirect_is_never_followed(self):
        page = requests.get(WEB + "/oauth/authorize", params={"response_type": "code", "client_id": "northgate-test-client", "redirect_uri": "https://evil.example/cb", "scope": "patient/*.rs", "state": "s", "aud": WEB + "/fhir", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}, allow_redirects=False)
        self.assertEqual(page.status_code, 400)
        self.assertIn("not a redirect URI registered", page.text)

    def test_pkce_is_required(self):
        page = requests.get(WEB + "/oauth/authorize", params={"response_type": "code", "client_id": "northgate-test-client", "redirect_uri": "http://127.0.0.1:1234/callback", "scope": "patient/*.rs", "state": "s", "aud": WEB + "/fhir"}, allow_redirects=False)
        self.assertEqual(page.status_code, 303)
        self.assertIn("error=invalid_request", page.headers["Location"])
        self.assertIn("state=s", page.headers["Location"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
