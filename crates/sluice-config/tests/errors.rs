#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A broken policy file fails with a precise error: the file, the line and
//! column of the offending value (or field), the field path, and a message
//! that says what would be accepted.
//!
//! Every test text is written one line per string literal, so the expected
//! line numbers can be read off the source; columns are counted by hand
//! (1-based, in characters, the first character of the offending value).

use std::path::Path;

use sluice_config::{ConfigError, ConfigErrors};

const FILE: &str = "policy.toml";

/// What one error must look like.
struct Want {
    line: usize,
    column: usize,
    field: &'static str,
    /// Substrings the message must contain.
    message: &'static [&'static str],
}

/// One broken file and the errors it must produce.
struct Case {
    name: &'static str,
    text: &'static str,
    /// Every error, in the order reported.
    errors: &'static [Want],
}

fn errors_of(text: &str) -> ConfigErrors {
    match sluice_config::parse(text, FILE) {
        Ok(_) => panic!("expected the policy to be refused:\n{text}"),
        Err(e) => e,
    }
}

fn check_error(case: &str, i: usize, got: &ConfigError, want: &Want, all: &ConfigErrors) {
    let ctx = || format!("case `{case}`, error #{i}; all errors:\n{all}");
    assert_eq!(got.file, Path::new(FILE), "file, {}", ctx());
    assert_eq!((got.line, got.column), (want.line, want.column), "line:column, {}", ctx());
    assert_eq!(got.field, want.field, "field, {}", ctx());
    for s in want.message {
        assert!(got.message.contains(s), "message should contain {s:?}, {}", ctx());
    }
}

fn run(cases: &[Case]) {
    for case in cases {
        let errs = errors_of(case.text);
        assert_eq!(
            errs.0.len(),
            case.errors.len(),
            "case `{}`: number of errors; got:\n{errs}",
            case.name
        );
        for (i, (got, want)) in errs.0.iter().zip(case.errors).enumerate() {
            check_error(case.name, i, got, want, &errs);
        }
    }
}

const HASH_A: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

// ---------------------------------------------------------------------------
// The TOML itself and the shape of the file (serde): one error, then stop.
// ---------------------------------------------------------------------------

#[test]
fn syntax_and_type_errors() {
    run(&[
        Case {
            name: "missing comma in an inline table",
            text: concat!(
                "[models.\"m1\"]\n",               // 1
                "[tiers.free.models]\n",           // 2
                "\"m1\" = { rpm = 60 rpd = 1 }\n", // 3: the parser stops at the `=` of `rpd = 1`, column 23
            ),
            errors: &[Want { line: 3, column: 23, field: "", message: &["expected `,`"] }],
        },
        Case {
            name: "unterminated table header",
            text: concat!(
                "[policy]\n",     // 1
                "name = \"x\"\n", // 2
                "[tiers.free\n",  // 3: the header never closes
            ),
            errors: &[Want { line: 3, column: 12, field: "", message: &["]"] }],
        },
        Case {
            name: "string where an integer goes (table cell)",
            text: concat!(
                "[models.\"m1\"]\n",           // 1
                "[tiers.free.models]\n",       // 2
                "\"m1\" = { rpm = \"60\" }\n", // 3: "60" at column 16
            ),
            errors: &[Want {
                line: 3,
                column: 16,
                field: "tiers.free.models.m1.rpm",
                message: &["expected a whole number, got string \"60\""],
            }],
        },
        Case {
            name: "string where an integer goes ([[limits]] amount)",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = \"sixty\"\n",    // 4: at column 10
                "window = \"1m\"\n",       // 5
            ),
            errors: &[Want {
                line: 4,
                column: 10,
                field: "limits[0].amount",
                message: &["expected a number, got string \"sixty\""],
            }],
        },
        Case {
            name: "integer where a string goes",
            text: concat!(
                "[policy]\n", // 1
                "name = 5\n", // 2: 5 at column 8
            ),
            errors: &[Want {
                line: 2,
                column: 8,
                field: "policy.name",
                message: &["expected a string (in quotes), got integer `5`"],
            }],
        },
        Case {
            name: "integer where a metric name goes",
            text: concat!(
                "[[limits]]\n",      // 1
                "name = \"rpm\"\n",  // 2
                "metric = 1\n",      // 3: at column 10
                "amount = 60\n",     // 4
                "window = \"1m\"\n", // 5
            ),
            errors: &[Want {
                line: 3,
                column: 10,
                field: "limits[0].metric",
                message: &["expected a string (in quotes), got integer `1`"],
            }],
        },
        Case {
            name: "override that is neither an amount nor a table",
            text: concat!(
                "[models.\"m1\"]\n",          // 1
                "[tiers.free.models]\n",      // 2
                "\"m1\" = { rpm = 60 }\n",    // 3
                "[tenants.acme]\n",           // 4
                "tier = \"free\"\n",          // 5
                "[tenants.acme.overrides]\n", // 6
                "\"m1/rpm\" = \"lots\"\n",    // 7: "lots" at column 12
            ),
            errors: &[Want {
                line: 7,
                column: 12,
                field: "tenants.acme.overrides.m1/rpm",
                message: &["an override is an amount", "{ amount = 2000, until = \"2026-12-31\" }"],
            }],
        },
    ]);
}

