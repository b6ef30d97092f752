"""Tessera driven by unmodified Python FHIR clients: fhirpy and fhirclient.

Run by `crates/tessera/tests/clients.rs` against a live server (SQLite and PostgreSQL):
    TESSERA_BASE=http://127.0.0.1:PORT/fhir TESSERA_TOKEN=... python -m unittest -v test_clients
Install the clients with `pip install -r clients/python/requirements.txt`.
"""

import json
import os
import unittest
import uuid
import urllib.request

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

BASE = os.environ["TESSERA_BASE"].rstrip("/")
TOKEN = os.environ["TESSERA_TOKEN"]
RUN = uuid.uuid4().hex[:10]  # keeps this run's data apart from earlier runs'


def fhirpy_client():
    return SyncFHIRClient(BASE, authorization=f"Bearer {TOKEN}")


def family(tag):
    return f"Client{tag}{RUN}"


class FhirpyTest(unittest.TestCase):
    def setUp(self):
        self.client = fhirpy_client()

    def test_crud(self):
        p = self.client.resource("Patient", name=[{"family": family("Crud"), "given": ["Ada"]}], gender="female", birthDate="1980-02-03")
        p.save()
        self.assertTrue(p.id)
        self.assertEqual(p["meta"]["versionId"], "1")
        again = self.client.reference("Patient", p.id).to_resource()
        self.assertEqual(again["name"][0]["family"], family("Crud"))
        p["gender"] = "other"
        p.save()
        self.assertEqual(p["meta"]["versionId"], "2")
        self.assertEqual(self.client.reference("Patient", p.id).to_resource()["gender"], "other")
        p.delete()
        with self.assertRaises((ResourceNotFound, OperationOutcome)):
            self.client.reference("Patient", p.id).to_resource()

    def test_search_chain_include_paging_and_count(self):
        p = self.client.resource("Patient", name=[{"family": family("Chain")}])
        p.save()
        for i in range(23):
            self.client.resource(
                "Observation",
                status="final",
                code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                subject={"reference": f"Patient/{p.id}"},
                valueQuantity={"value": 60 + i, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
            ).save()
        search = self.client.resources("Observation").search(**{"subject:Patient.name": family("Chain")})
        # fetch_all follows the `next` links page by page.
        everything = search.limit(5).fetch_all()
        self.assertEqual(len(everything), 23)
        self.assertEqual(len({o.id for o in everything}), 23)
        # count() asks for `_count=0` and reads `total`.
        self.assertEqual(search.count(), 23)
        # _include brings the patient along.
        bundle = search.include("Observation", "subject").limit(3).fetch_raw()
        modes = [e["search"]["mode"] for e in bundle["entry"]]
        self.assertEqual(modes.count("match"), 3)
        included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
        self.assertEqual([r["id"] for r in included], [p.id])
        # A misspelt parameter is refused, not ignored.
        with self.assertRaises(OperationOutcome):
            self.client.resources("Observation").search(patinet=p.id).fetch()

    def test_get_or_create(self):
        ident = f"urn:tessera:clients|{RUN}-goc"
        resource = self.client.resource("Patient", identifier=[{"system": "urn:tessera:clients", "value": f"{RUN}-goc"}], name=[{"family": family("Goc")}])
        first, created = self.client.resources("Patient").search(identifier=ident).get_or_create(resource)
        self.assertTrue(created)
        second, created_again = self.client.resources("Patient").search(identifier=ident).get_or_create(resource)
        self.assertFalse(created_again)
        self.assertEqual(first.id, second.id)
        self.assertEqual(self.client.resources("Patient").search(identifier=ident).count(), 1)

    def test_patch(self):
        p = self.client.resource("Patient", name=[{"family": family("Patch")}], birthDate="1970-01-01")
        p.save()
        patched = self.client.patch("Patient", p.id, birthDate="1971-02-02")
        self.assertEqual(patched["birthDate"], "1971-02-02")
        self.assertEqual(patched["name"][0]["family"], family("Patch"))
        self.assertEqual(self.client.reference("Patient", p.id).to_resource()["meta"]["versionId"], "2")

    def test_fhirpath_patch(self):
        p = self.client.resource("Patient", name=[{"family": family("FpPatch")}], gender="male")
        p.save()
        parameters = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "operation", "part": [
                    {"name": "type", "valueCode": "replace"},
                    {"name": "path", "valueString": "Patient.gender"},
                    {"name": "value", "valueCode": "female"},
                ]},
                {"name": "operation", "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "1990-09-09"},
                ]},
            ],
        }
        result = self.client.execute(f"Patient/{p.id}", method="patch", data=parameters)
        self.assertEqual(result["gender"], "female")
        self.assertEqual(result["birthDate"], "1990-09-09")

    def test_conditional_update_and_delete(self):
        value = f"{RUN}-cond"
        body = {"resourceType": "Patient", "identifier": [{"system": "urn:tessera:clients", "value": value}], "name": [{"family": family("Cond")}]}
        created = self.client.execute("Patient", method="put", data=body, params={"identifier": f"urn:tessera:clients|{value}"})
        body["gender"] = "unknown"
        updated = self.client.execute("Patient", method="put", data=body, params={"identifier": f"urn:tessera:clients|{value}"})
        self.assertEqual(created["id"], updated["id"])
        self.assertEqual(updated["meta"]["versionId"], "2")
        self.client.execute("Patient", method="delete", params={"identifier": f"urn:tessera:clients|{value}"})
        self.assertEqual(self.client.resources("Patient").search(identifier=f"urn:tessera:clients|{value}").count(), 0)

    def test_validate(self):
        good = {"resourceType": "Patient", "name": [{"family": family("Valid")}]}
        outcome = self.client.execute("Patient/$validate", method="post", data=good)
        self.assertEqual(outcome["resourceType"], "OperationOutcome")
        self.assertFalse([i for i in outcome["issue"] if i["severity"] in ("error", "fatal")])
        bad = {"resourceType": "Patient", "gender": "nonsense"}
        try:
            outcome = self.client.execute("Patient/$validate", method="post", data=bad)
        except OperationOutcome as e:  # a server may answer 4xx with the outcome
            outcome = e.resource if hasattr(e, "resource") else {"issue": [{"severity": "error", "diagnostics": str(e)}]}
        errors = [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]
        self.assertTrue(errors, outcome)
        self.assertIn("gender", json.dumps(errors))

    def test_transaction(self):
        patient_url = f"urn:uuid:{uuid.uuid4()}"
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"fullUrl": patient_url, "resource": {"resourceType": "Patient", "name": [{"family": family("Tx")}]}, "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "note"}, "subject": {"reference": patient_url}}, "request": {"method": "POST", "url": "Observation"}},
            ],
        }
        result = self.client.execute("", method="post", data=bundle)
        self.assertEqual(result["type"], "transaction-response")
        statuses = [e["response"]["status"] for e in result["entry"]]
        self.assertTrue(all(s.startswith("201") for s in statuses), statuses)
        pid = result["entry"][0]["response"]["location"].split("/")[1]
        obs = self.client.resources("Observation").search(subject=f"Patient/{pid}").fetch_all()
        self.assertEqual(len(obs), 1)


