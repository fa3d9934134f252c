//! What a function call does, as far as the pipeline can know.
//!
//! Read-only roles may call only functions known to be free of side effects
//! (the list below, plus what a role adds); a user-defined function can write
//! anything, so an unknown name is refused for them rather than trusted. A
//! few built-ins are refused for every role because they reach outside the
//! statement's tables: files, other servers, arbitrary SQL in a string,
//! other sessions, or the session's own identity.

/// The class of a function call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FunctionClass {
    /// Known to read nothing beyond its arguments and to write nothing.
    Pure,
    /// Writes or has an effect outside the result (sequences, locks,
    /// notifications, sleeping): refused for read-only roles.
    SideEffect(&'static str),
    /// Reaches outside the statement's tables or changes who the session is:
    /// refused for every role unless the role names it explicitly.
    Dangerous(&'static str),
    /// Not known to the bastion (user-defined or rare built-in).
    Unknown,
}

/// Lower-case function name without its schema (`pg_catalog.lower` → `lower`),
/// and whether a schema other than `pg_catalog` qualified it.
pub(crate) fn base_name(qualified: &str) -> (&str, bool) {
    match qualified.rsplit_once('.') {
        Some((schema, name)) => (name, schema != "pg_catalog"),
        None => (qualified, false),
    }
}

/// Classify a lower-case, possibly schema-qualified, function name.
///
/// A name qualified with a schema other than `pg_catalog` is never a
/// built-in (`public.lower` may be anyone's function), so it is
/// [`FunctionClass::Unknown`] unless it is dangerous under its base name.
pub fn classify(qualified: &str) -> FunctionClass {
    let (name, foreign_schema) = base_name(qualified);
    if let Some(why) = dangerous(name) {
        return FunctionClass::Dangerous(why);
    }
    if let Some(why) = side_effect(name) {
        return FunctionClass::SideEffect(why);
    }
    if !foreign_schema
        && (PURE.binary_search(&name).is_ok() || PURE_PREFIX.iter().any(|p| name.starts_with(p)))
    {
        return FunctionClass::Pure;
    }
    FunctionClass::Unknown
}

fn dangerous(name: &str) -> Option<&'static str> {
    const EXACT: &[(&str, &str)] = &[
        ("pg_read_file", "reads a file on the database server"),
        ("pg_read_binary_file", "reads a file on the database server"),
        ("pg_ls_dir", "lists a directory on the database server"),
        ("pg_stat_file", "reads file metadata on the database server"),
        ("pg_file_write", "writes a file on the database server"),
        ("pg_file_unlink", "deletes a file on the database server"),
        ("pg_file_rename", "renames a file on the database server"),
        ("load_file", "reads a file on the database server"),
        ("sys_exec", "runs a program on the database server"),
        ("sys_eval", "runs a program on the database server"),
        (
            "set_config",
            "changes a session setting (possibly the role)",
        ),
        ("pg_terminate_backend", "ends another session"),
        ("pg_cancel_backend", "cancels another session's statement"),
        ("pg_reload_conf", "reloads the server configuration"),
        ("pg_rotate_logfile", "rotates the server log"),
        ("pg_promote", "promotes a standby"),
        ("pg_switch_wal", "forces a WAL switch"),
        ("query_to_xml", "runs SQL given as a string"),
        ("query_to_xmlschema", "runs SQL given as a string"),
        ("query_to_xml_and_xmlschema", "runs SQL given as a string"),
        ("cursor_to_xml", "reads a cursor by name"),
        ("cursor_to_xmlschema", "reads a cursor by name"),
        ("table_to_xml", "reads a table named in a string"),
        ("table_to_xmlschema", "reads a table named in a string"),
        (
            "table_to_xml_and_xmlschema",
            "reads a table named in a string",
        ),
        ("schema_to_xml", "reads a schema named in a string"),
        (
            "schema_to_xml_and_xmlschema",
            "reads a schema named in a string",
        ),
        ("database_to_xml", "reads a whole database"),
        ("database_to_xml_and_xmlschema", "reads a whole database"),
        ("ts_stat", "runs SQL given as a string"),
        ("current_setting", "reads server settings"),
    ];
    const PREFIX: &[(&str, &str)] = &[
        ("dblink", "talks to another database server"),
        ("lo_", "reads or writes large objects and server files"),
        ("pg_create_", "creates replication slots or restore points"),
        ("pg_drop_", "drops replication slots"),
        ("pg_replication_", "controls replication"),
        ("pg_logical_", "reads or writes logical replication"),
        ("pg_import_", "imports system data"),
        ("pg_backup_", "controls backups"),
        ("pg_wal_replay_", "controls WAL replay"),
        ("pg_ls_", "lists server directories"),
        ("pg_log_", "writes the server log"),
    ];
    EXACT
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| PREFIX.iter().find(|(p, _)| name.starts_with(p)))
        .map(|(_, why)| *why)
}

fn side_effect(name: &str) -> Option<&'static str> {
    const EXACT: &[(&str, &str)] = &[
        ("nextval", "advances a sequence"),
        ("setval", "sets a sequence"),
        ("pg_notify", "sends a notification"),
        ("pg_sleep", "sleeps"),
        ("pg_sleep_for", "sleeps"),
        ("pg_sleep_until", "sleeps"),
        ("sleep", "sleeps"),
        ("benchmark", "runs an expression repeatedly"),
        ("get_lock", "takes a lock"),
        ("release_lock", "releases a lock"),
        ("release_all_locks", "releases locks"),
        ("master_pos_wait", "waits for replication"),
        ("txid_current", "assigns a transaction id"),
        ("pg_current_xact_id", "assigns a transaction id"),
        ("uuid_short", "advances a server counter"),
        (
            "last_insert_id",
            "sets the last insert id when given an argument",
        ),
    ];
    const PREFIX: &[(&str, &str)] = &[
        ("pg_advisory", "takes an advisory lock"),
        ("pg_try_advisory", "takes an advisory lock"),
    ];
    EXACT
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| PREFIX.iter().find(|(p, _)| name.starts_with(p)))
        .map(|(_, why)| *why)
}