#[test]
fn unknown_fields_list_the_expected_ones() {
    run(&[
        Case {
            name: "top level",
            text: concat!(
                "[policy]\n",     // 1
                "name = \"x\"\n", // 2
                "[limit]\n",      // 3: `limit` at column 2
                "name = \"y\"\n", // 4
            ),
            errors: &[Want {
                line: 3,
                column: 2,
                field: "limit",
                message: &[
                    "unknown field `limit`, expected one of",
                    "`policy`",
                    "`headers`",
                    "`models`",
                    "`endpoints`",
                    "`tiers`",
                    "`groups`",
                    "`limits`",
                    "`exemptions`",
                    "`tenants`",
                ],
            }],
        },
        Case {
            name: "in [policy]",
            text: concat!(
                "[policy]\n",           // 1
                "default = \"free\"\n", // 2
            ),
            errors: &[Want {
                line: 2,
                column: 1,
                field: "policy.default",
                message: &["unknown field `default`", "`default_tier`", "`long_windows`"],
            }],
        },
        Case {
            name: "in a tier",
            text: concat!(
                "[tiers.free]\n",             // 1
                "description = \"x\"\n",      // 2
                "listed_model_only = true\n", // 3
            ),
            errors: &[Want {
                line: 3,
                column: 1,
                field: "tiers.free.listed_model_only",
                message: &[
                    "unknown field `listed_model_only`, expected one of",
                    "`description`",
                    "`extends`",
                    "`listed_models_only`",
                    "`models`",
                    "`limits`",
                ],
            }],
        },
        Case {
            name: "in a limit",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"1m\"\n",       // 5
                "per = [\"model\"]\n",     // 6
            ),
            errors: &[Want {
                line: 6,
                column: 1,
                field: "limits[0].per",
                message: &[
                    "unknown field `per`, expected one of",
                    "`name`",
                    "`description`",
                    "`metric`",
                    "`amount`",
                    "`window`",
                    "`kind`",
                    "`burst`",
                    "`by`",
                    "`when`",
                    "`unless`",
                    "`shadow`",
                    "`counter`",
                ],
            }],
        },
        Case {
            name: "in a tier's limit",
            text: concat!(
                "[tiers.free]\n",          // 1
                "[[tiers.free.limits]]\n", // 2
                "name = \"rpm\"\n",        // 3
                "metric = \"requests\"\n", // 4
                "amount = 60\n",           // 5
                "windows = \"1m\"\n",      // 6
            ),
            errors: &[Want {
                line: 6,
                column: 1,
                field: "tiers.free.limits[0].windows",
                message: &["unknown field `windows`", "`window`"],
            }],
        },
        Case {
            name: "in a model",
            text: concat!(
                "[models.\"m1\"]\n",       // 1
                "clas = \"production\"\n", // 2
            ),
            errors: &[Want {
                line: 2,
                column: 1,
                field: "models.m1.clas",
                message: &["unknown field `clas`, expected one of", "`class`", "`developer`"],
            }],
        },
        Case {
            name: "in a tenant",
            text: concat!(
                "[tiers.free]\n",       // 1
                "[tenants.acme]\n",     // 2
                "tier = \"free\"\n",    // 3
                "timezone = \"UTC\"\n", // 4
            ),
            errors: &[Want {
                line: 4,
                column: 1,
                field: "tenants.acme.timezone",
                message: &[
                    "unknown field `timezone`, expected one of",
                    "`name`",
                    "`tier`",
                    "`environment`",
                    "`groups`",
                    "`labels`",
                    "`time_zone`",
                    "`exempt`",
                    "`overrides`",
                    "`keys`",
                ],
            }],
        },
        Case {
            name: "in a key",
            text: concat!(
                "[tiers.free]\n",             // 1
                "[tenants.acme]\n",           // 2
                "tier = \"free\"\n",          // 3
                "[[tenants.acme.keys]]\n",    // 4
                "id = \"k1\"\n",              // 5
                "secret = \"sk-live-123\"\n", // 6
            ),
            errors: &[Want {
                line: 6,
                column: 1,
                field: "tenants.acme.keys[0].secret",
                message: &[
                    "unknown field `secret`, expected one of",
                    "`id`",
                    "`hash`",
                    "`labels`",
                    "`exempt`",
                ],
            }],
        },
        Case {
            name: "in [headers]",
            text: concat!(
                "[headers]\n",             // 1
                "family = [\"tokens\"]\n", // 2
            ),
            errors: &[Want {
                line: 2,
                column: 1,
                field: "headers.family",
                message: &[
                    "unknown field `family`, expected one of",
                    "`families`",
                    "`reset`",
                    "`ietf`",
                ],
            }],
        },
    ]);
}

// ---------------------------------------------------------------------------
// Per-model tables.
// ---------------------------------------------------------------------------

#[test]
fn model_table_errors() {
    run(&[
        Case {
            name: "model not in [models]",
            text: concat!(
                "[models.\"m1\"]\n",      // 1
                "[tiers.free.models]\n",  // 2
                "\"m2\" = { rpm = 1 }\n", // 3: the table at column 8
            ),
            errors: &[Want {
                line: 3,
                column: 8,
                field: "tiers.free.models.m2",
                message: &["model `m2` is not in [models]", "defined: `m1`"],
            }],
        },
        Case {
            name: "zero in a cell",
            text: concat!(
                "[models.\"m1\"]\n",      // 1
                "[tiers.free.models]\n",  // 2
                "\"m1\" = { rpm = 0 }\n", // 3: 0 at column 16
            ),
            errors: &[Want {
                line: 3,
                column: 16,
                field: "tiers.free.models.m1.rpm",
                message: &["must be a positive whole number (at least 1), got 0"],
            }],
        },
        Case {
            name: "negative cell",
            text: concat!(
                "[models.\"m1\"]\n",       // 1
                "[tiers.free.models]\n",   // 2
                "\"m1\" = { rpd = -1 }\n", // 3: -1 at column 16
            ),
            errors: &[Want {
                line: 3,
                column: 16,
                field: "tiers.free.models.m1.rpd",
                message: &["must be a positive whole number (at least 1), got -1"],
            }],
        },
        Case {
            name: "unknown column",
            text: concat!(
                "[models.\"m1\"]\n",                // 1
                "[tiers.free.models]\n",            // 2
                "\"m1\" = { rpm = 10, rpx = 5 }\n", // 3: 5 at column 26
            ),
            errors: &[Want {
                line: 3,
                column: 26,
                field: "tiers.free.models.m1.rpx",
                message: &["`rpx` is not a table column", "rps, rpm, rph, rpd", "concurrent"],
            }],
        },
        Case {
            name: "empty cell table",
            text: concat!(
                "[models.\"m1\"]\n",     // 1
                "[tiers.free.models]\n", // 2
                "\"m1\" = {}\n",         // 3: {} at column 8
            ),
            errors: &[Want {
                line: 3,
                column: 8,
                field: "tiers.free.models.m1",
                message: &["no limits given", "rpm"],
            }],
        },
        Case {
            name: "group table with an unknown model",
            text: concat!(
                "[models.\"m1\"]\n",         // 1
                "[groups.interns.models]\n", // 2
                "\"m3\" = { rpm = 1 }\n",    // 3
            ),
            errors: &[Want {
                line: 3,
                column: 8,
                field: "groups.interns.models.m3",
                message: &["model `m3` is not in [models]"],
            }],
        },
    ]);
}

// ---------------------------------------------------------------------------
// [[limits]]: amounts, metrics, windows.
// ---------------------------------------------------------------------------

#[test]
fn limit_amount_metric_window_errors() {
    run(&[
        Case {
            name: "zero amount",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 0\n",            // 4: at column 10
                "window = \"1m\"\n",       // 5
            ),
            errors: &[Want {
                line: 4,
                column: 10,
                field: "limits[0].amount",
                message: &["must be a positive whole number (at least 1), got 0"],
            }],
        },
        Case {
            name: "negative amount in a tier",
            text: concat!(
                "[tiers.free]\n",          // 1
                "[[tiers.free.limits]]\n", // 2
                "name = \"rpm\"\n",        // 3
                "metric = \"requests\"\n", // 4
                "amount = -5\n",           // 5: at column 10
                "window = \"1m\"\n",       // 6
            ),
            errors: &[Want {
                line: 5,
                column: 10,
                field: "tiers.free.limits[0].amount",
                message: &["must be a positive whole number (at least 1), got -5"],
            }],
        },
        Case {
            name: "unknown metric",
            text: concat!(
                "[[limits]]\n",        // 1
                "name = \"rpm\"\n",    // 2
                "metric = \"reqs\"\n", // 3: at column 10
                "amount = 60\n",       // 4
                "window = \"1m\"\n",   // 5
            ),
            errors: &[Want {
                line: 3,
                column: 10,
                field: "limits[0].metric",
                message: &[
                    "`reqs` is not a metric",
                    "requests, tokens, input_tokens, output_tokens, concurrent",
                ],
            }],
        },
        Case {
            name: "unknown window unit",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpy\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"1y\"\n",       // 5: at column 10
            ),
            errors: &[Want {
                line: 5,
                column: 10,
                field: "limits[0].window",
                message: &["`1y` is not a window", "s, m, h, d, w, mo"],
            }],
        },
        Case {
            name: "zero window",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"0m\"\n",       // 5: at column 10
            ),
            errors: &[Want {
                line: 5,
                column: 10,
                field: "limits[0].window",
                message: &["`0m` is not a window", "positive number"],
            }],
        },
        Case {
            name: "calendar window that does not line up",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"r7m\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"7m\"\n",       // 5: at column 10
                "kind = \"calendar\"\n",   // 6
            ),
            errors: &[Want {
                line: 5,
                column: 10,
                field: "limits[0].window",
                message: &[
                    "a calendar window of 7m does not line up with the calendar",
                    "`1d`, `1w`, `1mo`",
                ],
            }],
        },
        Case {
            name: "rolling month",
            text: concat!(
                "[[limits]]\n",          // 1
                "name = \"tpmo\"\n",     // 2
                "metric = \"tokens\"\n", // 3
                "amount = 1000000\n",    // 4
                "window = \"1mo\"\n",    // 5: at column 10
                "kind = \"rolling\"\n",  // 6
            ),
            errors: &[Want {
                line: 5,
                column: 10,
                field: "limits[0].window",
                message: &["a rolling window cannot be counted in months"],
            }],
        },
        Case {
            name: "unknown window kind",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"1m\"\n",       // 5
                "kind = \"sliding\"\n",    // 6: at column 8
            ),
            errors: &[Want {
                line: 6,
                column: 8,
                field: "limits[0].kind",
                message: &["`sliding` is not a window kind", "`rolling`", "`calendar`"],
            }],
        },
        Case {
            name: "burst on a calendar window",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpd\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 1000\n",         // 4
                "window = \"1d\"\n",       // 5: days are calendar windows by default
                "burst = 10\n",            // 6: at column 9
            ),
            errors: &[Want {
                line: 6,
                column: 9,
                field: "limits[0].burst",
                message: &["`burst` only applies to rolling windows"],
            }],
        },
        Case {
            name: "zero burst",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"1m\"\n",       // 5
                "burst = 0\n",             // 6: at column 9
            ),
            errors: &[Want {
                line: 6,
                column: 9,
                field: "limits[0].burst",
                message: &["must be a positive whole number (at least 1), got 0"],
            }],
        },
        Case {
            name: "concurrent with a window",
            text: concat!(
                "[[limits]]\n",              // 1
                "name = \"in-flight\"\n",    // 2
                "metric = \"concurrent\"\n", // 3
                "amount = 8\n",              // 4
                "window = \"1m\"\n",         // 5: at column 10
            ),
            errors: &[Want {
                line: 5,
                column: 10,
                field: "limits[0].window",
                message: &["a `concurrent` limit counts requests in flight and takes no window"],
            }],
        },
    ]);
}

