-- Routes kept in the durable store (edited through the admin API), beside
-- the `[[route]]`s of the configuration file.
--
-- definition is the route as JSON in the `[[route]]` schema; the gateway
-- validates it before storing and again when it loads it. Times are Unix
-- seconds; version counts updates (optimistic concurrency).

CREATE TABLE routes (
    name        TEXT    NOT NULL PRIMARY KEY,
    definition  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL
);
