"""The receiver's settings, read once from the environment (the alert_receiver role writes them to
/etc/tts-receiver/receiver.env), the way config.Settings does it for the app."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import _env, _float, _int, parse_node_urls, storage_timeout_from_env


def _token() -> str:
    path = os.environ.get("TTS_ALERT_TOKEN_FILE")
    return Path(path).read_text().strip() if path else os.environ.get("TTS_ALERT_TOKEN", "")


@dataclass(frozen=True)
class ReceiverSettings:
    # The bearer token Alertmanager sends (TTS_ALERT_TOKEN_FILE, or TTS_ALERT_TOKEN): 16+ characters.
    alert_token: str = field(default_factory=_token)
    # Decisions and runs (sqlite).
    db: Path = field(default_factory=lambda: Path(_env("TTS_RECEIVER_DB", "/var/lib/tts-receiver/receiver.db")))
    # The NAS mount: the cluster state is read from cluster/ below it.
    shared_dir: Path = field(default_factory=lambda: Path(_env("TTS_SHARED_DIR", "/mnt/nas/tts")))
    storage_timeout_s: float = field(default_factory=storage_timeout_from_env)
    # The TTS nodes' apps: "tts-a=http://10.89.60.11:8000,tts-b=...".
    nodes: dict[str, str] = field(default_factory=lambda: parse_node_urls(_env("TTS_RECEIVER_NODES", ""),
                                                                         "TTS_RECEIVER_NODES"))
    probe_timeout_s: float = field(default_factory=lambda: _float("TTS_RECEIVER_PROBE_TIMEOUT", 2.5))
    # This repository on ctl (playbooks, roles, inventory), and where ansible-runner keeps its runs.
    project: str = field(default_factory=lambda: _env("TTS_RECEIVER_PROJECT", "/opt/tts/ansible"))
    inventory: str = field(default_factory=lambda: _env("TTS_RECEIVER_INVENTORY", ""))
    runner_dir: str = field(default_factory=lambda: _env("TTS_RECEIVER_RUNNER_DIR", "/var/lib/tts-receiver/runner"))
    # Secrets for the playbooks (a YAML file of extra vars).
    extravars_file: str = field(default_factory=lambda: _env("TTS_RECEIVER_EXTRAVARS_FILE", ""))
    # After a successful failover, further TTSNodeDown alerts are only recorded for this long.
    cooldown_s: float = field(default_factory=lambda: _float("TTS_FAILOVER_COOLDOWN", 60.0))
    # The operators' webhook (escalations, receiver events); "" for none.
    operators_url: str = field(default_factory=lambda: _env("TTS_OPERATORS_URL", ""))
    # Flap damping.
    failovers_per_hour: int = field(default_factory=lambda: _int("TTS_FAILOVER_MAX_PER_HOUR", 3))
    rejoins_per_epoch: int = field(default_factory=lambda: _int("TTS_REJOIN_MAX_PER_EPOCH", 3))
    # Seconds between the keep-warm pings of Ansible's SSH connections (between playbooks).
    ssh_warm_every_s: float = field(default_factory=lambda: _float("TTS_RECEIVER_SSH_WARM_EVERY", 90.0))

    def __post_init__(self) -> None:
        if len(self.alert_token) < 16:
            raise RuntimeError("the alert token (TTS_ALERT_TOKEN or TTS_ALERT_TOKEN_FILE) must have 16+ characters")

    @property
    def inventory_path(self) -> str:
        return self.inventory or f"{self.project}/inventory/hosts.yml"