#[test]
fn rolling_month_message_says_what_to_use() {
    let errs = errors_of(concat!(
        "[[limits]]\n",
        "name = \"tpmo\"\n",
        "metric = \"tokens\"\n",
        "amount = 1000000\n",
        "window = \"1mo\"\n",
        "kind = \"rolling\"\n",
    ));
    let m = &errs.0[0].message;
    assert!(m.contains("kind = \"calendar\""), "{m}");
    assert!(m.contains("`30d`"), "{m}");
}

#[test]
fn missing_name_and_window() {
    run(&[
        Case {
            name: "limit with no window",
            text: concat!(
                "[policy]\n",              // 1
                "name = \"p\"\n",          // 2
                "\n",                      // 3
                "[[limits]]\n",            // 4: the limit starts here
                "name = \"rpm\"\n",        // 5
                "metric = \"requests\"\n", // 6
                "amount = 60\n",           // 7
            ),
            errors: &[Want {
                line: 4,
                column: 1,
                field: "limits[0].window",
                message: &[
                    "a `requests` limit needs a window",
                    "window = \"1m\"",
                    "s, m, h, d, w, mo",
                ],
            }],
        },
        Case {
            name: "limit with no name",
            text: concat!(
                "[policy]\n",              // 1
                "name = \"p\"\n",          // 2
                "\n",                      // 3
                "[[limits]]\n",            // 4: the limit starts here
                "metric = \"requests\"\n", // 5
                "amount = 60\n",           // 6
                "window = \"1m\"\n",       // 7
            ),
            errors: &[Want {
                line: 4,
                column: 1,
                field: "limits[0].name",
                message: &["every limit needs a `name`", "name = \"requests-per-minute\""],
            }],
        },
        Case {
            name: "limit with an empty name",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \" \"\n",          // 2: at column 8
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"1m\"\n",       // 5
            ),
            errors: &[Want {
                line: 2,
                column: 8,
                field: "limits[0].name",
                message: &["a limit name must not be empty"],
            }],
        },
        Case {
            name: "second limit of a tier with no window",
            text: concat!(
                "[tiers.free]\n",          // 1
                "[[tiers.free.limits]]\n", // 2
                "name = \"rpm\"\n",        // 3
                "metric = \"requests\"\n", // 4
                "amount = 60\n",           // 5
                "window = \"1m\"\n",       // 6
                "[[tiers.free.limits]]\n", // 7: the second limit starts here
                "name = \"tpm\"\n",        // 8
                "metric = \"tokens\"\n",   // 9
                "amount = 6000\n",         // 10
            ),
            errors: &[Want {
                line: 7,
                column: 1,
                field: "tiers.free.limits[1].window",
                message: &["a `tokens` limit needs a window"],
            }],
        },
    ]);
}

/// The `metric` and `amount` of a limit are required by the file's shape.
#[test]
fn missing_metric_is_a_shape_error() {
    let errs = errors_of(concat!(
        "[[limits]]\n",      // 1
        "name = \"rpm\"\n",  // 2
        "amount = 60\n",     // 3
        "window = \"1m\"\n", // 4
    ));
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    assert!(e.message.contains("missing field `metric`"), "{errs}");
    assert!(e.field.starts_with("limits"), "{errs}");
}

// ---------------------------------------------------------------------------
// Names: duplicates, tiers, default tier.
// ---------------------------------------------------------------------------

const DUPLICATE_IN_TIER: &str = concat!(
    "[tiers.free]\n",          // 1
    "[[tiers.free.limits]]\n", // 2
    "name = \"rpm\"\n",        // 3
    "metric = \"requests\"\n", // 4
    "amount = 60\n",           // 5
    "window = \"1m\"\n",       // 6
    "[[tiers.free.limits]]\n", // 7: the second limit starts here
    "name = \"rpm\"\n",        // 8: the duplicate name at column 8
    "metric = \"tokens\"\n",   // 9
    "amount = 1000\n",         // 10
    "window = \"1m\"\n",       // 11
);

#[test]
fn duplicate_limit_names_in_one_tier() {
    let errs = errors_of(DUPLICATE_IN_TIER);
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    // It points at the second limit (its header, line 7, or its name, line 8),
    // not the first.
    assert!((7..=8).contains(&e.line), "{errs}");
    assert!(e.message.contains("limit `rpm` is defined twice in tier free"), "{errs}");
    assert!(e.message.contains("names must be unique within a tier"), "{errs}");
}

#[test]
fn duplicate_limit_name_error_has_the_field_path() {
    run(&[Case {
        name: "duplicate names in one tier",
        text: DUPLICATE_IN_TIER,
        errors: &[Want {
            line: 8,
            column: 8,
            field: "tiers.free.limits[1].name",
            message: &["limit `rpm` is defined twice in tier free"],
        }],
    }]);
}

#[test]
fn same_limit_name_in_two_tiers_is_fine() {
    let text = concat!(
        "[tiers.free]\n",
        "[[tiers.free.limits]]\n",
        "name = \"rpm\"\n",
        "metric = \"requests\"\n",
        "amount = 10\n",
        "window = \"1m\"\n",
        "[tiers.pro]\n",
        "[[tiers.pro.limits]]\n",
        "name = \"rpm\"\n",
        "metric = \"requests\"\n",
        "amount = 100\n",
        "window = \"1m\"\n",
        "[[limits]]\n",
        "name = \"rpm\"\n",
        "metric = \"requests\"\n",
        "amount = 1000\n",
        "window = \"1m\"\n",
    );
    let config = sluice_config::parse(text, FILE).unwrap();
    assert_eq!(config.policy.limits_named("rpm").len(), 3);
}

