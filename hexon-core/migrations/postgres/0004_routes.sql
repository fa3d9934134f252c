-- Routes kept in the durable store (edited through the admin API), beside
-- the `[[route]]`s of the configuration file.
--
-- definition is the route as JSON in the `[[route]]` schema (TEXT, kept byte
-- for byte); the gateway validates it before storing and again when it
-- loads it. Times are Unix seconds (BIGINT); version counts updates
-- (optimistic concurrency). Keys use COLLATE "C" (compared by bytes).

CREATE TABLE routes (
    name        TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    definition  TEXT             NOT NULL,
    created_at  BIGINT           NOT NULL,
    updated_at  BIGINT           NOT NULL,
    version     BIGINT           NOT NULL
);
