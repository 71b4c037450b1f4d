"""`ray job submit -- python jobs/gram_build.py BUILD.yaml`: a Gram build as a Ray job entry point.

Inside a Ray job, `ray.init()` joins the job's cluster (RAY_ADDRESS is set), so the
workers spread over its nodes; rerunning the job resumes the build.
"""
import sys

from raygram.gram_cli import build_main

if __name__ == "__main__":
    sys.exit(build_main(sys.argv[1:]))