#[test]
fn tier_reference_errors() {
    run(&[
        Case {
            name: "unknown extends",
            text: concat!(
                "[tiers.free]\n",        // 1
                "[tiers.pro]\n",         // 2
                "extends = \"basic\"\n", // 3: at column 11
            ),
            errors: &[Want {
                line: 3,
                column: 11,
                field: "tiers.pro.extends",
                message: &["tier `basic` is not defined", "defined: `free`, `pro`"],
            }],
        },
        Case {
            name: "unknown default tier",
            text: concat!(
                "[policy]\n",                // 1
                "default_tier = \"gold\"\n", // 2: at column 16
                "[tiers.free]\n",            // 3
            ),
            errors: &[Want {
                line: 2,
                column: 16,
                field: "policy.default_tier",
                message: &["tier `gold` is not defined", "defined: `free`"],
            }],
        },
        Case {
            name: "default tier with no tiers at all",
            text: concat!(
                "[policy]\n",                // 1
                "default_tier = \"gold\"\n", // 2: at column 16
            ),
            errors: &[Want {
                line: 2,
                column: 16,
                field: "policy.default_tier",
                message: &["tier `gold` is not defined", "none are defined"],
            }],
        },
        Case {
            name: "extends in a group",
            text: concat!(
                "[tiers.free]\n",       // 1
                "[groups.interns]\n",   // 2
                "extends = \"free\"\n", // 3
            ),
            errors: &[Want {
                line: 2,
                column: 1,
                field: "groups.interns",
                message: &[
                    "`extends`, `listed_models_only` and `max_wait` are for tiers, not groups",
                ],
            }],
        },
    ]);
}

const CYCLE: &str = concat!(
    "[tiers.a]\n",       // 1
    "extends = \"b\"\n", // 2: "b" at column 11
    "[tiers.b]\n",       // 3
    "extends = \"a\"\n", // 4: "a" at column 11
);

#[test]
fn extends_cycle_is_refused() {
    let errs = errors_of(CYCLE);
    assert_eq!(errs.0.len(), 2, "{errs}");
    let (a, b) = (&errs.0[0], &errs.0[1]);
    assert_eq!(a.field, "tiers.a.extends", "{errs}");
    assert!(a.message.contains("tier `a` extends itself through `extends`"), "{errs}");
    assert!((1..=2).contains(&a.line), "within [tiers.a]: {errs}");
    assert_eq!(b.field, "tiers.b.extends", "{errs}");
    assert!(b.message.contains("tier `b` extends itself through `extends`"), "{errs}");
    assert!((3..=4).contains(&b.line), "within [tiers.b]: {errs}");

    let errs = errors_of(concat!(
        "[tiers.free]\n",       // 1
        "[tiers.solo]\n",       // 2
        "extends = \"solo\"\n", // 3
    ));
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].field, "tiers.solo.extends", "{errs}");
    assert!(errs.0[0].message.contains("tier `solo` extends itself"), "{errs}");
    assert!((2..=3).contains(&errs.0[0].line), "within [tiers.solo]: {errs}");
}

#[test]
fn extends_cycle_points_at_the_extends_values() {
    run(&[Case {
        name: "extends cycle of two",
        text: CYCLE,
        errors: &[
            Want {
                line: 2,
                column: 11,
                field: "tiers.a.extends",
                message: &["tier `a` extends itself through `extends`"],
            },
            Want {
                line: 4,
                column: 11,
                field: "tiers.b.extends",
                message: &["tier `b` extends itself through `extends`"],
            },
        ],
    }]);
}

#[test]
fn a_tier_that_extends_a_cycle_is_not_said_to_extend_itself() {
    let errs = errors_of(concat!(
        "[tiers.a]\n",       // 1
        "extends = \"a\"\n", // 2
        "[tiers.b]\n",       // 3
        "extends = \"a\"\n", // 4: b is not in the cycle
    ));
    assert!(errs.0.iter().any(|e| e.message.contains("tier `a` extends itself")), "{errs}");
    assert!(!errs.0.iter().any(|e| e.message.contains("tier `b` extends itself")), "{errs}");
}

// ---------------------------------------------------------------------------
// Conditions and partitions.
// ---------------------------------------------------------------------------