/// Families of catalog helpers that only format or look up catalog data
/// (what `psql`'s `\d` and drivers call).
const PURE_PREFIX: &[&str] = &["pg_get_", "pg_size_", "has_"];

/// Built-ins of PostgreSQL and MySQL/MariaDB that read only their arguments
/// (sorted: looked up by binary search).
const PURE: &[&str] = &[
    "abs",
    "acos",
    "age",
    "array",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_lower",
    "array_position",
    "array_prepend",
    "array_remove",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "ascii",
    "asin",
    "atan",
    "atan2",
    "avg",
    "bit_and",
    "bit_length",
    "bit_or",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "col_description",
    "concat",
    "concat_ws",
    "connection_id",
    "convert_tz",
    "corr",
    "cos",
    "count",
    "covar_pop",
    "covar_samp",
    "cume_dist",
    "curdate",
    "current_database",
    "current_date",
    "current_schema",
    "current_schemas",
    "current_time",
    "current_timestamp",
    "current_user",
    "curtime",
    "database",
    "date",
    "date_add",
    "date_bin",
    "date_format",
    "date_part",
    "date_sub",
    "date_trunc",
    "datediff",
    "day",
    "dayname",
    "dayofmonth",
    "dayofweek",
    "dayofyear",
    "decode",
    "degrees",
    "dense_rank",
    "div",
    "encode",
    "every",
    "exp",
    "extract",
    "field",
    "find_in_set",
    "first_value",
    "floor",
    "format",
    "format_type",
    "found_rows",
    "from_unixtime",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "group_concat",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "hex",
    "hour",
    "if",
    "ifnull",
    "initcap",
    "instr",
    "isfinite",
    "json_agg",
    "json_array",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_contains",
    "json_each",
    "json_each_text",
    "json_extract",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_typeof",
    "json_unquote",
    "json_valid",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_query",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_day",
    "last_insert_id",
    "last_value",
    "lcase",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "locate",
    "log",
    "log10",
    "log2",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "mid",
    "min",
    "minute",
    "mod",
    "mode",
    "month",
    "monthname",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "obj_description",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_char_to_encoding",
    "pg_collation_is_visible",
    "pg_column_size",
    "pg_conversion_is_visible",
    "pg_describe_object",
    "pg_encoding_to_char",
    "pg_function_is_visible",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_indexdef",
    "pg_get_userbyid",
    "pg_get_viewdef",
    "pg_has_role",
    "pg_identify_object",
    "pg_indexes_size",
    "pg_is_in_recovery",
    "pg_opclass_is_visible",
    "pg_operator_is_visible",
    "pg_partition_ancestors",
    "pg_partition_root",
    "pg_partition_tree",
    "pg_postmaster_start_time",
    "pg_relation_is_publishable",
    "pg_relation_size",
    "pg_statistics_obj_is_visible",
    "pg_table_is_visible",
    "pg_table_size",
    "pg_tablespace_location",
    "pg_total_relation_size",
    "pg_ts_config_is_visible",
    "pg_type_is_visible",
    "pg_typeof",
    "pi",
    "position",
    "pow",
    "power",
    "quarter",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "radians",
    "random",
    "rank",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_count",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "schema",
    "second",
    "session_user",
    "sha1",
    "sha2",
    "shobj_description",
    "sign",
    "sin",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "str_to_date",
    "strftime",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "substring_index",
    "sum",
    "tan",
    "time",
    "timediff",
    "timeofday",
    "timestamp",
    "timestampdiff",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "truncate",
    "ucase",
    "unhex",
    "unix_timestamp",
    "unnest",
    "upper",
    "user",
    "utc_date",
    "utc_time",
    "utc_timestamp",
    "uuid",
    "var_pop",
    "var_samp",
    "variance",
    "version",
    "week",
    "weekday",
    "weekofyear",
    "width_bucket",
    "year",
    "yearweek",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_list_is_sorted_and_unique() {
        assert!(
            PURE.windows(2).all(|w| matches!(w, [a, b] if a < b)),
            "PURE must stay sorted"
        );
    }

    #[test]
    fn classes() {
        assert_eq!(classify("lower"), FunctionClass::Pure);
        assert_eq!(classify("pg_catalog.lower"), FunctionClass::Pure);
        assert_eq!(classify("public.lower"), FunctionClass::Unknown);
        assert!(matches!(
            classify("pg_read_file"),
            FunctionClass::Dangerous(_)
        ));
        assert!(matches!(
            classify("pg_catalog.pg_read_file"),
            FunctionClass::Dangerous(_)
        ));
        assert!(matches!(
            classify("evil.pg_read_file"),
            FunctionClass::Dangerous(_)
        ));
        assert!(matches!(
            classify("dblink_exec"),
            FunctionClass::Dangerous(_)
        ));
        assert!(matches!(classify("lo_export"), FunctionClass::Dangerous(_)));
        assert!(matches!(classify("nextval"), FunctionClass::SideEffect(_)));
        assert!(matches!(
            classify("pg_advisory_lock"),
            FunctionClass::SideEffect(_)
        ));
        assert_eq!(classify("my_function"), FunctionClass::Unknown);
    }
}
