"""Typed facts (cds.fhir.model) for tests of the clinical core without FHIR JSON, HTTP or a database.

Codes here are test data taken from the project's value sets, not product logic.
"""

from __future__ import annotations

from cds.fhir.model import Coding, Concept
from tests.support.builders import RXNORM, SNOMED
from tests.support.constants import NOW

TODAY = NOW.date()
VALUESET = "https://ketamine-cds.example.org/fhir/ValueSet/"
MI = Concept((Coding(SNOMED, "22298006", "Myocardial infarction"),))
STROKE = Concept((Coding(SNOMED, "230690007", "Cerebrovascular accident"),))
AVM = Concept((Coding(SNOMED, "234142008", "Cerebral arteriovenous malformation"),))
KETAMINE = Concept((Coding(RXNORM, "6130", "ketamine"),))
ESKETAMINE = Concept((Coding(RXNORM, "2201625", "esketamine Nasal Spray [Spravato]"),))
CLONAZEPAM = Concept((Coding(RXNORM, "204892", "clonazePAM 0.25 MG Oral Tablet"),))
SERTRALINE = Concept((Coding(RXNORM, "312940", "sertraline 50 MG Oral Tablet"),))