#[test]
fn condition_errors() {
    run(&[
        Case {
            name: "unknown fact in when",
            text: concat!(
                "[[limits]]\n",                  // 1
                "name = \"rpm\"\n",              // 2
                "metric = \"requests\"\n",       // 3
                "amount = 60\n",                 // 4
                "window = \"1m\"\n",             // 5
                "when = { colour = \"red\" }\n", // 6: the table at column 8
            ),
            errors: &[Want {
                line: 6,
                column: 8,
                field: "limits[0].when.colour",
                message: &[
                    "`colour` is not a fact a condition can test",
                    "tier, environment, group, tenant, tenant.<label>, key, key.<label>, endpoint, model, model_class, user",
                ],
            }],
        },
        Case {
            name: "unknown endpoint in when",
            text: concat!(
                "[[limits]]\n",                      // 1
                "name = \"rpm\"\n",                  // 2
                "metric = \"requests\"\n",           // 3
                "amount = 60\n",                     // 4
                "window = \"1m\"\n",                 // 5
                "when = { endpoint = \"chatt\" }\n", // 6: the table at column 8
            ),
            errors: &[Want {
                line: 6,
                column: 8,
                field: "limits[0].when.endpoint",
                message: &[
                    "endpoint `chatt` is not defined",
                    "defined: `chat`, `completions`, `embeddings`, `feedback`",
                ],
            }],
        },
        Case {
            name: "unknown endpoint among declared endpoints",
            text: concat!(
                "[endpoints]\n",                                       // 1
                "generations = \"/v1/completions\"\n",                 // 2
                "[[limits]]\n",                                        // 3
                "name = \"rpm\"\n",                                    // 4
                "metric = \"requests\"\n",                             // 5
                "amount = 60\n",                                       // 6
                "window = \"1m\"\n",                                   // 7
                "when = { endpoint = [\"generations\", \"chat\"] }\n", // 8
            ),
            errors: &[Want {
                line: 8,
                column: 8,
                field: "limits[0].when.endpoint",
                message: &["endpoint `chat` is not defined", "defined: `generations`"],
            }],
        },
        Case {
            name: "unknown model in when",
            text: concat!(
                "[models.\"m1\"]\n",           // 1
                "class = \"production\"\n",    // 2
                "[tiers.free]\n",              // 3
                "[[limits]]\n",                // 4
                "name = \"rpm\"\n",            // 5
                "metric = \"requests\"\n",     // 6
                "amount = 60\n",               // 7
                "window = \"1m\"\n",           // 8
                "when = { model = \"m9\" }\n", // 9: the table at column 8
            ),
            errors: &[Want {
                line: 9,
                column: 8,
                field: "limits[0].when.model",
                message: &["model `m9` is not defined", "defined: `m1`"],
            }],
        },
        Case {
            name: "unknown tier in when",
            text: concat!(
                "[models.\"m1\"]\n",            // 1
                "class = \"production\"\n",     // 2
                "[tiers.free]\n",               // 3
                "[[limits]]\n",                 // 4
                "name = \"rpm\"\n",             // 5
                "metric = \"requests\"\n",      // 6
                "amount = 60\n",                // 7
                "window = \"1m\"\n",            // 8
                "when = { tier = \"gold\" }\n", // 9: the table at column 8
            ),
            errors: &[Want {
                line: 9,
                column: 8,
                field: "limits[0].when.tier",
                message: &["tier `gold` is not defined", "defined: `free`"],
            }],
        },
        Case {
            name: "unknown model class in when",
            text: concat!(
                "[models.\"m1\"]\n",                   // 1
                "class = \"production\"\n",            // 2
                "[tiers.free]\n",                      // 3
                "[[limits]]\n",                        // 4
                "name = \"rpm\"\n",                    // 5
                "metric = \"requests\"\n",             // 6
                "amount = 60\n",                       // 7
                "window = \"1m\"\n",                   // 8
                "when = { model_class = \"beta\" }\n", // 9: the table at column 8
            ),
            errors: &[Want {
                line: 9,
                column: 8,
                field: "limits[0].when.model_class",
                message: &["model class `beta` is not defined", "defined: `production`"],
            }],
        },
        Case {
            name: "when with an empty list",
            text: concat!(
                "[[limits]]\n",                  // 1
                "name = \"rpm\"\n",              // 2
                "metric = \"requests\"\n",       // 3
                "amount = 60\n",                 // 4
                "window = \"1m\"\n",             // 5
                "when = { environment = [] }\n", // 6: the table at column 8
            ),
            errors: &[Want {
                line: 6,
                column: 8,
                field: "limits[0].when.environment",
                message: &["give at least one value"],
            }],
        },
        Case {
            name: "unknown model in an unless list",
            text: concat!(
                "[models.\"m1\"]\n",                                              // 1
                "[[limits]]\n",                                                   // 2
                "name = \"rpm\"\n",                                               // 3
                "metric = \"requests\"\n",                                        // 4
                "amount = 60\n",                                                  // 5
                "window = \"1m\"\n",                                              // 6
                "unless = [{ environment = \"sandbox\" }, { model = \"m9\" }]\n", // 7: the list at column 10
            ),
            errors: &[Want {
                line: 7,
                column: 10,
                field: "limits[0].unless.model",
                message: &["model `m9` is not defined", "defined: `m1`"],
            }],
        },
        Case {
            name: "unknown limit and fact in an exemption",
            text: concat!(
                "[[limits]]\n",                  // 1
                "name = \"rpm\"\n",              // 2
                "metric = \"requests\"\n",       // 3
                "amount = 60\n",                 // 4
                "window = \"1m\"\n",             // 5
                "[[exemptions]]\n",              // 6
                "limits = [\"rpd\"]\n",          // 7: "rpd" at column 11
                "when = { colour = \"red\" }\n", // 8: the table at column 8
            ),
            errors: &[
                Want {
                    line: 7,
                    column: 11,
                    field: "exemptions[0].limits",
                    message: &["limit `rpd` is not defined", "defined: `rpm`"],
                },
                Want {
                    line: 8,
                    column: 8,
                    field: "exemptions[0].when.colour",
                    message: &["`colour` is not a fact a condition can test"],
                },
            ],
        },
    ]);
}

#[test]
fn partition_errors() {
    run(&[
        Case {
            name: "by on a tenant fact",
            text: concat!(
                "[[limits]]\n",                 // 1
                "name = \"rpm\"\n",             // 2
                "metric = \"requests\"\n",      // 3
                "amount = 60\n",                // 4
                "window = \"1m\"\n",            // 5
                "by = [\"model\", \"tier\"]\n", // 6: "tier" at column 16
            ),
            errors: &[Want {
                line: 6,
                column: 16,
                field: "limits[0].by",
                message: &[
                    "`tier` is the same for every request of a tenant and cannot split its counter",
                    "use model, endpoint, model_class, key, key.<label> or user",
                ],
            }],
        },
        Case {
            name: "by on a tenant label",
            text: concat!(
                "[[limits]]\n",               // 1
                "name = \"rpm\"\n",           // 2
                "metric = \"requests\"\n",    // 3
                "amount = 60\n",              // 4
                "window = \"1m\"\n",          // 5
                "by = [\"tenant.region\"]\n", // 6: at column 7
            ),
            errors: &[Want {
                line: 6,
                column: 7,
                field: "limits[0].by",
                message: &["`tenant.region` is the same for every request of a tenant"],
            }],
        },
        Case {
            name: "by on an unknown fact",
            text: concat!(
                "[[limits]]\n",            // 1
                "name = \"rpm\"\n",        // 2
                "metric = \"requests\"\n", // 3
                "amount = 60\n",           // 4
                "window = \"1m\"\n",       // 5
                "by = [\"colour\"]\n",     // 6: at column 7
            ),
            errors: &[Want {
                line: 6,
                column: 7,
                field: "limits[0].by",
                message: &[
                    "`colour` is not a fact",
                    "model, endpoint, model_class, key, key.<label> or user",
                ],
            }],
        },
    ]);
}

// ---------------------------------------------------------------------------
// [policy], [headers], [endpoints].
// ---------------------------------------------------------------------------

#[test]
fn policy_header_and_endpoint_errors() {
    run(&[
        Case {
            name: "bad header family",
            text: concat!(
                "[headers]\n",                                  // 1
                "families = [\"requests\", \"request-day\"]\n", // 2: the list at column 12
            ),
            errors: &[Want {
                line: 2,
                column: 12,
                field: "headers.families",
                message: &[
                    "`request-day` is not a header family",
                    "requests, tokens, input-tokens, output-tokens or cost",
                    "-hour, -day or -month",
                ],
            }],
        },
        Case {
            name: "bad reset format",
            text: concat!(
                "[headers]\n",           // 1
                "reset = \"iso8601\"\n", // 2: at column 9
            ),
            errors: &[Want {
                line: 2,
                column: 9,
                field: "headers.reset",
                message: &[
                    "`iso8601` is not a reset format",
                    "`duration`",
                    "`seconds`",
                    "`epoch`",
                    "`none`",
                ],
            }],
        },
        Case {
            name: "bad long_windows",
            text: concat!(
                "[policy]\n",                   // 1
                "long_windows = \"sliding\"\n", // 2: at column 16
            ),
            errors: &[Want {
                line: 2,
                column: 16,
                field: "policy.long_windows",
                message: &["`sliding` is not a window kind", "`calendar` or `rolling`"],
            }],
        },
        Case {
            name: "lease in months",
            text: concat!(
                "[policy]\n",        // 1
                "lease = \"1mo\"\n", // 2: at column 9
            ),
            errors: &[Want {
                line: 2,
                column: 9,
                field: "policy.lease",
                message: &["a lease is counted in seconds, minutes or hours"],
            }],
        },
        Case {
            name: "lease that is not a period",
            text: concat!(
                "[policy]\n",         // 1
                "lease = \"soon\"\n", // 2: at column 9
            ),
            errors: &[Want {
                line: 2,
                column: 9,
                field: "policy.lease",
                message: &["`soon` is not a window"],
            }],
        },
        Case {
            name: "endpoint path without a slash",
            text: concat!(
                "[endpoints]\n",        // 1
                "chat = \"v1/chat\"\n", // 2: at column 8
            ),
            errors: &[Want {
                line: 2,
                column: 8,
                field: "endpoints.chat",
                message: &["a path must start with `/`, got `v1/chat`"],
            }],
        },
    ]);
}

// ---------------------------------------------------------------------------
// Tenants and keys.
// ---------------------------------------------------------------------------

