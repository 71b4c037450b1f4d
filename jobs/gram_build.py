"""`ray job submit -- python jobs/gram_build.py CONFIG.yaml`: Gram builds as a Ray job entry point.

Same as `raygram build --job`: inside a Ray job, `ray.init()` joins the job's cluster
(RAY_ADDRESS is set), so the workers spread over its nodes; rerunning the job resumes
the builds. Local paths must be absolute (the job's working directory is a copy).
"""
import sys

from raygram.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["build", "--job", *sys.argv[1:]]))
