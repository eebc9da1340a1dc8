"""What people did with the served models, stored: the gateway writes it, the flows read it.

requestlog.py  one JSON line per request and response (OpenAI format), redacted, rotated
feedback.py    ratings and corrections per response id; which key and user each answer was for
review.py      the approval queue of curated proposals (`tuneloop feedback review`, /admin/review)
loopstore.py   each model's loop state and decisions (`tuneloop loop status`, /admin/loop)
records.py     a logged answer with its ratings, as the loop and the admin API read it
db.py          the serving database (SQLAlchemy; SQLite in TUNELOOP_HOME/serve by default)
privacy.py     PII redaction and end-user pseudonyms applied to what is stored
retention.py   how long log lines and answered-response records are kept
permissions.py owner-only files and folders for all of the above
"""
