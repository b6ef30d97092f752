"""Tessera's HL7 v2 interface driven by independent implementations: messages built with
hl7apy, sent and their acknowledgements read with the `hl7` package's MLLP client and parser.

Run by `crates/tessera/tests/mllp.rs` against a live interface (SQLite and PostgreSQL):
    TESSERA_MLLP=127.0.0.1:PORT TESSERA_BASE=http://127.0.0.1:PORT/fhir TESSERA_TOKEN=... \
        python -m unittest -v test_hl7_peer
The interface is Northgate's (`rx1`) with the demo's ward table (7A is Ward 7A).
"""

import json
import os
import socket
import unittest
import urllib.parse
import urllib.request
import uuid

import hl7
from hl7.client import MLLPClient
from hl7apy.core import Message

HOST, PORT = os.environ["TESSERA_MLLP"].rsplit(":", 1)
PORT = int(PORT)
BASE = os.environ["TESSERA_BASE"].rstrip("/")
TOKEN = os.environ["TESSERA_TOKEN"]
RUN = uuid.uuid4().hex[:8].upper()
VISITS = "https://tessera.health/Id/rx1/visit-number"
FILLER = "https://tessera.health/Id/rx1/filler-order"


def nhs_number(stem):
    """A valid NHS number (modulus 11) from a nine-digit stem."""
    while True:
        digits = [int(c) for c in f"{stem:09d}"]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            return "".join(map(str, digits)) + str(check)
        stem += 1


