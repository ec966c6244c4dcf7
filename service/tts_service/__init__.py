"""Long-form multi-speaker TTS service for an active/standby pair (see the repository README)."""
__version__ = "0.1.0"
