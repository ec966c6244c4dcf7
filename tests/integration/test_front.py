"""The front door as deployed: nginx running the nginx role's own template (tts.conf.j2, rendered here
with the role's defaults; only the listen addresses differ) in front of a real node whose users'
listener (tts-api) and internal listener (tts-web) are separate gunicorn processes, as the tts_app
role runs them. Real nginx, real gunicorn, real redis-server, real espeak-ng."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import jinja2
import pytest
import requests
import urllib3
import yaml

from tests.harness import BIN, ROOT, free_port, wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed (make test installs it)")
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

SETTINGS = dict(TTS_ENGINE_PACE=0, TTS_TRUSTED_PROXIES=1)


def render_site(shared: Path, tls: Path, upstream: Path, access: str = "none") -> str:
    """roles/nginx/templates/tts.conf.j2 with the role's defaults (and the given paths)."""
    role = ROOT / "roles" / "nginx"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(role / "templates")),
                             undefined=jinja2.StrictUndefined)
    values = yaml.safe_load((role / "defaults" / "main.yml").read_text())
    values.update(ansible_managed="rendered by the tests", tts_access=access, tts_shared_dir=str(shared),
                  nginx_upstream_file=str(upstream), nginx_tls_dir=str(tls), nginx_htpasswd_file="/dev/null")
    for key, value in list(values.items()):
        if isinstance(value, str) and "{{" in value:
            values[key] = env.from_string(value).render(**values)
    return env.get_template("tts.conf.j2").render(**values)


