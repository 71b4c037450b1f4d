# MLflow tracking server for raygram's experiments (deploy/mlflow.yaml runs it), the MLflow of
# raygram's clients with the S3 artifact store (boto3) and the PostgreSQL backend (psycopg2),
# all hash-pinned in deploy/requirements-mlflow.lock.
#   docker build -f deploy/mlflow.Dockerfile -t registry.example.com/raygram/mlflow:3.17.2 .
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

COPY deploy/requirements-mlflow.lock /tmp/locks/
RUN python -m pip install --require-hashes -r /tmp/locks/requirements-mlflow.lock

RUN useradd --create-home --uid 1000 --shell /bin/bash mlflow
USER mlflow
WORKDIR /home/mlflow
