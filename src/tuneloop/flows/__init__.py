"""Orchestrations across stages (layer 4): they may use every stage and the gateway; nothing below imports them.

quickstart/  the bundled corpus to a fine-tuned, evaluated, registered and served model (`tuneloop quickstart`)
cycle.py     one feedback-loop cycle: collect -> curate -> retrain -> gate -> canary -> promote | rollback
resume.py    the resumable-stage helper both use: a state file rewritten after every finished stage
synth.py     question-answer data from documents (`tuneloop data synth`): data/synth with a teacher
             (our engine, or an OpenAI-compatible upstream) and optionally eval's LLM judge behind it
"""
