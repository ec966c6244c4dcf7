"""The queue as users see it: each queued job's place (1 = next) and, once the worker has a measured
pace, when it starts and ends; a running job says when it ends. One real node (gunicorn + tts-worker,
real redis-server, espeak paced to real time)."""
import requests

from tests.harness import Node, cluster_cli, dialogue, node_env, wait_for


def test_queued_jobs_show_their_place_and_when_they_start_and_end(shared, tmp_path, redis_url):
    assert cluster_cli(shared, "init", "tts-a").returncode == 0
    node = Node("tts-a", node_env("tts-a", redis_url, shared, tmp_path / "run", TTS_ENGINE_PACE=1.0),
                tmp_path / "logs").start()
    try:
        wait_for(lambda: node.ready()[0] == 200, 20, what="ready")
        s = requests.Session()
        ids = []
        for turns in (3, 2, 1):
            res = s.post(f"{node.url}/api/jobs", json={"script": dialogue(turns)}, timeout=10)
            assert res.status_code == 202, res.text
            ids.append(res.json()["id"])

        def view():
            jobs = {j["id"]: j for j in s.get(f"{node.url}/api/jobs", timeout=5).json()["jobs"]}
            return [jobs[i] for i in ids]

        # Once the first job has committed a chunk, the worker has a pace and every estimate is a number.
        first, second, third = wait_for(
            lambda: (v := view())[0]["status"] == "running" and v[0]["segments_done"] >= 1
            and v[1]["estimated_start_s"] is not None and v, 30, what="a pace")
        assert first["queue_position"] is None and first["estimated_start_s"] is None
        assert 0 < first["estimated_finish_s"] < first["duration_estimate_s"] * 1.5
        assert (second["queue_position"], third["queue_position"]) == (1, 2)
        # the second starts when the first ends, the third when the second ends (pace 1.0: audio seconds)
        assert abs(second["estimated_start_s"] - first["estimated_finish_s"]) < 1.0
        assert abs(third["estimated_start_s"] - second["estimated_finish_s"]) < 1.0
        assert second["estimated_finish_s"] - second["estimated_start_s"] > third["estimated_finish_s"] - \
            third["estimated_start_s"] > 0                    # 2 turns take longer than 1
        print(f"\nqueue: first ends in {first['estimated_finish_s']} s; second starts in "
              f"{second['estimated_start_s']} s, ends in {second['estimated_finish_s']} s; third ends in "
              f"{third['estimated_finish_s']} s")
        # When the first is done the second runs and the third moves up.
        second, third = wait_for(lambda: (v := view())[1]["status"] == "running" and v[1:], 60, what="second runs")
        assert second["queue_position"] is None and third["queue_position"] == 1
    finally:
        node.stop()
