"""Failover drills: the canary job and its watcher (watch.py), the checks of the canary's audio on
shared storage (verify.py), and the report (report.py). playbooks/drill.yml drives them; `tts-drill`
is their command line (cli.py)."""
