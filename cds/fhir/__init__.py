"""FHIR access: the EHR's FHIR server client, prefetch handling, resources turned into typed facts."""
