"""tuneloop: from raw documents to a fine-tuned, versioned, served LLM, and back from user feedback."""

__version__ = "0.1.0"
