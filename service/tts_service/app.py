"""Flask app factory: `gunicorn 'tts_service.app:create_app()'`."""
from __future__ import annotations

import os
import threading
import time

from flask import Flask, render_template
from werkzeug.middleware.proxy_fix import ProxyFix

from . import journal
from .config import Settings
from .runtime import Runtime


def _keep_belief(rt: Runtime, every_s: float) -> None:
    """Read the cluster state (and the free space) every `every_s` in a thread of this process: a new
    epoch's handover is done before the first user's request meets it, and a NAS that stops answering
    is seen by how long the renewal in flight has run, whenever the probes come."""
    def keep() -> None:
        while True:
            try:
                rt.space.poke()
                rt.node.belief()
            except Exception:   # the belief says what failed; nothing here may end the thread
                pass
            time.sleep(every_s)
    threading.Thread(target=keep, name="belief", daemon=True).start()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    if journal.under_journald():   # gunicorn under systemd: the app's lines with their fields
        journal.setup(os.environ.get("TTS_LISTENER", "tts-web"), settings.node)
    app = Flask(__name__)
    # The raw request may be a little larger than the script limit (JSON escaping); Flask refuses
    # bodies beyond this with 413 before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_script_chars * 4 + 65536
    app.json.sort_keys = False
    app.extensions["tts"] = Runtime.build(settings)
    if settings.keep_belief_s > 0:
        _keep_belief(app.extensions["tts"], settings.keep_belief_s)
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]

    from . import api, metrics, probes
    app.register_blueprint(api.bp)
    app.register_blueprint(probes.bp)
    app.register_blueprint(metrics.bp)

    @app.get("/")
    def index():
        return render_template("index.html", node=settings.node, engine=settings.engine,
                               cfg_default=settings.vibevoice_guidance_scale,
                               steps_default=settings.vibevoice_diffusion_steps)

    @app.errorhandler(404)
    def not_found(_exc):
        return {"error": "not found"}, 404

    @app.errorhandler(405)
    def not_allowed(_exc):
        return {"error": "method not allowed"}, 405

    @app.errorhandler(413)
    def too_large(_exc):
        return {"error": f"the request is too large; scripts are limited to {settings.max_script_chars} "
                         "characters"}, 413

    return app
