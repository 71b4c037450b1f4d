"""`ray job submit` entry point: run an experiment config on the cluster the job lands on.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/run_experiment.py configs/mnist_rotated.yaml \
        --set store=s3://bucket/raygram/mnist --set tracking.uri=http://mlflow:5000

Same as `raygram run --job`: a job's working directory is a temporary copy, so stores,
data paths and SQLite tracking files must be absolute paths or URIs; relative ones are
refused. Ray is joined through the job's RAY_ADDRESS; tiles run on the cluster's
workers, MLflow is written from this driver only.
"""
import sys

from raygram.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["run", "--job", *sys.argv[1:]]))
