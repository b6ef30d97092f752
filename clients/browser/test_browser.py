"""Tessera's web application in a real browser: headless Chromium driven by Selenium.

Run by crates/tessera/tests/browser.rs against a server with the demo domain loaded:

    TESSERA_WEB=http://127.0.0.1:8080 python -m unittest -v test_browser

Environment:
    TESSERA_WEB          the server's address (required)
    TESSERA_SCREENSHOTS  where to keep a screenshot of every page visited (default ./screenshots)
    TESSERA_AXE          axe-core's axe.min.js (default: ../node/node_modules/axe-core/axe.min.js)

Every page visited is checked with axe-core: no serious or critical violation may remain.
"""

import json
import os
import re
import unittest
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WEB = os.environ.get("TESSERA_WEB", "http://127.0.0.1:8080").rstrip("/")
HERE = os.path.dirname(os.path.abspath(__file__))
SHOTS = os.environ.get("TESSERA_SCREENSHOTS", os.path.join(HERE, "screenshots"))
AXE = os.environ.get("TESSERA_AXE", os.path.join(HERE, "..", "node", "node_modules", "axe-core", "axe.min.js"))
AXE_SOURCE = open(AXE, encoding="utf-8").read()

# Every page's serious or critical accessibility violations, by page.
VIOLATIONS = {}


def new_driver():
    options = webdriver.ChromeOptions()
    options.add_argument("--headless=new")
    options.add_argument("--no-sandbox")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument("--disable-gpu")
    options.add_argument("--window-size=1280,1100")
    binary = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
    if os.path.exists(binary):
        options.binary_location = binary
    driver_path = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    service = Service(executable_path=driver_path) if os.path.exists(driver_path) else Service()
    d = webdriver.Chrome(options=options, service=service)
    d.set_page_load_timeout(30)
    return d


def token(username, password):
    """An access token from the API (password grant), to compare the page with the API."""
    body = urllib.parse.urlencode({"grant_type": "password", "username": username, "password": password}).encode()
    with urllib.request.urlopen(urllib.request.Request(WEB + "/auth/token", data=body, method="POST")) as r:
        return json.load(r)["access_token"]


