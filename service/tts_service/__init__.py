"""Long-form multi-speaker TTS service for an active/standby pair."""
from importlib.metadata import PackageNotFoundError, version

try:   # the installed wheel's version: what /ready reports and upgrade.yml waits for
    __version__ = version("tts-service")
except PackageNotFoundError:   # run from a source tree that was never installed
    __version__ = "0.0.0+source"