#[test]
fn tenant_errors() {
    run(&[
        Case {
            name: "unknown tier",
            text: concat!(
                "[tiers.free]\n",    // 1
                "[tenants.acme]\n",  // 2
                "tier = \"gold\"\n", // 3: at column 8
            ),
            errors: &[Want {
                line: 3,
                column: 8,
                field: "tenants.acme.tier",
                message: &["tier `gold` is not defined", "defined: `free`"],
            }],
        },
        Case {
            name: "unknown time zone",
            text: concat!(
                "[tiers.free]\n",                 // 1
                "[tenants.acme]\n",               // 2
                "tier = \"free\"\n",              // 3
                "time_zone = \"Mars/Olympus\"\n", // 4: at column 13
            ),
            errors: &[Want {
                line: 4,
                column: 13,
                field: "tenants.acme.time_zone",
                message: &["`Mars/Olympus` is not a known IANA time zone", "`Europe/Paris`"],
            }],
        },
        Case {
            name: "override of an unknown limit",
            text: concat!(
                "[models.\"m1\"]\n",          // 1
                "[tiers.free.models]\n",      // 2
                "\"m1\" = { rpm = 60 }\n",    // 3
                "[tenants.acme]\n",           // 4
                "tier = \"free\"\n",          // 5
                "[tenants.acme.overrides]\n", // 6
                "\"m1/rpd\" = 100\n",         // 7: 100 at column 12
            ),
            errors: &[Want {
                line: 7,
                column: 12,
                field: "tenants.acme.overrides.m1/rpd",
                message: &["limit `m1/rpd` is not defined", "defined: `m1/rpm`"],
            }],
        },
        Case {
            name: "zero override",
            text: concat!(
                "[models.\"m1\"]\n",          // 1
                "[tiers.free.models]\n",      // 2
                "\"m1\" = { rpm = 60 }\n",    // 3
                "[tenants.acme]\n",           // 4
                "tier = \"free\"\n",          // 5
                "[tenants.acme.overrides]\n", // 6
                "\"m1/rpm\" = 0\n",           // 7: 0 at column 12
            ),
            errors: &[Want {
                line: 7,
                column: 12,
                field: "tenants.acme.overrides.m1/rpm",
                message: &["must be a positive whole number (at least 1), got 0"],
            }],
        },
        Case {
            name: "negative override in a table",
            text: concat!(
                "[models.\"m1\"]\n",                // 1
                "[tiers.free.models]\n",            // 2
                "\"m1\" = { rpm = 60 }\n",          // 3
                "[tenants.acme]\n",                 // 4
                "tier = \"free\"\n",                // 5
                "[tenants.acme.overrides]\n",       // 6
                "\"m1/rpm\" = { amount = -100 }\n", // 7: the table at column 12
            ),
            errors: &[Want {
                line: 7,
                column: 12,
                field: "tenants.acme.overrides.m1/rpm",
                message: &["must be a positive whole number (at least 1), got -100"],
            }],
        },
        Case {
            name: "override with a bad until",
            text: concat!(
                "[models.\"m1\"]\n",                                    // 1
                "[tiers.free.models]\n",                                // 2
                "\"m1\" = { rpm = 60 }\n",                              // 3
                "[tenants.acme]\n",                                     // 4
                "tier = \"free\"\n",                                    // 5
                "[tenants.acme.overrides]\n",                           // 6
                "\"m1/rpm\" = { amount = 100, until = \"someday\" }\n", // 7: the table at column 12
            ),
            errors: &[Want {
                line: 7,
                column: 12,
                field: "tenants.acme.overrides.m1/rpm.until",
                message: &["not a date or time", "`2026-12-31`", "`2026-12-31T23:59:59Z`"],
            }],
        },
        Case {
            name: "exempt from an unknown limit",
            text: concat!(
                "[models.\"m1\"]\n",                // 1
                "[tiers.free.models]\n",            // 2
                "\"m1\" = { rpm = 60 }\n",          // 3
                "[tenants.acme]\n",                 // 4
                "tier = \"free\"\n",                // 5
                "exempt = [\"m1/rpm\", \"rpd\"]\n", // 6: "rpd" at column 21
            ),
            errors: &[Want {
                line: 6,
                column: 21,
                field: "tenants.acme.exempt",
                message: &["limit `rpd` is not defined", "defined: `m1/rpm`"],
            }],
        },
        Case {
            name: "bad key hash",
            text: concat!(
                "[tiers.free]\n",          // 1
                "[tenants.acme]\n",        // 2
                "tier = \"free\"\n",       // 3
                "[[tenants.acme.keys]]\n", // 4
                "id = \"k1\"\n",           // 5
                "hash = \"sha256:abc\"\n", // 6: at column 8
            ),
            errors: &[Want {
                line: 6,
                column: 8,
                field: "tenants.acme.keys[0].hash",
                message: &["a key hash is `sha256:` and 64 hex digits", "sluice keys generate"],
            }],
        },
        Case {
            name: "a key with a secret in place of its hash",
            text: concat!(
                "[tiers.free]\n",           // 1
                "[tenants.acme]\n",         // 2
                "tier = \"free\"\n",        // 3
                "[[tenants.acme.keys]]\n",  // 4
                "hash = \"sk-live-abc\"\n", // 5: at column 8
            ),
            errors: &[Want {
                line: 5,
                column: 8,
                field: "tenants.acme.keys[0].hash",
                message: &["the secret itself never goes in the file"],
            }],
        },
    ]);
}

const DUPLICATE_HASH: &str = concat!(
    "[tiers.free]\n",       // 1
    "[tenants.a]\n",        // 2
    "tier = \"free\"\n",    // 3
    "[[tenants.a.keys]]\n", // 4
    "id = \"ka\"\n",        // 5
    "hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n", // 6
    "[tenants.b]\n",        // 7
    "tier = \"free\"\n",    // 8
    "[[tenants.b.keys]]\n", // 9
    "id = \"kb\"\n",        // 10
    // The same hash, in upper case: still the same secret.
    "hash = \"sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\"\n", // 11: at column 8
);

#[test]
fn duplicate_key_hash_across_tenants_is_refused() {
    assert!(DUPLICATE_HASH.contains(HASH_A));
    let errs = errors_of(DUPLICATE_HASH);
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = &errs.0[0];
    assert!(e.field.starts_with("tenants.b.keys"), "{errs}");
    assert!(e.message.contains("the same key hash appears twice"), "{errs}");
    assert!(e.message.contains("one secret can belong to one tenant and one key only"), "{errs}");
}

#[test]
fn duplicate_key_hash_points_at_the_second_hash() {
    run(&[Case {
        name: "duplicate key hash",
        text: DUPLICATE_HASH,
        errors: &[Want {
            line: 11,
            column: 8,
            field: "tenants.b.keys[0].hash",
            message: &["the same key hash appears twice"],
        }],
    }]);
}

const DUPLICATE_KEY_ID: &str = concat!(
    "[tiers.free]\n",       // 1
    "[tenants.a]\n",        // 2
    "tier = \"free\"\n",    // 3
    "[[tenants.a.keys]]\n", // 4
    "id = \"ops\"\n",       // 5
    "hash = \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n", // 6
    "[tenants.b]\n",        // 7
    "tier = \"free\"\n",    // 8
    "[[tenants.b.keys]]\n", // 9
    "id = \"ops\"\n",       // 10: "ops" at column 6
    "hash = \"sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752\"\n", // 11
);

