"""Long-form multi-speaker TTS service for an active/standby pair."""


def __getattr__(name: str) -> str:
    """`__version__`: the installed wheel's version (what /ready reports and upgrade.yml waits for),
    looked up on first use: importlib.metadata costs 70 ms, and tts-cluster, on a failover's critical
    path, never needs it."""
    if name != "__version__":
        raise AttributeError(name)
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("tts-service")
    except PackageNotFoundError:   # run from a source tree that was never installed
        return "0.0.0+source"