def fhir(path):
    req = urllib.request.Request(f"{BASE}/{path}", headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def search(resource_type, system, value):
    q = urllib.parse.urlencode({"identifier": f"{system}|{value}"})
    return [e["resource"] for e in fhir(f"{resource_type}?{q}").get("entry", []) if e.get("search", {}).get("mode") != "include"]


def send(text):
    """Sends one message, returns the acknowledgement parsed by the `hl7` package."""
    with MLLPClient(HOST, PORT) as client:
        return hl7.parse(client.send_message(text).decode("utf-8"))


def msh(message, code, trigger, structure, control):
    message.msh.msh_3 = "PYPAS"
    message.msh.msh_4 = "NORTHGATE"
    message.msh.msh_5 = "TESSERA"
    message.msh.msh_6 = "DOMAIN"
    message.msh.msh_7 = "20261207120000"
    message.msh.msh_9 = f"{code}^{trigger}^{structure}"
    message.msh.msh_10 = control
    message.msh.msh_11 = "P"
    message.msh.msh_12 = "2.5"


def pid(message, n, family, birth=None):
    message.add_segment("PID")
    message.pid.pid_1 = "1"
    message.pid.pid_3 = f"{nhs_number(300_000_000 + n * 97 + int(RUN, 16) % 1000)}^^^NHS^NH~PY{RUN}{n}^^^RX1^MR"
    message.pid.pid_5 = f"{family}^Peer"
    message.pid.pid_7 = birth or f"19{50 + n % 40}0{1 + n % 9}1{n % 9}"
    message.pid.pid_8 = "F" if n % 2 else "M"


def admission(n, family, control, birth=None):
    m = Message("ADT_A01", version="2.5")
    msh(m, "ADT", "A01", "ADT_A01", control)
    m.add_segment("EVN")
    m.evn.evn_1 = "A01"
    m.evn.evn_2 = "20261207120000"
    pid(m, n, family, birth)
    m.add_segment("PV1")
    m.pv1.pv1_1 = "1"
    m.pv1.pv1_2 = "I"
    m.pv1.pv1_3 = "7A^12^B"
    m.pv1.pv1_19 = f"PV{RUN}{n}"
    m.pv1.pv1_44 = "202612071000"
    return m.to_er7()


def result(n, family, control, status="F", value="4.5", report="RPT"):
    m = Message("ORU_R01", version="2.5")
    msh(m, "ORU", "R01", "ORU_R01", control)
    pid(m, n, family)
    m.add_segment("OBR")
    m.obr.obr_1 = "1"
    m.obr.obr_3 = f"{report}{RUN}{n}"
    m.obr.obr_4 = "24326-1^Electrolytes panel^LN"
    m.obr.obr_7 = "202612071015"
    m.obr.obr_25 = status
    for i, (code, name, val, unit, rng, flag) in enumerate([("2823-3", "Potassium", value, "mmol/L", "3.5-5.3", "N"), ("2951-2", "Sodium", "131", "mmol/L", "133-146", "L")], 1):
        m.add_segment("OBX")
        obx = m.children[-1]
        obx.obx_1 = str(i)
        obx.obx_2 = "NM"
        obx.obx_3 = f"{code}^{name}^LN"
        obx.obx_5 = val
        obx.obx_6 = f"{unit}^^UCUM"
        obx.obx_7 = rng
        obx.obx_8 = flag
        obx.obx_11 = status
    return m.to_er7()


class Hl7PeerTest(unittest.TestCase):
    def assertAck(self, ack, code, control):
        self.assertEqual(str(ack.segment("MSA")[1]), code, str(ack))
        self.assertEqual(str(ack.segment("MSA")[2]), control, str(ack))
        self.assertEqual(str(ack.segment("MSH")[9][0][0]), "ACK", str(ack))

    def test_admission_built_with_hl7apy(self):
        control = f"A{RUN}1"
        ack = send(admission(1, "Hopper", control))
        self.assertAck(ack, "AA", control)
        [encounter] = search("Encounter", VISITS, f"PV{RUN}1")
        self.assertEqual(encounter["status"], "in-progress")
        self.assertEqual(encounter["class"]["code"], "IMP")
        self.assertEqual(encounter["location"][-1]["location"]["reference"], "Location/ward-7a")
        self.assertEqual(encounter["period"]["start"], "2026-12-07T10:00:00+00:00")

    def test_results_and_a_correction(self):
        control = f"R{RUN}2"
        self.assertAck(send(result(2, "Franklin", control)), "AA", control)
        [report] = search("DiagnosticReport", FILLER, f"RPT{RUN}2")
        self.assertEqual(report["status"], "final")
        self.assertEqual(len(report["result"]), 2)
        potassium = fhir(report["result"][0]["reference"])
        self.assertEqual(potassium["valueQuantity"]["value"], 4.5)
        self.assertEqual(potassium["valueQuantity"]["code"], "mmol/L")
        self.assertEqual(potassium["referenceRange"][0]["low"]["value"], 3.5)
        sodium = fhir(report["result"][1]["reference"])
        self.assertEqual(sodium["interpretation"][0]["coding"][0]["code"], "L")
        # The laboratory corrects the potassium: the same report and observations, updated.
        control = f"R{RUN}3"
        self.assertAck(send(result(2, "Franklin", control, status="C", value="5.9")), "AA", control)
        [corrected] = search("DiagnosticReport", FILLER, f"RPT{RUN}2")
        self.assertEqual(corrected["id"], report["id"])
        self.assertEqual(corrected["status"], "corrected")
        again = fhir(corrected["result"][0]["reference"])
        self.assertEqual(again["id"], potassium["id"])
        self.assertEqual(again["status"], "corrected")
        self.assertEqual(again["valueQuantity"]["value"], 5.9)

    def test_a_resend_is_applied_once(self):
        control = f"A{RUN}4"
        text = admission(4, "Lamarr", control)
        self.assertAck(send(text), "AA", control)
        self.assertAck(send(text), "AA", control)
        self.assertEqual(len(search("Encounter", VISITS, f"PV{RUN}4")), 1)

    def test_what_the_record_refuses_is_an_AE_naming_the_field(self):
        control = f"E{RUN}5"
        text = admission(5, "Noether", control, birth="19991340")
        ack = send(text)
        self.assertAck(ack, "AE", control)
        err = ack.segment("ERR")
        self.assertEqual(str(err[2]), "PID^1^7", str(ack))
        self.assertEqual(str(err[3][0][0]), "102", str(ack))
        # An unknown ward.
        control = f"E{RUN}6"
        ack = send(admission(6, "Curie", control).replace("|7A^12^B|", "|9Z|"))
        self.assertAck(ack, "AE", control)
        self.assertEqual(str(ack.segment("ERR")[2]), "PV1^1^3", str(ack))
        self.assertEqual(search("Encounter", VISITS, f"PV{RUN}6"), [])

    def test_unsupported_and_unreadable_are_AR(self):
        control = f"U{RUN}7"
        ack = send(admission(7, "Meitner", control).replace("ADT^A01^ADT_A01", "ADT^A17^ADT_A17"))
        self.assertAck(ack, "AR", control)
        self.assertEqual(str(ack.segment("ERR")[3][0][0]), "201")
        with MLLPClient(HOST, PORT) as client:
            raw = client.send_message("this is no HL7 message").decode("utf-8")
        self.assertIn("MSA|AR|", raw)

    def test_enhanced_mode_commit_then_application_ack(self):
        control = f"N{RUN}8"
        text = admission(8, "Lovelace", control).replace("|P|2.5", "|P|2.5|||AL|AL", 1)
        frames = []
        with socket.create_connection((HOST, PORT), timeout=30) as s:
            s.sendall(b"\x0b" + text.encode() + b"\x1c\x0d")
            buf = b""
            while len(frames) < 2:
                chunk = s.recv(65536)
                self.assertTrue(chunk, "the connection stayed open")
                buf += chunk
                while b"\x1c\x0d" in buf:
                    frame, buf = buf.split(b"\x1c\x0d", 1)
                    frames.append(hl7.parse(frame.lstrip(b"\x0b").decode()))
        self.assertEqual(str(frames[0].segment("MSA")[1]), "CA")
        self.assertEqual(str(frames[1].segment("MSA")[1]), "AA")


if __name__ == "__main__":
    unittest.main()
