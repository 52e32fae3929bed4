//! The warehouse schema, as numbered migrations applied in order at start.
//!
//! A star schema: `fact_earthquake` (one row per event, its newest revision), the append-only
//! `fact_earthquake_revision` (every revision once), dimensions for date, network, magnitude
//! type, event type and region, and `agg_window` for the window processor's results. Applied
//! versions are recorded in `quakestream_migrations`; an advisory lock keeps two sinks starting
//! at once from applying the same one twice. Never edit a released migration: add one.

/// The columns both fact tables have, after the event id: what a revision says of its event.
macro_rules! fact_columns {
    () => {
        "    updated            timestamptz NOT NULL,
    time               timestamptz NOT NULL,
    date_key           integer NOT NULL REFERENCES dim_date,
    network_key        integer REFERENCES dim_network,
    magnitude_type_key integer REFERENCES dim_magnitude_type,
    event_type_key     integer REFERENCES dim_event_type,
    region_key         integer REFERENCES dim_region,
    mag                double precision,
    lat                double precision NOT NULL,
    lon                double precision NOT NULL,
    depth_km           double precision NOT NULL,
    status             text NOT NULL,
    tsunami            boolean NOT NULL,
    alert              text,
    sig                bigint,
    felt               bigint,
    cdi                double precision,
    mmi                double precision,
    place              text,
    title              text NOT NULL,
    url                text NOT NULL,
    ids                text[] NOT NULL,
    source             text NOT NULL,
"
    };
}

pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "star schema",
    concat!(
        r#"
CREATE TABLE dim_date (
    date_key     integer PRIMARY KEY,          -- yyyymmdd
    date         date NOT NULL UNIQUE,
    year         smallint NOT NULL,
    quarter      smallint NOT NULL,
    month        smallint NOT NULL,
    day          smallint NOT NULL,
    day_of_week  smallint NOT NULL,            -- ISO: 1 = Monday
    month_name   text NOT NULL,
    day_name     text NOT NULL
);

CREATE TABLE dim_network (
    network_key  serial PRIMARY KEY,
    code         text NOT NULL UNIQUE
);

CREATE TABLE dim_magnitude_type (
    magnitude_type_key serial PRIMARY KEY,
    code         text NOT NULL UNIQUE
);

CREATE TABLE dim_event_type (
    event_type_key serial PRIMARY KEY,
    name         text NOT NULL UNIQUE
);

CREATE TABLE dim_region (
    region_key   serial PRIMARY KEY,
    name         text NOT NULL UNIQUE
);

CREATE TABLE fact_earthquake (
    event_id           text PRIMARY KEY,
"#,
        fact_columns!(),
        r#"    loaded_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fact_earthquake_time ON fact_earthquake (time);
CREATE INDEX fact_earthquake_date ON fact_earthquake (date_key);

CREATE TABLE fact_earthquake_revision (
    event_id           text NOT NULL,
"#,
        fact_columns!(),
        r#"    kafka_topic        text NOT NULL,
    kafka_partition    integer NOT NULL,
    kafka_offset       bigint NOT NULL,
    loaded_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, updated)
);

CREATE TABLE agg_window (
    topic              text NOT NULL,
    window_start       timestamptz NOT NULL,
    window_end         timestamptz NOT NULL,
    group_key          text NOT NULL DEFAULT '',  -- the group-by values, `|`-joined
    record_count       bigint,
    aggregates         jsonb NOT NULL,            -- every aggregate of the result by name
    is_final           boolean NOT NULL,
    emitted_at         timestamptz NOT NULL,
    loaded_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, window_start, window_end, group_key)
);
"#
    ),
)];
