"""The written-down FINDINGS / IMPRESSION rules of reclf.data.sections."""

from reclf.data.sections import extract_sections, strip_preamble

MIMIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_standard_mimic_report():
    s = extract_sections(MIMIC)
    assert s.findings.startswith("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral")
    assert s.findings.endswith("nipple shadows.")
    assert s.impression == "No acute cardiopulmonary process."
    assert "ascites" not in s.findings and "ascites" not in s.impression
    assert s.headers == ("examination", "indication", "technique", "comparison", "findings", "impression")
    assert "FINAL REPORT" not in s.text and not s.empty


def test_headers_in_any_case_and_spacing_and_inline_text():
    s = extract_sections("findings : Heart normal.\nLUNGS: clear.\nImpressions: Normal.")
    assert s.findings == "Heart normal. LUNGS: clear."  # LUNGS is not a section header
    assert s.impression == "Normal."


def test_wet_read_preamble_dropped():
    raw = "WET READ: ___ 4:25 PM pneumonia?\n\n FINAL REPORT\n IMPRESSION: Right lower lobe pneumonia."
    assert "WET READ" not in strip_preamble(raw)
    s = extract_sections(raw)
    assert s.impression == "Right lower lobe pneumonia." and s.findings == ""


def test_no_headers_text_becomes_findings():
    s = extract_sections("  PA and lateral views of the chest.\nThe lungs are clear.  ")
    assert s.findings == "PA and lateral views of the chest. The lungs are clear."
    assert s.impression == ""


def test_text_before_first_header_used_only_without_findings_header():
    s = extract_sections("Portable AP chest.\nIMPRESSION: Lines in place.")
    assert s.findings == "Portable AP chest." and s.impression == "Lines in place."
    s = extract_sections("Portable AP chest.\nFINDINGS: Clear.\nIMPRESSION: Normal.")
    assert s.findings == "Clear."


def test_missing_sections_and_repeats_and_combined():
    assert extract_sections("INDICATION: cough\nCOMPARISON: none").empty
    assert extract_sections("").empty
    s = extract_sections("IMPRESSION: One.\nNOTIFICATION: called.\nIMPRESSION: Two.")
    assert s.impression == "One. Two."
    s = extract_sections("FINDINGS AND IMPRESSION: No change.")
    assert s.impression == "No change." and s.findings == ""
    s = extract_sections("CONCLUSION:\n\nStable.")
    assert s.impression == "Stable."


def test_inline_upper_case_headers():
    s = extract_sections("FINDINGS: clear. IMPRESSION: normal.")
    assert s.findings == "clear." and s.impression == "normal."
    s = extract_sections("FINDINGS: lungs CLEAR IMPRESSION: normal.")
    assert s.findings == "lungs CLEAR" and s.impression == "normal."
    s = extract_sections("Findings: the impression: is odd.")  # lower-case mid-line is text
    assert s.findings == "the impression: is odd." and s.impression == ""
