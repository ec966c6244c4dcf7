"""Failover drills: the canary job and its watcher (watch.py), the checks of the canary's audio on
shared storage (verify.py), the report (report.py), and the drill that uses them from start to end
(run.py: `tts-drill run`, which playbooks/drill.yml starts); `tts-drill` is their command line (cli.py)."""
