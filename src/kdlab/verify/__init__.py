"""Numerical checks of claims kdlab relies on (``kdlab verify ...``)."""

from kdlab.verify.propositions import (
    CLAIMS,
    Report,
    corrected_form,
    make_cases,
    notes_form,
    run_propositions,
)

__all__ = ["CLAIMS", "Report", "corrected_form", "make_cases", "notes_form", "run_propositions"]
