"""The alert receiver (`gunicorn 'tts_service.receiver.app:create_app()'`, one process): Alertmanager
calls POST /alerts; the controller decides and runs failover.yml / rejoin.yml in the background.

Settings: receiver/settings.py (ReceiverSettings, from the environment the alert_receiver role writes).
"""
from __future__ import annotations

import hmac
import socket
from pathlib import Path

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .. import clock, journal
from ..cluster import Cluster
from ..drill import report as drill_report
from ..storage import Storage, StorageUnavailable
from .controller import Controller, NodeProbe, Runner, ansible_runner, http_notifier, ssh_warmer
from .decision import Limits
from .settings import ReceiverSettings
from .store import Store
from .webhook import WebhookError, parse


def create_app(runner: Runner | None = None, start: bool = True,
               settings: ReceiverSettings | None = None) -> Flask:
    cfg = settings or ReceiverSettings()
    if journal.under_journald():   # gunicorn under systemd: decisions and runs with their fields
        journal.setup("tts-receiver", socket.gethostname())
    token = cfg.alert_token.encode()
    store = Store(cfg.db)
    storage = Storage(cfg.shared_dir, timeout=cfg.storage_timeout_s)
    warm = None
    if runner is None:
        runner = ansible_runner(cfg.project, cfg.inventory_path, cfg.runner_dir, cfg.extravars_file)
        warm = ssh_warmer(cfg.project, cfg.inventory_path, f"{cfg.runner_dir}-warm")
    controller = Controller(
        store, Cluster(storage, cfg.shared_dir / "cluster"), NodeProbe(cfg.nodes, timeout_s=cfg.probe_timeout_s),
        runner, cooldown_s=cfg.cooldown_s, notify=http_notifier(cfg.operators_url),
        limits=Limits(failovers_per_hour=cfg.failovers_per_hour, rejoins_per_epoch=cfg.rejoins_per_epoch),
        warm=warm, warm_every_s=cfg.ssh_warm_every_s)
    if start:
        controller.start()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024
    app.extensions["tts_receiver"] = controller

    def authorised() -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:].encode() if header.startswith("Bearer ") else b""
        return hmac.compare_digest(given, token)

    @app.post("/alerts")
    def alerts():
        if not authorised():
            return jsonify({"error": "missing or wrong bearer token"}), 401
        body = request.get_json(silent=True, force=True)
        try:
            parse(body)
        except WebhookError as exc:
            return jsonify({"error": str(exc)}), 400
        notification_id = store.add_notification(body)   # durable before we answer
        controller.wake()
        return jsonify({"stored": notification_id}), 200

    @app.get("/runs")
    def runs():
        """Every decision and run, with the alerts' text: for the holders of the webhook's token."""
        if not authorised():
            return jsonify({"error": "missing or wrong bearer token"}), 401
        return jsonify({"runs": store.runs(), "decisions": store.decisions(50)})

    @app.get("/health")
    def health():
        return jsonify({"status": "ok", "notifications": store.count_notifications(),
                        "unprocessed": store.count_unprocessed()})

    @app.get("/metrics")
    def metrics():
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(store))
        registry.register(_DrillCollector(storage, cfg.shared_dir / "drills"))
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")

    @app.errorhandler(413)
    def too_large(_exc):
        return jsonify({"error": "the notification is too large"}), 413

    return app


class _Collector:
    def __init__(self, store: Store):
        self.store = store

    def collect(self):
        c = CounterMetricFamily("tts_receiver_decisions", "Decisions by outcome", labels=["action"])
        for action, n in self.store.decision_counts().items():
            c.add_metric([action], n)
        yield c
        c = CounterMetricFamily("tts_receiver_runs", "Playbook runs by result", labels=["playbook", "result"])
        for key, n in self.store.run_counts().items():
            playbook, result = key.split(":")
            c.add_metric([playbook, result], n)
        yield c
        c = CounterMetricFamily("tts_receiver_notifications", "Notifications stored")
        c.add_metric([], self.store.count_notifications())
        yield c
        g = GaugeMetricFamily("tts_receiver_notifications_unprocessed", "Notifications stored, not yet decided on")
        g.add_metric([], self.store.count_unprocessed())
        yield g
        yield from clock.metric_families()   # ctl's clock: the cluster lock's expiry is written here
        duration = self.store.last_failover_duration()
        if duration is not None:
            g = GaugeMetricFamily("tts_receiver_last_failover_seconds", "Duration of the last successful failover.yml")
            g.add_metric([], duration)
            yield g


class _DrillCollector:
    """The latest drill reports on shared storage (tts-drill run writes them) as gauges, for the
    TTSDrillFailed and TTSNoRecentDrill rules. A storage that does not answer shows as
    tts_drill_reports_readable 0, never as a hung scrape."""

    def __init__(self, storage: Storage, drills_dir: Path):
        self.storage = storage
        self.drills_dir = drills_dir

    def collect(self):
        try:
            values = drill_report.metrics(self.storage.call(drill_report.load_reports, self.drills_dir, 50))
            readable = 1.0
        except StorageUnavailable:
            values, readable = {}, 0.0
        g = GaugeMetricFamily("tts_drill_reports_readable", "1 if the drill reports could be read just now")
        g.add_metric([], readable)
        yield g
        for name, value in values.items():
            g = GaugeMetricFamily(name, "Latest failover drill (see drills/ on shared storage)")
            g.add_metric([], value)
            yield g
