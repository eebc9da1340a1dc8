"""The quickstart flow: settings.py (light; what `--help` shows), stages.py (one function per stage), serve.py (the serving stage)."""
