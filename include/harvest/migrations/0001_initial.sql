-- Harvest results schema, version 1.
-- Applied once by include.harvest.migrations (setup, airflow-init, test fixtures), never by a task.

CREATE SCHEMA IF NOT EXISTS harvest;

-- One row per (run key, URL). The run key is the logical date (YYYY-MM-DD...) for scheduled and
-- backfill runs, and the run id for a manual run without a logical date. Re-runs upsert.
CREATE TABLE harvest.downloads (
    run_key        text        NOT NULL,
    url            text        NOT NULL,
    status         text        NOT NULL,
    http_status    integer,
    final_url      text,
    content_type   text,
    bytes          bigint,
    sha256         char(64),
    width          integer,
    height         integer,
    storage_uri    text,
    attempts       integer     NOT NULL DEFAULT 0,
    elapsed_ms     integer     NOT NULL DEFAULT 0,
    error          text,
    etag           text,
    last_modified  text,
    fetched_at     timestamptz,
    source_line    integer,
    meta           jsonb,
    dag_run_id     text        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, url),
    CONSTRAINT downloads_status_known CHECK (status IN (
        'ok', 'not_modified', 'rejected', 'blocked', 'http_error', 'timeout', 'connection_error',
        'too_large', 'too_many_redirects', 'invalid_content', 'skipped'))
);
-- The incremental cache looks up the newest validators of a URL across runs.
CREATE INDEX downloads_url_fetched_at ON harvest.downloads (url, fetched_at DESC);
CREATE INDEX downloads_sha256 ON harvest.downloads (sha256) WHERE sha256 IS NOT NULL;

-- One row per stored blob.
CREATE TABLE harvest.objects (
    sha256        char(64)    PRIMARY KEY,
    bytes         bigint      NOT NULL,
    content_type  text        NOT NULL,
    width         integer,
    height        integer,
    storage_uri   text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now()
);

-- One row per run key: what the latest run for that key did.
CREATE TABLE harvest.runs (
    run_key          text        PRIMARY KEY,
    dag_run_id       text        NOT NULL,
    run_type         text,
    logical_date     timestamptz,
    source           text        NOT NULL,
    outcome          text        NOT NULL,  -- 'recorded' or 'no_source' (see reason)
    reason           text,
    urls_total       integer     NOT NULL,
    status_counts    jsonb       NOT NULL,  -- {"ok": 10, "http_error": 2, ...}
    bytes_total      bigint      NOT NULL,
    batches          integer     NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz NOT NULL,
    duration_s       double precision,
    urls_per_s       double precision,
    p50_ms           integer,
    p95_ms           integer
);

-- Optional URL lists kept in the database, selected with source = 'table'.
CREATE TABLE harvest.url_sources (
    list_date  date   NOT NULL,
    url        text   NOT NULL,
    meta       jsonb,
    PRIMARY KEY (list_date, url)
);
