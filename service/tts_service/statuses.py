"""A job's statuses, defined once (the API, Redis, the markers on shared storage, probes, drills).

Standard library only: the drill's watcher imports it on the controller."""

# The final ones. Each is also a marker file in the job's folder on shared storage; a job with more
# than one marker (a `done` that won a race with a cancel) reads as the first in this order.
FINAL = ("done", "failed", "cancelled")
