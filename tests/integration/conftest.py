"""The integration tests' node in process: tts-a of a fresh cluster (tts-a primary, tts-b standby) on
the test's shared folder and the real redis-server, with the espeak engine; `api` is its app's test
client (a session of its own)."""
import pytest
from tts_service.cluster import Cluster
from tts_service.config import Settings
from tts_service.runtime import Runtime
from tts_service.storage import Storage


@pytest.fixture
def rt(shared, tmp_path, redis_url):
    Cluster(Storage(shared), shared / "cluster").init("tts-a", "tts-b", by="test")
    settings = Settings(node="tts-a", redis_url=redis_url, shared_dir=shared, run_dir=tmp_path / "run",
                        engine="espeak", lease_s=3, failure_backoff_s=0, job_max_attempts=3)
    return Runtime.build(settings)


@pytest.fixture
def api(rt):
    from tts_service.app import create_app
    return create_app(rt.settings).test_client()
