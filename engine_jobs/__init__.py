"""Jobs the OrpheusVoice operator runs in the server image (see engine_jobs/build.py)."""
