"""presidio's pattern recognizers on the PII benchmark's documents (run by an interpreter that has
presidio-analyzer; called by `pii_bench.py --presidio PYTHON`). Reads a JSONL of texts, writes one
JSON list of [start, end, type] per text. No NLP model: presidio's English model is a separate
download; its email, IP, phone (libphonenumber) and credit-card recognizers need none.

    python -m venv /tmp/presidio && /tmp/presidio/bin/pip install presidio-analyzer
"""

from __future__ import annotations

import json
import sys
import time

from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IpRecognizer,
    PhoneRecognizer,
)

TYPES = {"EMAIL_ADDRESS": "email", "IP_ADDRESS": "ip", "PHONE_NUMBER": "phone", "CREDIT_CARD": "bank_card"}


def main() -> None:
    recognizers = [EmailRecognizer(), IpRecognizer(), CreditCardRecognizer(), PhoneRecognizer()]
    with open(sys.argv[1]) as src:
        texts = [json.loads(line) for line in src]
    start = time.perf_counter()
    with open(sys.argv[2], "w") as dst:
        for text in texts:
            spans = []
            for rec in recognizers:
                for r in rec.analyze(text, rec.supported_entities, None):
                    if r.score > 0 and all(r.end <= s or r.start >= e for s, e, _ in spans):
                        spans.append((r.start, r.end, TYPES[r.entity_type]))
            dst.write(json.dumps(sorted(spans)) + "\n")
    print(json.dumps({"seconds": time.perf_counter() - start}))  # the analysis alone, without imports


if __name__ == "__main__":
    main()
