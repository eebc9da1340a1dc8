"""One APIRouter per resource: chat, completions, models, health (+ metrics), feedback, admin."""