class FhirclientTest(unittest.TestCase):
    """SMART on FHIR's Python client: reads the CapabilityStatement (parsed by its strict
    models) and the SMART discovery document, then reads and searches with its models."""

    def setUp(self):
        from fhirclient import client
        self.smart = client.FHIRClient(settings={"app_id": "tessera-clients", "api_base": BASE})
        self.smart.server.session.headers["Authorization"] = f"Bearer {TOKEN}"

    def test_discovery(self):
        from fhirclient.auth import FHIRAuth
        capability = self.smart.server.capabilityStatement  # fetched and parsed by fhirclient's models
        self.assertEqual(capability.fhirVersion, "4.0.1")
        security = capability.rest[0].security
        self.assertIsNotNone(security, "rest.security must be declared")
        codes = [c.code for s in (security.service or []) for c in (s.coding or [])]
        self.assertIn("SMART-on-FHIR", codes)
        state = {}
        FHIRAuth.from_capability_security(security, state)
        self.assertTrue(state.get("token_uri", "").endswith("/auth/token"), state)
        with urllib.request.urlopen(f"{BASE}/.well-known/smart-configuration") as r:
            smart = json.load(r)
        self.assertEqual(smart["token_endpoint"], state["token_uri"])

    def test_models_read_and_search(self):
        from fhirclient.models.patient import Patient
        from fhirclient.models.humanname import HumanName
        p = Patient({"name": [{"family": family("Smart")}]})
        created = p.create(self.smart.server)
        pid = created["id"] if isinstance(created, dict) else p.id
        read = Patient.read(pid, self.smart.server)
        self.assertEqual(read.name[0].family, family("Smart"))
        self.assertIsInstance(read.name[0], HumanName)
        found = Patient.where(struct={"family": family("Smart")}).perform_resources(self.smart.server)
        self.assertEqual([x.id for x in found], [pid])


if __name__ == "__main__":
    unittest.main()