class Front:
    """nginx with the role's site, listening on loopback ports instead of 80/443."""

    def __init__(self, workdir: Path, shared: Path, api_port: int):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        tls = self.dir / "tls"
        tls.mkdir()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tts",
                        "-keyout", str(tls / "tts.key"), "-out", str(tls / "tts.crt")], check=True, capture_output=True)
        upstream = self.dir / "upstream.conf"
        upstream.write_text(f"upstream tts_app {{ server 127.0.0.1:{api_port}; keepalive 16; }}\n")
        self.http, self.https = free_port(), free_port()
        site = render_site(shared, tls, upstream)
        site = site.replace("listen 80 default_server;", f"listen 127.0.0.1:{self.http};")
        site = site.replace("listen 443 ssl http2 default_server;", f"listen 127.0.0.1:{self.https} ssl;")
        assert f":{self.https} ssl" in site, "the template's listen lines changed: update the test"
        (self.dir / "tts.conf").write_text(site)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(
            f"{user}daemon off;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/error.log;\nevents {{}}\n"
            f"http {{\n access_log off;\n include /etc/nginx/mime.types;\n client_body_temp_path {self.dir}/body;\n"
            f" proxy_temp_path {self.dir}/proxy;\n include {self.dir}/tts.conf;\n}}\n")
        self.proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr", "wb"))
        wait_for(self._up, 10, what="nginx")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https}"

    def _up(self) -> bool:
        try:
            return requests.get(f"{self.url}/nginx-health", verify=False, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def front(pair, shared, tmp_path):
    """nginx -> tts-a's users' listener (a second gunicorn, as tts-api: 4 threads, fewer than the slow
    readers nginx lets through, so that a reader holding an app thread would show), tts-a's own port
    the internal one."""
    a = pair[0]
    api_port = free_port()
    api = subprocess.Popen(
        [str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{api_port}", "--workers", "1", "--worker-class", "gthread",
         "--threads", "4", "tts_service.app:create_app()"], env=a.env,
        stdout=open(tmp_path / "api.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _answers(f"http://127.0.0.1:{api_port}/health"), 30, what="the users' listener")
    nginx = Front(tmp_path / "nginx", shared, api_port)
    yield a, nginx
    nginx.stop()
    api.kill()
    api.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class _FromAddress(requests.adapters.HTTPAdapter):
    """Connections from another loopback address: another client, as nginx tells clients apart."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def _done_job(s: requests.Session, url: str, script: str) -> str:
    res = s.post(f"{url}/api/jobs", json={"script": script}, verify=False, timeout=10)
    assert res.status_code == 202, res.text
    job_id = res.json()["id"]
    wait_for(lambda: s.get(f"{url}/api/jobs/{job_id}", verify=False, timeout=5).json()["status"] == "done",
             90, interval=0.2, what="the job done")
    return job_id


def test_audio_comes_from_nginx_and_the_node_probes_are_not_public(front, shared):
    a, nginx = front
    s = requests.Session()
    job_id = _done_job(s, nginx.url, "Speaker 1: Through the front door.\nSpeaker 2: And out again.")
    for fmt in ("wav", "flac", "ogg"):
        res = s.get(f"{nginx.url}/api/jobs/{job_id}/audio?format={fmt}", verify=False, timeout=10)
        assert res.status_code == 200, (fmt, res.status_code, res.text[:200])
        assert res.content == (shared / "jobs" / job_id / f"audio.{fmt}").read_bytes()
        assert res.headers["Content-Type"] == f"audio/{fmt}"
        assert "X-Accel-Redirect" not in res.headers and "X-Sendfile-Type" not in res.headers
        assert res.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in res.headers["Content-Security-Policy"]
    page = s.get(f"{nginx.url}/", verify=False, timeout=5)
    assert page.status_code == 200 and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    # A client cannot reach the internal files location itself.
    assert s.get(f"{nginx.url}/_tts_files/jobs/{job_id}/audio.wav", verify=False, timeout=5).status_code == 404
    for path in ("/ready", "/standby", "/metrics", "/peer/tts-b/ready"):
        res = s.get(f"{nginx.url}{path}", verify=False, timeout=5)
        assert res.status_code == 404 and res.json() == {"error": "not found"}, path
    assert s.get(f"{nginx.url}/primary", verify=False, timeout=5).status_code == 200
    assert requests.get(f"{a.url}/ready", timeout=5).status_code == 200      # the node's own port: served


def test_slow_readers_hold_nginx_not_the_app_and_health_answers_throughout(front, shared):
    """32 readers of a 10-minute job's FLAC, each taking 1 KB a second. /ready on the node's own port
    and another user's requests through nginx (to a users' listener of 4 threads) answer in under
    0.5 s throughout; readers past nginx's per-address limit are refused (429)."""
    import numpy as np
    import soundfile as sf
    a, nginx = front
    s = requests.Session()
    job_id = _done_job(s, nginx.url, "Speaker 1: A job whose audio is made long below.")
    folder = shared / "jobs" / job_id
    t = np.arange(22050 * 600) / 22050   # 10 minutes: far more than any socket buffer holds
    wav = folder / "audio.long.wav"
    sf.write(str(wav), (0.3 * np.sin(2 * np.pi * 200 * t) * np.sin(2 * np.pi * 0.3 * t)).astype(np.float32), 22050,
             subtype="PCM_16")
    os.replace(wav, folder / "audio.wav")
    (folder / "audio.flac").unlink()
    assert s.get(f"{nginx.url}/api/jobs/{job_id}/audio?format=flac", verify=False, timeout=60).status_code == 200

    other = requests.Session()            # another user, from another address
    other.mount("https://", _FromAddress("127.0.0.2"))
    their_job = _done_job(other, nginx.url, "Speaker 1: Someone else's job.")
    stop = threading.Event()
    codes: list[int] = []

    def slow_reader():
        with requests.get(f"{nginx.url}/api/jobs/{job_id}/audio?format=flac", cookies=s.cookies, verify=False,
                          stream=True, timeout=30) as res:
            codes.append(res.status_code)
            if res.status_code != 200:
                return
            for _ in res.iter_content(1024):
                if stop.wait(1.0):
                    return

    readers = [threading.Thread(target=slow_reader, daemon=True) for _ in range(32)]
    for r in readers:
        r.start()
    wait_for(lambda: len(codes) == 32, 30, what="32 readers answered")
    ready, users = [], []
    try:
        for _ in range(20):
            started = time.monotonic()
            assert requests.get(f"{a.url}/ready", timeout=5).status_code == 200
            ready.append(time.monotonic() - started)
            started = time.monotonic()
            assert other.get(f"{nginx.url}/api/jobs/{their_job}", verify=False, timeout=5).status_code == 200
            users.append(time.monotonic() - started)
            time.sleep(0.25)
    finally:
        stop.set()
    print(f"/ready: max {max(ready):.3f} s; another user's GET through nginx: max {max(users):.3f} s; "
          f"readers: {codes.count(200)} served, {codes.count(429)} refused")
    assert max(ready) < 0.5, ready
    assert max(users) < 0.5, users
    assert codes.count(200) >= 1 and set(codes) <= {200, 429} and codes.count(429) >= 1, codes


def test_a_flood_of_writes_from_one_address_is_refused_by_nginx_with_a_sentence(front):
    _a, nginx = front
    s = requests.Session()
    codes, refused = [], None
    for _ in range(80):    # bad bodies: the app answers each 400 and stores nothing
        res = s.post(f"{nginx.url}/api/jobs", data="{not json", headers={"Content-Type": "application/json"},
                     verify=False, timeout=5)
        codes.append(res.status_code)
        if res.status_code == 429:
            refused = res
    assert set(codes) == {400, 429} and codes[:50] == [400] * 50, codes
    assert refused.json()["error"].startswith("too many requests") and int(refused.headers["Retry-After"]) > 0
    assert re.search("nosniff", refused.headers["X-Content-Type-Options"])
