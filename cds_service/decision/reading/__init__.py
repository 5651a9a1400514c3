"""Reading what the clinician sees: radiology reports, medications and labs (FHIR R4 JSON dicts).

Pure functions over plain dicts; all clinical knowledge (target phrases, ConText rules, level
patterns, RxNorm / LOINC value sets, SIR thresholds) is data in ``data/reading/``, validated by
:func:`load_reading_knowledge`. No clock, no I/O beyond reading that directory.
"""

from cds_service.decision.reading.loader import ReadingKnowledge, ReadingKnowledgeError, load_reading_knowledge

__all__ = ["ReadingKnowledge", "ReadingKnowledgeError", "load_reading_knowledge"]