#[test]
fn duplicate_key_id_is_refused() {
    let errs = errors_of(DUPLICATE_KEY_ID);
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert!(errs.0[0].message.contains("key id `ops` is used twice"), "{errs}");
}

#[test]
fn duplicate_key_id_points_at_the_second_key() {
    run(&[Case {
        name: "duplicate key id",
        text: DUPLICATE_KEY_ID,
        errors: &[Want {
            line: 10,
            column: 6,
            field: "tenants.b.keys[0].id",
            message: &["key id `ops` is used twice"],
        }],
    }]);
}

// ---------------------------------------------------------------------------
// Several problems: all of them, in one go.
// ---------------------------------------------------------------------------

#[test]
fn several_problems_are_all_reported() {
    run(&[Case {
        name: "six problems",
        text: concat!(
            "[policy]\n",                      // 1
            "default_tier = \"gold\"\n",       // 2: at column 16
            "[models.\"m1\"]\n",               // 3
            "[tiers.free.models]\n",           // 4
            "\"m1\" = { rpm = 0, rpx = 3 }\n", // 5: 0 at column 16, 3 at column 25
            "\"m2\" = { rpm = 1 }\n",          // 6: the table at column 8
            "[[limits]]\n",                    // 7
            "name = \"tpm\"\n",                // 8
            "metric = \"tokenz\"\n",           // 9: at column 10
            "amount = 1000\n",                 // 10
            "window = \"1y\"\n",               // 11: at column 10
        ),
        errors: &[
            Want {
                line: 2,
                column: 16,
                field: "policy.default_tier",
                message: &["tier `gold` is not defined"],
            },
            Want { line: 5, column: 16, field: "tiers.free.models.m1.rpm", message: &["got 0"] },
            Want {
                line: 5,
                column: 25,
                field: "tiers.free.models.m1.rpx",
                message: &["`rpx` is not a table column"],
            },
            Want {
                line: 6,
                column: 8,
                field: "tiers.free.models.m2",
                message: &["model `m2` is not in [models]"],
            },
            Want {
                line: 9,
                column: 10,
                field: "limits[0].metric",
                message: &["`tokenz` is not a metric"],
            },
            Want {
                line: 11,
                column: 10,
                field: "limits[0].window",
                message: &["`1y` is not a window"],
            },
        ],
    }]);
}

#[test]
fn several_tenant_problems_are_all_reported() {
    run(&[Case {
        name: "three tenant problems",
        text: concat!(
            "[tiers.free]\n",                 // 1
            "[tenants.a]\n",                  // 2
            "tier = \"gold\"\n",              // 3: at column 8
            "time_zone = \"Nowhere/City\"\n", // 4: at column 13
            "[tenants.b]\n",                  // 5
            "tier = \"free\"\n",              // 6
            "[[tenants.b.keys]]\n",           // 7
            "hash = \"md5:0\"\n",             // 8: at column 8
        ),
        errors: &[
            Want {
                line: 3,
                column: 8,
                field: "tenants.a.tier",
                message: &["tier `gold` is not defined"],
            },
            Want {
                line: 4,
                column: 13,
                field: "tenants.a.time_zone",
                message: &["`Nowhere/City` is not a known IANA time zone"],
            },
            Want {
                line: 8,
                column: 8,
                field: "tenants.b.keys[0].hash",
                message: &["a key hash is `sha256:` and 64 hex digits"],
            },
        ],
    }]);
}

#[test]
fn tenant_problems_are_reported_with_policy_problems() {
    run(&[Case {
        name: "one policy problem and one tenant problem",
        text: concat!(
            "[models.\"m1\"]\n",      // 1
            "[tiers.free.models]\n",  // 2
            "\"m1\" = { rpm = 0 }\n", // 3: 0 at column 16
            "[tenants.acme]\n",       // 4
            "tier = \"gold\"\n",      // 5: at column 8
        ),
        errors: &[
            Want { line: 3, column: 16, field: "tiers.free.models.m1.rpm", message: &["got 0"] },
            Want {
                line: 5,
                column: 8,
                field: "tenants.acme.tier",
                message: &["tier `gold` is not defined"],
            },
        ],
    }]);
}

// ---------------------------------------------------------------------------
// How errors print, and files that cannot be read.
// ---------------------------------------------------------------------------

#[test]
fn errors_print_as_file_line_column_field_message() {
    let errs = errors_of(concat!(
        "[policy]\n",                // 1
        "default_tier = \"gold\"\n", // 2
        "[tiers.free]\n",            // 3
        "[tenants.acme]\n",          // 4
    ));
    assert_eq!(
        errs.to_string(),
        "policy.toml:2:16: policy.default_tier: tier `gold` is not defined; defined: `free`"
    );
    assert_eq!(errs.first(), errs.0.first());

    // Several errors: one per line.
    let errs = errors_of(concat!(
        "[headers]\n",              // 1
        "reset = \"iso\"\n",        // 2
        "families = [\"bogus\"]\n", // 3
    ));
    let text = errs.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("policy.toml:3:12: headers.families: `bogus`"), "{text}");
    assert!(lines[1].starts_with("policy.toml:2:9: headers.reset: `iso`"), "{text}");

    // A syntax error has no field: nothing between the position and the message.
    let errs = errors_of("[tiers.free\n");
    let text = errs.to_string();
    assert!(text.starts_with("policy.toml:1:"), "{text}");
    assert!(!text.contains(": :"), "{text}");
}

#[test]
fn the_file_name_is_the_one_given() {
    let errs = sluice_config::parse("[policy]\nname = 5\n", "conf/prod/limits.toml").unwrap_err();
    assert_eq!(errs.0[0].file, Path::new("conf/prod/limits.toml"));
    assert!(errs.to_string().starts_with("conf/prod/limits.toml:2:8: policy.name: "));
}

#[test]
fn columns_count_characters_after_a_multibyte_line() {
    // The policy name has non-ASCII characters; the next line's column is
    // unaffected, and columns on the same line count from the line start.
    let errs = errors_of(concat!(
        "[policy]\n",                // 1
        "name = \"Déjà vu\"\n",      // 2
        "default_tier = \"gold\"\n", // 3: at column 16
    ));
    assert_eq!((errs.0[0].line, errs.0[0].column), (3, 16), "{errs}");
}

#[test]
fn columns_count_characters_not_bytes() {
    run(&[Case {
        name: "zero after a non-ASCII model id",
        text: concat!(
            "[models.\"Déjà\"]\n",      // 1
            "[tiers.free.models]\n",    // 2
            "\"Déjà\" = { rpm = 0 }\n", // 3: 0 is the 18th character (20th byte)
        ),
        errors: &[Want {
            line: 3,
            column: 18,
            field: "tiers.free.models.Déjà.rpm",
            message: &["got 0"],
        }],
    }]);
}

#[test]
fn a_missing_file_names_the_file() {
    let path = std::env::temp_dir().join(format!("sluice-missing-{}.toml", std::process::id()));
    let errs = sluice_config::load(&path).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].file, path);
    assert!(errs.0[0].message.contains("cannot read the file"), "{errs}");
    assert!(errs.to_string().starts_with(&path.display().to_string()), "{errs}");
}

// ---------------------------------------------------------------------------
// [server] and [store] settings.
// ---------------------------------------------------------------------------

