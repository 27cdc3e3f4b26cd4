# Harvest's Airflow image: the official Airflow image + Harvest's pinned working set + its code.
# Built by docker-compose.yaml (`docker compose build`), used by every Airflow service there.
#
# The -python3.11 variant, not the bare 3.3.2 tag (which carries the image's default, newer Python):
# requirements.lock was frozen from a Python 3.11 environment, so the same pins resolve to the same wheels.
FROM apache/airflow:3.3.2-python3.11

# pip installs into the airflow user's environment; the official image expects that user, not root.
USER airflow

# Dependencies first, code after: editing Harvest's code does not re-run the pip layer.
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
# The lock (pip freeze of the working set) pins celery 5.6.x and the provider versions Harvest was
# tested with, replacing whatever the base image ships (celery 5.7.0 breaks the celery provider).
# Airflow itself is passed pinned to the base image's version (AIRFLOW_VERSION, set by the image),
# as the image docs recommend: the lock pins the same 3.3.2, so pip keeps the image's Airflow, and a
# lock that ever disagrees with the FROM line fails the build instead of silently swapping Airflow.
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements.lock

# The code is baked in so the image runs on its own (e.g. workers on other machines); compose mounts
# the same folders over these copies for local development.
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/

# `import include.harvest` from DAGs, tasks and `python -m include.harvest.migrations`.
ENV PYTHONPATH=/opt/airflow