def api(tok, path, method="GET", body=None):
    req = urllib.request.Request(WEB + "/fhir/" + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Authorization", "Bearer " + tok)
    req.add_header("Accept", "application/fhir+json")
    if body is not None:
        req.add_header("Content-Type", "application/fhir+json")
    with urllib.request.urlopen(req) as r:
        return json.load(r)


class Browser(unittest.TestCase):
    def setUp(self):
        os.makedirs(SHOTS, exist_ok=True)
        self.d = new_driver()
        self.wait = WebDriverWait(self.d, 20)

    def tearDown(self):
        self.d.quit()

    # -- helpers -------------------------------------------------------------------------

    def check(self, name):
        """Screenshot the page and run axe-core on it."""
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        safe = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        self.d.save_screenshot(os.path.join(SHOTS, f"{self._testMethodName}-{safe}.png"))
        self.d.execute_script(AXE_SOURCE)
        result = self.d.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations)).catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), nodes: []}]));"
        )
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} — {[n.get('target') for n in v.get('nodes', [])][:3]}"
            for v in result
            if v.get("impact") in ("serious", "critical")
        ]
        if bad:
            VIOLATIONS[f"{self._testMethodName}: {name} ({self.d.current_url})"] = bad
        self.assertEqual(bad, [], f"accessibility violations on {name}")

    def field(self, label):
        """The form control labelled `label` (by its <label for>)."""
        lab = self.d.find_element(By.XPATH, f"//label[normalize-space()='{label}']")
        return self.d.find_element(By.ID, lab.get_attribute("for"))

    def body_attr(self, name):
        """An attribute of <body>, read afresh (the page may be changing)."""
        return self.d.execute_script("return document.body ? document.body.getAttribute(arguments[0]) : null", name)

    def context_text(self):
        return self.d.execute_script("const e = document.getElementById('context'); return e ? e.innerText : ''")

    def text(self):
        return self.d.find_element(By.TAG_NAME, "body").text

    def go(self, path):
        self.d.get(WEB + path)

    def submit(self, button_text):
        """Clicks a form's button and waits for the next page."""
        self.click_and_wait(self.d.find_element(By.XPATH, f"//button[normalize-space()='{button_text}']"))

    def click_and_wait(self, element):
        """Clicks and waits until another page has loaded."""
        self.d.execute_script("window.__tessera_old_page = true")
        element.click()

        def loaded(d):
            try:
                return d.execute_script("return window.__tessera_old_page !== true && document.readyState === 'complete'")
            except Exception:
                return False

        self.wait.until(loaded)

    def sign_in(self, username, password, page="/signin"):
        self.go(page)
        self.check("sign in" if page == "/signin" else "portal sign in")
        self.field("Username").send_keys(username)
        self.field("Password").send_keys(password)
        self.submit("Sign in")
        if "/context" in self.d.current_url:
            self.check("choose role")
            self.submit("Continue")

    # -- journeys ------------------------------------------------------------------------

    def test_clinician_journey(self):
        self.sign_in("dr.patel", "demo-doctor-1")
        self.wait.until(EC.url_contains("/patients/mine"))
        self.check("my patients")
        banner = self.d.find_element(By.ID, "context").text
        self.assertIn("Dr Asha Patel", banner)
        self.assertIn("Doctor", banner)
        self.assertIn("SMITH, Jane", self.text())

        # Switch context: every other role assignment or location is offered; pick another.
        self.go("/context")
        self.check("switch context")
        radios = self.d.find_elements(By.CSS_SELECTOR, "input[name=context]")
        self.assertGreaterEqual(len(radios), 2, "dr.patel holds more than one context in the demo")
        before = banner
        other = next(r for r in radios if not r.is_selected())
        self.d.execute_script("arguments[0].click()", other)
        self.submit("Continue")
        self.wait.until(lambda d: self.context_text() not in ("", before))
        self.assertIn("Your role and location have changed", self.text())
        self.check("after switch")
        # And back to Ward 7A.
        self.go("/context")
        ward = self.d.find_element(By.XPATH, "//label[contains(., 'Ward 7A')]")
        self.d.execute_script("arguments[0].click()", self.d.find_element(By.ID, ward.get_attribute("for")))
        self.submit("Continue")

        # Find a patient by name, NHS number and date of birth.
        self.go("/patients")
        self.check("find a patient")
        self.field("Name").send_keys("Smith")
        self.submit("Search")
        self.check("search results")
        self.assertIn("944 930 5552", self.text())
        self.go("/patients?nhs=944+930+5552")
        self.assertIn("SMITH, Jane", self.text())
        self.go("/patients?name=Jane+Smith&birthdate=14%2F3%2F1958")
        self.assertTrue(self.d.find_elements(By.CSS_SELECTOR, "[data-match-grade]"), "the patient index grades a name and date of birth search")
        self.check("search graded by the patient index")
        self.go("/patients?nhs=123")
        self.assertIn("Enter a valid NHS number", self.text())
        self.check("search error")

        # Each tab of the record.
        self.go("/patients/jane-smith")
        self.check("record summary")
        body = self.text()
        self.assertIn("944 930 5552", body)
        self.assertIn("Allergies: Penicillin", body)
        self.assertIn("Alert: At risk of falls", body)
        self.assertIn("Diabetes", body)
        self.assertTrue(self.d.find_elements(By.CSS_SELECTOR, "[data-owner]"), "every item shows its owner")
        for tab, expect in [("Encounters", "Emergency admission"), ("Results", "Haemoglobin A1c"), ("Medications", "Metformin"), ("Documents and notes", "Documents and notes"), ("Immunisations", "Influenza")]:
            self.click_and_wait(self.d.find_element(By.LINK_TEXT, tab))
            self.assertIn(expect, self.text())
            self.check(f"record {tab}")
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Results"))
        self.assertTrue(self.d.find_elements(By.CSS_SELECTOR, "[data-flag]"), "abnormal results are flagged")
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Haemoglobin A1c"))
        svg = self.d.find_element(By.CSS_SELECTOR, "[data-chart] svg")
        self.assertEqual(svg.get_attribute("role"), "img")
        self.check("results trend")

        # Write: vital signs with NEWS2, an allergy, a note.
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Record vital signs"))
        self.check("vital signs form")
        self.submit("Save vital signs")
        self.assertIn("Enter at least one observation", self.text())
        self.check("vital signs error")
        for label, value in [("Respiration rate (breaths per minute)", "22"), ("Oxygen saturation SpO2 (%)", "95"), ("Systolic blood pressure (mmHg)", "105"), ("Pulse (beats per minute)", "112"), ("Temperature (°C)", "38.4")]:
            self.field(label).send_keys(value)
        self.d.execute_script("arguments[0].click()", self.d.find_element(By.ID, "acvpu-A"))
        self.submit("Save vital signs")
        self.assertIn("NEWS2 score 7", self.text())
        self.assertIn("high clinical risk", self.text())
        self.assertTrue(self.d.find_elements(By.CSS_SELECTOR, "[data-news2-score]"))
        self.check("vital signs recorded")
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Record an allergy"))
        self.check("allergy form")
        self.d.find_element(By.CSS_SELECTOR, "#substance option[value='111088007']").click()
        self.field("Reaction").send_keys("Contact dermatitis")
        self.submit("Save allergy")
        self.assertIn("Allergy recorded", self.text())
        self.assertIn("Latex", self.d.find_element(By.CSS_SELECTOR, "[data-allergies]").text)
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Write a note"))
        self.check("note form")
        self.field("Note").send_keys("Reviewed on the ward round.\nPlan: repeat potassium in the morning.")
        self.submit("Save note")
        self.assertIn("Plan: repeat potassium in the morning.", self.text())
        self.check("note saved")

        # Break the glass: Daniel Okafor's mental health record is behind it for Northgate.
        self.go("/patients/daniel-okafor")
        self.assertIn("More exists — break the glass to view", self.text())
        self.check("behind the glass")
        self.d.find_element(By.ID, "text").send_keys("Acute confusion on admission, need psychiatric history")
        self.click_and_wait(self.d.find_element(By.CSS_SELECTOR, "[data-break-glass]"))
        self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-grant]")))
        self.assertIn("Break-glass access in force", self.text())
        self.assertNotIn("More exists — break the glass to view", self.text())
        self.assertTrue(self.d.find_elements(By.CSS_SELECTOR, "[data-owner='rx3-riverside-house'], [data-owner='rx3']"), "the other trust's data is shown, with its owner")
        self.check("after break glass")

        # A SMART app launched from the record (EHR launch), with consent.
        self.go("/patients/jane-smith")
        self.click_and_wait(self.d.find_element(By.CSS_SELECTOR, "[data-launch='tessera-demo-app']"))
        self.wait.until(EC.url_contains("/oauth/authorize"))
        self.assertIn("SMITH, Jane", self.text())
        self.check("smart consent")
        self.submit("Allow")
        self.wait.until(lambda d: self.body_attr("data-launched") or self.body_attr("data-failed"))
        self.assertEqual(self.d.find_element(By.TAG_NAME, "body").get_attribute("data-launched"), "jane-smith", self.text())
        self.assertIn("SMITH, Jane", self.d.find_element(By.ID, "patient-name").text)
        self.check("smart app launched")

        self.go("/patients/mine")
        self.submit("Sign out")
        self.assertIn("You have signed out", self.text())
        self.go("/patients/mine")
        self.assertIn("/signin", self.d.current_url)

    def test_other_trust_sees_what_the_sharing_table_says(self):
        """Dr Murphy (Southbank) sees Jane Smith's record exactly as the API answers her."""
        tok = token("dr.murphy", "demo-doctor-3")
        self.sign_in("dr.murphy", "demo-doctor-3")
        for tab, path, resource in [("summary", "", "Encounter"), ("encounters", "/encounters", "Encounter"), ("medications", "/medications", "MedicationRequest")]:
            self.go("/patients/jane-smith" + path)
            self.check(f"other trust {tab}")
            bundle = api(tok, f"{resource}?patient=jane-smith&_count=200")
            expected = [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
            suppressed = any(e.get("search", {}).get("mode") == "outcome" for e in bundle.get("entry", []))
            section = "encounters" if resource == "Encounter" else "medications"
            rows = self.d.find_elements(By.CSS_SELECTOR, f"[data-section='{section}'] tbody tr")
            if tab == "summary":
                self.assertEqual(len(rows), min(len(expected), 10), f"{tab}: the page shows what the API shows")
            else:
                self.assertEqual(len(rows), len(expected), f"{tab}: the page shows what the API shows")
            owners = {c.get_attribute("data-owner") for c in self.d.find_elements(By.CSS_SELECTOR, f"[data-section='{section}'] [data-owner]")}
            api_owners = {t["code"] for e in expected for t in e["resource"].get("meta", {}).get("tag", []) if t.get("system") == "https://tessera.health/owner"}
            self.assertEqual(owners, api_owners, f"{tab}: the same owners")
            if tab != "summary":
                self.assertEqual("More exists — break the glass to view" in self.text(), suppressed, f"{tab}: the glass marker as the API says")

    def test_portal(self):
        # A clinician breaks the glass for Daniel Okafor with a stated reason (through the API).
        tok = token("dr.evans", "demo-doctor-2")
        reason = "Portal journey: urgent review of medication history"
        api(tok, "Patient/daniel-okafor/$break-glass", "POST", {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueCode": "ETREAT"}, {"name": "text", "valueString": reason}]})
        self.sign_in("daniel.okafor", "demo-patient-2", page="/portal/signin")
        self.wait.until(EC.url_contains("/portal"))
        self.assertIn("OKAFOR, Daniel", self.text())
        self.check("portal summary")
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Test results"))
        self.check("portal results")
        self.click_and_wait(self.d.find_element(By.LINK_TEXT, "Who has looked at my record"))
        self.check("portal access log")
        rows = self.d.find_elements(By.CSS_SELECTOR, "[data-section='access-log'] tbody tr")
        self.assertTrue(rows, "accesses are listed")
        text = self.text()
        self.assertIn("Dr Gareth Evans", text)
        self.assertIn("Northgate General Hospital", text)
        self.assertIn(reason, text)
        self.assertTrue(self.d.find_elements(By.CSS_SELECTOR, "tr[data-break-glass]"), "the break-glass access is marked")
        # The portal reads only the patient's own record.
        self.go("/portal")
        self.d.get(WEB + "/patients/jane-smith")
        self.assertIn("/signin", self.d.current_url, "a patient's session is not a clinician's")

    def test_standalone_launch_with_patient_picker(self):
        self.go("/apps/demo/?standalone=1")
        self.wait.until(EC.url_contains("/signin"))
        self.field("Username").send_keys("dr.patel")
        self.field("Password").send_keys("demo-doctor-1")
        self.submit("Sign in")
        if "/context" in self.d.current_url:
            self.submit("Continue")
        self.wait.until(EC.url_contains("/oauth/authorize"))
        self.check("smart patient picker")
        self.submit("Allow for this patient")
        self.wait.until(lambda d: self.body_attr("data-launched") or self.body_attr("data-failed"))
        self.assertTrue(self.d.find_element(By.TAG_NAME, "body").get_attribute("data-launched"), self.text())
        self.check("smart standalone launched")

    def test_refusals_read_as_words(self):
        # A receptionist may not record vital signs: the page says so, in words.
        self.sign_in("reception.ali", "demo-receptionist-1")
        self.go("/patients/jane-smith/vitals")
        self.field("Pulse (beats per minute)").send_keys("80")
        self.submit("Save vital signs")
        self.assertIn("There is a problem", self.text())
        self.assertNotIn("Vital signs recorded", self.text())
        self.check("write refused")
        # A wrong password reads as words, and keeps the username.
        self.d.delete_all_cookies()
        self.go("/signin")
        self.field("Username").send_keys("dr.patel")
        self.field("Password").send_keys("wrong password")
        self.submit("Sign in")
        self.assertIn("The username or password is not right", self.text())
        self.check("sign in refused")


if __name__ == "__main__":
    unittest.main(verbosity=2)