#[test]
fn failure_cost_and_slot_lease_errors() {
    run(&[Case {
        name: "upstream_failure, refund_statuses, slot_lease",
        text: concat!(
            "[server]\n",                          // 1
            "upstream_failure = \"free\"\n",       // 2: "free" at column 20
            "refund_statuses = [502, 200, 502]\n", // 3: 200 at 25, the second 502 at 30
            "[store]\n",                           // 4
            "kind = \"redis\"\n",                  // 5
            "url = \"redis://127.0.0.1:6379\"\n",  // 6
            "slot_lease = \"100ms\"\n",            // 7: "100ms" at column 14
            "[models.m]\n",                        // 8
        ),
        // (`[store]` is validated first.)
        errors: &[
            Want {
                line: 7,
                column: 14,
                field: "store.slot_lease",
                message: &["too short", "at least `1s`"],
            },
            Want {
                line: 2,
                column: 20,
                field: "server.upstream_failure",
                message: &["`free` is not allowed", "`count`", "`charge`", "`refund`"],
            },
            Want {
                line: 3,
                column: 25,
                field: "server.refund_statuses[1]",
                message: &["200 is not an error status", "400 to 599"],
            },
            Want {
                line: 3,
                column: 30,
                field: "server.refund_statuses[2]",
                message: &["502 is listed twice"],
            },
        ],
    }]);
}

// ---------------------------------------------------------------------------
// Budgets in money: prices, amounts, the default price.
// ---------------------------------------------------------------------------

#[test]
fn money_errors() {
    run(&[
        Case {
            name: "a cost limit without a default price",
            text: concat!(
                "[models.m]\n",                        // 1
                "price = { input = 1, output = 2 }\n", // 2
                "[[limits]]\n",                        // 3
                "name = \"daily\"\n",                  // 4: column 8
                "metric = \"cost\"\n",                 // 5
                "amount = 5\n",                        // 6
                "window = \"1d\"\n",                   // 7
            ),
            errors: &[Want {
                line: 4,
                column: 8,
                field: "limits[0].name",
                message: &["a `cost` limit needs `default_price` in `[policy]`"],
            }],
        },
        Case {
            name: "prices and amounts",
            text: concat!(
                "[policy]\n",                                   // 1
                "currency = \"dollars\"\n",                     // 2: column 12
                "default_price = { input = 1.0 }\n",            // 3: column 17
                "[models.m]\n",                                 // 4
                "price = { input = -1, output = 0.0000001 }\n", // 5: columns 19, 32
                "[[limits]]\n",                                 // 6
                "name = \"daily\"\n",                           // 7
                "metric = \"cost\"\n",                          // 8
                "amount = 0.0000001\n",                         // 9: column 10
                "window = \"1d\"\n",                            // 10
                "[[limits]]\n",                                 // 11
                "name = \"rpm\"\n",                             // 12
                "metric = \"requests\"\n",                      // 13
                "amount = 2.5\n",                               // 14: column 10
                "window = \"1m\"\n",                            // 15
                "[[limits]]\n",                                 // 16
                "name = \"hourly\"\n",                          // 17
                "metric = \"cost\"\n",                          // 18
                "amount = 5000\n",                              // 19
                "window = \"1h\"\n",                            // 20: column 10
                "kind = \"rolling\"\n",                         // 21
            ),
            errors: &[
                Want {
                    line: 5,
                    column: 19,
                    field: "models.m.price.input",
                    message: &[
                        "a price per million tokens: a number from 0 with at most six decimals, got -1",
                    ],
                },
                Want {
                    line: 5,
                    column: 32,
                    field: "models.m.price.output",
                    message: &["at most six decimals"],
                },
                Want {
                    line: 2,
                    column: 12,
                    field: "policy.currency",
                    message: &["`dollars` is not a currency code"],
                },
                Want {
                    line: 3,
                    column: 17,
                    field: "policy.default_price",
                    message: &["give the price per million tokens of both `input` and `output`"],
                },
                Want {
                    line: 9,
                    column: 10,
                    field: "limits[0].amount",
                    message: &["a `cost` amount is money in the policy's currency"],
                },
                Want {
                    line: 14,
                    column: 10,
                    field: "limits[1].amount",
                    message: &["must be a positive whole number (at least 1), got 2.5"],
                },
                Want {
                    line: 20,
                    column: 10,
                    field: "limits[2].window",
                    message: &["a rolling `cost` limit holds at most $4294.967295"],
                },
            ],
        },
    ]);
}

// ---------------------------------------------------------------------------
// Key grants: a key's own amount of a limit split by key.
// ---------------------------------------------------------------------------

#[test]
fn key_grant_errors() {
    run(&[Case {
        name: "a key grant on a tenant-wide limit, an unknown limit, a zero amount",
        text: concat!(
            "[[limits]]\n",            // 1
            "name = \"rpm\"\n",        // 2
            "metric = \"requests\"\n", // 3
            "amount = 10\n",           // 4
            "window = \"1m\"\n",       // 5
            "[[limits]]\n",            // 6
            "name = \"key-rpm\"\n",    // 7
            "metric = \"requests\"\n", // 8
            "amount = 3\n",            // 9
            "window = \"1m\"\n",       // 10
            "by = [\"key\"]\n",        // 11
            "[tenants.acme]\n",        // 12
            "[[tenants.acme.keys]]\n", // 13
            "id = \"k1\"\n",           // 14
            "hash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n", // 15
            "overrides = { \"rpm\" = 5, \"nope\" = 5, \"key-rpm\" = 0 }\n", // 16: columns 23, 35, 50
        ),
        errors: &[
            Want {
                line: 16,
                column: 23,
                field: "tenants.acme.keys[0].overrides.rpm",
                message: &[
                    "limit `rpm`: a key can be granted its own amount only of a limit split by key",
                    "add `by = [\"key\"]`",
                ],
            },
            Want {
                line: 16,
                column: 35,
                field: "tenants.acme.keys[0].overrides.nope",
                message: &["limit `nope` is not defined", "defined: `key-rpm`, `rpm`"],
            },
            Want {
                line: 16,
                column: 50,
                field: "tenants.acme.keys[0].overrides.key-rpm",
                message: &["must be a positive whole number (at least 1), got 0"],
            },
        ],
    }]);
}

/// A key's grants as read: a count, or money for a `cost` limit, with its end.
#[test]
fn key_grants_are_read_as_counts_and_money() {
    let text = concat!(
        "[policy]\n",
        "default_price = { input = 1, output = 1 }\n",
        "[[limits]]\n",
        "name = \"key-rpm\"\n",
        "metric = \"requests\"\n",
        "amount = 3\n",
        "window = \"1m\"\n",
        "by = [\"key\"]\n",
        "[[limits]]\n",
        "name = \"key-budget\"\n",
        "metric = \"cost\"\n",
        "amount = 100\n",
        "window = \"1mo\"\n",
        "by = [\"key\"]\n",
        "[tenants.acme]\n",
        "[[tenants.acme.keys]]\n",
        "id = \"k1\"\n",
        "hash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n",
        "overrides = { \"key-rpm\" = 20, \"key-budget\" = { amount = 12.50, until = \"2026-12-31\" } }\n",
    );
    let config = sluice_config::parse(text, FILE).unwrap_or_else(|e| panic!("{e}"));
    let grants = &config.tenants[0].keys[0].spec.overrides;
    let got: Vec<(&str, u64, Option<u64>)> =
        grants.iter().map(|o| (o.limit.as_str(), o.amount, o.until.map(|u| u.0))).collect();
    let end = sluice_core::Instant::parse("2027-01-01T00:00:00Z").unwrap().0;
    assert_eq!(got, [("key-rpm", 20, None), ("key-budget", 12_500_000, Some(end))]);
}
